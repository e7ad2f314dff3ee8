package fs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
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

// upload collects a .npy written into the mount. It becomes a tensor only
// when the file is closed and parses as a C-order array of a dtype
// safetensors has; until then nothing in the checkpoint changes.
type upload struct {
	mu    sync.Mutex
	buf   []byte
	wrote bool          // since the last flush
	errno syscall.Errno // the last commit's refusal, repeated until the next write
	// shared: a commit kept buf as the tensor's bytes, so the next write
	// must copy it first.
	shared bool
}

// own makes buf private before a change. Caller holds mu.
func (u *upload) own() {
	if u.shared {
		u.buf = slices.Clone(u.buf)
		u.shared = false
	}
}

func newUpload(buf []byte, wrote bool) *upload { return &upload{buf: buf, wrote: wrote} }

// flush commits what was written since the last flush, once: Flush runs
// for every close of a duplicated descriptor. A refusal is repeated at each
// later flush until the next write, so the final close reports it even when
// an earlier close of a dup went unchecked (numpy's tofile).
func (u *upload) flush(commit func([]byte) syscall.Errno) syscall.Errno {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.wrote {
		u.wrote = false
		u.errno = commit(u.buf)
		// The tensor may now hold these bytes; they also stay what the
		// file holds, for a later write and close.
		u.shared = true
	}
	return u.errno
}

func (u *upload) size() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.buf)
}

func (u *upload) write(p []byte, off int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.own()
	if end := int(off) + len(p); end > len(u.buf) {
		u.buf = append(u.buf, make([]byte, end-len(u.buf))...)
	}
	copy(u.buf[off:], p)
	u.wrote, u.errno = true, 0
}

func (u *upload) truncate(size int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.own()
	if int(size) <= len(u.buf) {
		u.buf = u.buf[:size]
	} else {
		u.buf = append(u.buf, make([]byte, int(size)-len(u.buf))...)
	}
	u.wrote, u.errno = true, 0
}

func (u *upload) read(dest []byte, off int64) fuse.ReadResult {
	u.mu.Lock()
	defer u.mu.Unlock()
	if off >= int64(len(u.buf)) {
		return fuse.ReadResultData(nil)
	}
	return fuse.ReadResultData(append([]byte(nil), u.buf[off:min(int64(len(u.buf)), off+int64(len(dest)))]...))
}

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
	h := f.npyView(id)
	info, ok := f.ck.Info(id)
	if h == nil || !ok {
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
	u, ok := fh.(*upload)
	if !ok {
		return 0, syscall.EBADF
	}
	u.write(data, off)
	return uint32(len(data)), 0
}

func (n *npyNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok {
		u, ok := fh.(*upload)
		if !ok && n.uploads.truncate(int64(size)) {
			return n.Getattr(ctx, fh, out)
		}
		if !ok {
			// truncate(2) by path has no handle: a view is replaced
			// only by writing a whole .npy.
			return syscall.EPERM
		}
		u.truncate(int64(size))
	}
	return n.Getattr(ctx, fh, out)
}

func (n *npyNode) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	u, ok := fh.(*upload)
	if !ok {
		return 0
	}
	return u.flush(func(b []byte) syscall.Errno {
		if err := n.commit(b); err != nil {
			n.fsys.fail(err)
			return syscall.EINVAL
		}
		return n.fsys.sync(ctx)
	})
}

func (n *npyNode) Release(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	if u, ok := fh.(*upload); ok {
		n.uploads.remove(u)
	}
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
		if _, p := n.Parent(); p != nil {
			// The raw file may be cached as absent.
			go p.NotifyEntry(n.base)
		}
	}
	// The view's own pages may hold the uploaded bytes, not the view's:
	// invalidate after this request has returned.
	self := n.StableAttr().Ino
	f.changed(id, self)
	go n.NotifyContent(0, 0)
	return nil
}
