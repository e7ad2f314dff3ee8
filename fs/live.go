package fs

import (
	"sync"

	"github.com/hanwen/go-fuse/v2/fs"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// liveNodes are the inodes the kernel may cache something of, by the
// tensor they show: its raw file, and its .npy views (one per name it was
// looked up or created under). A change to a tensor must reach every one
// of them but the one it came through.
//
// go-fuse keeps one node per inode number: when two lookups race (or a
// name is looked up again, as views are at every use) the node a Lookup
// made may be dropped for the one go-fuse already has, and go-fuse never
// tells the loser. So a node made by a lookup or create is recorded only
// if no node of its inode number is, and a request reaching a node
// (Open, Setxattr, a close) proves it is the kernel's: it is marked held
// and replaces any other of its number. OnForget (NodeOnForgetter)
// removes a node when the kernel lets go of it, with any never-held node
// of its number (a lookup's loser).
type liveNodes struct {
	mu sync.Mutex
	// byID, indexed by tensor ID, holds a small value per tensor rather
	// than a set: every tensor a listing (ls -l, du) looks up is here,
	// almost always with one node. A map of sets cost 217 bytes a tensor
	// (20 MB for 94k tensors), a map of these values 50 (4.7 MB), this
	// slice 24: it is made at the first lookup, as long as the checkpoint
	// had tensors at mount (tensors), and grows for new ones. A zero set
	// is a tensor without nodes.
	byID    []liveSet
	tensors int
}

// liveSet is the nodes of one tensor: the first, and the rare others (both
// the raw file and a view live, or a view under several names). Those are
// behind a pointer, which keeps the usual set at 24 bytes.
type liveSet struct {
	first nodeRef
	more  *[]nodeRef
}

func (s *liveSet) refs() []nodeRef {
	if s.first.n == nil {
		return nil
	}
	if s.more == nil {
		return []nodeRef{s.first}
	}
	return append([]nodeRef{s.first}, *s.more...)
}

func setOf(refs []nodeRef) liveSet {
	switch len(refs) {
	case 0:
		return liveSet{}
	case 1:
		return liveSet{first: refs[0]}
	}
	more := refs[1:len(refs):len(refs)]
	return liveSet{first: refs[0], more: &more}
}

type nodeRef struct {
	n    *fs.Inode
	view bool
	// held: a request reached n, so it is the node the kernel has for
	// its inode number.
	held bool
}

// add records node n of tensor id, just made by a lookup or create: it may
// be a loser, so it is recorded only if no node of its number is.
func (l *liveNodes) add(id checkpoint.ID, n *fs.Inode, view bool) {
	l.record(id, n, view, false)
}

// hold records node n of tensor id, reached by a request: it is the
// kernel's, and replaces any other node of its number.
func (l *liveNodes) hold(id checkpoint.ID, n *fs.Inode, view bool) {
	l.record(id, n, view, true)
}

// at returns tensor id's set; the zero set if it has none.
func (l *liveNodes) at(id checkpoint.ID) liveSet {
	if id < 0 || int(id) >= len(l.byID) {
		return liveSet{}
	}
	return l.byID[id]
}

// slot returns where tensor id's set is kept, making room for it.
func (l *liveNodes) slot(id checkpoint.ID) *liveSet {
	if int(id) >= len(l.byID) {
		if l.byID == nil {
			l.byID = make([]liveSet, 0, max(l.tensors, int(id)+1))
		}
		l.byID = append(l.byID, make([]liveSet, int(id)+1-len(l.byID))...)
	}
	return &l.byID[id]
}

func (l *liveNodes) record(id checkpoint.ID, n *fs.Inode, view, held bool) {
	if id == noTensor {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	slot := l.slot(id)
	set := *slot
	if set.first.n == nil {
		*slot = liveSet{first: nodeRef{n, view, held}}
		return
	}
	if set.first.n == n && set.more == nil {
		if held && !set.first.held {
			slot.first.held = true
		}
		return
	}
	ino := n.StableAttr().Ino
	refs := set.refs()
	kept := refs[:0]
	found, other := false, false
	for _, r := range refs {
		switch {
		case r.n == n:
			found = true
			r.held = r.held || held
			kept = append(kept, r)
		case held && r.n.StableAttr().Ino == ino:
			// Another node of n's number, which requests reach: a
			// lookup's loser, or one the kernel let go of.
		default:
			other = other || r.n.StableAttr().Ino == ino
			kept = append(kept, r)
		}
	}
	if !found && !other {
		kept = append(kept, nodeRef{n, view, held})
	}
	*slot = setOf(kept)
}

// remove forgets node n of tensor id (OnForget: the kernel let go of it),
// and any never-held node of its number (a lookup's loser, which go-fuse
// never forgets since it never knew it).
func (l *liveNodes) remove(id checkpoint.ID, n *fs.Inode) {
	l.mu.Lock()
	defer l.mu.Unlock()
	set := l.at(id)
	if set.first.n == nil {
		return
	}
	ino := n.StableAttr().Ino
	refs := set.refs()
	kept := refs[:0]
	for _, r := range refs {
		if r.n != n && (r.held || r.n.StableAttr().Ino != ino) {
			kept = append(kept, r)
		}
	}
	l.byID[id] = setOf(kept) // the zero set when none is kept
}

func (l *liveNodes) of(id checkpoint.ID) []nodeRef {
	l.mu.Lock()
	defer l.mu.Unlock()
	set := l.at(id)
	return set.refs()
}

// any reports whether the kernel may still hold a node of tensor id.
func (l *liveNodes) any(id checkpoint.ID) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.at(id).first.n != nil
}

// dropIfUnused lets the checkpoint forget removed tensor id once the
// kernel holds no node of it (no file has it open).
func (f *FS) dropIfUnused(id checkpoint.ID) {
	if id != noTensor && !f.live.any(id) {
		f.ck.Drop(id)
	}
}

// viewInos gives each .npy view an inode number per (tensor, key): a view
// looked up again after its tensor was renamed is a new inode, so the
// kernel's cached entry of the old name (which Open refuses as stale)
// never stands for the new one.
type viewInos struct {
	mu  sync.Mutex
	rec map[checkpoint.ID]viewIno
}

type viewIno struct {
	key string
	ino uint64
}

func (f *FS) viewIno(id checkpoint.ID, key string) uint64 {
	v := &f.views
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.rec == nil {
		v.rec = map[checkpoint.ID]viewIno{}
	}
	r, ok := v.rec[id]
	switch {
	case !ok:
		r = viewIno{key, npyIno(id)}
	case r.key != key:
		r = viewIno{key, f.nextIno.Add(1)}
	}
	v.rec[id] = r
	return r.ino
}
