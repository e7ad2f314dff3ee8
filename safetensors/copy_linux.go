package safetensors

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

var errCFRUnsupported = errors.New("copy_file_range unsupported")

// copyFileRange copies size bytes at off in src to dst's current position in
// the kernel. It returns errCFRUnsupported (with what it did copy) when the
// pair of files cannot use copy_file_range, so the caller falls back to
// reading, and io.ErrUnexpectedEOF when src ends early.
func copyFileRange(dst, src *os.File, off, size int64) (int64, error) {
	// SyscallConn rather than Fd: Fd would switch the descriptors to
	// blocking mode for the life of the files.
	sc, err := src.SyscallConn()
	if err != nil {
		return 0, errCFRUnsupported
	}
	dc, err := dst.SyscallConn()
	if err != nil {
		return 0, errCFRUnsupported
	}
	var done int64
	var opErr error
	cerr := sc.Control(func(sfd uintptr) {
		derr := dc.Control(func(dfd uintptr) {
			for done < size {
				in := off + done
				// Capped per call like the standard library does, because
				// some kernels reject lengths near the type's limit.
				n, err := unix.CopyFileRange(int(sfd), &in, int(dfd), nil, int(min(size-done, 1<<30)), 0)
				if err == unix.EINTR {
					continue
				}
				if err != nil {
					switch err {
					case unix.EXDEV, unix.ENOSYS, unix.EINVAL, unix.EOPNOTSUPP, unix.EBADF, unix.EPERM:
						// EBADF: dst opened O_APPEND. EPERM: immutable or
						// a filesystem that refuses (seen on some FUSE
						// and overlay mounts). Reading still works.
						opErr = errCFRUnsupported
					default:
						opErr = &os.SyscallError{Syscall: "copy_file_range", Err: err}
					}
					return
				}
				if n == 0 {
					// 0 before size: either src is short or the filesystem
					// silently does not support it (procfs-like files).
					if done == 0 {
						opErr = errCFRUnsupported
					} else {
						opErr = io.ErrUnexpectedEOF
					}
					return
				}
				done += int64(n)
			}
		})
		if derr != nil {
			opErr = errCFRUnsupported
		}
	})
	if cerr != nil && opErr == nil {
		opErr = errCFRUnsupported
	}
	return done, opErr
}
