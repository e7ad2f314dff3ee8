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

	type reads struct{ cold, hot, mmap []time.Duration }
	var direct, directMap []time.Duration
	var clean, edited reads
	for range cfg.reps {
		if err := b.ensureCached(b.bigPath); err != nil {
			return err
		}
		d, err := readSeq(ck, 0, size, buf)
		if err != nil {
			return err
		}
		direct = append(direct, d)
		if d, err = walkMap(b.bigPath, size, buf); err != nil {
			return err
		}
		directMap = append(directMap, d)

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
				f, err := os.Open(view)
				if err != nil {
					return err
				}
				c, err := readSeq(f, 0, size, buf)
				if err == nil {
					var h time.Duration
					if h, err = readSeq(f, 0, size, buf); err == nil {
						r.cold, r.hot = append(r.cold, c), append(r.hot, h)
					}
				}
				f.Close()
				if err != nil {
					return err
				}
				mm, err := walkMap(view, size, buf)
				if err != nil {
					return err
				}
				r.mmap = append(r.mmap, mm)
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
	ref, refMap := mbps(size, medianDur(direct)), mbps(size, medianDur(directMap))
	refWhat := fmt.Sprintf("pread of the checkpoint file, %s reads (page cache)", sizeName(int64(cfg.readSize)))
	refMapWhat := "the same walk of an mmap of the checkpoint file (page cache)"
	what := fmt.Sprintf("/.files/ read of the %s checkpoint, %s reads", sizeName(size), sizeName(int64(cfg.readSize)))
	for _, r := range []struct {
		name string
		r    reads
		bar  float64
	}{{"unedited", clean, 0.9}, {"after one tensor edit", edited, 0.5}} {
		b.add(row{section: filesSection, what: what + ", " + r.name + ", 1st read after mount", ours: mbps(size, medianDur(r.r.cold)), unit: "MB/s", refWhat: refWhat, ref: ref, kind: rate, barMin: r.bar})
		b.add(row{section: filesSection, what: what + ", " + r.name + ", read again", ours: mbps(size, medianDur(r.r.hot)), unit: "MB/s", refWhat: refWhat, ref: ref, kind: rate, barMin: r.bar})
		b.add(row{section: filesSection, what: "/.files/ mmap of the checkpoint, every page copied out, " + r.name, ours: mbps(size, medianDur(r.r.mmap)), unit: "MB/s", refWhat: refMapWhat, ref: refMap, kind: rate, barMin: r.bar})
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
