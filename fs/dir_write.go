package fs

import (
	"context"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/safejaxfs/safejaxfs/fs/namespace"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
)

var (
	_ = (fs.NodeCreater)((*dirNode)(nil))
	_ = (fs.NodeMknoder)((*dirNode)(nil))
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
// holding the bytes written (until something gives it a dtype: see
// namespace/types.go).
func (d *dirNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	f := d.fsys
	if doc := f.doc(name); doc != nil && d.isRoot() {
		child, fh, errno := d.createDoc(ctx, doc, true, out)
		return child, fh, fuse.FOPEN_DIRECT_IO, errno
	}
	if child, fh, errno := d.createF32(ctx, name, out); child != nil || errno != 0 {
		return child, fh, fuse.FOPEN_DIRECT_IO, errno
	}
	child, n, errno := d.newFile(ctx, name, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	if n != nil {
		// A created .npy is committed at close even if nothing was
		// written (and then refused: an empty file is no .npy).
		owner := openerOf(ctx)
		return child, &npyHandle{up: f.newNPYUpload(&n.uploads, owner, name, nil, true), owner: owner}, fuse.FOPEN_DIRECT_IO, 0
	}
	return child, f.newWriteHandle(ctx, child.Operations().(*tensorNode).id), fuse.FOPEN_KEEP_CACHE, 0
}

// Mknod of a regular file is Create without opening it (tar makes a file
// this way to set its attributes before writing it). Special files have
// no place in a checkpoint.
func (d *dirNode) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if mode&syscall.S_IFMT != syscall.S_IFREG {
		return nil, syscall.EPERM
	}
	if doc := d.fsys.doc(name); doc != nil && d.isRoot() {
		child, _, errno := d.createDoc(ctx, doc, false, out)
		return child, errno
	}
	child, _, errno := d.newFile(ctx, name, out)
	return child, errno
}

// newFile makes the node of a new file: an upload for name.npy (returned
// as n), else a new growable tensor.
func (d *dirNode) newFile(ctx context.Context, name string, out *fuse.EntryOut) (child *fs.Inode, n *npyNode, errno syscall.Errno) {
	if errno := d.writable(); errno != 0 {
		return nil, nil, errno
	}
	f := d.fsys
	if d.isRoot() && f.doc(name) != nil {
		return nil, nil, syscall.EEXIST
	}
	var isView bool
	f.ns.View(func(*tree.Tree) { _, isView = f.f32Target(d.node, name) })
	if isView {
		return nil, nil, syscall.EEXIST // a float32 view: only Create writes one
	}
	if base, ok := strings.CutSuffix(name, npyExt); ok && base != "" {
		existing := f.ns.Lookup(d.node, base)
		if existing != nil && existing.IsDir() {
			return nil, nil, syscall.EISDIR
		}
		n := &npyNode{fsys: f, id: noTensor, dir: d.node, base: base}
		ino := f.nextIno.Add(1)
		if existing != nil {
			// Replacing a tensor whose view the kernel did not know.
			n.id = checkpoint.ID(existing.Tensor)
			info, ok := f.ck.Info(n.id)
			if !ok {
				return nil, nil, syscall.ENOENT
			}
			n.key = info.Key
			ino = f.viewIno(n.id, info.Key)
		}
		f.fillCommon(&out.Attr, ino, syscall.S_IFREG|f.fileMode(), 0)
		child := d.NewInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: ino})
		f.live.add(n.id, child, true)
		return child, n, 0
	}
	err := f.ns.Update(func(tx *namespace.Tx) error {
		node, err := tx.Create(d.node, name, f.ck.Create)
		if err != nil {
			return err
		}
		f.touchDir(d.node)
		child, errno = f.newChild(ctx, &d.Inode, node, &out.Attr)
		return nil
	})
	if err != nil {
		f.logf("create %s: %v", name, err)
		return nil, nil, nsErrno(err)
	}
	return child, nil, errno
}

// Mkdir makes a key prefix. It exists only in the mount until a tensor is
// put in it: safetensors has no empty directories.
func (d *dirNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (child *fs.Inode, errno syscall.Errno) {
	if errno := d.writable(); errno != 0 {
		return nil, errno
	}
	f := d.fsys
	if d.isRoot() && f.doc(name) != nil {
		return nil, syscall.EEXIST
	}
	err := f.ns.Update(func(tx *namespace.Tx) error {
		node, err := tx.Mkdir(d.node, name)
		if err != nil {
			return err
		}
		f.touchDir(d.node)
		child, errno = f.newChild(ctx, &d.Inode, node, &out.Attr)
		return nil
	})
	if err != nil {
		f.logf("mkdir %s: %v", name, err)
		return nil, nsErrno(err)
	}
	return child, errno
}

func (d *dirNode) Unlink(ctx context.Context, name string) syscall.Errno {
	if errno := d.writable(); errno != 0 {
		return errno
	}
	f := d.fsys
	if doc := f.doc(name); doc != nil && d.isRoot() {
		if doc.hidden.Load() {
			return syscall.ENOENT
		}
		return f.unlinkDoc(doc)
	}
	// Invalidations of entries of d wait for this request to return: the
	// kernel holds d locked until then (notify.go).
	g := f.notify.begin()
	defer g.end()
	var id checkpoint.ID
	err := f.ns.Update(func(tx *namespace.Tx) error {
		if n := tx.Lookup(d.node, name); n == nil {
			// Views are not entries of their own.
			if _, kind := f.ns.ViewOf(d.node, name); kind != namespace.NoView {
				return syscall.EPERM
			}
		} else if !n.IsDir() {
			id = checkpoint.ID(n.Tensor)
		}
		if _, err := tx.Unlink(d.node, name); err != nil {
			return err
		}
		f.touchDir(d.node)
		return nil
	})
	if err != nil {
		return nsErrno(err)
	}
	f.dropIfUnused(id)
	// The kernel may keep name.npy and name.f32.npy, the views of what
	// was removed (they are looked up again at every use anyway: see
	// viewEntriesFS).
	f.notify.entries(g, &d.Inode, name+npyExt, name+f32Ext)
	return 0
}

// removeFile removes file n and its tensor through tx (the temp file a
// rename turned into something else).
func (f *FS) removeFile(tx *namespace.Tx, n *tree.Node) syscall.Errno {
	id := checkpoint.ID(n.Tensor)
	if _, err := tx.RemoveFile(n); err != nil {
		return nsErrno(err)
	}
	f.dropIfUnused(id)
	return 0
}

func (d *dirNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	if errno := d.writable(); errno != 0 {
		return errno
	}
	f := d.fsys
	err := f.ns.Update(func(tx *namespace.Tx) error {
		if err := tx.Rmdir(d.node, name); err != nil {
			return err
		}
		f.touchDir(d.node)
		return nil
	})
	return nsErrno(err)
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
	if d.isRoot() && f.shownDoc(name) != nil {
		// A special file stays where it is (a file renamed over it
		// replaces its document instead).
		return syscall.EPERM
	}
	// Invalidations of entries of both directories wait for this request
	// to return: the kernel holds them locked until then (notify.go).
	g := f.notify.begin()
	defer g.end()
	var errno syscall.Errno
	f.ns.Update(func(tx *namespace.Tx) error {
		errno = d.rename(tx, g, name, dst, newName, flags)
		return nil
	})
	return errno
}

// rename is Rename inside the namespace's Update.
func (d *dirNode) rename(tx *namespace.Tx, g *gate, name string, dst *dirNode, newName string, flags uint32) syscall.Errno {
	const noReplace = 1 // RENAME_NOREPLACE
	f := d.fsys
	src := tx.Lookup(d.node, name)
	if doc := f.doc(newName); doc != nil && dst.isRoot() {
		if src == nil {
			return syscall.ENOENT
		}
		return f.renameIntoDoc(tx, g, d, src, dst, doc, flags)
	}
	viewRename := false
	if src == nil {
		// A view renamed to another view renames its tensor: np.save to
		// tmp.npy, then os.replace to final.npy.
		if t, kind := f.ns.ViewOf(d.node, name); kind == namespace.NPYView {
			base := strings.TrimSuffix(name, npyExt)
			newBase, toView := strings.CutSuffix(newName, npyExt)
			if !toView || newBase == "" {
				f.logf("rename %s to %s: a .npy view renames its tensor, so the new name must end in .npy too", name, newName)
				return syscall.EINVAL
			}
			src, name, newName, viewRename = t, base, newBase, true
		}
	}
	if src == nil {
		return syscall.ENOENT
	}
	if !viewRename && !src.IsDir() {
		if done, errno := f.renameIntoView(tx, g, src, dst, newName); done {
			return errno
		}
	}
	r, err := tx.Rename(src, dst.node, newName, flags&noReplace != 0)
	if err != nil {
		f.logf("rename %s to %s: %v", name, newName, err)
		return nsErrno(err)
	}
	if r.HasReplace {
		f.dropIfUnused(r.ReplacedID)
	}
	if r.Adopted != nil {
		f.changed(r.Adopted.ID, 0)
	}
	f.touchDir(d.node)
	f.touchDir(dst.node)
	// The kernel keeps entries of names whose meaning changed: the views
	// of both names (and, when a view was renamed, the raw names, which
	// the kernel did not see move), after this request returns.
	stale := []string{name + npyExt, name + f32Ext}
	newStale := []string{newName + npyExt, newName + f32Ext}
	if viewRename {
		stale, newStale = append(stale, name), append(newStale, newName)
	}
	f.notify.entries(g, &d.Inode, stale...)
	f.notify.entries(g, &dst.Inode, newStale...)
	return 0
}

// Fsync on a directory (or `safejaxfs unmount`, which fsyncs the root)
// persists everything pending.
func (d *dirNode) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	return d.fsys.sync(ctx)
}

// Setattr on a directory takes its mtime (rsync -a, tar), kept beside the
// checkpoint with the tensors' (times.go); mode and owner are accepted
// and ignored, as for files.
func (d *dirNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if mtime, ok := in.GetMTime(); ok {
		if errno := d.writable(); errno != 0 {
			return errno
		}
		d.fsys.setDirMTime(d.node, mtime)
	}
	return d.Getattr(ctx, fh, out)
}

var (
	_ = (fs.NodeSetxattrer)((*dirNode)(nil))
	_ = (fs.NodeRemovexattrer)((*dirNode)(nil))
)

// Setxattr: a checkpoint stores no attributes of a directory. ENOTSUP, as
// a file system without them says, so cp -a and rsync -X carry on. On the
// root, XattrRecover asks for a recovery file and XattrSync for a
// write-back now.
func (d *dirNode) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	switch {
	case d.isRoot() && attr == XattrRecover:
		return d.fsys.saveRecovery()
	case d.isRoot() && attr == XattrSync:
		return d.fsys.syncFor(ctx)
	}
	return syscall.ENOTSUP
}

// saveRecovery writes every edit to a recovery file (see
// checkpoint.SaveRecovery), for unmount --force after a failed write-back.
func (f *FS) saveRecovery() syscall.Errno {
	if f.ck.ReadOnly() {
		return syscall.EROFS
	}
	p, err := f.ck.SaveRecovery(f.opt.RecoveryDirs...)
	if err != nil {
		f.fail(err)
		return writeBackErrno(err)
	}
	f.logf("edits are safe in %s", p)
	f.rescued.Store(&p)
	return 0
}

func (d *dirNode) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return syscall.ENOTSUP
}
