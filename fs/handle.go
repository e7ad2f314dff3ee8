package fs

import (
	"context"
	"errors"
	"sync"
	"syscall"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// writeHandle is a tensor opened for writing (one open file description:
// shared by dup, dup2 and fork, closed once per descriptor). A truncate
// through it (O_TRUNC at open, ftruncate to another size) starts a rewrite
// that belongs to it alone: its writes go to the rewrite, its reads come
// back from it, and only its own close (or fsync) at exactly the tensor's
// size makes the rewrite the tensor's bytes. Other descriptors, opened
// before or after, neither see it persisted nor decide it.
type writeHandle struct {
	mu     sync.Mutex
	staged *checkpoint.Staged // nil unless a rewrite is under way
	// changes counts writes and truncates of the rewrite; shown is its
	// value when a refused close last dropped the rewrite from the
	// kernel's cache (so Release need not do it again).
	changes, shown uint64
	// fresh: the rewrite is the O_TRUNC of the open and nothing else yet
	// (see truncateAtOpen, rewriteForRead, commit).
	fresh bool
	// owner opened the handle: only its closes decide (owner.go).
	owner opener
}

// changedRewrite records a write or truncate of the rewrite.
func (h *writeHandle) changedRewrite() {
	h.mu.Lock()
	h.changes++
	h.fresh = false
	h.mu.Unlock()
}

// rewriteForRead is the rewrite a read through h reads, if any. A fresh
// one reads as the tensor's size of zeros, and becomes that: a file
// truncated and grown back to its size (what np.memmap(mode='w+') expects:
// it opens with O_TRUNC, finds the file already as long as the array,
// since stat shows the tensor, maps it and closes the file, and its
// writes through the mapping read each page first). A read of a file just
// truncated finds nothing otherwise, so nothing else reads one.
func (h *writeHandle) rewriteForRead(f *FS, id checkpoint.ID) *checkpoint.Staged {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fresh {
		if info, ok := f.ck.Info(id); ok && h.staged.Truncate(info.Size) == nil {
			h.fresh = false
			h.changes++
		}
	}
	return h.staged
}

// newWriteHandle opens a write handle on tensor id; its Release must call
// f.writers.add(id, -1).
func (f *FS) newWriteHandle(ctx context.Context, id checkpoint.ID) *writeHandle {
	f.writers.add(id, 1)
	return &writeHandle{owner: openerOf(ctx)}
}

// rewrite returns the handle's rewrite in progress, if any.
func (h *writeHandle) rewrite() *checkpoint.Staged {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.staged
}

// truncate applies a size change of tensor id through h (nil: by path,
// with no open file). A plain file created in the mount follows its size;
// a tensor truncated to the size it has is unchanged; any other size
// starts (or continues) h's rewrite.
func (f *FS) truncate(h *writeHandle, id checkpoint.ID, size int64) error {
	if h != nil {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.staged != nil {
			h.changes++
			h.fresh = false
			return h.staged.Truncate(size)
		}
	}
	if f.ck.Growable(id) {
		return f.ck.Truncate(id, size)
	}
	if info, ok := f.ck.Info(id); ok && info.Size == size {
		return nil
	}
	if h == nil {
		// Nothing could ever bring it back to its size.
		return f.ck.Truncate(id, size)
	}
	s, err := f.ck.Stage(id, size)
	if err != nil {
		return err
	}
	h.staged = s
	return nil
}

// truncateAtOpen is O_TRUNC: it starts h's rewrite as a fresh one, no
// attempt at new bytes yet, which a close with nothing written leaves
// alone (the shell's `: > tensor`, np.memmap(mode='w+'): see commit). An
// ftruncate to another size is an attempt: `truncate -s 0 tensor` (which
// opens the file without O_TRUNC and ftruncates it) asked for an empty
// file, which a tensor cannot be, and its close fails rather than report
// a change that was not made.
func (f *FS) truncateAtOpen(h *writeHandle, id checkpoint.ID) error {
	if err := f.truncate(h, id, 0); err != nil {
		return err
	}
	h.mu.Lock()
	h.fresh = h.staged != nil
	h.mu.Unlock()
	return nil
}

// commit ends h's rewrite if it has the tensor's size: the tensor takes
// its bytes. Otherwise the rewrite stays open (a later close through a
// dup may still complete it) and the error says why. A fresh rewrite
// (O_TRUNC, nothing written) is no attempt at new bytes yet: it stays
// open and the close succeeds (np.memmap(mode='w+') closes its file
// before it writes through the mapping); if nothing follows, the last
// close drops it and the tensor keeps its bytes.
func (h *writeHandle) commit() (committed bool, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.staged == nil || h.fresh {
		return false, nil
	}
	if err := h.staged.CommitSync(); err != nil {
		h.shown = h.changes
		return false, err
	}
	h.staged.Close()
	h.staged = nil
	return true, nil
}

// abandon drops a rewrite that never reached the tensor's size. dropped:
// there was one; fresh: nothing was ever written to it; stale: the
// kernel's cache may still hold some of it (it changed after the last
// refused close dropped it from the cache).
func (h *writeHandle) abandon() (dropped, fresh, stale bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.staged == nil {
		return false, false, false
	}
	h.staged.Close()
	h.staged = nil
	return true, h.fresh, h.changes != h.shown
}

// sync persists everything pending and turns a failure into the errno the
// caller sees, logging the full reason (the errno alone cannot carry it) and
// keeping it for `safejaxfs unmount` to print.
func (f *FS) sync(ctx context.Context) syscall.Errno {
	if err := f.ck.Sync(); err != nil {
		f.fail(err)
		return writeBackErrno(err)
	}
	f.lastErr.Store(nil)
	return 0
}

// syncAfterCommit persists what else is pending after a close made its own
// edit durable (see flushUpload): a failure here is not the closed file's,
// so it is recorded and logged, not returned.
func (f *FS) syncAfterCommit(ctx context.Context) {
	if err := f.ck.Sync(); err != nil {
		f.fail(err)
	}
}

// closeErrno is the errno of a close whose edit was not made: not durable
// (the errno of what failed: ENOSPC, EIO...), the checkpoint changed by
// another program (the edits went to a recovery file: EIO), or refused
// (EINVAL; EFBIG past the header limit).
func closeErrno(err error) syscall.Errno {
	switch {
	case errors.Is(err, checkpoint.ErrNotDurable), errors.Is(err, checkpoint.ErrChanged):
		return writeBackErrno(err)
	case errors.Is(err, checkpoint.ErrHeaderLimit):
		return syscall.EFBIG
	case errors.Is(err, checkpoint.ErrReadOnly):
		return syscall.EROFS
	}
	return syscall.EINVAL
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

// writeBackErrno is the errno of a failed persist: the one the file system
// under the checkpoint gave (ENOSPC, EDQUOT, EROFS, ...), so the user
// learns what to fix; EIO when there is none.
func writeBackErrno(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) && e != 0 {
		return e
	}
	return syscall.EIO
}
