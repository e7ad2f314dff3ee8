package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// The system calls persistence makes, each asking the test hooks first
// (crashHooks.sys) so that tests can make any of them fail as the kernel
// would, and each reaching files through the checkpoint's directory.

// syncFile fsyncs f (name below the directory, for the hooks and messages).
func syncFile(f *os.File, name string, h *crashHooks) error {
	if err := h.sys(opSync, name); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", f.Name(), err)
	}
	return nil
}

// syncData fdatasyncs f.
func syncData(f *os.File, name string, h *crashHooks) error {
	if err := h.sys(opSync, name); err != nil {
		return err
	}
	if err := control(f, unix.Fdatasync); err != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
	}
	return nil
}

// syncDirOf fsyncs the directory holding name.
func syncDirOf(d *cdir, name string, h *crashHooks) error {
	if err := h.sys(opSyncDir, name); err != nil {
		return err
	}
	return d.syncDirOf(name)
}

// removeSynced removes name below d, durably; a name already gone is fine.
func removeSynced(d *cdir, name string, h *crashHooks) error {
	if err := h.sys(opRemove, name); err != nil {
		return err
	}
	if err := d.remove(name); err != nil {
		return err
	}
	return syncDirOf(d, name, h)
}

// splitName splits a name below the directory into its directory part
// (with a trailing slash, or "") and its last component.
func splitName(name string) (dir, base string) { return path.Split(name) }

// setAside renames a log that must not be applied out of the way, keeping
// the edits it holds; it returns the new name (below d).
func setAside(d *cdir, lname string) (string, error) {
	return renameAside(d, lname, fmt.Sprintf("%s.stale-%d", lname, time.Now().Unix()))
}

// renameAside renames src to dst, or dst-2, dst-3... if taken: never over
// an existing file.
func renameAside(d *cdir, src, dst string) (string, error) {
	for i := 1; ; i++ {
		name := dst
		if i > 1 {
			name = fmt.Sprintf("%s-%d", dst, i)
		}
		err := d.renameNoReplace(src, name)
		if err == nil {
			return name, d.syncDirOf(name)
		}
		if !errors.Is(err, fs.ErrExist) || i >= 1000 {
			return "", err
		}
	}
}

// pwritev writes segs contiguously at off with as few system calls as the
// iovec limit allows, retrying short writes.
func pwritev(f *os.File, segs [][]byte, off int64) error {
	const iovMax = 1024
	segs = slices.Clone(segs)
	return control(f, func(fd int) error {
		for len(segs) > 0 {
			batch := segs[:min(len(segs), iovMax)]
			n, err := unix.Pwritev(fd, batch, off)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			if n == 0 {
				return io.ErrShortWrite
			}
			off += int64(n)
			for n > 0 {
				if n >= len(segs[0]) {
					n -= len(segs[0])
					segs = segs[1:]
					continue
				}
				segs[0] = segs[0][n:]
				n = 0
			}
			for len(segs) > 0 && len(segs[0]) == 0 {
				segs = segs[1:]
			}
		}
		return nil
	})
}
