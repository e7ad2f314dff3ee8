package tree

import (
	"cmp"
	"encoding/binary"
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
	b := &builder{t: t, keys: keys, sep: opt.Sep}
	b.prepare()
	b.run()
	return t, nil
}

// builder holds Build's working state. Keys are sorted by segment path once;
// after that every directory's keys form a contiguous run of the sorted
// items, and every group of keys sharing a name is a contiguous run within
// that, so the tree is made by linear scans with no per-directory maps.
type builder struct {
	t     *Tree
	keys  []string
	sep   string
	items []item
	ends  []int // segment end offsets of all keys, in sorted order
	// slash and low record whether any key has a '/', or a 0x00 or 0x01
	// byte. Without them names need no escaping and (with a one-byte Sep)
	// keys with the same segment path are the same text, so fill need not
	// read key text at all; with keys given in random order each read it
	// skips is a cache miss saved.
	slash, low bool
	// lcp[i] is how many leading segments items i-1 and i share, so the
	// runs of items sharing a segment are found without comparing text.
	lcp []int

	stack  []task
	path   []int // p of the directories from the root's child down to the current one
	groups []group
	ents   []entry

	nodes int    // an upper bound on the number of nodes
	slab  []Node // nodes are carved from slabs: one allocation, as a rule
	ptrs  []*Node
}

// maxEnds bounds how many segment ends keys have: one per separator ('/'
// splits too) and one per key, counted by vectorised searches. A Sep
// without a '/' never overlaps a '/', so the scanner, resuming after either,
// finds no more Seps than strings.Count does. One with a '/' in it (a
// rare option) is bounded instead by pieces of a byte or more between
// separators of a byte or more: half the key.
func maxEnds(keys []string, sep string) int {
	n := len(keys)
	for _, k := range keys {
		switch {
		case sep == "/":
			n += strings.Count(k, "/")
		case strings.Contains(sep, "/"):
			n += len(k) / 2
		default:
			n += strings.Count(k, sep) + strings.Count(k, "/")
		}
	}
	return n
}

// item is one key, by its index in keys, with where its segments are.
type item struct {
	key string
	idx int // position in keys
	seg int // index of its first segment end in ends
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

// end returns the end offset of segment j of its key.
func (b *builder) end(it *item, j int) int { return b.ends[it.seg+j] }

// start returns the start offset of segment j of its key.
func (b *builder) start(it *item, j int) int {
	if j == 0 {
		return 0
	}
	if len(b.sep) == 1 {
		return b.ends[it.seg+j-1] + 1
	}
	return segStart(it.key, b.sep, b.ends[it.seg+j-1])
}

func (b *builder) text(it *item, j int) string {
	return it.key[b.start(it, j):b.end(it, j)]
}

// prepare splits every key (rule 1) and sorts the items by segment path.
//
// The sort works on one string per key: its segment path encoded so that
// string order is segment-wise order, then the key's index. Segments are
// joined by 0x00, and 0x00 and 0x01 in the text are written as 0x01 0x01 and
// 0x01 0x02; the path ends in 0x00 0x00, below anything a longer path could
// continue with, so a path sorts before its extensions. Sorting plain strings
// lets the sort use the runtime's string comparison directly, which is
// several times faster than a comparison function over structs.
func (b *builder) prepare() {
	size := 0
	for _, k := range b.keys {
		size += len(k) + 2 + 8
	}
	// Sized by a guess, the ends regrew for DeepSeek-V3's keys of 8
	// segments: 12 MB of copies while mounting.
	b.ends = make([]int, 0, maxEnds(b.keys, b.sep))
	segOf := make([]int, len(b.keys)+1)
	var enc strings.Builder // hands out its buffer as a string without a copy
	enc.Grow(size)
	encEnd := make([]int, len(b.keys))
	for i, k := range b.keys {
		segOf[i] = len(b.ends)
		var flags int
		if len(b.sep) == 1 {
			b.ends, flags = splitByte(b.ends, k, b.sep[0])
		} else {
			b.ends = splitKey(b.ends, k, b.sep)
			if strings.IndexByte(k, '/') >= 0 {
				flags |= hasSlash
			}
			if strings.IndexByte(k, 0) >= 0 || strings.IndexByte(k, 1) >= 0 {
				flags |= hasLow
			}
		}
		b.slash = b.slash || flags&hasSlash != 0
		b.low = b.low || flags&hasLow != 0
		it := item{key: k, idx: i, seg: segOf[i], n: len(b.ends) - segOf[i]}
		for j := 0; j < it.n; j++ {
			if j > 0 {
				enc.WriteByte(0)
			}
			if flags&hasLow != 0 {
				writeEnc(&enc, b.text(&it, j))
			} else {
				enc.WriteString(b.text(&it, j))
			}
		}
		var tail [10]byte
		binary.BigEndian.PutUint64(tail[2:], uint64(i))
		enc.Write(tail[:])
		encEnd[i] = enc.Len()
	}
	segOf[len(b.keys)] = len(b.ends)
	all := enc.String()
	strs := make([]string, len(b.keys))
	prev := 0
	for i, e := range encEnd {
		strs[i] = all[prev:e]
		prev = e
	}
	slices.Sort(strs)

	// Lay the items and their segment ends out in sorted order: fill walks
	// them in that order.
	b.items = make([]item, len(strs))
	sorted := make([]int, 0, len(b.ends))
	for i, s := range strs {
		idx := int(binary.BigEndian.Uint64([]byte(s[len(s)-8:])))
		b.items[i] = item{key: b.keys[idx], idx: idx, seg: len(sorted), n: segOf[idx+1] - segOf[idx]}
		sorted = append(sorted, b.ends[segOf[idx]:segOf[idx+1]]...)
	}
	b.ends = sorted
	b.lcp = make([]int, len(strs))
	for i := 1; i < len(strs); i++ {
		b.lcp[i] = sharedSegments(strs[i-1], strs[i])
	}
	// Each item adds the path prefixes it does not share with the one
	// before, and a key with the same path as the one before adds its own
	// file: together a bound on the number of nodes (rule 2 only merges).
	// Sizing the slabs by it makes one allocation and wastes little.
	b.nodes = 1
	for i := range b.items {
		b.nodes += max(b.items[i].n-b.lcp[i], 1)
	}

	// Keys with the same segment path (mixed separators, duplicates) are in
	// input order so far; put them in byte order, so that which of them
	// names a directory (its first key) does not depend on the input order.
	for i := 0; i < len(b.items); {
		j := i + 1
		for j < len(b.items) && b.lcp[j] == b.items[i].n && b.items[j].n == b.items[i].n {
			j++
		}
		if j-i > 1 {
			slices.SortFunc(b.items[i:j], func(x, y item) int {
				if c := strings.Compare(x.key, y.key); c != 0 {
					return c
				}
				return cmp.Compare(x.idx, y.idx)
			})
		}
		i = j
	}
}

// sharedSegments counts the leading segments two sort strings (see prepare)
// have in common: the 0x00 delimiters in their common prefix, the index
// tails left out. 0x00 occurs only as a delimiter, and a path's end is
// 0x00 0x00, so a path and its extension share exactly the path's segments.
func sharedSegments(x, y string) int {
	x, y = x[:len(x)-8], y[:len(y)-8]
	m := 0
	for m < len(x) && m < len(y) && x[m] == y[m] {
		m++
	}
	if m == len(x) && m == len(y) {
		return strings.Count(x, "\x00") - 1 // equal: all segments
	}
	return strings.Count(x[:m], "\x00")
}

// writeEnc writes s with 0x00 and 0x01 escaped (see prepare).
func writeEnc(w *strings.Builder, s string) {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case 0:
			w.WriteString("\x01\x01")
		case 1:
			w.WriteString("\x01\x02")
		default:
			w.WriteByte(c)
		}
	}
}

// run makes the directories depth first with an explicit stack: a key with a
// million segments must not exhaust the goroutine stack.
func (b *builder) run() {
	root := b.newNode() // ID 0
	root.dir = true
	root.Tensor = -1
	b.t.Root = root
	b.stack = append(b.stack, task{node: root, hi: len(b.items)})
	for len(b.stack) > 0 {
		tk := b.stack[len(b.stack)-1]
		b.stack = b.stack[:len(b.stack)-1]
		// Depth first, so the directories above this one are the last ones
		// seen at each smaller depth.
		if tk.depth > 0 {
			b.path = append(b.path[:tk.depth-1], tk.p)
		}
		b.fill(tk)
	}
}

// fill makes the children of the directory of task tk.
func (b *builder) fill(tk task) {
	parent := tk.node
	p := tk.p
	b.ents = b.ents[:0]
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
		text := it.key[b.start(it, p):b.end(it, e.q-1)]
		if len(text) > 2 && !b.slash && !b.low {
			e.esc = text // nothing to escape, and not "", "." or ".."
		} else {
			e.esc = escapeName(text)
		}
		e.name = fitName(e.esc, "")
		if e.dir {
			e.key = b.dirKey(it, parent, p, e.q)
		} else {
			e.key = it.key
		}
	}
	if !slices.IsSortedFunc(b.ents, claimOrder) {
		slices.SortFunc(b.ents, claimOrder)
	}
	if b.collide(parent == b.t.Root) {
		b.resolve(parent == b.t.Root)
		slices.SortFunc(b.ents, claimOrder)
	}

	kids := b.newPtrs(len(b.ents))
	first := len(b.stack)
	for i := range b.ents {
		e := &b.ents[i]
		n := b.newNode()
		n.Name, n.Key, n.Parent = e.name, e.key, parent
		if e.dir {
			n.dir = true
			n.Tensor = -1
			b.stack = append(b.stack, task{node: n, lo: e.lo, hi: e.hi, p: e.q, depth: tk.depth + 1})
		} else {
			it := &b.items[e.lo]
			n.Tensor = it.idx
			if p > 0 && !b.uniform() {
				if cut := b.end(it, p-1); cut != len(parent.Key) || e.key[:cut] != parent.Key {
					b.markOdd(n, it)
				}
			}
		}
		kids[i] = n
	}
	parent.kids = kids
	// Reversed, the subdirectories come off the stack in name order, which
	// makes the numbering depth first in name order.
	slices.Reverse(b.stack[first:])
}

// split appends to b.groups the runs of [lo, hi) that share segment j (all
// of them share the segments before it); each run's name then covers
// segments up to q.
func (b *builder) split(lo, hi, j, q int) {
	first := len(b.groups)
	for lo < hi {
		e := lo + 1
		for e < hi && b.lcp[e] > j {
			e++
		}
		b.groups = append(b.groups, group{lo, e, q})
		lo = e
	}
	// b.groups is a stack: reversed, the runs come off it in sorted order,
	// and the entries then mostly need no sorting by name.
	slices.Reverse(b.groups[first:])
}

// dirKey is the Key of the directory whose name is segments [p, q) of the
// first key under it: the parent's Key, then that key's separator and name
// text. Building on the parent's Key rather than taking the key's own prefix
// keeps every directory's Key a prefix of its children's, which Move relies
// on; the two differ only when keys mix separators.
func (b *builder) dirKey(it *item, parent *Node, p, q int) string {
	key := it.key
	end := b.end(it, q-1)
	if p == 0 {
		return key[:end]
	}
	cut := b.end(it, p-1)
	if b.uniform() || (cut == len(parent.Key) && key[:cut] == parent.Key) {
		return key[:end]
	}
	return parent.Key + key[cut:end]
}

// uniform reports whether all keys use one separator, so that keys with the
// same segment path are the same text and no file's key can differ from
// its directory's Key.
func (b *builder) uniform() bool {
	return len(b.sep) == 1 && (b.sep == "/" || !b.slash)
}

// markOdd records where each ancestor's part of file n's key ends, for a
// file whose key does not start with its parent's Key.
func (b *builder) markOdd(n *Node, it *item) {
	cuts := make([]int32, len(b.path))
	for i, p := range b.path {
		cuts[i] = int32(b.end(it, p-1))
	}
	b.t.setOdd(n, oddKey{cuts: cuts})
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

// newNode returns a zero node with the next ID. Nodes are numbered as they
// are made: a directory's children get consecutive IDs in name order when
// the directory is filled, and directories are filled depth first in name
// order. Numbering here rather than in a separate walk saves a pass over
// every node.
func (b *builder) newNode() *Node {
	if len(b.slab) == cap(b.slab) {
		size := 1024 // should the bound be wrong
		if b.slab == nil {
			size = b.nodes
		}
		b.slab = make([]Node, 0, size)
	}
	b.slab = b.slab[:len(b.slab)+1]
	n := &b.slab[len(b.slab)-1]
	n.ID = b.t.next
	b.t.next++
	return n
}

// newPtrs returns a children slice of length n carved from a shared block.
// Its capacity is exactly n, so a later insert reallocates instead of
// writing into a neighbour's children.
func (b *builder) newPtrs(n int) []*Node {
	if n == 0 {
		return nil
	}
	if cap(b.ptrs)-len(b.ptrs) < n {
		size := 1024
		if b.ptrs == nil {
			size = b.nodes
		}
		b.ptrs = make([]*Node, 0, max(n, size))
	}
	s := b.ptrs[len(b.ptrs) : len(b.ptrs)+n : len(b.ptrs)+n]
	b.ptrs = b.ptrs[:len(b.ptrs)+n]
	return s
}
