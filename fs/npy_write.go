package fs

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/npy"
)

var (
	_ = (fs.NodeWriter)((*npyNode)(nil))
	_ = (fs.NodeSetattrer)((*npyNode)(nil))
	_ = (fs.NodeFlusher)((*npyNode)(nil))
	_ = (fs.NodeFsyncer)((*npyNode)(nil))
	_ = (fs.NodeReleaser)((*npyNode)(nil))
)

// Open for writing starts an upload; reading serves the view.
func (n *npyNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if !isWrite(flags) {
		return nil, fuse.FOPEN_KEEP_CACHE, 0
	}
	if n.fsys.ck.ReadOnly() {
		return nil, 0, syscall.EROFS
	}
	// A partial overwrite of a view (r+) edits the whole .npy: start from
	// the bytes the view shows.
	var buf []byte
	if id := n.tensor(); id != noTensor && flags&syscall.O_TRUNC == 0 {
		buf = n.fsys.npyBytes(id)
	}
	u := n.uploads.add(newUpload(buf, flags&syscall.O_TRUNC != 0))
	// Direct I/O: the upload's bytes are not the view's until close, so
	// they must not land in (or be served from) the view's page cache.
	return u, fuse.FOPEN_DIRECT_IO, 0
}

// npyBytes copies the whole view (for a read-write open of an existing view).
func (f *FS) npyBytes(id checkpoint.ID) []byte {
	h, info := f.npyViewInfo(id)
	if h == nil {
		return nil
	}
	b := append([]byte(nil), h...)
	segs, release, err := f.ck.Read(id, 0, int(info.Size))
	defer release()
	if err != nil {
		return nil
	}
	for _, s := range segs {
		b = append(b, s...)
	}
	return b
}

func (n *npyNode) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	return writeUpload(fh, data, off)
}

// Setattr truncates an upload; a view itself is replaced only by writing a
// whole .npy.
func (n *npyNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if errno := n.uploads.setattr(fh, in); errno != 0 {
		return errno
	}
	return n.Getattr(ctx, fh, out)
}

func (n *npyNode) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	return n.fsys.flushUpload(ctx, fh, n.commit)
}

func (n *npyNode) Release(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	n.uploads.release(fh)
	return 0
}

func (n *npyNode) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	return n.fsys.sync(ctx)
}

// commit turns an uploaded .npy into the tensor: replaces the viewed one, or
// creates the tensor this new .npy names.
func (n *npyNode) commit(b []byte) error {
	f := n.fsys
	info, err := npy.Parse(b)
	n.mu.Lock()
	defer n.mu.Unlock()
	key := ""
	var old checkpoint.Info
	if n.id != noTensor {
		var ok bool
		if old, ok = f.ck.Info(n.id); !ok {
			return fmt.Errorf("%s: the tensor was deleted meanwhile", n.base)
		}
		key = old.Key
	} else {
		f.mu.RLock()
		key = f.tree.ChildKey(n.dir, n.base)
		f.mu.RUnlock()
	}
	var dtype safetensors.DType
	switch {
	case errors.Is(err, npy.ErrAmbiguousVoid) && old.DType.Bits() == 8 && old.DType != safetensors.U8 && old.DType != safetensors.I8 && old.DType != safetensors.BOOL:
		// |V1 is any of the float8 types: keep the one the tensor had.
		dtype = old.DType
	case err != nil:
		return fmt.Errorf("tensor %q: %s.npy: %w", key, n.base, err)
	default:
		d, ok := safetensors.ParseDType(info.DType)
		if !ok {
			return fmt.Errorf("tensor %q: %s.npy: dtype %s has no safetensors form", key, n.base, info.DType)
		}
		dtype = d
	}
	id, err := f.ck.Put(key, dtype, info.Shape, b[info.DataOffset:])
	if err != nil {
		return err
	}
	if n.id == noTensor {
		f.mu.Lock()
		_, err := f.tree.AddFile(n.dir, n.base, key, int(id))
		f.mu.Unlock()
		if err != nil {
			f.ck.Delete(id)
			return fmt.Errorf("tensor %q: %w", key, err)
		}
		n.id = id
		// The raw file may be cached as absent, and the listing without it.
		// Before the close returns, so the next ls sees it.
		_, p := n.Parent()
		entryChanged(p, n.base)
	}
	// The view's own pages may hold the uploaded bytes, not the view's:
	// invalidate after this request has returned.
	self := n.StableAttr().Ino
	f.changed(id, self)
	go n.NotifyContent(0, 0)
	return nil
}
