package fs

import (
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// filesRawFS answers a lookup of a file in the files directory with an
// entry timeout of 0, so the kernel asks again at every open of the path
// and gets the file's current version (a new inode after an edit).
// go-fuse replaces a 0 a node sets with the mount's timeout, hence this
// layer; everything else passes through.
type filesRawFS struct {
	fuse.RawFileSystem
}

func (r *filesRawFS) Lookup(cancel <-chan struct{}, header *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	st := r.RawFileSystem.Lookup(cancel, header, name, out)
	if st.Ok() && isFilesVersion(out.Attr.Ino) && out.Attr.Mode&syscall.S_IFMT == syscall.S_IFREG {
		out.EntryValid, out.EntryValidNsec = 0, 0
	}
	return st
}
