package fs

import (
	"context"
	"os"
	"strconv"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/safejaxfs/safejaxfs/fs/namespace"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
)

// dirNode is a key prefix. Children are made on lookup rather than at mount,
// so mounting a 100k-tensor checkpoint costs one tree build, not 100k inodes.
type dirNode struct {
	fs.Inode
	fsys *FS
	node *tree.Node // guarded by fsys.mu
}

var (
	_ = (fs.NodeLookuper)((*dirNode)(nil))
	_ = (fs.NodeOpendirHandler)((*dirNode)(nil))
	_ = (fs.NodeGetattrer)((*dirNode)(nil))
	_ = (fs.NodeStatfser)((*dirNode)(nil))
)

const npyExt = namespace.NPYExt

// isRoot reports whether d is the mount's root. By ID (the root's is 0,
// and IDs never change), not by Parent: a directory removed while open has
// no parent either, and Parent changes under the namespace's lock.
func (d *dirNode) isRoot() bool { return d.node.ID == 0 }

func (d *dirNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.fsys.ns.View(func(*tree.Tree) { d.fsys.fillDirAttr(&out.Attr, d.node) })
	return 0
}

func (f *FS) fillDirAttr(a *fuse.Attr, n *tree.Node) {
	f.fillCommon(a, dirIno(n), syscall.S_IFDIR|f.dirMode(), 0)
	t := f.dirTime(n)
	setTimes(a, t, t)
	a.Nlink = 2
}

func (d *dirNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return d.fsys.statfs(out)
}

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	f := d.fsys
	if doc := f.shownDoc(name); doc != nil && d.isRoot() {
		m := &metadataNode{fsys: f, doc: doc}
		var a fuse.AttrOut
		m.Getattr(ctx, nil, &a)
		out.Attr = a.Attr
		return d.NewInode(ctx, m, fs.StableAttr{Mode: syscall.S_IFREG, Ino: doc.ino}), 0
	}
	if f.files != nil && d.isRoot() && name == f.files.name {
		return f.files.rootNode(ctx, &d.Inode, out), 0
	}
	var child *fs.Inode
	errno := syscall.ENOENT
	f.ns.View(func(*tree.Tree) { child, errno = d.lookup(ctx, name, out) })
	if errno == 0 && !child.IsDir() {
		f.plus.lookedUp(d)
	}
	return child, errno
}

// lookup is Lookup of a name of the tree or a view. Caller is in a View.
func (d *dirNode) lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	f := d.fsys
	if child := d.node.Lookup(name); child != nil {
		return f.newChild(ctx, &d.Inode, child, &out.Attr)
	}
	var n *fs.Inode
	switch t, kind := f.ns.ViewOf(d.node, name); kind {
	case namespace.NPYView:
		n = f.viewNode(ctx, &d.Inode, checkpoint.ID(t.Tensor), &out.Attr)
	case namespace.F32View:
		n = f.f32Node(ctx, &d.Inode, checkpoint.ID(t.Tensor), &out.Attr)
	}
	if n == nil {
		return nil, syscall.ENOENT
	}
	return n, 0
}

// newChild makes (or finds) the inode for a tree node. Caller is in a
// View or an Update of f.ns.
func (f *FS) newChild(ctx context.Context, parent *fs.Inode, n *tree.Node, a *fuse.Attr) (*fs.Inode, syscall.Errno) {
	if n.IsDir() {
		f.fillDirAttr(a, n)
		return parent.NewInode(ctx, &dirNode{fsys: f, node: n}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: dirIno(n)}), 0
	}
	id := checkpoint.ID(n.Tensor)
	if errno := f.fillTensorAttr(a, id); errno != 0 {
		return nil, errno
	}
	child := parent.NewInode(ctx, &tensorNode{fsys: f, id: id}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: tensorIno(id)})
	f.live.add(id, child, false)
	return child, 0
}

// entries lists the directory: the root's special files, then every child
// in name order, each tensor followed by its view when views are listed.
// An entry's offset is its position in this list.
func (d *dirNode) entries() (entries []fuse.DirEntry) {
	d.fsys.ns.View(func(*tree.Tree) { entries = d.entriesLocked() })
	return entries
}

func (d *dirNode) entriesLocked() []fuse.DirEntry {
	f := d.fsys
	children := d.node.Children()
	entries := make([]fuse.DirEntry, 0, len(children)+len(f.specials))
	if d.isRoot() {
		for _, doc := range f.specials {
			if !doc.hidden.Load() {
				entries = append(entries, fuse.DirEntry{Name: doc.name, Mode: syscall.S_IFREG, Ino: doc.ino})
			}
		}
		// The files directory (files.go) is not listed, as ZFS hides
		// .zfs: it is there by name (ls /mnt/m/.files, a loader given
		// the path), but find, du, tar and rsync -a --delete of the
		// mount neither walk the checkpoint twice nor try to delete it.
	}
	for _, c := range children {
		if c.IsDir() {
			entries = append(entries, fuse.DirEntry{Name: c.Name, Mode: syscall.S_IFDIR, Ino: dirIno(c)})
			continue
		}
		id := checkpoint.ID(c.Tensor)
		entries = append(entries, fuse.DirEntry{Name: c.Name, Mode: syscall.S_IFREG, Ino: tensorIno(id)})
		if !f.opt.NPY {
			continue
		}
		if _, kind := f.ns.ViewOf(d.node, c.Name+npyExt); kind == namespace.NPYView {
			entries = append(entries, fuse.DirEntry{Name: c.Name + npyExt, Mode: syscall.S_IFREG, Ino: npyIno(id)})
		}
		if e, ok := f.f32Entry(d.node, c); ok {
			entries = append(entries, e)
		}
	}
	return entries
}

// size is len(entries()) when that is known without building the list
// (views are listed only for dtypes numpy has); ok false otherwise.
func (d *dirNode) size() (n int, ok bool) {
	f := d.fsys
	if f.opt.NPY {
		return 0, false
	}
	for _, doc := range f.specials {
		if doc.hidden.Load() {
			return 0, false // rare: a special file removed in this mount
		}
	}
	f.ns.View(func(*tree.Tree) { n = d.node.Len() })
	if d.isRoot() {
		n += len(f.specials)
	}
	return n, true
}

// Hidden attributes of the mount root for `safejaxfs unmount`: the daemon's
// pid, so it can wait for exactly this daemon to finish, and the last
// write-back failure, so it can say why one failed (an errno cannot).
const (
	XattrPID   = "user.safejaxfs.pid"
	XattrError = "user.safejaxfs.error"
	// XattrLog names the daemon's log file.
	XattrLog = "user.safejaxfs.log"
	// XattrRecover, set on the root, makes the daemon save every edit to
	// a recovery file (unmount --force, when the write-back failed); read,
	// it names the last such file.
	XattrRecover = "user.safejaxfs.recover"
	// XattrStatus, read, makes the daemon publish its status now
	// (Options.Publish) and answers its pid: safejaxfs status asks it
	// before reading the status files, so an edit made just before is in
	// what it prints, not only after the daemon's next periodic update.
	XattrStatus = "user.safejaxfs.status"
)

var _ = (fs.NodeGetxattrer)((*dirNode)(nil))

func (d *dirNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if errno := unsupportedXattr(attr); errno != 0 {
		return 0, errno
	}
	if d.isRoot() {
		switch attr {
		case XattrPID:
			return copyAttr(dest, []byte(strconv.Itoa(os.Getpid())))
		case XattrStatus:
			if p := d.fsys.opt.Publish; p != nil {
				p()
			}
			return copyAttr(dest, []byte(strconv.Itoa(os.Getpid())))
		case XattrError:
			if msg := d.fsys.lastErr.Load(); msg != nil {
				return copyAttr(dest, []byte(*msg))
			}
		case XattrLog:
			if d.fsys.opt.LogPath != "" {
				return copyAttr(dest, []byte(d.fsys.opt.LogPath))
			}
		case XattrRecover:
			if p := d.fsys.rescued.Load(); p != nil {
				return copyAttr(dest, []byte(*p))
			}
		case XattrUntyped:
			if b := d.fsys.untypedAttr(); b != nil {
				return copyAttr(dest, b)
			}
		}
	}
	return 0, syscall.ENODATA
}
