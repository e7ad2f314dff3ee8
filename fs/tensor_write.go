package fs

import (
	"context"
	"encoding/json"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

var (
	_ = (fs.NodeWriter)((*tensorNode)(nil))
	_ = (fs.NodeSetattrer)((*tensorNode)(nil))
	_ = (fs.NodeFlusher)((*tensorNode)(nil))
	_ = (fs.NodeFsyncer)((*tensorNode)(nil))
	_ = (fs.NodeSetxattrer)((*tensorNode)(nil))
	_ = (fs.NodeRemovexattrer)((*tensorNode)(nil))
)

func isWrite(flags uint32) bool {
	return flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0
}

// Open keeps the page cache across opens: tensor bytes change only through
// this mount, and the mount invalidates what it changes. No direct I/O, so
// clients can mmap tensor files (np.memmap, safe_open).
func (t *tensorNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if !isWrite(flags) {
		return nil, fuse.FOPEN_KEEP_CACHE, 0
	}
	if t.fsys.ck.ReadOnly() {
		return nil, 0, syscall.EROFS
	}
	if flags&syscall.O_TRUNC != 0 {
		if err := t.fsys.ck.Truncate(t.id, 0); err != nil {
			return nil, 0, editErrno(err)
		}
	}
	return &writeHandle{}, fuse.FOPEN_KEEP_CACHE, 0
}

func (t *tensorNode) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if err := t.fsys.ck.WriteAt(t.id, data, off); err != nil {
		t.fsys.logf("write: %v", err)
		return 0, editErrno(err)
	}
	t.fsys.changedRange(t.id, tensorIno(t.id), off, int64(len(data)))
	return uint32(len(data)), 0
}

// Setattr takes truncation (cp, O_TRUNC, ftruncate). Mode, owner and times
// are not stored in a checkpoint: accepted and ignored, so cp -p and tar
// still work.
func (t *tensorNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok {
		if err := t.fsys.ck.Truncate(t.id, int64(size)); err != nil {
			return editErrno(err)
		}
		t.fsys.changed(t.id, tensorIno(t.id))
	}
	return t.fsys.fillTensorAttr(&out.Attr, t.id)
}

// Flush (close) of a handle opened for writing checks the tensor ended at
// its size and persists. Every write handle does this, not only those that
// wrote: a truncate at open reaches us without a handle.
func (t *tensorNode) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	h, ok := fh.(*writeHandle)
	if !ok {
		return 0
	}
	if err := t.fsys.ck.EndWrite(t.id); err != nil {
		t.fsys.fail(err)
		t.fsys.changed(t.id, 0)
		return h.fail(syscall.EINVAL)
	}
	return h.fail(t.fsys.sync(ctx))
}

func (t *tensorNode) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	return t.fsys.sync(ctx)
}

// Setxattr on dtype or shape reinterprets the tensor's bytes; the byte size
// must stay the same.
func (t *tensorNode) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return t.fsys.setxattr(t.id, attr, data)
}

func (t *tensorNode) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return t.fsys.removexattr(attr)
}

func (f *FS) setxattr(id checkpoint.ID, attr string, data []byte) syscall.Errno {
	if f.ck.ReadOnly() {
		return syscall.EROFS
	}
	info, ok := f.ck.Info(id)
	if !ok {
		return syscall.ENOENT
	}
	dtype, shape := info.DType, info.Shape
	switch attr {
	case xattrDType:
		d, ok := safetensors.ParseDType(string(data))
		if !ok {
			f.logf("setxattr %s on %q: unknown dtype %q", attr, info.Key, data)
			return syscall.EINVAL
		}
		dtype = d
	case xattrShape:
		shape = nil
		if err := json.Unmarshal(data, &shape); err != nil || shape == nil {
			f.logf("setxattr %s on %q: %q is not a JSON array of non-negative integers", attr, info.Key, data)
			return syscall.EINVAL
		}
	case xattrKey, xattrShard:
		// Renaming is what mv is for; a key that disagrees with the path
		// would break the key-to-path rules. A tensor stays in its shard.
		return syscall.EPERM
	default:
		return syscall.ENOTSUP
	}
	if err := f.ck.Reshape(id, dtype, shape); err != nil {
		f.logf("setxattr %s on %q: %v", attr, info.Key, err)
		return syscall.EINVAL
	}
	f.changed(id, 0)
	return 0
}

func (f *FS) removexattr(attr string) syscall.Errno {
	switch attr {
	case xattrKey, xattrDType, xattrShape, xattrShard:
		return syscall.EPERM
	}
	return syscall.ENODATA
}
