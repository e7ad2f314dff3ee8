package namespace

import (
	"strings"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
)

// Views are names a directory shows that are no entries of the tree: a
// tensor's .npy view and its float32 view. Which name is a view of what,
// and what wins when names collide, is decided here; whether a tensor has
// a view at all depends on its dtype, which package fs knows the
// converters for (ViewRules).

// The views' suffixes.
const (
	NPYExt = ".npy"     // <tensor>.npy: the tensor as a .npy file
	F32Ext = ".f32.npy" // <tensor>.f32.npy: the tensor as float32, as a .npy file
)

// ViewKind is what a view name stands for.
type ViewKind int

const (
	NoView  ViewKind = iota
	NPYView          // the tensor as a .npy file
	F32View          // the tensor converted to float32, as a .npy file
)

// ViewRules say which tensors have which view. A nil func: none has.
type ViewRules struct {
	HasNPY func(id checkpoint.ID) bool
	HasF32 func(id checkpoint.ID) bool
}

// ViewOf is what name in dir stands for when it is a view: the tensor's
// file and the kind of view; nil and NoView when it is none (an entry of
// the tree, or nothing). A real entry always wins; then <base>.npy, the
// .npy view of file <base>; then <base>.f32.npy, the float32 view of file
// <base> (so a tensor literally named <base>.f32 keeps its .npy view).
// Caller is in a View or an Update.
func (ns *Namespace) ViewOf(dir *tree.Node, name string) (*tree.Node, ViewKind) {
	if dir.Lookup(name) != nil {
		return nil, NoView
	}
	if base, ok := strings.CutSuffix(name, NPYExt); ok {
		if t := dir.Lookup(base); t != nil && !t.IsDir() && has(ns.views.HasNPY, t) {
			return t, NPYView
		}
	}
	if base, ok := strings.CutSuffix(name, F32Ext); ok && base != "" {
		if t := dir.Lookup(base); t != nil && !t.IsDir() && has(ns.views.HasF32, t) {
			return t, F32View
		}
	}
	return nil, NoView
}

func has(rule func(checkpoint.ID) bool, t *tree.Node) bool {
	return rule != nil && rule(checkpoint.ID(t.Tensor))
}
