package fs

import (
	"context"
	"fmt"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/safejaxfs/safejaxfs/fs/namespace"
	"github.com/safejaxfs/safejaxfs/fs/upload"
	"github.com/safejaxfs/safejaxfs/fs/views"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
)

// f32Node is <tensor>.f32.npy, for a tensor whose dtype numpy lacks or
// holds in a type few tools read (BF16, F16, the 8-, 6- and 4-bit floats):
// a .npy of float32 with the tensor's shape, its elements converted on the
// fly from the mapping (or the remote chunks) as ml_dtypes converts them
// (package views makes its bytes).
// Writing a whole .npy of float32 and the same shape into it converts the
// values back, rounding to nearest even, and replaces the tensor's bytes
// (its dtype and shape stay).
type f32Node struct {
	fs.Inode
	fsys *FS
	id   checkpoint.ID
	// key is the tensor's key when the node was made: once the tensor is
	// renamed or removed, the kernel's entry of this name is stale (Open
	// answers ESTALE, as for a .npy view).
	key string

	uploads upload.Set
}

const f32Ext = namespace.F32Ext

var (
	_ = (fs.NodeGetattrer)((*f32Node)(nil))
	_ = (fs.NodeOpener)((*f32Node)(nil))
	_ = (fs.NodeReader)((*f32Node)(nil))
	_ = (fs.NodeWriter)((*f32Node)(nil))
	_ = (fs.NodeSetattrer)((*f32Node)(nil))
	_ = (fs.NodeFlusher)((*f32Node)(nil))
	_ = (fs.NodeFsyncer)((*f32Node)(nil))
	_ = (fs.NodeReleaser)((*f32Node)(nil))
	_ = (fs.NodeGetxattrer)((*f32Node)(nil))
	_ = (fs.NodeListxattrer)((*f32Node)(nil))
	_ = (fs.NodeOnForgetter)((*f32Node)(nil))
)

// f32Ino numbers the float32 view of tensor id under its key: a new
// number once the tensor is renamed, as for .npy views (viewIno), so the
// kernel's stale entry of the old name never stands for the new one.
func (f *FS) f32Ino(id checkpoint.ID, key string) uint64 {
	v := &f.f32Views
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.rec == nil {
		v.rec = map[checkpoint.ID]viewIno{}
	}
	r, ok := v.rec[id]
	switch {
	case !ok:
		r = viewIno{key, ino(kindF32, uint64(id))}
	case r.key != key:
		r = viewIno{key, f.nextIno.Add(1)}
	}
	v.rec[id] = r
	return r.ino
}

func (n *f32Node) OnForget() {
	n.fsys.live.remove(n.id, &n.Inode)
	n.fsys.dropIfUnused(n.id)
}

// stale reports whether the node no longer stands for its name.
func (n *f32Node) stale() bool {
	info, ok := n.fsys.ck.Info(n.id)
	return !ok || info.Key != n.key
}

// isF32 tells the float32 views among a tensor's live nodes (changedRange
// leaves them to changedF32).
func isF32(n *fs.Inode) bool {
	_, ok := n.Operations().(*f32Node)
	return ok
}

// f32Target is the tensor whose float32 view name is, under dir (see
// namespace.ViewOf). Caller is in a View or Update of f.ns.
func (f *FS) f32Target(dir *tree.Node, name string) (checkpoint.ID, bool) {
	t, kind := f.ns.ViewOf(dir, name)
	if kind != namespace.F32View {
		return 0, false
	}
	return checkpoint.ID(t.Tensor), true
}

// f32Node makes (or finds) the node of tensor id's float32 view under
// parent, filling its attributes; nil when it has none.
func (f *FS) f32Node(ctx context.Context, parent *fs.Inode, id checkpoint.ID, a *fuse.Attr) *fs.Inode {
	info, ok := f.ck.Info(id)
	if !ok {
		return nil
	}
	ino := f.f32Ino(id, info.Key)
	if !f.fillF32Attr(a, ino, id) {
		return nil
	}
	n := parent.NewInode(ctx, &f32Node{fsys: f, id: id, key: info.Key}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: ino})
	f.live.add(id, n, false)
	return n
}

// f32Entry is the listing entry of child c's float32 view (with --npy),
// if it has one. Caller is in a View of f.ns.
func (f *FS) f32Entry(dir, c *tree.Node) (fuse.DirEntry, bool) {
	if t, kind := f.ns.ViewOf(dir, c.Name+f32Ext); kind != namespace.F32View || t != c {
		return fuse.DirEntry{}, false
	}
	id := checkpoint.ID(c.Tensor)
	return fuse.DirEntry{Name: c.Name + f32Ext, Mode: syscall.S_IFREG, Ino: f.f32Ino(id, c.Key)}, true
}

func (f *FS) fillF32Attr(a *fuse.Attr, ino uint64, id checkpoint.ID) bool {
	h, info, n := views.F32(f.ck, id)
	size := uint64(0)
	if h != nil {
		size = uint64(len(h)) + 4*uint64(n)
	}
	f.fillCommon(a, ino, syscall.S_IFREG|f.fileMode(), size)
	if h != nil {
		setTimes(a, info.MTime, info.CTime)
	}
	return h != nil
}

// Getattr shows the view, never an upload in progress (go-fuse hands it
// the node's first open handle, which may be anyone's).
func (n *f32Node) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fsys.fillF32Attr(&out.Attr, n.StableAttr().Ino, n.id)
	return 0
}

// Open for reading serves the conversion. For writing it starts an upload
// (the handle): with O_TRUNC an empty one, without it (r+) one holding the
// whole view, converted back at close. Unlike a .npy view there are no
// in-place writes: a float32 written would read back rounded, so the
// kernel's pages of the view would disagree with the tensor (and a
// writable shared mmap, np.load(mmap_mode='r+'), is not offered).
func (n *f32Node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.stale() {
		return nil, 0, syscall.ESTALE
	}
	f := n.fsys
	f.live.hold(n.id, &n.Inode, false)
	if !isWrite(flags) {
		return nil, fuse.FOPEN_KEEP_CACHE, 0
	}
	if f.ck.ReadOnly() {
		return nil, 0, syscall.EROFS
	}
	var buf []byte
	if flags&syscall.O_TRUNC == 0 {
		_, _, elems := views.F32(f.ck, n.id)
		if 4*elems > f.maxUpload {
			return nil, 0, syscall.EFBIG
		}
		var err error
		if buf, err = views.F32Bytes(f.ck, n.id); err != nil {
			return nil, 0, f.readFailed(&n.Inode, 0, err)
		}
	}
	u := f.newNPYUpload(&n.uploads, openerOf(ctx), n.key+f32Ext, buf, flags&syscall.O_TRUNC != 0)
	return u, fuse.FOPEN_DIRECT_IO, 0
}

func (n *f32Node) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if u, ok := fh.(*uploadFile); ok {
		return readUpload(u, dest, off), 0
	}
	f := n.fsys
	h, _, elems := views.F32(f.ck, n.id)
	if h == nil {
		return fuse.ReadResultData(nil), 0
	}
	hn := int64(len(h))
	end := min(off+int64(len(dest)), hn+4*elems)
	if off >= end {
		return fuse.ReadResultData(nil), 0
	}
	out := dest[:end-off]
	k := 0
	if off < hn {
		k = copy(out, h[off:])
	}
	if k < len(out) {
		got, err := views.ReadF32(ctx, f.ck, n.id, out[k:], max(off-hn, 0))
		if err != nil {
			return nil, f.readFailed(&n.Inode, off, err)
		}
		out = out[:k+got]
	}
	return fuse.ReadResultData(out), 0
}

func (n *f32Node) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	return writeUpload(fh, data, off)
}

// Setattr truncates an upload (through its handle, or every open one for
// a truncate by path); the view itself changes only by a whole .npy.
func (n *f32Node) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok {
		if errno := truncateUpload(fh, &n.uploads, size); errno != 0 {
			return errno
		}
	}
	return n.Getattr(ctx, fh, out)
}

func (n *f32Node) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	if u, ok := fh.(*uploadFile); ok {
		errno := n.fsys.flushUpload(ctx, u, n.commit)
		n.fsys.notify.settle() // the tensor's other names show it on return
		return errno
	}
	return 0
}

func (n *f32Node) Release(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	if u, ok := fh.(*uploadFile); ok {
		n.fsys.releaseUpload(ctx, &n.uploads, u, n.commit)
	}
	return 0
}

func (n *f32Node) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	return n.fsys.sync(ctx)
}

// commit converts an uploaded float32 .npy back into the tensor's dtype
// and replaces its bytes. Anything but float32 of the tensor's shape is
// refused: the view changes values, never the dtype or the shape.
func (n *f32Node) commit(b []byte) error {
	f := n.fsys
	cur, ok := f.ck.Info(n.id)
	name := n.Path(nil)
	if !ok {
		return fmt.Errorf("%s: the tensor was deleted meanwhile", name)
	}
	out, err := namespace.ParseNPY(b).F32Values(cur, name)
	if err != nil {
		return err
	}
	if err := f.ck.ReplaceSync(n.id, cur.DType, cur.Shape, out); err != nil {
		return err
	}
	f.changed(n.id, 0) // its own pages too: they may hold the upload
	return nil
}

func (n *f32Node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return n.fsys.getxattr(n.id, attr, dest)
}

func (n *f32Node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return n.fsys.listxattr(n.id, dest)
}

// changedF32 invalidates the kernel's cache of tensor id's float32 views
// after a change of the tensor's bytes [off, off+n) (n 0: everything),
// except the inode the change came through.
func (f *FS) changedF32(id checkpoint.ID, except uint64, off, n int64) {
	var vOff, vN int64
	first := true
	for _, r := range f.live.of(id) {
		if !isF32(r.n) || r.n.StableAttr().Ino == except {
			continue
		}
		if first {
			first = false
			h, info, _ := views.F32(f.ck, id)
			vOff, vN = views.F32Changed(h, info, off, n)
		}
		f.notify.content(r.n, vOff, vN)
	}
}

// createF32 is dirNode.Create of an existing tensor's float32 view that
// the kernel did not look up first: an upload into the view, not a new
// tensor named <base>.f32. nil when name is no such view.
func (d *dirNode) createF32(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, syscall.Errno) {
	f := d.fsys
	var id checkpoint.ID
	var ok bool
	f.ns.View(func(*tree.Tree) { id, ok = f.f32Target(d.node, name) })
	if !ok {
		return nil, nil, 0
	}
	if errno := d.writable(); errno != 0 {
		return nil, nil, errno
	}
	child := f.f32Node(ctx, &d.Inode, id, &out.Attr)
	if child == nil {
		return nil, nil, syscall.ENOENT
	}
	// NewInode returns the node the kernel may already know: the upload
	// belongs to that one (a truncate by path reaches it). Committed at
	// close even if nothing was written (and then refused: an empty file
	// is no .npy).
	n := child.Operations().(*f32Node)
	return child, f.newNPYUpload(&n.uploads, openerOf(ctx), name, nil, true), 0
}
