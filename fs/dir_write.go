package fs

import (
	"context"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
)

var (
	_ = (fs.NodeCreater)((*dirNode)(nil))
	_ = (fs.NodeMkdirer)((*dirNode)(nil))
	_ = (fs.NodeUnlinker)((*dirNode)(nil))
	_ = (fs.NodeRmdirer)((*dirNode)(nil))
	_ = (fs.NodeRenamer)((*dirNode)(nil))
	_ = (fs.NodeFsyncer)((*dirNode)(nil))
	_ = (fs.NodeSetattrer)((*dirNode)(nil))
)

func (d *dirNode) writable() syscall.Errno {
	if d.fsys.ck.ReadOnly() {
		return syscall.EROFS
	}
	return 0
}

// Create makes a new tensor. name.npy uploads a .npy (dtype and shape from
// its header) when the file is closed; any other name is a 1-D U8 tensor
// holding the bytes written.
func (d *dirNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if errno := d.writable(); errno != 0 {
		return nil, nil, 0, errno
	}
	f := d.fsys
	if d.isRoot() && f.doc(name) != nil {
		return nil, nil, 0, syscall.EEXIST
	}
	if child, fh := d.createF32(ctx, name, out); child != nil {
		return child, fh, fuse.FOPEN_DIRECT_IO, 0
	}
	if base, ok := strings.CutSuffix(name, npyExt); ok && base != "" {
		f.mu.RLock()
		existing := d.node.Lookup(base)
		f.mu.RUnlock()
		if existing != nil && existing.IsDir() {
			return nil, nil, 0, syscall.EISDIR
		}
		n := &npyNode{fsys: f, id: noTensor, dir: d.node, base: base}
		ino := f.nextIno.Add(1)
		if existing != nil {
			// Replacing a tensor whose view was not looked up yet.
			n.id = checkpoint.ID(existing.Tensor)
			ino = npyIno(n.id)
		}
		f.fillCommon(&out.Attr, ino, syscall.S_IFREG|f.fileMode(), 0)
		child := f.remember(d.NewInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: ino}))
		// A created .npy is committed at close even if nothing was
		// written (and then refused: an empty file is no .npy).
		return child, n.uploads.add(newUpload(nil, true)), fuse.FOPEN_DIRECT_IO, 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	key := f.tree.ChildKey(d.node, name)
	if !tree.ValidName(name) {
		return nil, nil, 0, syscall.EINVAL
	}
	id, err := f.ck.Create(key)
	if err != nil {
		f.logf("create %s: %v", name, err)
		return nil, nil, 0, editErrno(err)
	}
	node, err := f.tree.AddFile(d.node, name, key, int(id))
	if err != nil {
		f.ck.Delete(id)
		f.logf("create %s: %v", name, err)
		return nil, nil, 0, syscall.EEXIST
	}
	child, errno := f.newChild(ctx, &d.Inode, node, &out.Attr)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return child, &writeHandle{}, fuse.FOPEN_KEEP_CACHE, 0
}

// Mkdir makes a key prefix. It exists only in the mount until a tensor is
// put in it: safetensors has no empty directories.
func (d *dirNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := d.writable(); errno != 0 {
		return nil, errno
	}
	f := d.fsys
	if d.isRoot() && f.doc(name) != nil {
		return nil, syscall.EEXIST
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	node, err := f.tree.AddDir(d.node, name)
	if err != nil {
		f.logf("mkdir %s: %v", name, err)
		return nil, syscall.EEXIST
	}
	return f.newChild(ctx, &d.Inode, node, &out.Attr)
}

func (d *dirNode) Unlink(ctx context.Context, name string) syscall.Errno {
	if errno := d.writable(); errno != 0 {
		return errno
	}
	f := d.fsys
	f.mu.Lock()
	defer f.mu.Unlock()
	n := d.node.Lookup(name)
	switch {
	case n == nil && d.isRoot() && f.doc(name) != nil:
		return syscall.EPERM
	case n == nil:
		// Views (.npy) are not entries of their own.
		if base, ok := strings.CutSuffix(name, npyExt); ok && d.node.Lookup(base) != nil {
			return syscall.EPERM
		}
		if _, ok := f.f32Target(d.node, name); ok {
			return syscall.EPERM
		}
		return syscall.ENOENT
	case n.IsDir():
		return syscall.EISDIR
	}
	if err := f.ck.Delete(checkpoint.ID(n.Tensor)); err != nil {
		return editErrno(err)
	}
	if err := f.tree.Remove(n); err != nil {
		return syscall.EIO
	}
	return 0
}

func (d *dirNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	if errno := d.writable(); errno != 0 {
		return errno
	}
	f := d.fsys
	f.mu.Lock()
	defer f.mu.Unlock()
	n := d.node.Lookup(name)
	switch {
	case n == nil:
		return syscall.ENOENT
	case !n.IsDir():
		return syscall.ENOTDIR
	case n.Len() > 0:
		return syscall.ENOTEMPTY
	}
	if err := f.tree.Remove(n); err != nil {
		return syscall.EIO
	}
	return 0
}

// Rename moves a tensor or a whole prefix: every key under it is renamed.
// RENAME_NOREPLACE is honoured; RENAME_EXCHANGE is refused (EINVAL) rather
// than half done.
func (d *dirNode) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if errno := d.writable(); errno != 0 {
		return errno
	}
	if flags&fs.RENAME_EXCHANGE != 0 {
		return syscall.EINVAL
	}
	dst, ok := newParent.(*dirNode)
	if !ok {
		return syscall.EXDEV
	}
	f := d.fsys
	if (d.isRoot() && f.doc(name) != nil) || (dst.isRoot() && f.doc(newName) != nil) {
		return syscall.EPERM
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	src := d.node.Lookup(name)
	if src == nil {
		return syscall.ENOENT
	}
	if old := dst.node.Lookup(newName); old != nil {
		if old == src {
			return 0
		}
		const noReplace = 1 // RENAME_NOREPLACE
		switch {
		case flags&noReplace != 0:
			return syscall.EEXIST
		case old.IsDir() && !src.IsDir():
			return syscall.EISDIR
		case !old.IsDir() && src.IsDir():
			return syscall.ENOTDIR
		case old.IsDir() && old.Len() > 0:
			return syscall.ENOTEMPTY
		}
		if !old.IsDir() {
			if err := f.ck.Delete(checkpoint.ID(old.Tensor)); err != nil {
				return editErrno(err)
			}
		}
		if err := f.tree.Remove(old); err != nil {
			return syscall.EIO
		}
	}
	oldDir, oldName := src.Parent, src.Name
	renamed, err := f.tree.Move(src, dst.node, newName)
	if err != nil {
		f.logf("rename %s to %s: %v", name, newName, err)
		return syscall.EINVAL
	}
	keys := make(map[checkpoint.ID]string, len(renamed))
	for _, n := range renamed {
		keys[checkpoint.ID(n.Tensor)] = n.Key
	}
	if err := f.ck.RenameAll(keys); err != nil {
		f.logf("rename %s to %s: %v", name, newName, err)
		f.tree.Move(src, oldDir, oldName)
		return editErrno(err)
	}
	return 0
}

// Fsync on a directory (or `safejaxfs unmount`, which fsyncs the root)
// persists everything pending.
func (d *dirNode) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	return d.fsys.sync(ctx)
}

// Setattr on a directory changes nothing a checkpoint stores.
func (d *dirNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return d.Getattr(ctx, fh, out)
}
