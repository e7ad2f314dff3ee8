package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/npy"
)

// edits is section 4, on a read-write mount of the large checkpoint:
// (a) overwrite a few MiB inside the large tensor and fsync: a commit to
// the log, against the floor of a full-data journal (the same bytes
// written to a side file and fdatasynced, then in place and fdatasynced,
// in plain code); (b) a session of layout changes (ten np.save of new
// 4 KiB tensors, a mv, an rm), then unmount, which writes the checkpoint
// back once, each against one cp + fsync of the checkpoint; (c) the costs
// that must not grow with the number of tensors (a no-op fsync, a 4-byte
// fsync, a rename), at two checkpoint sizes.
func (b *bench) edits() error {
	cfg := b.cfg
	reps := max(cfg.reps, 9)
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
	last, err := b.inPlaceEdit(m, reps)
	var session time.Duration
	if err == nil {
		session, err = b.layoutSession(m)
	}
	t0 := time.Now()
	if uerr := m.unmount(); err == nil {
		err = uerr
	}
	unmountTook := time.Since(t0)
	if err != nil {
		return err
	}
	// Everything is in the checkpoint after unmount.
	f, err := safetensors.Open(b.bigPath)
	if err != nil {
		return fmt.Errorf("after the edits: %w", err)
	}
	defer f.Close()
	for i := range sessionNew {
		k := addedKey(i)
		if i == 0 {
			k = "added.moved"
		}
		if _, ok := f.Index(k); ok != (i != 1) {
			return fmt.Errorf("after unmount, %s has tensor %q: %v (want %v)", b.bigPath, k, ok, i != 1)
		}
	}
	if i, ok := f.Index(b.bigKey); !ok || !bytes.Equal(f.Bytes(i)[last.off:last.off+int64(len(last.data))], last.data) {
		return fmt.Errorf("after unmount, the last in-place edit is not in %s", b.bigPath)
	}
	cp, err := b.cpFsync()
	if err != nil {
		return err
	}
	free, err := b.freeCost()
	if err != nil {
		return err
	}
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	b.add(row{section: "4", what: fmt.Sprintf("%d np.save of new 4 KiB tensors + one mv + one rm into the %s checkpoint (each close or dir fsync durable)", sessionNew, sizeName(cfg.bigBytes)),
		ours: ms(session), unit: "ms", refWhat: "cp of the checkpoint + fsync of the copy", ref: ms(cp), kind: cost, barMax: 1.0})
	b.add(row{section: "4", what: "unmount after that session (the one write-back: rewrite + in-place edits)",
		ours: ms(unmountTook), unit: "ms", refWhat: "cp of the checkpoint + fsync of the copy", ref: ms(cp), kind: cost, barMax: 1.5})
	b.add(row{section: "4", what: "  the same unmount, against the floor of any rewrite that replaces the file",
		ours: ms(unmountTook), unit: "ms", refWhat: fmt.Sprintf("cp + fsync of the copy, plus %.0f ms to free a file of that size (rm, measured alone)", ms(free)), ref: ms(cp + free), kind: cost})
	if discard(b.work) {
		b.note("section 4: the bench disk is mounted with online discard: freeing a file's blocks (the old checkpoint a write-back replaces, as any rename over a file does) waits for the device to discard them; the second unmount row's reference adds that cost, measured alone, to cp + fsync")
	}
	return b.flatCosts()
}

// sessionNew is how many new tensors the layout session saves.
const sessionNew = 10

// lastEdit is the last in-place edit made, to check after unmount.
type lastEdit struct {
	off  int64
	data []byte
}

func (b *bench) inPlaceEdit(m *mount, reps int) (lastEdit, error) {
	cfg := b.cfg
	size, n := cfg.bigBytes, int64(cfg.editBytes)
	// The floor of a full-data journal, in plain code on this disk: the
	// bytes written to a side file and fdatasynced, then into the file in
	// place and fdatasynced. Both files exist and are allocated first, so
	// every write goes into existing blocks, as the mount's do.
	plainSize := min(size, 64<<20)
	plain := filepath.Join(b.work, "plain.bin")
	side := filepath.Join(b.work, "side.bin")
	for _, p := range []string{plain, side} {
		if err := writeSynced(p, max(plainSize, n), 99); err != nil {
			return lastEdit{}, err
		}
		defer os.Remove(p)
	}
	pf, err := os.OpenFile(plain, os.O_WRONLY, 0)
	if err != nil {
		return lastEdit{}, err
	}
	defer pf.Close()
	sf, err := os.OpenFile(side, os.O_WRONLY, 0)
	if err != nil {
		return lastEdit{}, err
	}
	defer sf.Close()
	tf, err := os.OpenFile(keyPath(m.dir, b.bigKey), os.O_WRONLY, 0)
	if err != nil {
		return lastEdit{}, err
	}
	defer tf.Close()

	buf := make([]byte, n)
	var ours, floor, plainD, oursW []time.Duration
	var first, firstFloor time.Duration
	var last lastEdit
	// Edit 0 is the session's first: its fsync creates the log (see
	// wal.go's prefill), and the daemon's memory is still fresh. It is
	// reported on a row of its own, against a journal the floor creates
	// for it; the median is of the edits after it.
	for rep := range reps + 1 {
		fill(buf, uint64(1000+rep))
		off := (size/2 + int64(rep)*n) % (size - n) / n * n
		t0 := time.Now()
		if _, err := tf.WriteAt(buf, off); err != nil {
			return last, fmt.Errorf("edit through the mount: %w", err)
		}
		w := time.Since(t0)
		if err := tf.Sync(); err != nil {
			return last, fmt.Errorf("fsync through the mount: %w", err)
		}
		if rep == 0 {
			first = time.Since(t0)
		} else {
			ours, oursW = append(ours, time.Since(t0)), append(oursW, w)
		}
		last = lastEdit{off, bytes.Clone(buf)}

		poff := int64(rep) * n % (plainSize - n + 1)
		if rep == 0 {
			d, err := newJournalEdit(filepath.Join(b.work, "journal.bin"), buf, pf, poff)
			if err != nil {
				return last, err
			}
			firstFloor = d
			continue
		}
		t0 = time.Now()
		if _, err := sf.WriteAt(buf, 0); err != nil {
			return last, err
		}
		if err := sf.Sync(); err != nil {
			return last, err
		}
		if _, err := pf.WriteAt(buf, poff); err != nil {
			return last, err
		}
		if err := pf.Sync(); err != nil {
			return last, err
		}
		floor = append(floor, time.Since(t0))
		t0 = time.Now()
		if _, err := pf.WriteAt(buf, poff); err != nil {
			return last, err
		}
		if err := pf.Sync(); err != nil {
			return last, err
		}
		plainD = append(plainD, time.Since(t0))
	}
	if err := tf.Close(); err != nil {
		return last, fmt.Errorf("close after edits: %w", err)
	}
	ms := func(d float64) float64 { return d * 1e3 }
	b.add(row{section: "4", what: fmt.Sprintf("edit %s inside the %s tensor: pwrite + fsync (median of %d, after the session's first)", sizeName(n), sizeName(size), reps),
		ours: ms(medianDur(ours)), unit: "ms", refWhat: fmt.Sprintf("floor of a full-data journal: %s to a side file + fdatasync, then in place + fdatasync", sizeName(n)),
		ref: ms(medianDur(floor)), kind: cost, barMax: 1.5})
	b.add(row{section: "4", what: "  the session's first such edit (its fsync creates the log, with zeros written ahead for the edits to come)",
		ours: ms(first.Seconds()), unit: "ms", refWhat: fmt.Sprintf("the same floor with its side file created for it: created, %s written, fdatasync, its directory fsynced", sizeName(n)),
		ref: ms(firstFloor.Seconds()), kind: cost})
	b.note("edit row, split: pwrite %.2f ms + fsync %.2f ms through the mount; a plain pwrite + fsync of the same bytes takes %.2f ms (medians)",
		ms(medianDur(oursW)), ms(medianDur(ours))-ms(medianDur(oursW)), ms(medianDur(plainD)))
	return last, nil
}

// newJournalEdit is the floor of a first edit: a journal file created for
// it (the bytes written and fdatasynced, its directory fsynced, as a new
// file needs), then the bytes in place in f and fdatasynced.
func newJournalEdit(path string, buf []byte, f *os.File, off int64) (time.Duration, error) {
	t0 := time.Now()
	j, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer os.Remove(path)
	_, err = j.Write(buf)
	if err == nil {
		err = j.Sync()
	}
	if cerr := j.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err == nil {
		_, err = f.WriteAt(buf, off)
	}
	if err == nil {
		err = f.Sync()
	}
	return time.Since(t0), err
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

// layoutSession is what a user does in one sitting: np.save of new small
// tensors (each close durable), a mv and an rm (each made durable by an
// fsync of the directory). It returns the time of all of it.
func (b *bench) layoutSession(m *mount) (time.Duration, error) {
	hdr, err := npy.Header("F32", []uint64{1024})
	if err != nil {
		return 0, err
	}
	data := make([]byte, 4*1024)
	fill(data, 5)
	file := append(hdr, data...)
	if err := os.MkdirAll(filepath.Dir(keyPath(m.dir, addedKey(0))), 0o755); err != nil {
		return 0, err
	}
	root, err := os.Open(m.dir)
	if err != nil {
		return 0, err
	}
	defer root.Close()
	t0 := time.Now()
	for i := range sessionNew {
		p := keyPath(m.dir, addedKey(i)) + ".npy"
		if err := os.WriteFile(p, file, 0o644); err != nil {
			return 0, fmt.Errorf("np.save-like write of %s: %w", p, err)
		}
	}
	if err := os.Rename(keyPath(m.dir, addedKey(0)), keyPath(m.dir, "added.moved")); err != nil {
		return 0, err
	}
	if err := root.Sync(); err != nil {
		return 0, err
	}
	if err := os.Remove(keyPath(m.dir, addedKey(1))); err != nil {
		return 0, err
	}
	if err := root.Sync(); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// cpFsync times cp of the large checkpoint and an fsync of the copy, the
// checkpoint cached first.
func (b *bench) cpFsync() (time.Duration, error) {
	copyPath := filepath.Join(b.work, "copy.safetensors")
	defer os.Remove(copyPath)
	if err := b.ensureCached(b.bigPath); err != nil {
		return 0, err
	}
	t0 := time.Now()
	if out, err := exec.Command("cp", b.bigPath, copyPath).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("cp: %v: %s", err, strings.TrimSpace(string(out)))
	}
	c, err := os.OpenFile(copyPath, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.Sync(); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// freeCost is what removing a file the size of the checkpoint costs (its
// blocks freed): what a write-back pays when the new file replaces the
// old, as any rename over a file does.
func (b *bench) freeCost() (time.Duration, error) {
	old := filepath.Join(b.work, "replaced.safetensors")
	defer os.Remove(old)
	if out, err := exec.Command("cp", b.bigPath, old).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("cp: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if err := exec.Command("sync").Run(); err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := os.Remove(old); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// discard reports whether the file system holding dir is mounted with
// online discard.
func discard(dir string) bool {
	_, _, opts := mountOf(dir)
	return slices.Contains(strings.Split(opts, ","), "discard")
}

// syncDir fsyncs a directory, as the creation of a file in it needs to be
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
