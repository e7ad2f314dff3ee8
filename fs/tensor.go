package fs

import (
	"context"
	"errors"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// tensorNode is a tensor's raw bytes. It holds the tensor's ID, not its key,
// so a rename of the key never strands an open file.
type tensorNode struct {
	fs.Inode
	fsys *FS
	id   checkpoint.ID
}

var (
	_ = (fs.NodeGetattrer)((*tensorNode)(nil))
	_ = (fs.NodeOpener)((*tensorNode)(nil))
	_ = (fs.NodeReader)((*tensorNode)(nil))
	_ = (fs.NodeGetxattrer)((*tensorNode)(nil))
	_ = (fs.NodeListxattrer)((*tensorNode)(nil))
	_ = (fs.NodeOnForgetter)((*tensorNode)(nil))
)

func (t *tensorNode) OnForget() {
	t.fsys.live.remove(t.id, &t.Inode)
	t.fsys.dropIfUnused(t.id)
}

func (f *FS) fillTensorAttr(a *fuse.Attr, id checkpoint.ID) syscall.Errno {
	info, ok := f.ck.Attr(id)
	if !ok {
		return syscall.ENOENT
	}
	f.fillCommon(a, tensorIno(id), syscall.S_IFREG|f.fileMode(), uint64(info.Size))
	setTimes(a, info.MTime, info.CTime)
	if info.Removed {
		// Still open somewhere after rm or a rename over it.
		a.Nlink = 0
	}
	return 0
}

// Getattr shows the tensor as it is, even through a handle with a rewrite
// under way: go-fuse passes the first open handle of the node when the
// kernel sends none (every stat), so a handle here may be anyone's.
func (t *tensorNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if t.fsys.consumed.has(t.id) {
		return syscall.ESTALE // see tensorNode.Open
	}
	return t.fsys.fillTensorAttr(&out.Attr, t.id)
}

// Read through a handle with a rewrite under way reads the rewrite back.
func (t *tensorNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	// ctx ends when the reader gives up (interruptFS): a remote read then
	// stops waiting (and fetching) at once.
	segs, release, err := t.readFor(ctx, fh)(off, len(dest))
	if err != nil {
		return nil, t.fsys.readFailed(&t.Inode, off, err)
	}
	return &mappedResult{segs: segs, release: release}, 0
}

// readFailed logs why a read of node failed (the errno is all the reader
// gets) and returns that errno. A tensor deleted under an open file is no
// news.
func (f *FS) readFailed(node *fs.Inode, off int64, err error) syscall.Errno {
	if errors.Is(err, context.Canceled) {
		return syscall.EINTR // the reader gave up: its Ctrl-C, not a failure
	}
	if !errors.Is(err, checkpoint.ErrNotFound) {
		f.logf("read %s at %d: %v", node.Path(nil), off, err)
	}
	return toErrno(err)
}

// rewriteOf is the rewrite under way through handle fh, if any.
func (t *tensorNode) rewriteOf(fh fs.FileHandle) *checkpoint.Staged {
	h, _ := fh.(*writeHandle)
	return h.rewriteForRead(t.fsys, t.id)
}

// readFor returns how to read the tensor through handle fh: its rewrite
// if one is under way, else the tensor's bytes.
func (t *tensorNode) readFor(ctx context.Context, fh fs.FileHandle) func(off int64, n int) ([][]byte, func(), error) {
	if s := t.rewriteOf(fh); s != nil {
		return s.Read
	}
	return func(off int64, n int) ([][]byte, func(), error) { return t.fsys.ck.ReadContext(ctx, t.id, off, n) }
}

func (t *tensorNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return t.fsys.getxattr(t.id, attr, dest)
}

func (t *tensorNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return t.fsys.listxattr(t.id, dest)
}
