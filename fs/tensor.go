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

func (t *tensorNode) OnForget() { t.fsys.forget(tensorIno(t.id)) }

func (f *FS) fillTensorAttr(a *fuse.Attr, id checkpoint.ID) syscall.Errno {
	info, ok := f.ck.Info(id)
	if !ok {
		return syscall.ENOENT
	}
	f.fillCommon(a, tensorIno(id), syscall.S_IFREG|f.fileMode(), uint64(info.Size))
	return 0
}

func (t *tensorNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	return t.fsys.fillTensorAttr(&out.Attr, t.id)
}

func (t *tensorNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	segs, release, err := t.fsys.ck.Read(t.id, off, len(dest))
	if err != nil {
		return nil, t.fsys.readFailed(&t.Inode, off, err)
	}
	return &mappedResult{segs: segs, release: release}, 0
}

// readFailed logs why a read of node failed (the errno is all the reader
// gets) and returns that errno. A tensor deleted under an open file is no
// news.
func (f *FS) readFailed(node *fs.Inode, off int64, err error) syscall.Errno {
	if !errors.Is(err, checkpoint.ErrNotFound) {
		f.logf("read %s at %d: %v", node.Path(nil), off, err)
	}
	return toErrno(err)
}

func (t *tensorNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return t.fsys.getxattr(t.id, attr, dest)
}

func (t *tensorNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return t.fsys.listxattr(t.id, dest)
}
