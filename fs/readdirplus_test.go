package fs

import (
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// walk lists n directories of two files each in order, as a listing
// command would, and looks up each one's files when stat is true. It
// returns how many listings sent their files' attributes, and how many
// files were looked up one by one.
func walk(p *plusPolicy, n int, stat bool) (withFiles, lookups int) {
	entries := []fuse.DirEntry{{Name: "weight", Mode: syscall.S_IFREG}, {Name: "sub", Mode: syscall.S_IFDIR}, {Name: "bias", Mode: syscall.S_IFREG}}
	for range n {
		d := &dirNode{}
		if p.listing(d, entries) {
			withFiles++
			continue // the kernel has the files' attributes: no lookups
		}
		if stat {
			for range 2 {
				p.lookedUp(d)
				lookups++
			}
		}
	}
	return withFiles, lookups
}

// TestPlusPolicy: listings carry their files' attributes only while a walk
// looks up the files it lists; a walk that stops doing so is noticed
// within probeEvery listings.
func TestPlusPolicy(t *testing.T) {
	const dirs = 3300
	t.Run("find", func(t *testing.T) {
		var p plusPolicy
		if with, _ := walk(&p, dirs, false); with != 0 {
			t.Errorf("a walk that looks nothing up got %d listings with attributes, want 0", with)
		}
	})
	t.Run("ls -lR", func(t *testing.T) {
		var p plusPolicy
		with, lookups := walk(&p, dirs, true)
		// The first listing, and one in probeEvery+1 after it, go
		// without: their files are looked up.
		plain := dirs - with
		if want := 1 + (dirs-1)/(probeEvery+1) + 1; plain > want || lookups != 2*plain {
			t.Errorf("%d of %d listings without attributes (%d lookups), want at most %d", plain, dirs, lookups, want)
		}
	})
	t.Run("find after ls -lR", func(t *testing.T) {
		var p plusPolicy
		walk(&p, dirs, true)
		if with, _ := walk(&p, dirs, false); with > probeEvery {
			t.Errorf("a find after ls -lR got %d listings with attributes, want at most %d", with, probeEvery)
		}
	})
	t.Run("a lookup elsewhere", func(t *testing.T) {
		// A file looked up in another directory (a reader opening a
		// tensor) says nothing of the walk.
		var p plusPolicy
		entries := []fuse.DirEntry{{Name: "weight", Mode: syscall.S_IFREG}}
		p.listing(&dirNode{}, entries)
		p.lookedUp(&dirNode{})
		if p.listing(&dirNode{}, entries) {
			t.Error("a lookup outside the last listed directory turned attributes on")
		}
	})
	t.Run("directories only", func(t *testing.T) {
		// A directory of subdirectories has no file to look up: it
		// neither probes nor ends a probe.
		var p plusPolicy
		files := []fuse.DirEntry{{Name: "weight", Mode: syscall.S_IFREG}}
		dirsOnly := []fuse.DirEntry{{Name: "sub", Mode: syscall.S_IFDIR}}
		probe := &dirNode{}
		p.listing(probe, files)
		if p.listing(&dirNode{}, dirsOnly) {
			t.Error("a listing of subdirectories only sent files' attributes")
		}
		p.lookedUp(probe)
		if !p.listing(&dirNode{}, files) {
			t.Error("the probe's files were looked up after a listing of subdirectories; attributes stayed off")
		}
	})
}
