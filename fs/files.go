package fs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// The checkpoint as files: a read-only directory in the root (".files" by
// default) holding the .safetensors file, or the index and every shard,
// each byte for byte what the next write-back would leave on disk, and
// for a directory source the files a loader needs beside them
// (checkpoint.FileSet decides all of it; this file only serves it).
//
// Every version of a file is an inode of its own. A lookup asks the
// checkpoint for the file's current stamp and hands out the inode of that
// stamp, a new one after an edit; the kernel is told not to keep the name
// (entry timeout 0, see filesRawFS), so every open of the path looks it up
// and gets the current version, while a file already open stays on its
// inode, whose bytes never change. So a reader sees one version from open
// to close, the kernel's page cache of a version never needs dropping, and
// an unedited file can be served by the kernel itself straight from the
// checkpoint file (FUSE passthrough, kernel 6.9+, root): passthrough ties
// an inode to one backing file for as long as it is open, which holds
// because an inode is one version.

// filesIno are the inode numbers of /.files/: the directory itself, then
// one per subdirectory and per version of a file, counted from
// filesInoBase (above every tensor's and below the created files' 1<<62).
const (
	inoFilesDir  = 4
	filesInoBase = 1 << 61
)

func isFilesVersion(ino uint64) bool { return ino >= filesInoBase && ino < 1<<62 }

// filesView is the state of the files directory.
type filesView struct {
	f    *FS
	set  *checkpoint.FileSet
	name string // the directory's name in the root

	next atomic.Uint64 // the last inode number given out
	// dirs are the subdirectories the shard names make ("" is the
	// directory itself), each with its entries' names and whether each
	// is a directory.
	dirs    map[string]map[string]bool
	dirInos map[string]uint64

	mu  sync.Mutex
	cur map[string]fileVersion // by path: the version last looked up
}

// fileVersion is one version of one file: the inode that shows it.
type fileVersion struct {
	info checkpoint.FileInfo
	ino  uint64
}

// newFilesView shows set under name in the root.
func newFilesView(f *FS, set *checkpoint.FileSet, name string) *filesView {
	v := &filesView{f: f, set: set, name: name, dirs: map[string]map[string]bool{"": {}}, dirInos: map[string]uint64{"": inoFilesDir}, cur: map[string]fileVersion{}}
	v.next.Store(filesInoBase)
	for _, n := range set.Names() {
		v.addPath(n)
	}
	return v
}

// addPath enters a file (and the directories its name makes).
func (v *filesView) addPath(p string) {
	dir, isDir := "", false
	segs := strings.Split(p, "/")
	for i, s := range segs {
		isDir = i < len(segs)-1
		entries := v.dirs[dir]
		if was, taken := entries[s]; taken && was != isDir {
			return // a file and a directory of one name: the first stays
		}
		entries[s] = isDir
		dir = path.Join(dir, s)
		if isDir && v.dirs[dir] == nil {
			v.dirs[dir] = map[string]bool{}
			v.dirInos[dir] = v.next.Add(1)
		}
	}
}

// sibling reports whether name (in the directory itself) is a sibling
// file, finding the siblings first if that was not done yet.
func (v *filesView) sibling(name string) bool {
	return slices.Contains(v.set.Siblings(), name)
}

// version is the current version of the file at p.
func (v *filesView) version(p string) (fileVersion, error) {
	info, err := v.set.Stat(p)
	if err != nil {
		return fileVersion{}, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if cur, ok := v.cur[p]; ok && cur.info.Stamp == info.Stamp {
		return cur, nil
	}
	fv := fileVersion{info: info, ino: v.next.Add(1)}
	v.cur[p] = fv
	return fv, nil
}

func (v *filesView) fillFileAttr(a *fuse.Attr, fv fileVersion) {
	i := fv.info
	// Read-only, and never more open than the mount's own files (perm.go).
	mode := v.f.fileMode() &^ 0o222
	v.f.fillCommon(a, fv.ino, syscall.S_IFREG|mode, uint64(i.Size))
	if i.Own {
		a.Mode = syscall.S_IFREG | (i.Mode & mode)
		a.Owner = fuse.Owner{Uid: i.Uid, Gid: i.Gid}
	}
	setTimes(a, i.MTime, i.MTime)
}

func (v *filesView) fillDirAttr(a *fuse.Attr, ino uint64) {
	v.f.fillCommon(a, ino, syscall.S_IFDIR|(v.f.dirMode()&^0o222), 0)
	a.Nlink = 2
}

// rootNode is the files directory as a child of the mount's root.
func (v *filesView) rootNode(ctx context.Context, parent *gofs.Inode, out *fuse.EntryOut) *gofs.Inode {
	v.fillDirAttr(&out.Attr, inoFilesDir)
	return parent.NewInode(ctx, &filesDirNode{v: v}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: inoFilesDir})
}

// filesErrno is the errno for err from the file set.
func filesErrno(err error) syscall.Errno {
	switch {
	case errors.Is(err, checkpoint.ErrStale):
		return syscall.ESTALE
	case errors.Is(err, fs.ErrNotExist):
		return syscall.ENOENT
	}
	return toErrno(err)
}

// filesDirNode is the files directory or one of its subdirectories.
type filesDirNode struct {
	gofs.Inode
	v    *filesView
	path string // "" for the files directory itself
}

var (
	_ = (gofs.NodeLookuper)((*filesDirNode)(nil))
	_ = (gofs.NodeOpendirHandler)((*filesDirNode)(nil))
	_ = (gofs.NodeGetattrer)((*filesDirNode)(nil))
	_ = (gofs.NodeStatfser)((*filesDirNode)(nil))
	_ = (gofs.NodeGetxattrer)((*filesDirNode)(nil))
	_ = (gofs.NodeCreater)((*filesDirNode)(nil))
	_ = (gofs.NodeMkdirer)((*filesDirNode)(nil))
	_ = (gofs.NodeMknoder)((*filesDirNode)(nil))
	_ = (gofs.NodeUnlinker)((*filesDirNode)(nil))
	_ = (gofs.NodeRmdirer)((*filesDirNode)(nil))
	_ = (gofs.NodeRenamer)((*filesDirNode)(nil))
	_ = (gofs.NodeSymlinker)((*filesDirNode)(nil))
	_ = (gofs.NodeLinker)((*filesDirNode)(nil))
	_ = (gofs.NodeSetattrer)((*filesDirNode)(nil))
)

func (d *filesDirNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.v.fillDirAttr(&out.Attr, d.v.dirInos[d.path])
	return 0
}

func (d *filesDirNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return d.v.f.statfs(out)
}

func (d *filesDirNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if errno := unsupportedXattr(attr); errno != 0 {
		return 0, errno
	}
	return 0, syscall.ENODATA
}

func (d *filesDirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	v := d.v
	p := path.Join(d.path, name)
	isDir, ok := v.dirs[d.path][name]
	if !ok && (d.path != "" || !v.sibling(name)) {
		return nil, syscall.ENOENT
	}
	if isDir {
		ino := v.dirInos[p]
		v.fillDirAttr(&out.Attr, ino)
		return d.NewInode(ctx, &filesDirNode{v: v, path: p}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino}), 0
	}
	fv, err := v.version(p)
	if err != nil {
		return nil, filesErrno(err)
	}
	v.fillFileAttr(&out.Attr, fv)
	return d.NewInode(ctx, &fileNode{v: v, path: p, ver: fv}, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: fv.ino}), 0
}

// entries lists the directory: its files and subdirectories, then (in the
// files directory itself) the siblings, by name.
func (d *filesDirNode) entries() []fuse.DirEntry {
	v := d.v
	names := make([]string, 0, len(v.dirs[d.path]))
	for n := range v.dirs[d.path] {
		names = append(names, n)
	}
	if d.path == "" {
		for _, n := range v.set.Siblings() {
			if _, own := v.dirs[""][n]; !own {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	out := make([]fuse.DirEntry, 0, len(names))
	for _, n := range names {
		p := path.Join(d.path, n)
		if v.dirs[d.path][n] {
			out = append(out, fuse.DirEntry{Name: n, Mode: syscall.S_IFDIR, Ino: v.dirInos[p]})
			continue
		}
		// The inode of the version a lookup would find now; a file that
		// cannot be looked at is listed all the same (its lookup says why).
		var ino uint64
		if fv, err := v.version(p); err == nil {
			ino = fv.ino
		}
		out = append(out, fuse.DirEntry{Name: n, Mode: syscall.S_IFREG, Ino: ino})
	}
	return out
}

func (d *filesDirNode) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return &dirHandle{d: d}, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

// The files directory is read-only: its names are the checkpoint's.
func (d *filesDirNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EPERM
}
func (d *filesDirNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}
func (d *filesDirNode) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}
func (d *filesDirNode) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }
func (d *filesDirNode) Rmdir(ctx context.Context, name string) syscall.Errno  { return syscall.EPERM }
func (d *filesDirNode) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EPERM
}
func (d *filesDirNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}
func (d *filesDirNode) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}
func (d *filesDirNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EPERM
}

// size: a files directory is listed whole (it is small).
func (d *filesDirNode) size() (int, bool) { return 0, false }

// fileNode is one version of one file.
type fileNode struct {
	gofs.Inode
	v    *filesView
	path string
	ver  fileVersion
}

var (
	_ = (gofs.NodeGetattrer)((*fileNode)(nil))
	_ = (gofs.NodeOpener)((*fileNode)(nil))
	_ = (gofs.NodeGetxattrer)((*fileNode)(nil))
	_ = (gofs.NodeSetattrer)((*fileNode)(nil))
)

func (n *fileNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.v.fillFileAttr(&out.Attr, n.ver)
	return 0
}

func (n *fileNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EPERM
}

func (n *fileNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if errno := unsupportedXattr(attr); errno != 0 {
		return 0, errno
	}
	return 0, syscall.ENODATA
}

// Open opens this version, read-only. ESTALE when it is not the current
// one any more (an edit between the lookup and the open): the kernel then
// looks the name up again and opens the version found.
func (n *fileNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EACCES
	}
	view, err := n.v.set.Open(n.path, n.ver.info.Stamp)
	if err != nil {
		if !errors.Is(err, checkpoint.ErrStale) {
			n.v.f.logf("open %s/%s: %v", n.v.name, n.path, err)
		}
		return nil, 0, filesErrno(err)
	}
	h := &fileHandle{view: view, n: n}
	// A version's bytes never change: its cached pages stay good.
	if view.Backing() != nil {
		return &passthroughHandle{h}, fuse.FOPEN_KEEP_CACHE, 0
	}
	return h, fuse.FOPEN_KEEP_CACHE, 0
}

// fileHandle is an open version; the daemon serves its reads.
type fileHandle struct {
	view *checkpoint.FileView
	n    *fileNode
}

var (
	_ = (gofs.FileReader)((*fileHandle)(nil))
	_ = (gofs.FileReleaser)((*fileHandle)(nil))
	_ = (gofs.FilePassthroughFder)((*passthroughHandle)(nil))
)

func (h *fileHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	segs, release, err := h.view.ReadContext(ctx, off, len(dest))
	if err != nil {
		return nil, h.n.v.f.readFailed(&h.n.Inode, off, err)
	}
	return &mappedResult{segs: segs, release: release}, 0
}

func (h *fileHandle) Release(ctx context.Context) syscall.Errno {
	h.view.Close()
	return 0
}

// passthroughHandle is an open version whose bytes are one local file's
// at their own offsets: the kernel reads that file itself when it can
// (go-fuse registers it as the inode's backing file once, at the first
// open, which is why an inode must never change versions), else the
// daemon serves it like any other.
type passthroughHandle struct{ *fileHandle }

func (h *passthroughHandle) PassthroughFd() (int, bool) {
	b := h.view.Backing()
	if b == nil {
		return 0, false
	}
	return int(b.Fd()), true
}

// FilesDirName checks a name for the files directory.
func FilesDirName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || len(name) > 255 {
		return fmt.Errorf("%q cannot name a directory in the mount's root", name)
	}
	if name == MetadataName || name == IndexMetadataName {
		return fmt.Errorf("%q is taken by the file of that name in the mount's root", name)
	}
	return nil
}

// setupFiles shows the checkpoint as files under opt.FilesDir, if set:
// called by New.
func (f *FS) setupFiles() error {
	if f.opt.FilesDir == "" {
		return nil
	}
	if err := FilesDirName(f.opt.FilesDir); err != nil {
		return err
	}
	set := f.ck.Files(checkpoint.FilesOptions{Siblings: f.opt.FilesSiblings, Include: f.opt.FilesInclude,
		Logger: f.logger})
	f.files = newFilesView(f, set, f.opt.FilesDir)
	return nil
}
