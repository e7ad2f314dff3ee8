package fs

import (
	"context"
	"errors"
	"syscall"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// XattrSync, set on the mount root (safejaxfs sync), writes every edit
// back into the checkpoint files now instead of at unmount: a compaction
// of the log. Setting it returns once that is done, or fails with the
// errno of what failed (the reason in user.safejaxfs.error; ESTALE: the
// checkpoint was changed by another program, and the edits went to a
// recovery file). A setter that
// gives up (Ctrl-C on safejaxfs sync or unmount; see interruptFS) gets
// EINTR at once, and the write-back goes on: its outcome is logged, and a
// failure is in user.safejaxfs.error and the status, as any write-back's.
const XattrSync = "user.safejaxfs.sync"

// syncFor is the write-back XattrSync asks for, waited for while ctx lasts.
// The kernel waits for the answer to a request the daemon has read, even
// for an interrupted caller; ctx ends when the caller gives up
// (interruptFS), so answering then is what lets the caller go.
func (f *FS) syncFor(ctx context.Context) syscall.Errno {
	done := make(chan syscall.Errno, 1)
	f.writeBacks.Go(func() { done <- f.compact() })
	select {
	case errno := <-done:
		return errno
	case <-ctx.Done():
		f.logf("the write-back asked by safejaxfs sync or unmount goes on after its caller was interrupted")
		return syscall.EINTR
	}
}

// Wait waits for write-backs whose askers were interrupted (syncFor): the
// daemon calls it once unmounted, before its last write-back and exit.
func (f *FS) Wait() { f.writeBacks.Wait() }

func (f *FS) compact() syscall.Errno {
	if f.ck.ReadOnly() {
		return syscall.EROFS
	}
	if err := f.ck.Compact(); err != nil {
		f.fail(err)
		if errors.Is(err, checkpoint.ErrChanged) {
			// Another program changed the checkpoint: the edits went to
			// a recovery file instead. ESTALE tells safejaxfs unmount,
			// which then detaches as --force does (once it has the
			// recovery file's name) rather than keep a mount that takes
			// no more edits.
			return syscall.ESTALE
		}
		return writeBackErrno(err)
	}
	f.lastErr.Store(nil)
	return 0
}
