package checkpoint

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// A compaction patches a shard in place when only bytes changed. An open
// file view (FileView) may still read the old bytes of those very ranges
// from the shard's mapping, or the whole file through the kernel
// (passthrough): patched under it, its reader would see part of the old
// version and part of the new. Such a shard is written instead as a copy
// of the file with the patches applied, renamed over it: the same bytes
// the in-place patch would leave (so every view made since is still
// right), through the same prepare, commit record and install as any
// rewrite, while the old inode, mapped and open, keeps the old bytes for
// the readers that have it. It costs a copy of the file (kernel-side,
// copy_file_range), only while such a reader is open.

// keepViews moves from p.inPlace to p's replacements every shard an open
// view would see patched. The caller holds persistMu; p.s is the
// compaction's snapshot.
func (c *Checkpoint) keepViews(s *snapshot, p *pending) {
	c.mu.RLock()
	fs := c.files
	c.mu.RUnlock()
	if fs == nil || len(p.inPlace) == 0 {
		return
	}
	kept := make([]int, 0, len(p.inPlace))
	for _, i := range p.inPlace {
		sh := c.shards[i] // persistMu: nothing replaces it meanwhile
		if !fs.wouldTear(i, sh.cur, s.shards[i].tensors) {
			kept = append(kept, i)
			continue
		}
		r := patchedCopy(sh.name, sh.cur.file, shardPatches(sh, &s.shards[i]))
		r.file = i
		p.reps = append(p.reps, r)
		p.shardOf = append(p.shardOf, i)
	}
	p.inPlace = kept
}

// wouldTear reports whether patching shard i's file m in place with the
// edited chunks of ts would change bytes an open view reads from it.
func (s *FileSet) wouldTear(i int, m *mapping, ts []snapTensor) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for v := range s.views {
		if v.shard != i || v.cur != m {
			continue
		}
		for _, st := range ts {
			if len(st.data.chunks) == 0 {
				continue
			}
			if v.clean {
				return true
			}
			vc := v.contents[st.id]
			if vc == nil || vc.ref != m || vc.src < 0 {
				continue
			}
			for idx := range st.data.chunks {
				if _, over := vc.chunks[idx]; !over && idx*chunkSize < int64(len(vc.base)) {
					return true
				}
			}
		}
	}
	return false
}

// patchedCopy replaces the shard name (below the checkpoint's directory)
// with a copy of src with ps written over it.
func patchedCopy(name string, src *safetensors.File, ps []patch) *replacement {
	return &replacement{
		name: name,
		hdr:  func(f *os.File, size int64) int64 { return headerLengthOf(f, size) },
		write: func(f *os.File) (int64, error) {
			if err := copyWhole(f, src.Fd(), src.Size); err != nil {
				return 0, err
			}
			if err := writePatches(f, ps); err != nil {
				return 0, err
			}
			return src.Size, nil
		},
		check: func(f *os.File, n int64) error {
			if _, err := safetensors.ReadHeader(f, n); err != nil {
				return fmt.Errorf("the patched copy does not validate: %w", err)
			}
			return nil
		},
	}
}

// copyWhole copies src[0, size) to dst[0, size), kernel-side when the
// file systems allow (copy_file_range), else through a buffer.
func copyWhole(dst, src *os.File, size int64) error {
	var done int64
	err := control(src, func(sfd int) error {
		return control(dst, func(dfd int) error {
			for done < size {
				in, out := done, done
				n, err := unix.CopyFileRange(sfd, &in, dfd, &out, int(min(size-done, 1<<30)), 0)
				if err == unix.EINTR {
					continue
				}
				if err != nil || n == 0 {
					return errNoCFR
				}
				done += int64(n)
			}
			return nil
		})
	})
	if err == nil {
		return nil
	}
	n, err := io.Copy(io.NewOffsetWriter(dst, done), io.NewSectionReader(src, done, size-done))
	if err == nil && n != size-done {
		err = fmt.Errorf("copying %s: %d of %d bytes: %w", src.Name(), done+n, size, io.ErrUnexpectedEOF)
	}
	return err
}

var errNoCFR = fmt.Errorf("copy_file_range did not copy")
