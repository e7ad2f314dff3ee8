package fs

import (
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// listingFS makes opening a directory cost no round trip, and lets the
// kernel keep every directory's listing.
//
// A directory opened through FUSE costs an OPENDIR and a RELEASEDIR on top
// of its READDIRs: two of the five round trips per directory that made
// `find` over a 100k-tensor mount 12-17x slower than on a local disk. When
// OPENDIR fails with ENOSYS the kernel stops sending OPENDIR and RELEASEDIR
// for the rest of the mount and opens every directory with FOPEN_KEEP_CACHE
// and FOPEN_CACHE_DIR: the first listing of a directory fills the kernel's
// cache of it, and later ones (a second find, ls -lR) send no request at
// all. The kernel resets a directory's cached listing whenever it changes
// the directory itself (create, unlink, rename, mkdir, rmdir); a name the
// daemon adds or removes on its own must be announced (FS.entryChanged).
//
// READDIR and READDIRPLUS then arrive without a file handle; go-fuse's node
// API serves listings only through one, so each such request gets a handle
// for its duration. Entry offsets are positions in the listing, so a request
// that continues a listing seeks to where the previous one stopped.
//
// Kernels before 5.1 would fail the opendir(3) instead: there (no
// FUSE_NO_OPENDIR_SUPPORT in INIT) directories open the ordinary way.
type listingFS struct {
	fuse.RawFileSystem
	server *fuse.Server
}

func (l *listingFS) Init(s *fuse.Server) {
	l.server = s
	l.RawFileSystem.Init(s)
}

func (l *listingFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if l.server.KernelSettings().Flags64()&fuse.CAP_NO_OPENDIR_SUPPORT == 0 {
		return l.RawFileSystem.OpenDir(cancel, in, out)
	}
	return fuse.ENOSYS
}

func (l *listingFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return l.withHandle(cancel, in, func(in *fuse.ReadIn) fuse.Status {
		return l.RawFileSystem.ReadDir(cancel, in, out)
	})
}

func (l *listingFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return l.withHandle(cancel, in, func(in *fuse.ReadIn) fuse.Status {
		return l.RawFileSystem.ReadDirPlus(cancel, in, out)
	})
}

// withHandle runs read with a directory handle of its own when the kernel
// sent none.
func (l *listingFS) withHandle(cancel <-chan struct{}, in *fuse.ReadIn, read func(*fuse.ReadIn) fuse.Status) fuse.Status {
	if in.Fh != 0 {
		return read(in)
	}
	var open fuse.OpenOut
	st := l.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: in.InHeader, Flags: syscall.O_RDONLY | syscall.O_DIRECTORY}, &open)
	if !st.Ok() {
		return st
	}
	defer l.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: in.InHeader, Fh: open.Fh})
	with := *in
	with.Fh = open.Fh
	return read(&with)
}
