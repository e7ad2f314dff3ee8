package fs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// dirHandle reads a directory for one listing: opened by listingFS for the
// requests of one listing, or by the kernel for one open directory (kernels
// without zero-message opendir). It lists the directory once, at the first
// entry read, so one listing sees one state of it. The tree's directories
// and the files view's (files.go) are read through it alike.
//
// READDIRPLUS answers with full attributes for subdirectories, and for
// files only while a walk stats what it lists (plusPolicy, readdirplus.go):
// the kernel then holds, and the daemon keeps, an inode per directory a
// `find` walks rather than one per entry (go-fuse costs about 500 bytes per
// inode; a find over a 100k-tensor tree with an inode per entry took 211 MB
// and spent most of its time collecting garbage), while `ls -lR` and `du`
// need not look every file up. (The files view always sends files without
// a node: a file so sent is looked up anew, so it is always the current
// version.)
type dirHandle struct {
	d         listed
	dir       *dirNode // d, when it is the tree's: its files may be sent with attributes
	withFiles bool     // this listing sends its files' attributes
	dots      [dots]fuse.DirEntry
	entries   []fuse.DirEntry // built at the first entry read, after the dots
	pos       int             // the next entry's position (the dots first): offsets are positions
}

// dots: every listing starts with "." and "..", as on any file system
// (`ls -a` shows them; go-fuse lists only what the file system gives it).
// The kernel takes them as they are: it looks neither up, and ignores the
// attributes of READDIRPLUS for them.
const dots = 2

// listed is a directory a dirHandle lists.
type listed interface {
	fs.InodeEmbedder
	// entries lists the directory; an entry's offset is its position.
	entries() []fuse.DirEntry
	// size is len(entries()) when that is known without building the
	// list; ok false otherwise.
	size() (n int, ok bool)
	Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno)
}

var (
	_ = (fs.FileReaddirenter)((*dirHandle)(nil))
	_ = (fs.FileSeekdirer)((*dirHandle)(nil))
	_ = (fs.FileLookuper)((*dirHandle)(nil))
	_ = (fs.FileReleasedirer)((*dirHandle)(nil))
)

// OpendirHandle asks the kernel to cache the listing; with zero-message
// opendir it opens every directory so anyway (listingFS).
func (d *dirNode) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return &dirHandle{d: d, dir: d}, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

func (h *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if h.pos < dots {
		return h.dot(), 0
	}
	if h.entries == nil {
		// A request that continues past the end (the one that tells
		// the kernel the listing is complete) need not list anything.
		if n, ok := h.d.size(); ok && h.pos >= dots+n {
			return nil, 0
		}
		h.entries = h.d.entries()
		if h.dir != nil {
			h.withFiles = h.dir.fsys.plus.listing(h.dir, h.entries)
		}
	}
	if h.pos >= dots+len(h.entries) {
		return nil, 0
	}
	e := &h.entries[h.pos-dots]
	h.pos++
	e.Off = uint64(h.pos)
	return e, 0
}

// dot is the entry at h.pos, "." or "..", with the inode number of the
// directory or of its parent (the mount's root is its own parent, as a
// file system's root is).
func (h *dirHandle) dot() *fuse.DirEntry {
	self := h.d.EmbeddedInode()
	e := &h.dots[h.pos]
	e.Name, e.Mode, e.Ino = ".", syscall.S_IFDIR, self.StableAttr().Ino
	if h.pos == 1 {
		e.Name = ".."
		if _, parent := self.Parent(); parent != nil {
			e.Ino = parent.StableAttr().Ino
		}
	}
	h.pos++
	e.Off = uint64(h.pos)
	return e
}

func (h *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	h.pos = int(min(off, 1<<31))
	return 0
}

// Lookup is READDIRPLUS's lookup of the entry Readdirent just returned:
// a subdirectory's inode and attributes, and a file's when withFiles; for
// another file ENOENT, which makes go-fuse send the entry with node ID 0
// (the kernel then lists the name and looks it up only when asked to).
func (h *dirHandle) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	i := h.pos - 1 - dots // the entry just returned
	if i < 0 || i >= len(h.entries) || h.entries[i].Name != name {
		return nil, syscall.ENOENT
	}
	if h.entries[i].Mode != syscall.S_IFDIR && !h.withFiles {
		return nil, syscall.ENOENT
	}
	return h.d.Lookup(ctx, name, out)
}

func (h *dirHandle) Releasedir(ctx context.Context, releaseFlags uint32) {}
