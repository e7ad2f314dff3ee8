package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// errStaleLog: a log that does not belong to the checkpoint as it is now.
// It was moved aside, the checkpoint left as it is.
var errStaleLog = errors.New("log does not match the checkpoint")

// setAside renames a log that must not be applied out of the way, so the
// checkpoint can be used again but the edits it holds are not destroyed.
func setAside(lpath, path, why string) error {
	stale, err := renameAside(lpath, fmt.Sprintf("%s.stale-%d", lpath, time.Now().Unix()))
	if err != nil {
		return fmt.Errorf("%s: %w (%s), and moving the log %s aside failed: %v", path, errStaleLog, why, lpath, err)
	}
	return fmt.Errorf("%s: %w: %s; the checkpoint was left as it is and the log moved to %s (open the checkpoint again to use it as it is; the log holds the edits that were not applied)", path, errStaleLog, why, stale)
}

// renameAside renames src to dst, or dst-2, dst-3... if taken: never over
// an existing file.
func renameAside(src, dst string) (string, error) {
	for i := 1; ; i++ {
		name := dst
		if i > 1 {
			name = fmt.Sprintf("%s-%d", dst, i)
		}
		err := renameNoReplace(src, name)
		if err == nil {
			return name, syncDir(filepath.Dir(name))
		}
		if !errors.Is(err, fs.ErrExist) || i >= 1000 {
			return "", err
		}
	}
}

func removeSynced(name string) error {
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return syncDir(filepath.Dir(name))
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
