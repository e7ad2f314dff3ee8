package fs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

var (
	_ = (fs.NodeWriter)((*tensorNode)(nil))
	_ = (fs.NodeSetattrer)((*tensorNode)(nil))
	_ = (fs.NodeFlusher)((*tensorNode)(nil))
	_ = (fs.NodeFsyncer)((*tensorNode)(nil))
	_ = (fs.NodeSetxattrer)((*tensorNode)(nil))
	_ = (fs.NodeRemovexattrer)((*tensorNode)(nil))
	_ = (fs.NodeReleaser)((*tensorNode)(nil))
)

func isWrite(flags uint32) bool {
	return flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0
}

// Open keeps the page cache across opens: tensor bytes change only through
// this mount, and the mount invalidates what it changes. No direct I/O, so
// clients can mmap tensor files (np.memmap, safe_open). O_TRUNC (atomic
// with the open, see Mount) starts the new handle's rewrite.
func (t *tensorNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if t.fsys.consumed.has(t.id) {
		// Renamed into something else (doc_replace.go): the kernel
		// looks the name up again.
		return nil, 0, syscall.ESTALE
	}
	t.fsys.live.hold(t.id, &t.Inode, false)
	if !isWrite(flags) {
		return nil, fuse.FOPEN_KEEP_CACHE, 0
	}
	if t.fsys.ck.ReadOnly() {
		return nil, 0, syscall.EROFS
	}
	h := t.fsys.newWriteHandle(ctx, t.id)
	if flags&syscall.O_TRUNC != 0 {
		if err := t.fsys.truncateAtOpen(h, t.id); err != nil {
			t.fsys.writers.add(t.id, -1)
			t.fsys.logf("open: %v", err)
			return nil, 0, editErrno(err)
		}
	}
	return h, fuse.FOPEN_KEEP_CACHE, 0
}

func (t *tensorNode) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	h, _ := fh.(*writeHandle)
	if s := h.rewrite(); s != nil {
		// Nobody else sees a rewrite before it is committed: no
		// invalidation yet.
		if err := s.WriteAt(data, off); err != nil {
			t.fsys.logf("write: %v", err)
			return 0, editErrno(err)
		}
		h.changedRewrite()
		return uint32(len(data)), 0
	}
	if err := t.fsys.ck.WriteAt(t.id, data, off); err != nil {
		t.fsys.logf("write: %v", err)
		return 0, editErrno(err)
	}
	t.fsys.writers.wrote(t.id)
	t.fsys.changedRange(t.id, tensorIno(t.id), off, int64(len(data)))
	return uint32(len(data)), 0
}

// Setattr takes truncation (ftruncate; O_TRUNC comes with the open) and
// the mtime (touch, cp -p, rsync -a), kept beside the checkpoint after
// the mount (times.go).
// Mode and owner are not stored in a checkpoint: accepted and ignored, so
// cp -p and tar still work.
func (t *tensorNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	h, _ := fh.(*writeHandle)
	if size, ok := in.GetSize(); ok {
		if err := t.fsys.truncate(h, t.id, int64(size)); err != nil {
			t.fsys.fail(err)
			return editErrno(err)
		}
		if h != nil {
			t.fsys.writers.wrote(t.id)
		}
		if h.rewrite() == nil {
			t.fsys.changed(t.id, tensorIno(t.id))
		}
	}
	if mtime, ok := in.GetMTime(); ok {
		// rsync -a and make compare it.
		if err := t.fsys.ck.SetMTime(t.id, mtime); err != nil {
			return toErrno(err)
		}
	}
	return t.Getattr(ctx, fh, out)
}

// Flush (close of one descriptor) decides a rewrite of the handle: at the
// tensor's size it is committed; at another size the close fails with
// EINVAL and the rewrite stays open, since a dup of the descriptor may
// still complete it (the shell closes the original of a redirection
// before the command writes). A close that fails nothing persists what is
// committed.
func (t *tensorNode) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	h, ok := fh.(*writeHandle)
	if !ok {
		return 0
	}
	if !h.owner.decides(ctx) {
		// A copy of the descriptor that a forked process inherited: its
		// close decides nothing (owner.go).
		return 0
	}
	// Whatever was written through this file shows through the tensor's
	// other names once the close returns (notify.go).
	defer t.fsys.notify.settle()
	t.fsys.writers.flushed(t.id)
	committed, errno := t.fsys.commitRewrite(h, t.id)
	if errno != 0 {
		return errno
	}
	t.fsys.settle(t.id)
	if committed {
		// The rewrite is durable: this close succeeded, whatever else
		// is pending.
		t.fsys.syncAfterCommit(ctx)
		return 0
	}
	return t.fsys.sync(ctx)
}

// commitRewrite commits h's rewrite of tensor id, durably, if it has the
// right size: EINVAL, with the reason recorded, if not; the errno of what
// failed if it could not be made durable. Either way the tensor keeps its
// bytes and the rewrite stays open (a close through a dup may complete it).
func (f *FS) commitRewrite(h *writeHandle, id checkpoint.ID) (committed bool, errno syscall.Errno) {
	committed, err := h.commit()
	if err != nil {
		f.fail(err)
		// The kernel's cache of the file holds what was written, and
		// its size: the tensor does not.
		f.changed(id, 0)
		return false, closeErrno(err)
	}
	if committed {
		f.changed(id, tensorIno(id))
	}
	return committed, 0
}

// Release, the last close of the open file, commits a rewrite that has
// the tensor's size and no close committed (its owner closed first, and a
// process it handed the descriptor to finished writing: owner.go); it
// drops any other rewrite, and the tensor keeps its bytes. The kernel
// ignores what Release returns: a failure is logged.
func (t *tensorNode) Release(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	h, ok := fh.(*writeHandle)
	if !ok {
		return 0
	}
	if s := h.rewrite(); s != nil {
		if info, ok := t.fsys.ck.Info(t.id); ok && s.Size() == info.Size {
			if committed, _ := t.fsys.commitRewrite(h, t.id); committed {
				t.fsys.syncAfterCommit(ctx)
			}
		}
	}
	t.fsys.writers.add(t.id, -1)
	if dropped, fresh, stale := h.abandon(); dropped {
		if info, ok := t.fsys.ck.Info(t.id); ok && fresh {
			t.fsys.logf("tensor %q: opened with O_TRUNC, then closed with nothing written: the tensor keeps its previous bytes", info.Key)
		} else if ok {
			t.fsys.logf("tensor %q: a rewrite closed at the wrong size was dropped; the tensor keeps its previous bytes", info.Key)
		}
		// Only if the refused close did not already: an invalidation
		// while a reader's GETATTR is in flight makes the kernel drop
		// that reply and keep the size it had.
		if stale {
			t.fsys.changed(t.id, 0)
		}
	}
	return 0
}

// Fsync makes what is committed durable. A rewrite of the handle at the
// tensor's size is committed first (dd conv=fsync, then close); one at
// another size cannot be made durable and fails with EINVAL.
func (t *tensorNode) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	defer t.fsys.notify.settleFiles()
	if h, ok := fh.(*writeHandle); ok {
		if _, errno := t.fsys.commitRewrite(h, t.id); errno != 0 {
			return errno
		}
	}
	return t.fsys.sync(ctx)
}

// Setxattr on dtype or shape reinterprets the tensor's bytes; the byte size
// must stay the same.
func (t *tensorNode) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	t.fsys.live.hold(t.id, &t.Inode, false)
	errno := t.fsys.setxattr(t.id, attr, data)
	if errno == 0 && attr == xattrDType {
		t.fsys.viewListed(&t.Inode)
	}
	// The views show the new dtype and shape once setfattr returns (the
	// kernel holds the file meanwhile: notify.go).
	t.fsys.notify.settleFiles()
	return errno
}

func (t *tensorNode) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return t.fsys.removexattr(attr)
}

// removexattr: the user.safetensors.* attributes are the tensor's key,
// dtype, shape and shard, which a tensor always has: removing one is
// ignored and succeeds, as removing a read-only attribute can be, so that
// tools that mirror attributes (rsync -X from files without them, the
// temp file rsync writes) carry on. The tensor keeps them.
func (f *FS) removexattr(attr string) syscall.Errno {
	if errno := unsupportedXattr(attr); errno != 0 {
		return errno
	}
	switch attr {
	case xattrKey, xattrDType, xattrShape, xattrShard:
		return 0
	}
	return syscall.ENODATA
}
