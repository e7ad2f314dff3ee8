// Package fs presents a checkpoint as a FUSE file system. It is a thin
// adapter: names come from package tree, bytes and metadata from package
// checkpoint; the nodes here only translate FUSE requests into calls on those.
//
// Lock order (a lock may be taken while holding only those above it):
//
//  1. npyHandle.mu: a .npy view's handle, which a write may turn into an
//     upload.
//  2. upload.Set.mu, then upload.Buffer.mu (package upload): an upload's
//     content, held across its commit at close.
//  3. npyNode.mu: which tensor a view stands for, held across the commit
//     that may create it; writeHandle.mu: a tensor handle's rewrite, held
//     across its durable commit (the two are never held together).
//  4. namespace.Namespace.mu: the tree, held across the checkpoint call
//     that decides a change of names (package namespace decides them).
//     Below it, its type hints' lock (see package namespace).
//  5. The checkpoint's own locks (see package checkpoint), below all of
//     the above: the checkpoint never calls back into this package.
//  6. Leaves, taken for a moment, nothing called under them: upload.Pool,
//     writerCount, liveNodes, viewInos, consumedSet, dirTimes, plusPolicy,
//     the directory handles' and the files view's mutexes, and the
//     invalidation queue's (notify.go), whose worker talks to the kernel
//     holding none of them. No request notifies the kernel about an inode
//     the kernel may be locking for it (that deadlocks): notifications go
//     through the queue, delivered after the request has returned.
package fs

import (
	"cmp"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/safejaxfs/safejaxfs/fs/namespace"
	"github.com/safejaxfs/safejaxfs/fs/upload"
	"github.com/safejaxfs/safejaxfs/fs/views"
	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
)

// MetadataName is the root file holding the header's metadata. The tree
// reserves it so no tensor or directory can shadow it.
const MetadataName = "__metadata__"

// Options shape the presented tree.
type Options struct {
	Sep    string       // key separator ("" = ".")
	NPY    bool         // list <tensor>.npy views in directory listings
	Logger *slog.Logger // where refused edits and write-back failures are explained; nil: discarded
	// LogPath is the file Logger writes to, if any (shown by the root's
	// user.safejaxfs.log attribute).
	LogPath string
	// RecoveryDirs are where edits go when neither the checkpoint nor
	// its directory can take them (see checkpoint.SaveRecovery).
	RecoveryDirs []string
	// SpillDir is where large uploads wait for their close, in unnamed
	// temp files (package upload); "" means $TMPDIR.
	SpillDir string
	// SpillAt is the most one upload holds in memory before it spills
	// there; 0 means upload.SpillAt.
	SpillAt int64
	// FilesDir names the root directory showing the checkpoint as files
	// ("" = none; files.go). FilesSiblings shows the files beside the
	// checkpoint there too, those matching FilesInclude (nil: the
	// default list).
	FilesDir      string
	FilesSiblings bool
	FilesInclude  []string
	// Perm is the owner and modes of every file and directory; nil:
	// DefaultPerm's (perm.go).
	Perm *Perm
	// Publish, if set, is called when the root's user.safejaxfs.status
	// is read, before it is answered: the daemon writes its status file.
	// It runs in the request and must not touch the mount.
	Publish func()
}

// FS is the state shared by all nodes of one mount.
type FS struct {
	ck  *checkpoint.Checkpoint
	opt Options

	// ns is the tree of names and the rules that change it: nodes and
	// their fields are read inside ns.View or ns.Update only.
	ns *namespace.Namespace

	// Attributes every node inherits from the checkpoint file, so the mount
	// looks like it belongs to whoever owns the checkpoint (perm.go).
	mtime time.Time
	perm  Perm

	logger  *slog.Logger
	lastErr atomic.Pointer[string] // the last write-back failure, for unmount to report
	rescued atomic.Pointer[string] // the last recovery file written on request
	// writeBacks are the write-backs asked through XattrSync, which go on
	// after their asker was interrupted (sync.go); Wait waits for them.
	writeBacks sync.WaitGroup

	// live are the inodes the kernel knows, by tensor, so a change made
	// through one name can invalidate the kernel's cache of the others
	// (a tensor and its views).
	live     liveNodes
	views    viewInos
	f32Views viewInos // the float32 views' numbers (f32view.go)
	// nextIno numbers .npy files created before their tensor exists.
	nextIno atomic.Uint64
	// specials are the root's JSON documents (__metadata__, ...).
	specials []*doc

	metaJSON  atomic.Pointer[[]byte] // __metadata__ as rendered, nil after a change
	maxUpload int64                  // the most a .npy written into the mount may hold
	upPool    upload.Pool            // what all uploads share (upload.go)

	dirTimes dirTimes
	plus     plusPolicy // whether a listing sends its files' attributes (readdirplus.go)

	writers writerCount // write handles open per tensor

	files *filesView // the checkpoint as files; nil when not shown (files.go)

	notify    notifier              // the kernel cache invalidations, in order (notify.go)
	consumed  consumedSet           // files renamed into something else (doc_replace.go)
	timesFile *checkpoint.TimesFile // where the times shown are kept after the mount (times.go); nil: nowhere
}

// New builds the namespace for an opened checkpoint. It does no I/O beyond a
// stat of the checkpoint file.
func New(ck *checkpoint.Checkpoint, opt Options) (*FS, error) {
	reserved := ReservedNames(ck.Sharded())
	if opt.FilesDir != "" {
		reserved = append(reserved, opt.FilesDir)
	}
	keys := ck.Keys()
	t, err := tree.Build(keys, tree.Options{Sep: opt.Sep, Reserved: reserved})
	if err != nil {
		return nil, err
	}
	f := &FS{ck: ck, opt: opt, logger: opt.Logger}
	f.live.tensors = len(keys)
	f.ns = namespace.New(t, ck, namespace.ViewRules{
		HasNPY: func(id checkpoint.ID) bool { h, _ := views.NPY(f.ck, id); return h != nil },
		HasF32: func(id checkpoint.ID) bool { return views.HasF32(f.ck, id) },
	})
	if f.logger == nil {
		f.logger = slog.New(slog.DiscardHandler)
	}
	f.nextIno.Store(1 << 62)
	f.maxUpload = uploadLimit()
	f.upPool = upload.Pool{Dir: opt.SpillDir, Limit: f.maxUpload, SpillAt: cmp.Or(opt.SpillAt, upload.SpillAt), Budget: upload.MemoryBudget, Report: f.refuseUpload}
	f.specials = f.docs()
	if err := f.setupFiles(); err != nil {
		return nil, err
	}
	if r := ck.Remote(); r != nil {
		// A remote file has no local owner: the mount belongs to whoever
		// mounted it (as sshfs -o idmap=user shows it), dated by the
		// server's Last-Modified, else by the mount.
		if f.perm, err = permOf(ck, opt.Perm); err != nil {
			return nil, err
		}
		f.mtime = r.ModTime
		if f.mtime.IsZero() {
			f.mtime = time.Now()
		}
		return f, nil
	}
	st, err := os.Stat(ck.Path())
	if err != nil {
		return nil, err
	}
	f.mtime = st.ModTime()
	if f.perm, err = permOf(ck, opt.Perm); err != nil {
		return nil, err
	}
	f.loadTimes()
	return f, nil
}

// permOf is the mount's Perm: the caller's, else DefaultPerm of ck. The
// caller (safejaxfs mount) usually passes one, having located the
// checkpoint already; without it the checkpoint is located again here.
func permOf(ck *checkpoint.Checkpoint, perm *Perm) (Perm, error) {
	if perm != nil {
		return *perm, nil
	}
	var loc *safetensors.Location
	if ck.Remote() == nil {
		var err error
		if loc, _, err = safetensors.Locate(ck.Path()); err != nil {
			return Perm{}, err
		}
	}
	return DefaultPerm(loc)
}

// Root returns the root directory node to mount.
func (f *FS) Root() *dirNode {
	return &dirNode{fsys: f, node: f.ns.Root()}
}

// Inode numbers: fixed ones for the root and the metadata file, then three
// disjoint sequences derived from IDs that are never reused, so a number
// names the same object for the whole mount (find, tar and rsync rely on it).
const (
	inoRoot          = 1
	inoMetadata      = 2
	inoIndexMetadata = 3
	inoBase          = 16
)

const (
	kindDir = iota
	kindTensor
	kindNPY
	kindF32 // the float32 view (f32view.go)
	kinds
)

func ino(kind int, id uint64) uint64 { return inoBase + kinds*id + uint64(kind) }

func dirIno(n *tree.Node) uint64 {
	if n.ID == 0 { // the root (a removed directory has no parent either)
		return inoRoot
	}
	return ino(kindDir, n.ID)
}

func tensorIno(id checkpoint.ID) uint64 { return ino(kindTensor, uint64(id)) }
func npyIno(id checkpoint.ID) uint64    { return ino(kindNPY, uint64(id)) }

// fillCommon sets the attributes all nodes share.
func (f *FS) fillCommon(a *fuse.Attr, ino uint64, mode uint32, size uint64) {
	a.Ino = ino
	a.Mode = mode
	a.Size = size
	a.Blocks = (size + 511) / 512
	a.Nlink = 1
	a.Owner = fuse.Owner{Uid: f.perm.Uid, Gid: f.perm.Gid}
	setTimes(a, f.mtime, f.mtime)
}

// setTimes sets what stat shows. A checkpoint stores no times: they start
// as the checkpoint file's mtime and move with changes made through the
// mount (rsync, make, find -newer, cp -u compare them). No access times
// are kept: atime is the mtime.
func setTimes(a *fuse.Attr, mtime, ctime time.Time) {
	a.SetTimes(&mtime, &mtime, &ctime)
}

// dirTimes are the times of directories whose entries changed in this
// mount; others show the checkpoint's.
type dirTimes struct {
	mu sync.Mutex
	t  map[*tree.Node]time.Time
}

// touchDir records that directory n's entries changed now.
func (f *FS) touchDir(n *tree.Node) {
	f.dirTimes.mu.Lock()
	defer f.dirTimes.mu.Unlock()
	if f.dirTimes.t == nil {
		f.dirTimes.t = map[*tree.Node]time.Time{}
	}
	f.dirTimes.t[n] = time.Now()
}

func (f *FS) dirTime(n *tree.Node) time.Time {
	f.dirTimes.mu.Lock()
	defer f.dirTimes.mu.Unlock()
	if t, ok := f.dirTimes.t[n]; ok {
		return t
	}
	return f.mtime
}

// Statfs reports the file system holding the checkpoint: that is where
// tensors written through the mount end up, so its free space is the truth.
// A remote checkpoint has none (see below).
func (f *FS) statfs(out *fuse.StatfsOut) syscall.Errno {
	if r := f.ck.Remote(); r != nil {
		// Nothing can be written to a remote checkpoint: like a
		// read-only image (an ISO, squashfs), its size and no free space.
		const bsize = 4096
		*out = fuse.StatfsOut{Bsize: bsize, Frsize: bsize, NameLen: 255,
			Blocks: uint64(r.Size+bsize-1) / bsize, Files: uint64(len(f.ck.Keys()))}
		return 0
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(f.ck.Path(), &st); err != nil {
		return toErrno(err)
	}
	out.FromStatfsT(&st)
	return 0
}

// refuseUpload explains a refused upload write or truncate: in the log
// and the root's user.safejaxfs.error (the errno is all the writer gets).
func (f *FS) refuseUpload(err error) {
	f.logf("%v", err)
	msg := err.Error()
	f.lastErr.Store(&msg)
}

// logf logs why a request failed or an edit was refused: the errno is
// all the caller gets, so these are warnings for the user to read.
func (f *FS) logf(format string, args ...any) { f.logger.Warn(fmt.Sprintf(format, args...)) }

// changed tells the kernel that tensor id's bytes or attributes changed, for
// its raw file and its views, except the inode the change came through: the
// kernel already knows, and invalidating an inode from inside its own write
// would wait on pages that write holds locked. The invalidations are queued
// (notify.go): a close or setfattr waits for them before it returns.
func (f *FS) changed(id checkpoint.ID, except uint64) {
	f.changedRange(id, except, 0, 0)
}

// changedRange is changed for the tensor bytes [off, off+n) only (n 0: to
// the end), so a small write does not drop every cached page of a large
// tensor's other names.
func (f *FS) changedRange(id checkpoint.ID, except uint64, off, n int64) {
	var hdr int64 = -1
	for _, r := range f.live.of(id) {
		if r.n.StableAttr().Ino == except || isF32(r.n) {
			continue
		}
		if !r.view {
			f.notify.content(r.n, off, n)
			continue
		}
		vOff := int64(0)
		if n > 0 {
			// The view's bytes sit after its header; with no header
			// (a dtype numpy lacks) there is nothing cached to keep.
			if hdr < 0 {
				h, _ := views.NPY(f.ck, id)
				hdr = int64(len(h))
			}
			if hdr > 0 {
				vOff = hdr + off
			}
		}
		f.notify.content(r.n, vOff, n)
	}
	f.changedF32(id, except, off, n)
}

// uploadLimit is the most a .npy written into the mount may hold, and all
// open uploads together: half the machine's RAM. An upload waits in a temp
// file once it is large (package upload), but its close makes it a tensor held
// in memory until it is logged. Beyond it a write or truncate fails with
// EFBIG instead of taking the daemon (and every edit it holds) down.
func uploadLimit() int64 {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil || si.Totalram == 0 {
		return 1 << 32
	}
	return int64(si.Totalram) * int64(si.Unit) / 2
}

// entryChanged tells the kernel that the daemon itself added, removed or
// replaced name in directory dir: it drops its cached entry for the name and
// its cached listing of dir (every directory's listing is cached, see
// listingFS). Changes the kernel made (create, unlink, rename, mkdir, rmdir
// of that very name) need no call; any other change of a listing does, or
// ls shows the old one until the cache is dropped.
//
// Two notifications: an entry invalidation resets the listing only when the
// kernel has a dentry for the name (it has none for a name never looked
// up), so the listing, which lives in the directory's page cache, is dropped
// by a content invalidation of the directory.
//
// The kernel locks dir to drop the entry: a request that holds that lock (a
// create, unlink, rename or lookup in dir) passes its gate (g), so they are
// delivered after it returns; nil when the request holds no lock of dir.
func (f *FS) entryChanged(g *gate, dir *fs.Inode, names ...string) {
	if dir == nil {
		return
	}
	f.notify.entries(g, dir, names...)
	f.notify.push(notice{kind: noticeContent, node: dir, gate: g})
}

// viewListed announces that tensor file n's views may have appeared in or
// left its directory's listing (--npy lists a view only for a dtype it
// suits). Only the listing: the kernel never keeps a view name's entry
// (viewEntriesFS), and an entry invalidation needs the directory's lock,
// which an rm or mv of the file may hold while it waits for the file
// that a setxattr, waiting on this queue, holds.
func (f *FS) viewListed(n *fs.Inode) {
	if !f.opt.NPY {
		return
	}
	if _, dir := n.Parent(); dir != nil {
		f.notify.push(notice{kind: noticeContent, node: dir})
	}
}
