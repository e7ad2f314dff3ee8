package fs

import (
	"context"
	"errors"
	"sync"
	"syscall"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// writeHandle is a tensor opened for writing: its close must check the
// tensor ended at its size and persist. A refusal sticks to the handle:
// every close of a duplicate of the descriptor reports it (numpy's tofile
// closes a dup first and ignores that error; the user must see it at the
// final close).
type writeHandle struct {
	mu    sync.Mutex
	errno syscall.Errno
}

func (h *writeHandle) fail(errno syscall.Errno) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	if errno != 0 {
		h.errno = errno
	}
	return h.errno
}

// sync persists everything pending and turns a failure into the errno the
// caller sees, logging the full reason (the errno alone cannot carry it) and
// keeping it for `safejaxfs unmount` to print.
func (f *FS) sync(ctx context.Context) syscall.Errno {
	if err := f.ck.Sync(); err != nil {
		f.fail(err)
		return syscall.EIO
	}
	f.lastErr.Store(nil)
	return 0
}

// fail records an error for the log and the error xattr on the root.
func (f *FS) fail(err error) {
	f.logf("write-back: %v", err)
	msg := err.Error()
	f.lastErr.Store(&msg)
}

// editErrno maps a refused edit to the errno that says most about it.
func editErrno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, checkpoint.ErrSize):
		return syscall.EFBIG
	case errors.Is(err, checkpoint.ErrExists):
		return syscall.EEXIST
	case errors.Is(err, checkpoint.ErrInvalid):
		return syscall.EINVAL
	}
	return toErrno(err)
}
