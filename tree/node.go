package tree

import (
	"sort"
	"strings"
)

// Node is a file (one tensor) or a directory of the tree.
type Node struct {
	// Name is a valid file name: never "", "." or "..", no '/' or NUL, at
	// most 255 bytes.
	Name string
	// ID is unique within the Tree and stable for the node's life; IDs are
	// never reused. The root is 0.
	ID uint64
	// Parent is nil for the root and for a node that was removed.
	Parent *Node
	// Key is the full tensor key for a file; for a directory the key prefix
	// it stands for ("" for the root).
	Key string
	// Tensor is the caller's index of a file's tensor (its position in the
	// keys given to Build, or the value given to AddFile); -1 for a directory.
	Tensor int

	// kids is kept sorted by Name: a slice costs far less than a map for the
	// many small directories of a real checkpoint, gives Children its order
	// for free, and binary search keeps Lookup fast in large ones.
	kids []*Node
	dir  bool
}

// IsDir reports whether n is a directory.
func (n *Node) IsDir() bool { return n.dir }

// Lookup returns the child called name, or nil.
func (n *Node) Lookup(name string) *Node {
	if i, ok := n.find(name); ok {
		return n.kids[i]
	}
	return nil
}

// find returns where name is or would be inserted in n.kids.
func (n *Node) find(name string) (int, bool) {
	i := sort.Search(len(n.kids), func(i int) bool { return n.kids[i].Name >= name })
	return i, i < len(n.kids) && n.kids[i].Name == name
}

// Children returns the children sorted by Name (byte order) in a fresh slice
// the caller may keep or change.
func (n *Node) Children() []*Node {
	if len(n.kids) == 0 {
		return nil
	}
	return append([]*Node(nil), n.kids...)
}

// Len returns the number of children.
func (n *Node) Len() int { return len(n.kids) }

// Path returns the slash-separated path from the root ("" for the root), for
// messages and tests.
func (n *Node) Path() string {
	var parts []string
	for ; n != nil && n.Parent != nil; n = n.Parent {
		parts = append(parts, n.Name)
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return strings.Join(parts, "/")
}

// depth counts the edges from n up to the root of whatever tree n hangs in.
func (n *Node) depth() int {
	d := 0
	for ; n.Parent != nil; n = n.Parent {
		d++
	}
	return d
}

func (n *Node) insert(c *Node) {
	i, _ := n.find(c.Name)
	n.kids = append(n.kids, nil)
	copy(n.kids[i+1:], n.kids[i:])
	n.kids[i] = c
	c.Parent = n
}

func (n *Node) unlink(c *Node) {
	if i, ok := n.find(c.Name); ok && n.kids[i] == c {
		n.kids = append(n.kids[:i], n.kids[i+1:]...)
	}
	c.Parent = nil
}
