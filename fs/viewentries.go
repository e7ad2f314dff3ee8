package fs

import (
	"strings"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// viewEntriesFS answers lookups and creates of view names (<tensor>.npy,
// <tensor>.f32.npy, present or not) with an entry timeout of 0: the
// kernel looks such a name up again at every use.
//
// A view's name changes meaning without the kernel seeing it: rename or
// remove the tensor `w` and `w.npy` is gone, rename `v` to `w` and it
// appears. An invalidation of the entry cannot be sent from the request
// that changed it (the kernel holds the directory until it returns; see
// notify.go), so it arrives after the rename or unlink has returned, and a
// stat in between would see the old entry for as long as the cache lasts.
// A lookup per use of a view name costs one round trip, only for views
// (np.load opens each once), and makes every stat, open or create of one
// see the tensor as it is.
//
// go-fuse replaces a 0 a node sets with the mount's timeout, hence this
// layer; everything else passes through.
type viewEntriesFS struct {
	fuse.RawFileSystem
}

// isViewName reports whether name may be a view's: every view ends in
// .npy (a tensor so named is looked up each time too, which costs only
// time).
func isViewName(name string) bool { return strings.HasSuffix(name, npyExt) }

func (r *viewEntriesFS) Lookup(cancel <-chan struct{}, header *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	st := r.RawFileSystem.Lookup(cancel, header, name, out)
	if isViewName(name) {
		// Present or absent (node ID 0: a negative entry), for no time.
		out.EntryValid, out.EntryValidNsec = 0, 0
	}
	return st
}

func (r *viewEntriesFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	st := r.RawFileSystem.Create(cancel, in, name, out)
	if isViewName(name) {
		out.EntryValid, out.EntryValidNsec = 0, 0
	}
	return st
}

func (r *viewEntriesFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	st := r.RawFileSystem.Mknod(cancel, in, name, out)
	if isViewName(name) {
		out.EntryValid, out.EntryValidNsec = 0, 0
	}
	return st
}
