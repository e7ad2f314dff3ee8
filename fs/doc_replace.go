package fs

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/safejaxfs/safejaxfs/fs/namespace"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
)

// Replacing a special file (__metadata__, __index_metadata__) the way
// tools replace files: rm then create (the cross-device mv, which removes
// the target first; tar x; rsync --delete), and write a temp file then
// rename it over the target (sed -i, mv, os.replace, rsync). The temp
// file is a tensor while it is written; renamed over the special file it
// becomes the document and is gone, in the same durable step, so it never
// reaches the checkpoint as a tensor.

// unlinkDoc removes a special file: its document is emptied, durably, and
// the name is gone until it is created again in this mount.
func (f *FS) unlinkDoc(d *doc) syscall.Errno {
	if err := d.clear(); err != nil {
		f.fail(fmt.Errorf("rm %s: %w", d.name, err))
		return closeErrno(err)
	}
	now := time.Now()
	d.mtime.Store(&now)
	d.hidden.Store(true)
	f.touchDir(f.ns.Root())
	f.logf("%s removed: the checkpoint has none now (writing the file again sets it)", d.name)
	return 0
}

// createDoc is Create or Mknod of a special file's name: allowed only once
// it was removed (the kernel asks only then, or in a race with a lookup).
// open: return a handle to write it through (Create); a close without a
// write leaves the document as it is (empty since the removal).
func (d *dirNode) createDoc(ctx context.Context, doc *doc, open bool, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, syscall.Errno) {
	if errno := d.writable(); errno != 0 {
		return nil, nil, errno
	}
	if !doc.hidden.CompareAndSwap(true, false) {
		return nil, nil, syscall.EEXIST
	}
	f := d.fsys
	f.touchDir(d.node)
	m := &metadataNode{fsys: f, doc: doc}
	var a fuse.AttrOut
	m.Getattr(ctx, nil, &a)
	out.Attr = a.Attr
	child := d.NewInode(ctx, m, fs.StableAttr{Mode: syscall.S_IFREG, Ino: doc.ino})
	if !open {
		return child, nil, 0
	}
	// The upload belongs to the node go-fuse keeps (a node of the same
	// inode number may still be open from before the removal).
	kept := child.Operations().(*metadataNode)
	return child, f.newUpload(&kept.uploads, openerOf(ctx), doc.name, nil, false, maxMetadataUpload), 0
}

// renameIntoDoc renames file src (in directory srcDir) over the special
// file doc: its bytes become the document, if they are one, and the file is
// gone. Called inside the rename's Update (tx); g is its gate.
func (f *FS) renameIntoDoc(tx *namespace.Tx, g *gate, srcDir *dirNode, src *tree.Node, root *dirNode, doc *doc, flags uint32) syscall.Errno {
	const noReplace = 1 // RENAME_NOREPLACE
	switch {
	case src.IsDir():
		return syscall.ENOTDIR
	case flags&noReplace != 0 && !doc.hidden.Load():
		return syscall.EEXIST
	}
	id := checkpoint.ID(src.Tensor)
	info, ok := f.ck.Info(id)
	if !ok {
		return syscall.ENOENT
	}
	if info.Size > maxMetadataUpload {
		return f.refuse(syscall.EFBIG, "rename %s to %s: %d bytes, above the %d a header may hold", src.Name, doc.name, info.Size, maxMetadataUpload)
	}
	b, err := f.tensorBytes(id, info.Size)
	if err != nil {
		return f.refuse(toErrno(err), "rename %s to %s: reading it: %v", src.Name, doc.name, err)
	}
	apply, err := doc.prepare(b)
	if err != nil {
		return f.refuse(syscall.EINVAL, "rename %s to %s: %v; %s is unchanged", src.Name, doc.name, err, doc.name)
	}
	// The file goes first, so the document's durable commit, which logs
	// every change so far in one batch, takes its removal with it: no
	// crash can leave the temp file as a tensor beside the new document.
	if errno := f.removeFile(tx, src); errno != 0 {
		return errno
	}
	f.touchDir(srcDir.node)
	if err := apply(); err != nil {
		// Rare (the log could not be written): the kernel keeps the
		// file's old name, which now stands for nothing.
		f.consume(g, id, &srcDir.Inode, src.Name)
		f.fail(fmt.Errorf("rename %s to %s: %w (the file renamed is gone; %s is unchanged)", src.Name, doc.name, err, doc.name))
		return closeErrno(err)
	}
	f.consume(g, id, &root.Inode, doc.name)
	// A renamed file keeps its times (rsync set them on the temp file).
	mtime := info.MTime
	doc.mtime.Store(&mtime)
	doc.hidden.Store(false)
	f.touchDir(root.node)
	return 0
}

// tensorBytes copies a tensor's n bytes.
func (f *FS) tensorBytes(id checkpoint.ID, n int64) ([]byte, error) {
	segs, release, err := f.ck.Read(id, 0, int(n))
	defer release()
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, n)
	for _, s := range segs {
		b = append(b, s...)
	}
	return b, nil
}

// consumedSet are tensors removed behind the kernel's back by a rename
// that made them something else: a file renamed over __metadata__, or to
// name.npy (renameIntoView). The kernel moved the file's entry to the new
// name and believes the name is still that file; its node answers ESTALE
// to open and stat, which makes the kernel look the name up again and
// find what it is now. (IDs are never reused: the set only grows by the
// files so renamed.)
type consumedSet struct {
	mu  sync.Mutex
	ids map[checkpoint.ID]bool
}

func (s *consumedSet) has(id checkpoint.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids[id]
}

// consume marks tensor id, just removed by a rename to newName in dir, as
// no longer what its kernel entry says. Its nodes' cached attributes are
// dropped at once, so the next stat asks (and gets ESTALE): an attribute
// invalidation takes no lock the rename holds (no pages, no inode lock),
// so it can be delivered from inside the request. The entry itself is
// dropped after the rename returns (the kernel holds dir meanwhile).
func (f *FS) consume(g *gate, id checkpoint.ID, dir *fs.Inode, newName string) {
	f.consumed.mu.Lock()
	if f.consumed.ids == nil {
		f.consumed.ids = map[checkpoint.ID]bool{}
	}
	f.consumed.ids[id] = true
	f.consumed.mu.Unlock()
	for _, r := range f.live.of(id) {
		r.n.NotifyContent(-1, 0) // attributes only
	}
	f.entryChanged(g, dir, newName)
}
