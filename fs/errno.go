package fs

import (
	"context"
	"errors"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// toErrno turns an error from the layers below into the errno a FUSE client
// sees. The errno is all a client gets, so the daemon logs the full message
// where it matters.
func toErrno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.Canceled):
		// The request was interrupted (go-fuse's answer for that).
		return syscall.EINTR
	case errors.Is(err, checkpoint.ErrNotFound):
		return syscall.ENOENT
	case errors.Is(err, checkpoint.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, checkpoint.ErrRemote):
		// Whatever broke underneath (a network errno, a changed object),
		// for the reader it is an I/O error; the log has the reason.
		return syscall.EIO
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return fs.ToErrno(err)
}
