package namespace

import (
	"fmt"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
)

// Tx is the namespace inside one Update. Every change it makes is checked
// first, then made in the checkpoint, then in the tree: a change that
// fails leaves both as they were.
type Tx struct {
	ns *Namespace
}

// Tree is the tree, for reads (ChildKey, Find, Lookup).
func (tx *Tx) Tree() *tree.Tree { return tx.ns.t }

// Lookup is dir's child called name, or nil.
func (tx *Tx) Lookup(dir *tree.Node, name string) *tree.Node { return dir.Lookup(name) }

// Create makes file name in dir for a new tensor, which make creates in
// the checkpoint at the key it is given (an empty file, or an uploaded
// .npy made durable). The name is checked before make is called: a
// refused name leaves nothing behind.
func (tx *Tx) Create(dir *tree.Node, name string, make func(key string) (checkpoint.ID, error)) (*tree.Node, error) {
	t := tx.ns.t
	if err := t.CanAdd(dir, name); err != nil {
		return nil, err
	}
	id, err := make(t.ChildKey(dir, name))
	if err != nil {
		return nil, err
	}
	n, err := t.AddFile(dir, name, t.ChildKey(dir, name), int(id))
	if err != nil {
		// CanAdd said it could, under this lock: a bug. The daemon
		// stays up (it holds the user's edits); Check names it.
		return nil, fmt.Errorf("namespace: add %q after CanAdd said it could (a bug): %w", name, err)
	}
	tx.ns.types.newFile(id)
	return n, nil
}

// Mkdir makes directory name in dir. It exists only in the tree until a
// tensor is put in it: safetensors has no empty directories.
func (tx *Tx) Mkdir(dir *tree.Node, name string) (*tree.Node, error) {
	return tx.ns.t.AddDir(dir, name)
}

// Unlink removes file name from dir and its tensor from the checkpoint,
// returning what the tensor was.
func (tx *Tx) Unlink(dir *tree.Node, name string) (checkpoint.Info, error) {
	n := dir.Lookup(name)
	switch {
	case n == nil:
		return checkpoint.Info{}, fmt.Errorf("unlink %q: %w", name, ErrNotExist)
	case n.IsDir():
		return checkpoint.Info{}, fmt.Errorf("unlink %q: %w", n.Path(), tree.ErrIsDir)
	}
	return tx.RemoveFile(n)
}

// RemoveFile removes file n and its tensor, returning what the tensor was.
func (tx *Tx) RemoveFile(n *tree.Node) (checkpoint.Info, error) {
	t := tx.ns.t
	if err := t.CanRemove(n); err != nil {
		return checkpoint.Info{}, err
	}
	if n.IsDir() {
		return checkpoint.Info{}, fmt.Errorf("remove %q: %w", n.Path(), tree.ErrIsDir)
	}
	id := checkpoint.ID(n.Tensor)
	info, ok := tx.ns.st.Info(id)
	if err := tx.ns.st.Delete(id); err != nil {
		return checkpoint.Info{}, err
	}
	if err := t.Remove(n); err != nil {
		return checkpoint.Info{}, fmt.Errorf("namespace: remove %q after CanRemove said it could (a bug): %w", n.Path(), err)
	}
	if ok {
		tx.ns.types.forget(id, info)
	}
	return info, nil
}

// Consume turns file src into the tensor its bytes describe (an editor's
// temp file renamed to a .npy name): make puts that tensor in the
// checkpoint and deletes src's in the same durable commit (checkpoint's
// *SyncDeleting), then the tree follows: src goes and, with name given,
// the made tensor appears as file name in dir (else make replaced a
// tensor already in the tree). Both names are checked before make is
// called; if make fails, nothing changed.
func (tx *Tx) Consume(src, dir *tree.Node, name string, make func(key string) (checkpoint.ID, error)) (*tree.Node, error) {
	t := tx.ns.t
	if err := t.CanRemove(src); err != nil {
		return nil, err
	}
	if src.IsDir() {
		return nil, fmt.Errorf("consume %q: %w", src.Path(), tree.ErrIsDir)
	}
	key := ""
	if name != "" {
		if err := t.CanAdd(dir, name); err != nil {
			return nil, err
		}
		key = t.ChildKey(dir, name)
	}
	gone := checkpoint.ID(src.Tensor)
	info, known := tx.ns.st.Info(gone)
	id, err := make(key)
	if err != nil {
		return nil, err
	}
	if err := t.Remove(src); err != nil {
		return nil, fmt.Errorf("namespace: remove %q after CanRemove said it could (a bug): %w", src.Path(), err)
	}
	if known {
		tx.ns.types.forget(gone, info)
	}
	if name == "" {
		return nil, nil
	}
	n, err := t.AddFile(dir, name, key, int(id))
	if err != nil {
		return nil, fmt.Errorf("namespace: add %q after CanAdd said it could (a bug): %w", name, err)
	}
	tx.ns.types.newFile(id)
	return n, nil
}

// Rmdir removes empty directory name from dir.
func (tx *Tx) Rmdir(dir *tree.Node, name string) error {
	n := dir.Lookup(name)
	switch {
	case n == nil:
		return fmt.Errorf("rmdir %q: %w", name, ErrNotExist)
	case !n.IsDir():
		return fmt.Errorf("rmdir %q: %w", n.Path(), tree.ErrNotDir)
	}
	return tx.ns.t.Remove(n)
}

// Renamed is what a Rename did besides moving its source.
type Renamed struct {
	// Replaced is the tensor renamed over, as it was, and ReplacedID its
	// ID; HasReplace is false when there was none.
	Replaced   checkpoint.Info
	ReplacedID checkpoint.ID
	HasReplace bool
	// Adopted is the dtype and shape the moved file took from the tensor
	// it replaced (nil: none).
	Adopted *checkpoint.Retype
	// Keys are the files whose key changed, with their new keys.
	Keys map[checkpoint.ID]string
}

// Rename moves src (a file, or a directory and every key under it) to
// newName in dstDir, as rename(2): over a file if src is a file, over an
// empty directory if it is one, never over anything with noReplace
// (RENAME_NOREPLACE). The checkpoint's part (keys renamed, the replaced
// tensor removed, an adopted type) is one step that succeeds or fails
// whole.
func (tx *Tx) Rename(src, dstDir *tree.Node, newName string, noReplace bool) (Renamed, error) {
	t := tx.ns.t
	old := dstDir.Lookup(newName)
	if old == src {
		return Renamed{}, nil
	}
	if old != nil && noReplace {
		return Renamed{}, fmt.Errorf("rename to %q: %w", old.Path(), tree.ErrExist)
	}
	plan, err := t.PlanMove(src, dstDir, newName, old)
	if err != nil {
		return Renamed{}, err
	}
	var r Renamed
	r.Keys = make(map[checkpoint.ID]string, len(plan.Files))
	for i, f := range plan.Files {
		r.Keys[checkpoint.ID(f.Tensor)] = plan.Keys[i]
	}
	var gone []checkpoint.ID
	if old != nil && !old.IsDir() {
		id := checkpoint.ID(old.Tensor)
		if info, ok := tx.ns.st.Info(id); ok {
			r.Replaced, r.ReplacedID, r.HasReplace = info, id, true
			gone = []checkpoint.ID{id}
			r.Adopted = tx.ns.adoption(checkpoint.ID(src.Tensor), info)
		}
	}
	if len(r.Keys) > 0 || len(gone) > 0 || r.Adopted != nil {
		if err := tx.ns.st.Move(r.Keys, gone, r.Adopted); err != nil {
			return Renamed{}, err
		}
	}
	t.Apply(plan)
	if r.HasReplace {
		tx.ns.types.forget(r.ReplacedID, r.Replaced)
	}
	return r, nil
}

// Target is where bytes written to name in dir land when the file is
// closed (an uploaded .npy): the tensor at that name now, which they
// replace (the last close wins, as for any file); or a new tensor at key,
// which the caller makes with Create in the same Update. opened, when
// exists is given, is the tensor the upload was opened on: it is replaced
// wherever it went since (a rename of the file being written moves it),
// and refused if it was removed. A directory at the name refuses it.
func (tx *Tx) Target(dir *tree.Node, name string, opened checkpoint.ID, exists bool) (id checkpoint.ID, old checkpoint.Info, key string, replace bool, err error) {
	if !exists {
		switch n := dir.Lookup(name); {
		case n == nil:
			return 0, checkpoint.Info{}, tx.ns.t.ChildKey(dir, name), false, nil
		case n.IsDir():
			return 0, checkpoint.Info{}, "", false, fmt.Errorf("%q is a directory now: %w", n.Path(), tree.ErrIsDir)
		default:
			opened = checkpoint.ID(n.Tensor)
		}
	}
	info, ok := tx.ns.st.Info(opened)
	if !ok {
		return 0, checkpoint.Info{}, "", false, fmt.Errorf("the tensor was removed meanwhile: %w", ErrNotExist)
	}
	return opened, info, info.Key, true, nil
}
