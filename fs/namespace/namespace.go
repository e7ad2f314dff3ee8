// Package namespace decides the names of a mounted checkpoint: which path
// is which tensor, and how creating, removing and renaming change both the
// directory tree (package tree) and the checkpoint's keys. Each change is
// checked whole before anything changes, then made in the checkpoint (the
// one step that can fail) and then in the tree (which cannot), all under
// one lock: no compensating deletes, no tree that disagrees with the
// checkpoint. It knows nothing of FUSE; package fs translates requests
// into calls here, as gocryptfs keeps its name rules in nametransform
// below its FUSE frontend.
//
// It decides types too: the dtypes and shapes that follow a name (a file
// created again at a removed tensor's key, rsync's temp file renamed over
// a tensor, cp -a restoring user.safetensors.* attributes): types.go.
//
// Lock order: Namespace.mu, then typeHints.mu, then the checkpoint's own
// locks. Nothing here calls back into a caller while holding them except
// the make function of Create, which must not call the Namespace.
package namespace

import (
	"fmt"
	iofs "io/fs"
	"sync"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
)

// ErrNotExist: no entry of that name.
var ErrNotExist = fmt.Errorf("namespace: %w", iofs.ErrNotExist)

// Store is the checkpoint as the namespace changes it
// (*checkpoint.Checkpoint).
type Store interface {
	Info(id checkpoint.ID) (checkpoint.Info, bool)
	Delete(id checkpoint.ID) error
	Move(renames map[checkpoint.ID]string, replaced []checkpoint.ID, adopt *checkpoint.Retype) error
	Reshape(id checkpoint.ID, dtype safetensors.DType, shape []uint64) error
	Growable(id checkpoint.ID) bool
	ReadOnly() bool
	// Keys are the live tensors' keys indexed by ID ("" for a removed
	// one): what Check compares the tree with.
	Keys() []string
}

// Namespace is the tree of one mount and the rules that change it.
type Namespace struct {
	mu    sync.RWMutex
	t     *tree.Tree
	st    Store
	types typeHints // the dtypes and shapes that follow names (types.go)
	views ViewRules // which tensors have which view (views.go)
}

// New returns the namespace of t, whose files' Tensor fields are IDs in st,
// showing the views rules allow.
func New(t *tree.Tree, st Store, rules ViewRules) *Namespace {
	return &Namespace{t: t, st: st, views: rules}
}

// Root is the root directory (it never changes).
func (ns *Namespace) Root() *tree.Node { return ns.t.Root }

// View runs fn with the tree locked for reading: the nodes and their
// fields (Key, Name, Parent, children) are read only inside a View or an
// Update. fn must not call the Namespace.
func (ns *Namespace) View(fn func(t *tree.Tree)) {
	ns.mu.RLock()
	defer ns.mu.RUnlock()
	fn(ns.t)
}

// Lookup is dir's child called name, or nil.
func (ns *Namespace) Lookup(dir *tree.Node, name string) *tree.Node {
	ns.mu.RLock()
	defer ns.mu.RUnlock()
	return dir.Lookup(name)
}

// Update runs fn with the namespace locked for changes, which fn makes
// through tx; it returns fn's error. Several changes in one Update are
// seen together. fn must not call the Namespace.
func (ns *Namespace) Update(fn func(tx *Tx) error) error {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	return fn(&Tx{ns: ns})
}

// Check reports the first way the tree and the checkpoint disagree: a file
// whose tensor is gone or has another key, two files of one tensor, a live
// tensor no file shows. nil when they agree (what every change keeps).
func (ns *Namespace) Check() error {
	ns.mu.RLock()
	defer ns.mu.RUnlock()
	keys := ns.st.Keys()
	seen := make(map[int]string, len(keys))
	for _, f := range ns.t.Files() {
		id := f.Tensor
		switch {
		case id < 0 || id >= len(keys) || keys[id] == "":
			return fmt.Errorf("file %q stands for tensor %d, which is not in the checkpoint", f.Path(), id)
		case keys[id] != f.Key:
			return fmt.Errorf("file %q has key %q, its tensor %q", f.Path(), f.Key, keys[id])
		}
		if other, dup := seen[id]; dup {
			return fmt.Errorf("files %q and %q stand for one tensor %q", other, f.Path(), f.Key)
		}
		seen[id] = f.Path()
	}
	for id, k := range keys {
		if _, ok := seen[id]; k != "" && !ok {
			return fmt.Errorf("tensor %q (ID %d) has no file", k, id)
		}
	}
	return nil
}
