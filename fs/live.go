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
// A node is registered when it is made and again at every Open and
// Setxattr: go-fuse keeps one node per inode number, and when two lookups
// race (or a name is looked up again after the entry timeout) the node a
// Lookup made may be dropped for the one go-fuse already had. Requests
// only ever reach the kept one, so registering there corrects the record
// before the kernel can have cached pages to invalidate.
type liveNodes struct {
	mu sync.Mutex
	// byID holds a small value per tensor rather than a set: every tensor
	// a listing (ls -l, du) looks up is here, almost always with one node,
	// and a map per tensor cost 217 bytes each (20 MB for 94k tensors)
	// against about 50 for this.
	byID map[checkpoint.ID]liveSet
}

// liveSet is the nodes of one tensor: the first, and the rare others (both
// the raw file and a view live, or a view under several names).
type liveSet struct {
	first nodeRef
	more  []nodeRef
}

func (s *liveSet) refs() []nodeRef {
	if s.first.n == nil {
		return nil
	}
	return append([]nodeRef{s.first}, s.more...)
}

func setOf(refs []nodeRef) liveSet {
	switch len(refs) {
	case 0:
		return liveSet{}
	case 1:
		return liveSet{first: refs[0]}
	}
	return liveSet{first: refs[0], more: refs[1:len(refs):len(refs)]}
}

func (l *liveNodes) add(id checkpoint.ID, n *fs.Inode, view bool) {
	if id == noTensor {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byID == nil {
		l.byID = map[checkpoint.ID]liveSet{}
	}
	set := l.byID[id]
	if set.first.n == nil {
		l.byID[id] = liveSet{first: nodeRef{n, view}}
		return
	}
	if set.first.n == n && set.more == nil {
		return
	}
	refs := set.refs()
	for _, r := range refs {
		if r.n == n {
			return
		}
	}
	// A node of the same inode number that the kernel no longer holds
	// was a Lookup's loser (or is gone): this one replaces it.
	ino := n.StableAttr().Ino
	kept := refs[:0]
	for _, r := range refs {
		if !(r.n.StableAttr().Ino == ino && r.n.Forgotten()) {
			kept = append(kept, r)
		}
	}
	l.byID[id] = setOf(append(kept, nodeRef{n, view}))
}

func (l *liveNodes) remove(id checkpoint.ID, n *fs.Inode) {
	l.mu.Lock()
	defer l.mu.Unlock()
	set, ok := l.byID[id]
	if !ok {
		return
	}
	refs := set.refs()
	kept := refs[:0]
	for _, r := range refs {
		if r.n != n {
			kept = append(kept, r)
		}
	}
	if len(kept) == 0 {
		delete(l.byID, id)
		return
	}
	l.byID[id] = setOf(kept)
}

type nodeRef struct {
	n    *fs.Inode
	view bool
}

func (l *liveNodes) of(id checkpoint.ID) []nodeRef {
	l.mu.Lock()
	defer l.mu.Unlock()
	set := l.byID[id]
	return set.refs()
}

// any reports whether the kernel may still hold a node of tensor id. A
// node it does not hold (a Lookup's loser) does not count.
func (l *liveNodes) any(id checkpoint.ID) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	set := l.byID[id]
	for _, r := range set.refs() {
		if !r.n.Forgotten() {
			return true
		}
	}
	return false
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
