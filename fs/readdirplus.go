package fs

import (
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// plusPolicy decides whether a directory's READDIRPLUS carries its files'
// attributes, as the kernel's and NFS's adaptive READDIRPLUS do: only
// while a walk is looking its files up anyway.
//
// Attributes sent with a listing make the kernel hold, and go-fuse keep, an
// inode per file (about 500 bytes each): a `find`, which needs no file's
// attributes, would hold one per tensor. Attributes not sent make `ls -lR`
// and `du` look every file up, one round trip each: 94,000 of them over a
// DeepSeek-V3-shaped mount, most of a cold `ls -lR`. So listings go without
// the files' attributes until the files of one so listed (the probe) are
// looked up before the next directory with files is listed: the walk stats
// what it lists. Listings then carry them, and every probeEvery-th listing
// goes without again, to notice a walk that stopped statting (find after
// ls -lR).
type plusPolicy struct {
	mu     sync.Mutex
	on     bool // listings carry their files' attributes
	listed int  // listings with attributes since the last probe

	probe   atomic.Pointer[dirNode] // the last directory listed without them
	statted atomic.Bool             // a file of probe was looked up since
}

// probeEvery is how many listings carry attributes between two probes: a
// stat walk then looks up one directory's files in 33, and a find after
// it holds the inodes of 32 directories' files.
const probeEvery = 32

// listing decides for a listing of d, whose entries are given.
func (p *plusPolicy) listing(d *dirNode, entries []fuse.DirEntry) bool {
	hasFile := false
	for i := range entries {
		if entries[i].Mode != syscall.S_IFDIR {
			hasFile = true
			break
		}
	}
	if !hasFile {
		return false // nothing to send, nothing to learn
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.probe.Load() != nil {
		p.on = p.statted.Load()
		p.probe.Store(nil)
	}
	if p.on && p.listed < probeEvery {
		p.listed++
		return true
	}
	p.listed = 0
	p.statted.Store(false)
	p.probe.Store(d)
	return false
}

// lookedUp notes a LOOKUP of a file of directory parent.
func (p *plusPolicy) lookedUp(parent *dirNode) {
	if p.probe.Load() == parent {
		p.statted.Store(true)
	}
}
