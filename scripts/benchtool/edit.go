package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/npy"
)

// edits is section 4, on a read-write mount of the large checkpoint:
// (a) overwrite a few MiB inside the large tensor and fsync: the journaled
// in-place path; (b) add a small tensor by writing a .npy and closing it:
// the atomic-rewrite path. References: the same pwrite+fsync on a plain
// file, and cp + fsync of the checkpoint.
func (b *bench) edits() error {
	cfg := b.cfg
	reps := max(cfg.reps, 5)
	if cfg.smoke {
		reps = 1
	}
	if err := b.ensureCached(b.bigPath); err != nil {
		return err
	}
	m, err := b.mount(b.bigPath)
	if err != nil {
		return err
	}
	err = func() error {
		if err := b.inPlaceEdit(m, reps); err != nil {
			return err
		}
		return b.layoutChange(m, cfg.reps)
	}()
	if uerr := m.unmount(); err == nil {
		err = uerr
	}
	if err != nil {
		return err
	}
	// Everything added is in the checkpoint after unmount.
	f, err := safetensors.Open(b.bigPath)
	if err != nil {
		return fmt.Errorf("after the edits: %w", err)
	}
	defer f.Close()
	for rep := range cfg.reps {
		if _, ok := f.Index(addedKey(rep)); !ok {
			return fmt.Errorf("after unmount, %s has no tensor %q", b.bigPath, addedKey(rep))
		}
	}
	return nil
}

func (b *bench) inPlaceEdit(m *mount, reps int) error {
	cfg := b.cfg
	size, n := cfg.bigBytes, int64(cfg.editBytes)
	// The plain file is overwritten in place too (allocated and synced
	// first), so both sides write n bytes into existing blocks.
	plainSize := min(size, 64<<20)
	plain := filepath.Join(b.work, "plain.bin")
	if err := writeSynced(plain, plainSize, 99); err != nil {
		return err
	}
	defer os.Remove(plain)
	pf, err := os.OpenFile(plain, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer pf.Close()
	tf, err := os.OpenFile(keyPath(m.dir, b.bigKey), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer tf.Close()
	ck, err := os.Open(b.bigPath)
	if err != nil {
		return err
	}
	defer ck.Close()

	buf, got := make([]byte, n), make([]byte, n)
	// writeSync returns the time of pwrite + fsync, and of the pwrite alone.
	writeSync := func(f *os.File, off int64) (time.Duration, time.Duration, error) {
		t0 := time.Now()
		if _, err := f.WriteAt(buf, off); err != nil {
			return 0, 0, err
		}
		w := time.Since(t0)
		if err := f.Sync(); err != nil {
			return 0, 0, err
		}
		return time.Since(t0), w, nil
	}
	var ours, ref, oursW, refW []time.Duration
	for rep := range reps {
		fill(buf, uint64(1000+rep))
		off := (size/2 + int64(rep)*n) % (size - n) / n * n
		d, w, err := writeSync(tf, off)
		if err != nil {
			return fmt.Errorf("edit through the mount: %w", err)
		}
		ours, oursW = append(ours, d), append(oursW, w)
		// fsync returned: the checkpoint itself must hold the bytes.
		if _, err := ck.ReadAt(got, b.bigOff+off); err != nil {
			return err
		}
		if !bytes.Equal(got, buf) {
			return fmt.Errorf("after fsync, the checkpoint does not hold the %s written at %d", sizeName(n), off)
		}
		d, w, err = writeSync(pf, int64(rep)*n%(plainSize-n+1))
		if err != nil {
			return err
		}
		ref, refW = append(ref, d), append(refW, w)
	}
	if err := tf.Close(); err != nil {
		return fmt.Errorf("close after edits: %w", err)
	}
	ms := func(d float64) float64 { return d * 1e3 }
	b.add(row{section: "4", what: fmt.Sprintf("edit %s inside the %s tensor: pwrite + fsync (median of %d)", sizeName(n), sizeName(size), reps),
		ours: ms(medianDur(ours)), unit: "ms", refWhat: fmt.Sprintf("pwrite + fsync of %s into a plain file", sizeName(n)), ref: ms(medianDur(ref)), kind: cost, barMax: 3})
	b.note("edit row, split: pwrite %.2f ms + fsync %.2f ms through the mount; pwrite %.2f ms + fsync %.2f ms on the plain file (medians)",
		ms(medianDur(oursW)), ms(medianDur(ours))-ms(medianDur(oursW)), ms(medianDur(refW)), ms(medianDur(ref))-ms(medianDur(refW)))
	return nil
}

// writeSynced makes a file of pseudo-random bytes and fsyncs it.
func writeSynced(path string, size int64, seed uint64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, min(size, 4<<20))
	for off := int64(0); off < size && err == nil; off += int64(len(buf)) {
		noise{seed}.ReadAt(buf, off)
		_, err = f.Write(buf[:min(int64(len(buf)), size-off)])
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func addedKey(rep int) string { return fmt.Sprintf("added.t%d", rep) }

// layoutChange adds a small tensor per run (np.save's bytes written to a
// new .npy, then close), which rewrites the whole checkpoint.
func (b *bench) layoutChange(m *mount, reps int) error {
	shape := []uint64{1024}
	hdr, err := npy.Header("F32", shape)
	if err != nil {
		return err
	}
	data := make([]byte, 4*1024)
	fill(data, 5)
	file := append(hdr, data...)
	copyPath := filepath.Join(b.work, "copy.safetensors")
	defer os.Remove(copyPath)

	var ours, ref []time.Duration
	for rep := range reps {
		dir := filepath.Dir(keyPath(m.dir, addedKey(rep)))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		p := keyPath(m.dir, addedKey(rep)) + ".npy"
		if err := b.ensureCached(b.bigPath); err != nil {
			return err
		}
		t0 := time.Now()
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		if _, err := f.Write(file); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("close of %s (the rewrite): %w", p, err)
		}
		ours = append(ours, time.Since(t0))
		if st, err := os.Stat(keyPath(m.dir, addedKey(rep))); err != nil || st.Size() != int64(len(data)) {
			return fmt.Errorf("after writing %s: %v", p, err)
		}

		if err := b.ensureCached(b.bigPath); err != nil {
			return err
		}
		t0 = time.Now()
		if out, err := exec.Command("cp", b.bigPath, copyPath).CombinedOutput(); err != nil {
			return fmt.Errorf("cp: %v: %s", err, strings.TrimSpace(string(out)))
		}
		c, err := os.OpenFile(copyPath, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		err = c.Sync()
		c.Close()
		if err != nil {
			return err
		}
		ref = append(ref, time.Since(t0))
		os.Remove(copyPath)
	}
	ms := func(d float64) float64 { return d * 1e3 }
	b.add(row{section: "4", what: fmt.Sprintf("add a 4 KiB tensor to the %s checkpoint: write a .npy + close (rewrite)", sizeName(b.cfg.bigBytes)),
		ours: ms(medianDur(ours)), unit: "ms", refWhat: "cp of the checkpoint + fsync of the copy", ref: ms(medianDur(ref)), kind: cost})
	return nil
}
