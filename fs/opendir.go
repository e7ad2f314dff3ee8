package fs

import (
	"sync"
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
// API serves listings only through one, so the daemon opens one per listing
// (see withHandle). Entry offsets are positions in the listing, so a
// request can continue any listing where the previous one stopped.
//
// Kernels before 5.1 would fail the opendir(3) instead: there (no
// FUSE_NO_OPENDIR_SUPPORT in INIT) directories open the ordinary way.
type listingFS struct {
	fuse.RawFileSystem
	server *fuse.Server

	// open holds, per directory node ID, the handle of a listing in
	// progress, so the request that continues it (at least the last one,
	// which finds the end) reuses the handle and the listing it read
	// instead of opening and listing the directory again: half the
	// requests of a find, and garbage the collector would otherwise chase
	// through a heap of inodes.
	mu   sync.Mutex
	open map[uint64]uint64
}

// maxOpenListings bounds the handles kept for listings a reader abandoned
// midway.
const maxOpenListings = 256

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
	return l.withHandle(cancel, in, out, func(in *fuse.ReadIn) fuse.Status {
		return l.RawFileSystem.ReadDir(cancel, in, out)
	})
}

func (l *listingFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return l.withHandle(cancel, in, out, func(in *fuse.ReadIn) fuse.Status {
		return l.RawFileSystem.ReadDirPlus(cancel, in, out)
	})
}

// withHandle runs read with a directory handle of its own when the kernel
// sent none: the one of the listing this request continues, else a new one.
// The handle is kept until a request finds the end of the listing.
func (l *listingFS) withHandle(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList, read func(*fuse.ReadIn) fuse.Status) fuse.Status {
	if in.Fh != 0 {
		return read(in)
	}
	fh := l.take(in.NodeId, in.Offset)
	if fh == 0 {
		var open fuse.OpenOut
		st := l.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: in.InHeader, Flags: syscall.O_RDONLY | syscall.O_DIRECTORY}, &open)
		if !st.Ok() {
			return st
		}
		fh = open.Fh
	}
	// The request is ours for its duration: lend it the handle rather
	// than copy it (a copy per request is garbage to collect).
	in.Fh = fh
	st := read(in)
	in.Fh = 0
	// Nothing added (an error, or the end): the listing is over.
	if !st.Ok() || out.Offset == in.Offset || !l.keep(in.NodeId, fh) {
		l.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: in.InHeader, Fh: fh})
	}
	return st
}

// take returns (and removes) the kept handle of directory node if the
// request continues a listing; a request at offset 0 starts a new one, so
// an older listing's handle is released.
func (l *listingFS) take(node, off uint64) uint64 {
	l.mu.Lock()
	fh, ok := l.open[node]
	if ok {
		delete(l.open, node)
	}
	l.mu.Unlock()
	if ok && off == 0 {
		l.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: node}, Fh: fh})
		return 0
	}
	return fh
}

// keep records fh as directory node's listing in progress; false if it
// cannot be kept (another listing of it is kept, or too many are).
func (l *listingFS) keep(node, fh uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, busy := l.open[node]; busy || len(l.open) >= maxOpenListings {
		return false
	}
	if l.open == nil {
		l.open = map[uint64]uint64{}
	}
	l.open[node] = fh
	return true
}
