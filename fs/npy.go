package fs

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/safejaxfs/safejaxfs/fs/upload"
	"github.com/safejaxfs/safejaxfs/fs/views"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
)

// npyNode is <tensor>.npy: the header np.save would write for the tensor,
// followed by the tensor's bytes straight from the mapping. Writing one
// (np.save) creates or replaces the tensor.
type npyNode struct {
	fs.Inode
	fsys *FS

	mu sync.Mutex
	id checkpoint.ID // the tensor viewed; noTensor until an upload creates it
	// key is the tensor's key when this node was made for it: the node
	// stands for <name>.npy, and once the tensor is renamed or removed
	// the kernel's entry of that name is stale (see Open).
	key string
	// Where a .npy created in the mount puts its new tensor.
	dir  *tree.Node
	base string

	uploads upload.Set
}

const noTensor checkpoint.ID = -1

var (
	_ = (fs.NodeGetattrer)((*npyNode)(nil))
	_ = (fs.NodeOpener)((*npyNode)(nil))
	_ = (fs.NodeReader)((*npyNode)(nil))
	_ = (fs.NodeGetxattrer)((*npyNode)(nil))
	_ = (fs.NodeListxattrer)((*npyNode)(nil))
	_ = (fs.NodeOnForgetter)((*npyNode)(nil))
)

func (n *npyNode) tensor() checkpoint.ID {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.id
}

func (n *npyNode) OnForget() {
	id := n.tensor()
	n.fsys.live.remove(id, &n.Inode)
	n.fsys.dropIfUnused(id)
}

// viewNode makes the node of tensor id's view under parent, filling its
// attributes; nil when numpy has no form for the tensor.
func (f *FS) viewNode(ctx context.Context, parent *fs.Inode, id checkpoint.ID, a *fuse.Attr) *fs.Inode {
	info, ok := f.ck.Info(id)
	if !ok {
		return nil
	}
	ino := f.viewIno(id, info.Key)
	if !f.fillNPYAttr(a, ino, id) {
		return nil
	}
	n := parent.NewInode(ctx, &npyNode{fsys: f, id: id, key: info.Key}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: ino})
	f.live.add(id, n, true)
	return n
}

// stale reports whether this node no longer stands for its name: its
// tensor was renamed, or removed (and perhaps another took its name).
// The kernel may still hold the old entry; an Open through it fails with
// ESTALE, which makes the kernel look the name up again.
func (n *npyNode) stale() bool {
	n.mu.Lock()
	id, key := n.id, n.key
	n.mu.Unlock()
	if id == noTensor {
		return false
	}
	info, ok := n.fsys.ck.Info(id)
	return !ok || info.Key != key
}

// fillNPYAttr fills the view's attributes; false (size 0) when tensor id has
// no view.
func (f *FS) fillNPYAttr(a *fuse.Attr, ino uint64, id checkpoint.ID) bool {
	h, info := views.NPY(f.ck, id)
	size := uint64(0)
	if h != nil {
		size = uint64(len(h)) + uint64(info.Size)
	}
	f.fillCommon(a, ino, syscall.S_IFREG|f.fileMode(), size)
	if h != nil {
		setTimes(a, info.MTime, info.CTime)
	}
	return h != nil
}

// Getattr shows the view as it is, not an upload in progress: go-fuse
// passes the first open handle of the node when the kernel sends none
// (every stat), so a handle here may be anyone's.
func (n *npyNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fsys.fillNPYAttr(&out.Attr, n.StableAttr().Ino, n.tensor())
	return 0
}

func (n *npyNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if h, ok := fh.(*npyHandle); ok {
		if u := h.upload(); u != nil {
			return readUpload(u, dest, off), 0
		}
	}
	id := n.tensor()
	h, _ := views.NPY(n.fsys.ck, id)
	if h == nil {
		return fuse.ReadResultData(nil), 0
	}
	// The view is header ++ tensor: serve the part of the header the
	// request covers, then the tensor bytes after it.
	hn := int64(len(h))
	var segs [][]byte
	want := int64(len(dest))
	if off < hn {
		seg := h[off:min(hn, off+want)]
		segs = append(segs, seg)
		want -= int64(len(seg))
	}
	data, release, err := n.fsys.ck.ReadContext(ctx, id, max(off-hn, 0), int(want))
	if err != nil {
		return nil, n.fsys.readFailed(&n.Inode, off, err)
	}
	return &mappedResult{segs: append(segs, data...), release: release}, 0
}

func (n *npyNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return n.fsys.getxattr(n.tensor(), attr, dest)
}

func (n *npyNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return n.fsys.listxattr(n.tensor(), dest)
}
