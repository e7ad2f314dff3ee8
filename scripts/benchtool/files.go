package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// filesSection is where the rows of the mount's files directory go.
const filesSection = "9"

// filesReads is section 9: the checkpoint read whole as a file through
// the mount's /.files/ against the checkpoint file itself (page cache),
// both in the same run: sequential reads and a walk of an mmap, unedited
// (the kernel reads the checkpoint itself, FUSE passthrough, when the
// daemon runs as root) and after one tensor edit (the daemon serves the
// file: header and unedited runs from the mapping, the edited chunk from
// memory). The edit rewrites bytes with the values they have, so the
// checkpoint stays as it was for the sections after this one.
func (b *bench) filesReads() error {
	cfg := b.cfg
	st, err := os.Stat(b.bigPath)
	if err != nil {
		return err
	}
	size := st.Size()
	buf := make([]byte, cfg.readSize)
	ck, err := os.Open(b.bigPath)
	if err != nil {
		return err
	}
	defer ck.Close()

	// Each of our reads is timed right after the same read of the
	// checkpoint itself, and each row is compared with those: on a busy
	// machine the page cache's own speed moves by half from minute to
	// minute.
	type reads struct{ cold, hot, mmap, refCold, refHot, refMap []time.Duration }
	var clean, edited reads
	direct := func(ref *[]time.Duration) error {
		d, err := readSeq(ck, 0, size, buf)
		*ref = append(*ref, d)
		return err
	}
	for range cfg.reps {
		if err := b.ensureCached(b.bigPath); err != nil {
			return err
		}
		m, err := b.mount(b.bigPath)
		if err != nil {
			return err
		}
		view := filepath.Join(m.dir, ".files", filepath.Base(b.bigPath))
		err = func() error {
			for _, r := range []*reads{&clean, &edited} {
				if r == &edited {
					if err := rewriteSame(keyPath(m.dir, b.bigKey), 1<<20, 4096); err != nil {
						return err
					}
				}
				// A loader maps the file first (safe_open): a walk of
				// the mapping while this version has no cached page,
				// then reads through the file.
				d, err := walkMap(b.bigPath, size, buf)
				if err != nil {
					return err
				}
				mm, err := walkMap(view, size, buf)
				if err != nil {
					return err
				}
				r.refMap, r.mmap = append(r.refMap, d), append(r.mmap, mm)
				if r == &edited {
					// Another edit: a version with nothing cached again.
					if err := rewriteSame(keyPath(m.dir, b.bigKey), 1<<20, 4096); err != nil {
						return err
					}
				}
				f, err := os.Open(view)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := direct(&r.refCold); err != nil {
					return err
				}
				c, err := readSeq(f, 0, size, buf)
				if err != nil {
					return err
				}
				if err := direct(&r.refHot); err != nil {
					return err
				}
				h, err := readSeq(f, 0, size, buf)
				if err != nil {
					return err
				}
				r.cold, r.hot = append(r.cold, c), append(r.hot, h)
			}
			// Untimed: the edited file is still the checkpoint's bytes.
			f, err := os.Open(view)
			if err != nil {
				return err
			}
			defer f.Close()
			return sameBytes(f, 0, b.bigPath, 0, size)
		}()
		if uerr := m.unmount(); err == nil {
			err = uerr
		}
		if err != nil {
			return err
		}
	}
	refWhat := fmt.Sprintf("pread of the checkpoint file, %s reads (page cache), just before", sizeName(int64(cfg.readSize)))
	refMapWhat := "the same walk of an mmap of the checkpoint file (page cache), just before"
	what := fmt.Sprintf("/.files/ read of the %s checkpoint, %s reads", sizeName(size), sizeName(int64(cfg.readSize)))
	for _, r := range []struct {
		name string
		r    reads
		bar  float64
	}{{"unedited", clean, 0.9}, {"after one tensor edit", edited, 0.5}} {
		b.add(row{section: filesSection, what: what + ", " + r.name + ", 1st read of the version", ours: mbps(size, medianDur(r.r.cold)), unit: "MB/s", refWhat: refWhat, ref: mbps(size, medianDur(r.r.refCold)), kind: rate, barMin: r.bar})
		b.add(row{section: filesSection, what: what + ", " + r.name + ", read again", ours: mbps(size, medianDur(r.r.hot)), unit: "MB/s", refWhat: refWhat, ref: mbps(size, medianDur(r.r.refHot)), kind: rate, barMin: r.bar})
		b.add(row{section: filesSection, what: "/.files/ mmap of the checkpoint, every page copied out, 1st after mount or edit, " + r.name, ours: mbps(size, medianDur(r.r.mmap)), unit: "MB/s", refWhat: refMapWhat, ref: mbps(size, medianDur(r.r.refMap)), kind: rate, barMin: r.bar})
	}
	return nil
}

// walkMap maps path and copies it out len(buf) bytes at a time (a reader
// of a mapped checkpoint touches every page once).
func walkMap(path string, size int64, buf []byte) (time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	t0 := time.Now()
	m, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, err
	}
	for off := 0; off < len(m); off += len(buf) {
		copy(buf, m[off:])
	}
	d := time.Since(t0)
	return d, unix.Munmap(m)
}

// rewriteSame writes n bytes at off of a tensor file with the bytes it
// has: an edit as far as the mount knows, no change to the checkpoint.
func rewriteSame(path string, off int64, n int) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		return err
	}
	if _, err := f.WriteAt(b, off); err != nil {
		return err
	}
	return nil
}
