package tree

import (
	"cmp"
	"slices"
	"strings"
)

// Tree is the directory tree of a checkpoint. It is not safe for concurrent
// use: the caller serializes access.
type Tree struct {
	Root *Node

	opt  Options
	next uint64 // the ID the next new node gets

	// odd records the files whose Key does not begin with their parent's Key,
	// so that moving a directory can still find the directory's part of the
	// key. It is empty unless keys mix separators ("a.b.c" and "a/b/d" share
	// directory a/b, whose Key can be the prefix of only one of them) or
	// AddFile was given a key outside its directory. Keeping the exceptions
	// aside keeps Node small for the common case.
	odd map[*Node]oddKey
}

// oddKey holds where each ancestor's part of an odd file's key ends: cuts[i]
// for the ancestor at depth i+1 (the root's children have depth 1). A nil
// cuts marks a file that AddFile was given an unrelated key for: there is no
// directory part to replace, so moving a directory leaves that key alone.
type oddKey struct {
	cuts []int32
}

// Sep returns the key separator in use (after defaulting).
func (t *Tree) Sep() string { return t.opt.Sep }

// Find returns the node at the slash-separated path relative to the root
// ("" is the root), or nil. Empty path components are ignored.
func (t *Tree) Find(path string) *Node {
	n := t.Root
	for part := range strings.SplitSeq(path, "/") {
		if part == "" {
			continue
		}
		if n = n.Lookup(part); n == nil {
			return nil
		}
	}
	return n
}

// Files returns all file nodes sorted by Key (ties, which only duplicate keys
// can make, by ID).
func (t *Tree) Files() []*Node {
	var files []*Node
	stack := []*Node{t.Root}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, c := range n.kids {
			if c.dir {
				stack = append(stack, c)
			} else {
				files = append(files, c)
			}
		}
	}
	slices.SortFunc(files, func(a, b *Node) int {
		if c := strings.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return files
}
