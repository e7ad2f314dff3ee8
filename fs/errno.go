package fs

import (
	"context"
	"errors"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"

	"github.com/safejaxfs/safejaxfs/fs/namespace"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
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

// nsErrno maps a change the namespace refused to the errno rename(2),
// unlink(2) and friends give for it; an error from the checkpoint (the
// change's one fallible step) as editErrno does, and an errno returned by
// a caller's own check as it is.
func nsErrno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, namespace.ErrNotExist), errors.Is(err, tree.ErrNotInTree):
		return syscall.ENOENT
	case errors.Is(err, tree.ErrExist), errors.Is(err, tree.ErrReserved):
		return syscall.EEXIST
	case errors.Is(err, tree.ErrNotDir):
		return syscall.ENOTDIR
	case errors.Is(err, tree.ErrIsDir):
		return syscall.EISDIR
	case errors.Is(err, tree.ErrNotEmpty):
		return syscall.ENOTEMPTY
	case errors.Is(err, tree.ErrInvalidName), errors.Is(err, tree.ErrIntoSelf):
		return syscall.EINVAL
	case errors.Is(err, tree.ErrRoot):
		return syscall.EBUSY
	}
	return editErrno(err)
}
