package tree

import (
	"errors"
	"fmt"
	"strings"
)

// Errors the mutations wrap, so that callers can map them to errno values
// with errors.Is.
var (
	ErrInvalidName = errors.New("not a valid file name")
	ErrReserved    = errors.New("name is reserved in the root directory")
	ErrExist       = errors.New("name already exists")
	ErrNotDir      = errors.New("not a directory")
	ErrNotEmpty    = errors.New("directory not empty")
	ErrIntoSelf    = errors.New("cannot move a directory into itself")
	ErrRoot        = errors.New("cannot remove or move the root")
	ErrNotInTree   = errors.New("node is not in this tree")
)

// ChildKey returns the key a new child called name of dir gets:
// dir.Key + Sep + name, or just name in the root.
func (t *Tree) ChildKey(dir *Node, name string) string {
	if dir == t.Root {
		return name
	}
	return dir.Key + t.opt.Sep + name
}

// AddFile adds a file for tensor under dir. key is normally
// ChildKey(dir, name); any key is accepted, but one that does not start with
// dir.Key and a separator has no directory part, so moving one of its
// directories later leaves it unchanged.
func (t *Tree) AddFile(dir *Node, name, key string, tensor int) (*Node, error) {
	if err := t.checkNew("add file", dir, name); err != nil {
		return nil, err
	}
	n := &Node{Name: name, ID: t.next, Key: key, Tensor: tensor}
	t.next++
	dir.insert(n)
	if dir != t.Root && !t.under(key, dir.Key) {
		t.setOdd(n, oddKey{})
	}
	return n, nil
}

// CanAdd reports why AddFile of name in dir would fail, or nil: a caller
// checks before it makes what the file stands for.
func (t *Tree) CanAdd(dir *Node, name string) error { return t.checkNew("add file", dir, name) }

// AddDir adds an empty directory with Key ChildKey(dir, name).
func (t *Tree) AddDir(dir *Node, name string) (*Node, error) {
	if err := t.checkNew("add directory", dir, name); err != nil {
		return nil, err
	}
	n := &Node{Name: name, ID: t.next, Key: t.ChildKey(dir, name), Tensor: -1, dir: true}
	t.next++
	dir.insert(n)
	return n, nil
}

// Remove takes a file or an empty directory out of the tree.
func (t *Tree) Remove(n *Node) error {
	if err := t.checkNode("remove", n); err != nil {
		return err
	}
	if n.dir && len(n.kids) > 0 {
		return fmt.Errorf("tree: remove %q: %w", n.Path(), ErrNotEmpty)
	}
	n.Parent.unlink(n)
	delete(t.odd, n)
	return nil
}

// Move renames n to newName in newDir and gives it the key
// ChildKey(newDir, newName). For a directory, the keys of everything below it
// are rewritten: the part that was n.Key becomes the new key. It returns, in
// path order, the files whose Key changed, so the caller can rename their
// tensors. The target name must be free (the caller removes a file it
// replaces first); moving n onto itself changes nothing.
func (t *Tree) Move(n *Node, newDir *Node, newName string) (renamed []*Node, err error) {
	if err := t.checkNode("move", n); err != nil {
		return nil, err
	}
	op := "move " + n.Path()
	if newDir == n.Parent && newName == n.Name {
		return nil, nil
	}
	// As rename(2) does, refuse this before looking at the target name.
	for d := newDir; d != nil; d = d.Parent {
		if d == n {
			return nil, fmt.Errorf("tree: %s to %q: %w", op, t.join(newDir, newName), ErrIntoSelf)
		}
	}
	if err := t.checkNew(op, newDir, newName); err != nil {
		return nil, err
	}

	oldDepth := n.depth()
	oldKey := n.Key
	n.Parent.unlink(n)
	n.Name = newName
	newDir.insert(n)
	n.Key = t.ChildKey(newDir, newName)
	if !n.dir {
		delete(t.odd, n)
		if n.Key != oldKey {
			renamed = append(renamed, n)
		}
		return renamed, nil
	}

	// The new Key lengths of n and its ancestors, by depth-1: where an odd
	// file's ancestors' parts of its new key end.
	chain := make([]int32, newDir.depth()+1)
	i := len(chain) - 1
	for d := n; d.Parent != nil; d = d.Parent {
		chain[i] = int32(len(d.Key))
		i--
	}
	// Children are pushed in reverse so that renamed comes out in path order.
	var stack []*Node
	push := func(kids []*Node) {
		for i := len(kids) - 1; i >= 0; i-- {
			stack = append(stack, kids[i])
		}
	}
	push(n.kids)
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if d.dir {
			// Directories always start with their parent's Key.
			d.Key = n.Key + d.Key[len(oldKey):]
			push(d.kids)
			continue
		}
		before := d.Key
		odd, isOdd := t.odd[d]
		switch {
		case !isOdd:
			d.Key = n.Key + d.Key[len(oldKey):]
		case odd.cuts == nil:
			continue // a key unrelated to its directories stays as it is
		default:
			t.moveOdd(d, n, odd.cuts, oldDepth, chain)
		}
		if d.Key != before {
			renamed = append(renamed, d)
		}
	}
	return renamed, nil
}

// moveOdd rewrites the key of odd file d after its ancestor moved, which
// was at depth oldDepth and has the new key lengths chain (for it and its
// ancestors, by depth-1).
func (t *Tree) moveOdd(d, moved *Node, cuts []int32, oldDepth int, chain []int32) {
	b := int(cuts[oldDepth-1])
	newLen := int(chain[len(chain)-1])
	d.Key = moved.Key + d.Key[b:]
	below := cuts[oldDepth:]
	nc := make([]int32, 0, len(chain)+len(below))
	nc = append(nc, chain...)
	for _, c := range below {
		nc = append(nc, c-int32(b)+int32(newLen))
	}
	if pk := d.Parent.Key; int(nc[len(nc)-1]) == len(pk) && strings.HasPrefix(d.Key, pk) {
		delete(t.odd, d) // the keys agree again
		return
	}
	t.odd[d] = oddKey{cuts: nc}
}

// under reports whether key lies below a directory with Key dir: dir's text
// followed by a separator.
func (t *Tree) under(key, dir string) bool {
	rest, ok := strings.CutPrefix(key, dir)
	return ok && (strings.HasPrefix(rest, t.opt.Sep) || strings.HasPrefix(rest, "/"))
}

func (t *Tree) setOdd(n *Node, o oddKey) {
	if t.odd == nil {
		t.odd = make(map[*Node]oddKey)
	}
	t.odd[n] = o
}

// attached reports whether n hangs in t (removed nodes and nodes of other
// trees do not).
func (t *Tree) attached(n *Node) bool {
	for n.Parent != nil {
		n = n.Parent
	}
	return n == t.Root
}

func (t *Tree) checkNode(op string, n *Node) error {
	switch {
	case n == nil:
		return fmt.Errorf("tree: %s: nil node: %w", op, ErrNotInTree)
	case n == t.Root:
		return fmt.Errorf("tree: %s: %w", op, ErrRoot)
	case !t.attached(n):
		return fmt.Errorf("tree: %s %q (ID %d): %w", op, n.Name, n.ID, ErrNotInTree)
	}
	return nil
}

// checkNew checks that name can be created in dir.
func (t *Tree) checkNew(op string, dir *Node, name string) error {
	switch {
	case dir == nil || !t.attached(dir):
		return fmt.Errorf("tree: %s %q: target directory: %w", op, name, ErrNotInTree)
	case !dir.dir:
		return fmt.Errorf("tree: %s %q: %q: %w", op, name, dir.Path(), ErrNotDir)
	case !ValidName(name):
		return fmt.Errorf("tree: %s %q in %q: %w", op, name, "/"+dir.Path(), ErrInvalidName)
	case dir == t.Root && t.opt.reserved(name):
		return fmt.Errorf("tree: %s %q: %w", op, name, ErrReserved)
	case dir.Lookup(name) != nil:
		return fmt.Errorf("tree: %s %q: %w", op, t.join(dir, name), ErrExist)
	}
	return nil
}

func (t *Tree) join(dir *Node, name string) string {
	if dir == t.Root {
		return name
	}
	return dir.Path() + "/" + name
}
