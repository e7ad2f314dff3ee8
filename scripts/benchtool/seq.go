package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// keyPath is where a key appears in the mount (default separator ".").
func keyPath(mnt, key string) string {
	return filepath.Join(mnt, filepath.FromSlash(strings.ReplaceAll(key, ".", "/")))
}

// readSeq reads size bytes from f starting at off in reads of len(buf),
// as cat or np.fromfile would, and returns the elapsed time.
func readSeq(f *os.File, off, size int64, buf []byte) (time.Duration, error) {
	t0 := time.Now()
	end := off + size
	for off < end {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), end-off)], off)
		off += int64(n)
		if err != nil && !(err == io.EOF && off == end) {
			return 0, err
		}
		if n == 0 {
			return 0, io.ErrUnexpectedEOF
		}
	}
	return time.Since(t0), nil
}

// sequential is section 1: the large tensor read through a fresh mount
// (cold: the FUSE inode has no cached pages yet) and again (hot), against
// the same byte range read from the checkpoint, which is in the page cache
// for both.
func (b *bench) sequential() error {
	cfg := b.cfg
	size := cfg.bigBytes
	buf := make([]byte, cfg.readSize)
	ck, err := os.Open(b.bigPath)
	if err != nil {
		return err
	}
	defer ck.Close()

	var cold, hot, third, direct []time.Duration
	var rssAfter, rssMax []float64
	for rep := range cfg.reps {
		if err := b.ensureCached(b.bigPath); err != nil {
			return err
		}
		d, err := readSeq(ck, b.bigOff, size, buf)
		if err != nil {
			return err
		}
		direct = append(direct, d)

		m, err := b.mount(b.bigPath)
		if err != nil {
			return err
		}
		if rep == 0 {
			b.note("FUSE bdi read_ahead_kb of the mount: %s (the kernel's readahead window; FUSE reads arrive in requests up to min(that, max_pages))", bdiReadAhead(m.dir))
		}
		m.startSampling()
		c, h, h3, err := b.readTensor(m, size, buf, rep == 0)
		peak := m.stopSampling()
		if uerr := m.unmount(); err == nil {
			err = uerr
		}
		if err != nil {
			return err
		}
		cold, hot, third = append(cold, c), append(hot, h), append(third, h3)
		rssAfter = append(rssAfter, mb(m.rssKB))
		rssMax = append(rssMax, mb(peak))
	}
	ref := mbps(size, medianDur(direct))
	what := fmt.Sprintf("seq read %s tensor, %s reads", sizeName(size), sizeName(int64(cfg.readSize)))
	refWhat := "pread of the same range of the checkpoint (page cache)"
	b.add(row{section: "1", what: what + ", cold (1st read after mount)", ours: mbps(size, medianDur(cold)), unit: "MB/s", refWhat: refWhat, ref: ref, kind: rate, barMin: 0.3})
	b.add(row{section: "1", what: what + ", hot (read again)", ours: mbps(size, medianDur(hot)), unit: "MB/s", refWhat: refWhat, ref: ref, kind: rate, barMin: 0.6})
	b.add(row{section: "1", what: what + ", hot, 3rd read (pages already on the active LRU)", ours: mbps(size, medianDur(third)), unit: "MB/s", refWhat: refWhat, ref: ref, kind: rate})

	if err := b.numpyRows(); err != nil {
		return err
	}

	// The memory rows cover the Go reads above (numpy's mount adds its own
	// samples through numpyRows).
	rssMax = append(rssMax, b.bigRSSAt)
	ref2, err := b.parseRSSMB(b.bigPath)
	if err != nil {
		return err
	}
	b.add(row{section: "1", what: fmt.Sprintf("daemon RssAnon after mount (%s-tensor checkpoint)", sizeName(size)), ours: median(rssAfter), unit: "MB", refWhat: "a process that only ran safetensors.Open on it", ref: ref2, kind: cost})
	b.add(row{section: "1", what: fmt.Sprintf("daemon max RssAnon while serving the %s tensor (Go + numpy reads)", sizeName(size)), ours: maxOf(rssMax), unit: "MB", refWhat: "a process that only ran safetensors.Open on it", ref: ref2, kind: cost, absMax: 64})
	return nil
}

func maxOf(xs []float64) float64 {
	m := 0.0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// readTensor reads the tensor file through the mount three times: cold,
// hot, and hot once the second read has moved its pages to the active LRU.
// With verify it then compares every byte with the checkpoint (untimed).
func (b *bench) readTensor(m *mount, size int64, buf []byte, verify bool) (cold, hot, third time.Duration, err error) {
	f, err := os.Open(keyPath(m.dir, b.bigKey))
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Size() != size {
		return 0, 0, 0, fmt.Errorf("%s: size %v, want %d (%v)", f.Name(), st.Size(), size, err)
	}
	var ds [3]time.Duration
	for i := range ds {
		if ds[i], err = readSeq(f, 0, size, buf); err != nil {
			return 0, 0, 0, err
		}
	}
	if verify {
		err = sameBytes(f, 0, b.bigPath, b.bigOff, size)
	}
	return ds[0], ds[1], ds[2], err
}

// sameBytes compares a range of a through the mount with the checkpoint.
func sameBytes(f *os.File, off int64, ckpt string, ckOff, size int64) error {
	g, err := os.Open(ckpt)
	if err != nil {
		return err
	}
	defer g.Close()
	x, y := make([]byte, 1<<20), make([]byte, 1<<20)
	for done := int64(0); done < size; {
		n := min(int64(len(x)), size-done)
		if _, err := f.ReadAt(x[:n], off+done); err != nil && err != io.EOF {
			return err
		}
		if _, err := g.ReadAt(y[:n], ckOff+done); err != nil && err != io.EOF {
			return err
		}
		if !bytes.Equal(x[:n], y[:n]) {
			return fmt.Errorf("%s differs from the checkpoint in [%d, %d)", f.Name(), done, done+n)
		}
		done += n
	}
	return nil
}
