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
	ErrIsDir       = errors.New("is a directory")
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

// CanRemove reports why Remove of n would fail, or nil.
func (t *Tree) CanRemove(n *Node) error {
	if err := t.checkNode("remove", n); err != nil {
		return err
	}
	if n.dir && len(n.kids) > 0 {
		return fmt.Errorf("tree: remove %q: %w", n.Path(), ErrNotEmpty)
	}
	return nil
}

// Remove takes a file or an empty directory out of the tree.
func (t *Tree) Remove(n *Node) error {
	if err := t.CanRemove(n); err != nil {
		return err
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
// replaces first, or uses PlanMove); moving n onto itself changes nothing.
func (t *Tree) Move(n *Node, newDir *Node, newName string) (renamed []*Node, err error) {
	p, err := t.PlanMove(n, newDir, newName, nil)
	if err != nil {
		return nil, err
	}
	return t.Apply(p), nil
}

// MovePlan is a move decided but not yet made: every check is done and
// every new key computed, so a caller can make the same change elsewhere
// first (rename the tensors in the checkpoint) and then Apply it, which
// cannot fail. Nothing else may change the tree in between.
type MovePlan struct {
	n, dir, replace *Node
	name            string
	noop            bool
	// Files are the files whose key changes, in path order, and Keys
	// their new keys.
	Files []*Node
	Keys  []string
	dirs  []*Node  // directories below n, whose keys change too
	dkeys []string // their new keys
	odd   []oddChange
}

// oddChange is what a move does to an odd file's record.
type oddChange struct {
	n     *Node
	clear bool // the keys agree again: not odd any more
	cuts  []int32
}

// Replaced is the node the move takes the place of (nil: none).
func (p *MovePlan) Replaced() *Node { return p.replace }

// PlanMove checks a move of n to newName in newDir and computes its new
// keys, changing nothing (see Move). replace, if not nil, is the node at
// newName the move takes the place of, as rename(2) does: a file replaces
// a file, an empty directory an empty directory.
func (t *Tree) PlanMove(n *Node, newDir *Node, newName string, replace *Node) (*MovePlan, error) {
	if err := t.checkNode("move", n); err != nil {
		return nil, err
	}
	op := "move " + n.Path()
	p := &MovePlan{n: n, dir: newDir, name: newName}
	if newDir == n.Parent && newName == n.Name {
		p.noop = true
		return p, nil
	}
	// As rename(2) does, refuse this before looking at the target name.
	for d := newDir; d != nil; d = d.Parent {
		if d == n {
			return nil, fmt.Errorf("tree: %s to %q: %w", op, t.join(newDir, newName), ErrIntoSelf)
		}
	}
	if replace == nil {
		if err := t.checkNew(op, newDir, newName); err != nil {
			return nil, err
		}
	} else if err := t.checkReplace(op, n, replace, newDir, newName); err != nil {
		return nil, err
	}
	p.replace = replace

	oldKey := n.Key
	newKey := t.ChildKey(newDir, newName)
	if !n.dir {
		if _, isOdd := t.odd[n]; isOdd {
			p.odd = append(p.odd, oddChange{n: n, clear: true})
		}
		if newKey != oldKey {
			p.Files, p.Keys = append(p.Files, n), append(p.Keys, newKey)
		}
		return p, nil
	}
	p.dirs, p.dkeys = append(p.dirs, n), append(p.dkeys, newKey)
	oldDepth := n.depth()

	// The new Key lengths of n and its ancestors, by depth-1: where an odd
	// file's ancestors' parts of its new key end.
	chain := make([]int32, newDir.depth()+1)
	chain[len(chain)-1] = int32(len(newKey))
	i := len(chain) - 2
	for d := newDir; d.Parent != nil; d = d.Parent {
		chain[i] = int32(len(d.Key))
		i--
	}
	// A key below n: its old text with n's part replaced. Directories
	// always start with their parent's Key, so this gives theirs too.
	moved := func(key string) string { return newKey + key[len(oldKey):] }
	// Children are pushed in reverse so that Files comes out in path order.
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
			p.dirs, p.dkeys = append(p.dirs, d), append(p.dkeys, moved(d.Key))
			push(d.kids)
			continue
		}
		key := d.Key
		odd, isOdd := t.odd[d]
		switch {
		case !isOdd:
			key = moved(d.Key)
		case odd.cuts == nil:
			continue // a key unrelated to its directories stays as it is
		default:
			var ch oddChange
			key, ch = t.moveOdd(d, newKey, moved(d.Parent.Key), odd.cuts, oldDepth, chain)
			p.odd = append(p.odd, ch)
		}
		if key != d.Key {
			p.Files, p.Keys = append(p.Files, d), append(p.Keys, key)
		}
	}
	return p, nil
}

// checkReplace checks that n may take the place of old, the node at
// newName in newDir.
func (t *Tree) checkReplace(op string, n, old, newDir *Node, newName string) error {
	target := t.join(newDir, newName)
	switch {
	case old.Parent != newDir || old.Name != newName || !t.attached(old):
		return fmt.Errorf("tree: %s to %q: the node to replace is not there: %w", op, target, ErrNotInTree)
	case old.dir && !n.dir:
		return fmt.Errorf("tree: %s to %q: %w", op, target, ErrIsDir)
	case !old.dir && n.dir:
		return fmt.Errorf("tree: %s to %q: %w", op, target, ErrNotDir)
	case old.dir && len(old.kids) > 0:
		return fmt.Errorf("tree: %s to %q: %w", op, target, ErrNotEmpty)
	}
	return nil
}

// Apply makes a planned move and returns the files whose Key changed, in
// path order (p.Files). It cannot fail: PlanMove checked everything, and
// the tree has not changed since (the caller's lock).
func (t *Tree) Apply(p *MovePlan) []*Node {
	if p.noop {
		return nil
	}
	if r := p.replace; r != nil {
		r.Parent.unlink(r)
		delete(t.odd, r)
	}
	n := p.n
	n.Parent.unlink(n)
	n.Name = p.name
	p.dir.insert(n)
	if !n.dir {
		n.Key = t.ChildKey(p.dir, p.name)
	}
	for i, d := range p.dirs {
		d.Key = p.dkeys[i]
	}
	for i, f := range p.Files {
		f.Key = p.Keys[i]
	}
	for _, c := range p.odd {
		if c.clear {
			delete(t.odd, c.n)
		} else {
			t.odd[c.n] = oddKey{cuts: c.cuts}
		}
	}
	return p.Files
}

// moveOdd computes the key of odd file d after its ancestor moved, which
// was at depth oldDepth and gets key movedKey and the new key lengths
// chain (for it and its ancestors, by depth-1); parentKey is d's parent's
// new key.
func (t *Tree) moveOdd(d *Node, movedKey, parentKey string, cuts []int32, oldDepth int, chain []int32) (string, oddChange) {
	b := int(cuts[oldDepth-1])
	newLen := int(chain[len(chain)-1])
	key := movedKey + d.Key[b:]
	below := cuts[oldDepth:]
	nc := make([]int32, 0, len(chain)+len(below))
	nc = append(nc, chain...)
	for _, c := range below {
		nc = append(nc, c-int32(b)+int32(newLen))
	}
	if int(nc[len(nc)-1]) == len(parentKey) && strings.HasPrefix(key, parentKey) {
		return key, oddChange{n: d, clear: true} // the keys agree again
	}
	return key, oddChange{n: d, cuts: nc}
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
