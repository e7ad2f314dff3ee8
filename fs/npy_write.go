package fs

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/safejaxfs/safejaxfs/fs/namespace"
	"github.com/safejaxfs/safejaxfs/fs/views"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
)

var (
	_ = (fs.NodeWriter)((*npyNode)(nil))
	_ = (fs.NodeSetattrer)((*npyNode)(nil))
	_ = (fs.NodeFlusher)((*npyNode)(nil))
	_ = (fs.NodeFsyncer)((*npyNode)(nil))
	_ = (fs.NodeReleaser)((*npyNode)(nil))
)

// npyHandle is a .npy view opened for writing. Opened with O_TRUNC (or
// created) it is an upload from the start: a whole .npy collected until
// close (np.save). Opened without (np.load(mmap_mode='r+'), open('r+b')) it
// writes into the tensor in place, through the view's bytes after the
// header, like the raw file: a writable shared mmap of the view works. It
// turns into an upload of the view's current bytes only when a write
// changes the header, goes past the end, or the file is truncated, since
// only a whole new .npy can change the tensor's dtype or shape.
type npyHandle struct {
	mu    sync.Mutex
	up    *uploadFile // nil while writing in place
	owner opener      // only its closes decide (owner.go)
}

func (h *npyHandle) upload() *uploadFile {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.up
}

// Open for writing starts an upload or an in-place write; reading serves
// the view. An entry the kernel kept for a view whose tensor was renamed
// or removed since is stale: ESTALE makes the kernel look the name up
// again (and np.save to it then creates the tensor anew instead of
// overwriting the renamed one).
func (n *npyNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.stale() {
		return nil, 0, syscall.ESTALE
	}
	id := n.tensor()
	n.fsys.live.hold(id, &n.Inode, true)
	if !isWrite(flags) {
		return nil, fuse.FOPEN_KEEP_CACHE, 0
	}
	if n.fsys.ck.ReadOnly() {
		return nil, 0, syscall.EROFS
	}
	if id != noTensor && flags&syscall.O_TRUNC == 0 {
		return &npyHandle{owner: openerOf(ctx)}, fuse.FOPEN_KEEP_CACHE, 0
	}
	// O_TRUNC comes with the open (atomic O_TRUNC): nothing of the old
	// view is copied. Direct I/O: the upload's bytes are not the view's
	// until close, so they must not land in (or be served from) the
	// view's page cache.
	owner := openerOf(ctx)
	u := n.fsys.newNPYUpload(&n.uploads, owner, n.base+npyExt, nil, flags&syscall.O_TRUNC != 0)
	return &npyHandle{up: u, owner: owner}, fuse.FOPEN_DIRECT_IO, 0
}

// toUpload turns an in-place handle into an upload of the view's current
// bytes. Caller holds h.mu.
func (n *npyNode) toUpload(h *npyHandle) syscall.Errno {
	if h.up != nil {
		return 0
	}
	b, err := views.NPYBytes(n.fsys.ck, n.tensor())
	if err != nil {
		return toErrno(err)
	}
	h.up = n.fsys.newNPYUpload(&n.uploads, h.owner, n.base+npyExt, b, true)
	return 0
}

func (n *npyNode) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	h, ok := fh.(*npyHandle)
	if !ok {
		return 0, syscall.EBADF
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.up == nil {
		done, errno := n.writeInPlace(data, off)
		if done || errno != 0 {
			return uint32(len(data)), errno
		}
		if errno := n.toUpload(h); errno != 0 {
			return 0, errno
		}
	}
	if err := h.up.WriteAt(data, off); err != nil {
		return 0, uploadErrno(err) // the pool logged why
	}
	return uint32(len(data)), 0
}

// writeInPlace writes a view's bytes into its tensor: the part after the
// header goes to the tensor, the part over the header must repeat it.
// done is false (and nothing is written) when the write changes the
// header or passes the end: only an upload can do that.
func (n *npyNode) writeInPlace(data []byte, off int64) (done bool, errno syscall.Errno) {
	f := n.fsys
	id := n.tensor()
	hdr, info := views.NPY(f.ck, id)
	if hdr == nil {
		return false, syscall.ENOENT
	}
	hn := int64(len(hdr))
	end := off + int64(len(data))
	if end > hn+info.Size {
		return false, 0
	}
	if off < hn {
		over := data[:min(hn, end)-off]
		if string(over) != string(hdr[off:off+int64(len(over))]) {
			return false, 0
		}
	}
	if end <= hn {
		return true, 0
	}
	from := max(off, hn)
	p := data[from-off:]
	if err := f.ck.WriteAt(id, p, from-hn); err != nil {
		f.logf("write: %v", err)
		return false, editErrno(err)
	}
	f.changedRange(id, n.StableAttr().Ino, from-hn, int64(len(p)))
	return true, 0
}

// Setattr truncates an upload; an in-place handle truncated to another
// size becomes one. A view itself is replaced only by writing a whole .npy.
func (n *npyNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok {
		if h, ok := fh.(*npyHandle); ok {
			h.mu.Lock()
			var a fuse.AttrOut
			n.Getattr(ctx, nil, &a)
			errno := syscall.Errno(0)
			if h.up != nil || size != a.Size {
				if errno = n.toUpload(h); errno == 0 {
					errno = uploadErrno(h.up.Truncate(int64(size)))
				}
			}
			h.mu.Unlock()
			if errno != 0 {
				return errno
			}
		} else if errno := uploadErrno(n.uploads.TruncateAll(int64(size))); errno != 0 {
			return errno
		}
	}
	return n.Getattr(ctx, fh, out)
}

func (n *npyNode) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	h, ok := fh.(*npyHandle)
	if !ok {
		return 0
	}
	if !h.owner.decides(ctx) {
		return 0 // an inherited copy of the descriptor (owner.go)
	}
	// What this file changed shows through the tensor's other names (and
	// a new tensor in its directory) once the close returns.
	defer n.fsys.notify.settle()
	if u := h.upload(); u != nil {
		return n.fsys.flushUpload(ctx, u, n.commit)
	}
	return n.fsys.sync(ctx)
}

func (n *npyNode) Release(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	if u := fh.(*npyHandle).upload(); u != nil {
		n.fsys.releaseUpload(ctx, &n.uploads, u, n.commit)
	}
	return 0
}

func (n *npyNode) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	defer n.fsys.notify.settleFiles()
	return n.fsys.sync(ctx)
}

// commit turns an uploaded .npy into the tensor: replaces the viewed one,
// or creates the tensor this new .npy names. The name is checked and
// changed under the tree's lock, so a tensor someone else created at the
// name meanwhile is replaced (the last close wins, as for any file), never
// deleted, and a key another path already holds is refused.
func (n *npyNode) commit(b []byte) error {
	f := n.fsys
	p := namespace.ParseNPY(b)
	n.mu.Lock()
	defer n.mu.Unlock()
	return f.ns.Update(func(tx *namespace.Tx) error { return n.commitLocked(tx, p) })
}

// commitLocked is commit inside the namespace's Update.
func (n *npyNode) commitLocked(tx *namespace.Tx, p *namespace.NPYFile) error {
	f := n.fsys
	target, old, key, replace, err := tx.Target(n.dir, n.base, n.id, n.id != noTensor)
	if err != nil {
		return fmt.Errorf("%s.npy: %w", n.base, err)
	}
	dtype, shape, data, err := p.Tensor(old, key, n.base+npyExt)
	if err != nil {
		return err
	}
	if replace {
		if err := f.ck.ReplaceSync(target, dtype, shape, data); err != nil {
			return err
		}
	} else {
		// The name is checked before the tensor is made durable: a
		// close that fails leaves nothing behind.
		node, err := tx.Create(n.dir, n.base, func(key string) (checkpoint.ID, error) {
			return f.ck.PutNewSync(key, dtype, shape, data)
		})
		if err != nil {
			return fmt.Errorf("tensor %q: %w", key, err)
		}
		target = checkpoint.ID(node.Tensor)
		f.touchDir(n.dir)
		// The raw file may be cached as absent, and the listing without
		// it: both are dropped before the close returns (Flush waits for
		// the queue once its locks are released).
		_, parent := n.Parent()
		f.entryChanged(nil, parent, n.base)
	}
	if n.id == noTensor {
		n.id, n.key = target, key
		f.live.hold(target, &n.Inode, true)
	}
	// The view's own pages may hold the uploaded bytes, not the view's:
	// they are dropped too.
	f.changed(target, 0)
	return nil
}

// renameIntoView handles a file created in the mount renamed to name.npy
// where no real tensor has that name: rsync (and other tools that write a
// temp file and rename it) uploading a .npy. If the file parses as a .npy
// it becomes the tensor name (created or replaced) and the temp file is
// gone; done is false when it does not, and the rename happens as for any
// file. Called inside the rename's Update (tx).
func (f *FS) renameIntoView(tx *namespace.Tx, g *gate, src *tree.Node, dst *dirNode, newName string) (done bool, errno syscall.Errno) {
	base, ok := strings.CutSuffix(newName, npyExt)
	id := checkpoint.ID(src.Tensor)
	if !ok || base == "" || tx.Lookup(dst.node, newName) != nil || !f.ns.IsNew(id) || !f.ck.Growable(id) {
		return false, 0
	}
	info, ok := f.ck.Info(id)
	if !ok {
		return false, 0
	}
	segs, release, err := f.ck.Read(id, 0, int(info.Size))
	if err != nil {
		return false, 0
	}
	b := make([]byte, 0, info.Size)
	for _, s := range segs {
		b = append(b, s...)
	}
	release()
	p := namespace.ParseNPY(b)
	if !p.IsNPY() {
		return false, 0
	}
	target, old, key, replace, err := tx.Target(dst.node, base, 0, false)
	if err != nil {
		return true, nsErrno(err)
	}
	dtype, shape, data, err := p.Tensor(old, key, newName)
	if err != nil {
		f.fail(err)
		return true, syscall.EINVAL
	}
	// The tensor and the temp file's removal are one commit: after a
	// crash there is never both, nor neither. Both names are checked
	// before anything is made durable.
	oldDir := src.Parent
	if replace {
		_, err = tx.Consume(src, nil, "", func(string) (checkpoint.ID, error) {
			return target, f.ck.ReplaceSyncDeleting(target, dtype, shape, data, id)
		})
	} else {
		_, err = tx.Consume(src, dst.node, base, func(key string) (checkpoint.ID, error) {
			return f.ck.PutNewSyncDeleting(key, dtype, shape, data, id)
		})
	}
	if err != nil {
		f.fail(err)
		return true, nsErrno(err)
	}
	f.dropIfUnused(id)
	f.touchDir(dst.node)
	f.touchDir(oldDir)
	if replace {
		f.changed(target, 0)
	}
	// The kernel moves the temp file's entry to newName itself: the temp
	// file's node answers ESTALE from now on, and the entry, and the raw
	// name's, are dropped once the rename has returned.
	f.consume(g, id, &dst.Inode, newName)
	f.entryChanged(g, &dst.Inode, base)
	return true, 0
}
