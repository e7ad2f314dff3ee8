package tree

import (
	"cmp"
	"slices"
	"strings"
)

// Build makes the tree for keys, following the rules in the package
// documentation. keys[i] becomes a file with Tensor i. Odd keys never make
// it fail; only unusable Options do. Duplicate keys (which the safetensors
// parser already refuses) each get a file, as rule 5 says.
func Build(keys []string, opt Options) (*Tree, error) {
	opt, err := opt.normalize()
	if err != nil {
		return nil, err
	}
	t := &Tree{opt: opt}
	b := &builder{t: t}
	b.slabHint = len(keys) + len(keys)/4 + 16
	b.prepare(keys)
	b.run()
	t.number()
	return t, nil
}

// builder holds Build's working state. Keys are sorted by segment path once;
// after that every directory's keys form a contiguous run of the sorted
// items, and every group of keys sharing a name is a contiguous run within
// that, so the tree is made by linear scans with no per-directory maps.
type builder struct {
	t      *Tree
	items  []item
	bounds []int // segment [start, end) offsets of all keys, pairs, in key order

	tasks  []task // every directory made so far; the stack refers to them
	stack  []int
	groups []group
	ents   []entry

	slab     []Node // nodes are carved from slabs: one allocation per thousands
	ptrs     []*Node
	slabHint int
}

// item is one key. enc is its segment path encoded so that comparing
// encodings as strings orders keys by segment path: segments joined by 0x00,
// with 0x00 and 0x01 in the text written as 0x01 0x01 and 0x01 0x02. A
// shorter path thus sorts before its extensions, and segment-wise order
// equals string order, which lets one sort do the grouping.
type item struct {
	enc string
	key string
	idx int // position in the keys given to Build
	seg int // index of its first segment in bounds/2
	n   int // number of segments
}

// task is a directory whose children are still to be made: the items
// [lo, hi) are the keys under it, and their segments from p on name what is
// inside it.
type task struct {
	node   *Node
	lo, hi int
	p      int
	depth  int
	up     int // index of the parent's task; -1 for the root
}

// group is a run of items [lo, hi) that all share segments [p, q) (p being
// the current directory's) and so want the same child.
type group struct{ lo, hi, q int }

// entry is a child of the current directory before it becomes a Node. A file
// entry is item lo; a directory entry holds items [lo, hi).
type entry struct {
	name string // wanted name (rules 3-4), final name after rule 5
	esc  string // escaped, not yet shortened: what rule 5 suffixes
	key  string
	lo   int
	hi   int
	q    int // the entry's name is segments [p, q) of its keys
	dir  bool
}

func (b *builder) start(it *item, j int) int { return b.bounds[2*(it.seg+j)] }
func (b *builder) end(it *item, j int) int   { return b.bounds[2*(it.seg+j)+1] }
func (b *builder) text(it *item, j int) string {
	return it.key[b.start(it, j):b.end(it, j)]
}

// prepare splits every key (rule 1) and sorts the items by segment path.
func (b *builder) prepare(keys []string) {
	size := 0
	for _, k := range keys {
		size += len(k) + 1
	}
	b.items = make([]item, len(keys))
	b.bounds = make([]int, 0, 2*4*len(keys))
	enc := make([]byte, 0, size)
	encEnd := make([]int, len(keys))
	for i, k := range keys {
		seg := len(b.bounds) / 2
		b.bounds = splitKey(b.bounds, k, b.t.opt.Sep)
		it := item{key: k, idx: i, seg: seg, n: len(b.bounds)/2 - seg}
		for j := 0; j < it.n; j++ {
			if j > 0 {
				enc = append(enc, 0)
			}
			enc = appendEnc(enc, b.text(&it, j))
		}
		encEnd[i] = len(enc)
		b.items[i] = it
	}
	// One string for all encodings: the items slice into it.
	all := string(enc)
	prev := 0
	for i := range b.items {
		b.items[i].enc = all[prev:encEnd[i]]
		prev = encEnd[i]
	}
	slices.SortFunc(b.items, func(x, y item) int {
		if c := strings.Compare(x.enc, y.enc); c != 0 {
			return c
		}
		if c := strings.Compare(x.key, y.key); c != 0 {
			return c
		}
		return cmp.Compare(x.idx, y.idx)
	})
}

func appendEnc(dst []byte, s string) []byte {
	if strings.IndexByte(s, 0) < 0 && strings.IndexByte(s, 1) < 0 {
		return append(dst, s...)
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case 0:
			dst = append(dst, 1, 1)
		case 1:
			dst = append(dst, 1, 2)
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// run makes the directories depth first with an explicit stack: a key with a
// million segments must not exhaust the goroutine stack.
func (b *builder) run() {
	root := b.newNode()
	root.dir = true
	root.Tensor = -1
	b.t.Root = root
	b.tasks = append(b.tasks, task{node: root, hi: len(b.items), up: -1})
	b.stack = append(b.stack, 0)
	for len(b.stack) > 0 {
		ti := b.stack[len(b.stack)-1]
		b.stack = b.stack[:len(b.stack)-1]
		b.fill(ti)
	}
}

// fill makes the children of the directory of task ti.
func (b *builder) fill(ti int) {
	tk := b.tasks[ti]
	parent := tk.node
	p := tk.p
	b.ents = b.ents[:0]
	b.groups = b.groups[:0]
	b.split(tk.lo, tk.hi, p, p+1)
	for len(b.groups) > 0 {
		g := b.groups[len(b.groups)-1]
		b.groups = b.groups[:len(b.groups)-1]
		// Keys that end here sort first in their group.
		f := g.lo
		for f < g.hi && b.items[f].n == g.q {
			f++
		}
		if f == g.lo {
			b.ents = append(b.ents, entry{lo: g.lo, hi: g.hi, q: g.q, dir: true})
			continue
		}
		for i := g.lo; i < f; i++ {
			b.ents = append(b.ents, entry{lo: i, hi: i + 1, q: g.q})
		}
		if f < g.hi {
			// Rule 2: the segments so far name a tensor, so the longer keys
			// do not split here; their next segment joins the name.
			b.split(f, g.hi, g.q, g.q+1)
		}
	}

	for i := range b.ents {
		e := &b.ents[i]
		it := &b.items[e.lo]
		e.esc = escapeName(it.key[b.start(it, p):b.end(it, e.q-1)])
		e.name = fitName(e.esc, "")
		if e.dir {
			e.key = b.dirKey(it, parent, p, e.q)
		} else {
			e.key = it.key
		}
	}
	slices.SortFunc(b.ents, claimOrder)
	if b.collide(parent == b.t.Root) {
		b.resolve(parent == b.t.Root)
		slices.SortFunc(b.ents, claimOrder)
	}

	kids := b.newPtrs(len(b.ents))
	for i := range b.ents {
		e := &b.ents[i]
		n := b.newNode()
		n.Name, n.Key, n.Parent = e.name, e.key, parent
		if e.dir {
			n.dir = true
			n.Tensor = -1
			b.tasks = append(b.tasks, task{node: n, lo: e.lo, hi: e.hi, p: e.q, depth: tk.depth + 1, up: ti})
			b.stack = append(b.stack, len(b.tasks)-1)
		} else {
			it := &b.items[e.lo]
			n.Tensor = it.idx
			if p > 0 {
				if cut := b.end(it, p-1); cut != len(parent.Key) || it.key[:cut] != parent.Key {
					b.markOdd(n, it, ti)
				}
			}
		}
		kids[i] = n
	}
	parent.kids = kids
}

// split appends to b.groups the runs of [lo, hi) that share segment j; each
// run's name then covers segments up to q.
func (b *builder) split(lo, hi, j, q int) {
	for lo < hi {
		s := b.text(&b.items[lo], j)
		e := lo + 1
		for e < hi && b.text(&b.items[e], j) == s {
			e++
		}
		b.groups = append(b.groups, group{lo, e, q})
		lo = e
	}
}

// dirKey is the Key of the directory whose name is segments [p, q) of the
// first key under it: the parent's Key, then that key's separator and name
// text. Building on the parent's Key rather than taking the key's own prefix
// keeps every directory's Key a prefix of its children's, which Move relies
// on; the two differ only when keys mix separators.
func (b *builder) dirKey(it *item, parent *Node, p, q int) string {
	end := b.end(it, q-1)
	if p == 0 {
		return it.key[:end]
	}
	cut := b.end(it, p-1)
	if cut == len(parent.Key) && it.key[:cut] == parent.Key {
		return it.key[:end]
	}
	return parent.Key + it.key[cut:end]
}

// markOdd records where each ancestor's part of file n's key ends, for a
// file whose key does not start with its parent's Key.
func (b *builder) markOdd(n *Node, it *item, ti int) {
	cuts := make([]int32, b.tasks[ti].depth)
	for ; b.tasks[ti].up >= 0; ti = b.tasks[ti].up {
		tk := &b.tasks[ti]
		cuts[tk.depth-1] = int32(b.end(it, tk.p-1))
	}
	if b.t.odd == nil {
		b.t.odd = make(map[*Node]oddKey)
	}
	b.t.odd[n] = oddKey{cuts: cuts}
}

// claimOrder sorts entries by name; among equal names directories come
// first, then files by key: the order in which rule 5 lets them claim it.
func claimOrder(x, y entry) int {
	if c := strings.Compare(x.name, y.name); c != 0 {
		return c
	}
	return claimRank(x, y)
}

func claimRank(x, y entry) int {
	if x.dir != y.dir {
		if x.dir {
			return -1
		}
		return 1
	}
	if c := strings.Compare(x.key, y.key); c != 0 {
		return c
	}
	return cmp.Compare(x.lo, y.lo)
}

// collide reports whether rule 5 has work to do: two equal wanted names
// (adjacent once sorted) or a reserved name in the root.
func (b *builder) collide(root bool) bool {
	for i := 1; i < len(b.ents); i++ {
		if b.ents[i].name == b.ents[i-1].name {
			return true
		}
	}
	if root {
		for _, r := range b.t.opt.Reserved {
			if _, ok := slices.BinarySearchFunc(b.ents, r, func(e entry, r string) int {
				return strings.Compare(e.name, r)
			}); ok {
				return true
			}
		}
	}
	return false
}

// resolve applies rule 5 to b.ents, which are in claimOrder.
func (b *builder) resolve(root bool) {
	wanted := make(map[string]bool, len(b.ents))
	for _, e := range b.ents {
		wanted[e.name] = true
	}
	given := make(map[string]bool, len(b.ents))
	var losers []int
	for i, e := range b.ents {
		if given[e.name] || (root && b.t.opt.reserved(e.name)) {
			losers = append(losers, i)
			continue
		}
		given[e.name] = true
	}
	slices.SortFunc(losers, func(i, j int) int { return claimRank(b.ents[i], b.ents[j]) })
	for _, i := range losers {
		e := &b.ents[i]
		for n := 1; ; n++ {
			c := suffixName(e.esc, n)
			if !wanted[c] && !given[c] && !(root && b.t.opt.reserved(c)) {
				e.name = c
				given[c] = true
				break
			}
		}
	}
}

func (b *builder) newNode() *Node {
	if len(b.slab) == cap(b.slab) {
		b.slab = make([]Node, 0, b.slabHint)
		b.slabHint = b.slabHint/2 + 16
	}
	b.slab = b.slab[:len(b.slab)+1]
	return &b.slab[len(b.slab)-1]
}

// newPtrs returns a children slice of length n carved from a shared block.
// Its capacity is exactly n, so a later insert reallocates instead of
// writing into a neighbour's children.
func (b *builder) newPtrs(n int) []*Node {
	if n == 0 {
		return nil
	}
	if cap(b.ptrs)-len(b.ptrs) < n {
		b.ptrs = make([]*Node, 0, max(n, len(b.items)+16))
	}
	s := b.ptrs[len(b.ptrs) : len(b.ptrs)+n : len(b.ptrs)+n]
	b.ptrs = b.ptrs[:len(b.ptrs)+n]
	return s
}

// number gives IDs in depth-first order with children in name order, so the
// same keys always give the same IDs.
func (t *Tree) number() {
	stack := []*Node{t.Root}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		n.ID = t.next
		t.next++
		for i := len(n.kids) - 1; i >= 0; i-- {
			stack = append(stack, n.kids[i])
		}
	}
}
