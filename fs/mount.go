package fs

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// MountOptions are the FUSE-level choices of a mount.
type MountOptions struct {
	AllowOther bool
	// AllowRoot lets root in besides the user who mounted (allowroot.go);
	// AllowOther wins if both are set.
	AllowRoot bool
	// FsName is what the mount table shows as the source ("": the
	// checkpoint's absolute path, or its URL).
	FsName string
	Extra  []string // -o options passed through to the kernel
	Debug  bool
	Logger *slog.Logger // nil: discarded

	// afterAttach, if set (by tests only), runs once the mount answers;
	// its error fails Mount as a failure after attaching would.
	afterAttach func() error
}

// cacheTimeout is how long the kernel may trust names and attributes. Tensor
// files change only through this mount, and every change made through it
// either goes through the kernel (which updates its own cache) or is
// announced with a notify, so a long timeout is safe and spares a round trip
// per stat.
const cacheTimeout = time.Hour

// Mount mounts f at mountpoint and returns once the kernel has answered the
// INIT handshake, so the mount is usable when it returns. As root it mounts
// directly (no fusermount needed); otherwise go-fuse uses fusermount3.
func Mount(mountpoint string, f *FS, mo MountOptions) (*fuse.Server, error) {
	if mo.Logger == nil {
		mo.Logger = slog.New(slog.DiscardHandler)
	}
	// go-fuse takes a *log.Logger: its lines (every request with --debug)
	// go through the same handler, escaped like the rest.
	fuseLog := slog.NewLogLogger(mo.Logger.Handler(), slog.LevelInfo)
	// /proc/mounts shows the source: the checkpoint's absolute path, or
	// a remote checkpoint's URL (which never carries credentials).
	src := f.ck.Path()
	if f.ck.Remote() == nil {
		var err error
		if src, err = filepath.Abs(src); err != nil {
			return nil, err
		}
	}
	if mo.FsName != "" {
		src = mo.FsName
	}
	timeout := cacheTimeout
	// The kernel checks the modes the mount shows (perm.go) for every
	// access: with allow_other or allow_root they are what keeps other
	// users out, and without them they keep the mount's owner to what the
	// modes say, as on any local file system.
	opts := []string{"default_permissions"}
	if f.ck.ReadOnly() {
		opts = append(opts, "ro")
	}
	opts = append(opts, mo.Extra...)
	fsOpts := &fs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		Logger:          fuseLog,
		RootStableAttr:  &fs.StableAttr{Ino: inoRoot},
		MountOptions: fuse.MountOptions{
			FsName:      src,
			Name:        "safejaxfs",
			AllowOther:  mo.AllowOther || mo.AllowRoot,
			Options:     opts,
			DirectMount: os.Geteuid() == 0,
			// READDIRPLUS (the default) answers a listing with its
			// subdirectories' attributes (dirHandle), so a walk
			// (find, du, ls -R) does not look each directory up
			// before reading it.
			//
			// IgnoreSecurityLabels stays off: it answers ENODATA for
			// the ACL names, and only our EOPNOTSUPP lets ls stop
			// asking (unsupportedXattr).
			//
			// O_TRUNC arrives with the OPEN it belongs to: a rewrite that
			// starts with a truncate is then one open file's (see
			// writeHandle), and a truncated .npy upload copies nothing.
			ExtraCapabilities: fuse.CAP_ATOMIC_O_TRUNC,
			// The daemon invalidates exactly what changes (see
			// changedRange); mtimes move with every write, and the
			// kernel must not drop a whole tensor's cached pages
			// because one did.
			ExplicitDataCacheControl: true,
			// Bigger requests mean fewer round trips on sequential reads
			// and writes: 1 MiB is the kernel's maximum.
			MaxWrite:     1 << 20,
			MaxReadAhead: 1 << 20,
			// FUSE tells the daemon of an interrupted reader (Ctrl-C)
			// only for synchronous requests; readahead of async reads
			// is never interrupted. A remote read can wait on the
			// network for long, so its reader must be able to give up
			// (and the fetch with it, see checkpoint.ReadContext and
			// interruptFS). A
			// remote mount has its own read-ahead (the chunk cache's
			// window); a local one keeps the kernel's parallel reads.
			SyncRead: f.ck.Remote() != nil,
			Debug:    mo.Debug,
			Logger:   fuseLog,
		},
	}
	before, _, _ := FindMount(mountpoint)
	nodes := &interruptFS{RawFileSystem: fs.NewNodeFS(f.Root(), fsOpts), reads: f.ck.Remote() != nil}
	var raw fuse.RawFileSystem = &listingFS{RawFileSystem: &filesRawFS{&viewEntriesFS{nodes}}}
	if mo.AllowRoot && !mo.AllowOther {
		raw = &allowRootFS{RawFileSystem: raw, owner: uint32(os.Geteuid())}
	}
	server, err := fuse.NewServer(raw, mountpoint, &fsOpts.MountOptions)
	if err != nil {
		// go-fuse fails after the kernel attached the mount when the INIT
		// handshake does: a mount nobody answers would stay behind.
		detachNew(mountpoint, before, mo.Logger)
		return nil, err
	}
	go server.Serve()
	err = server.WaitMount()
	if err == nil && mo.afterAttach != nil {
		err = mo.afterAttach()
	}
	if err != nil {
		if uerr := server.Unmount(); uerr != nil {
			mo.Logger.Warn(fmt.Sprintf("unmounting %s after a failed mount: %v; detaching it", mountpoint, uerr))
			detachNew(mountpoint, before, mo.Logger)
		}
		return nil, err
	}
	raiseReadahead(mountpoint, mo.Logger)
	return server, nil
}

// detachNew lazily detaches the safejaxfs mount at mountpoint if it is not
// the one that was there before (before: the mount table's top entry
// then), i.e. one this Mount attached and could not serve.
func detachNew(mountpoint string, before MountEntry, logger *slog.Logger) {
	m, found, err := FindMount(mountpoint)
	if err != nil || !found || m.FSType != "fuse.safejaxfs" || m.ID == before.ID {
		return
	}
	if os.Geteuid() == 0 {
		err = unix.Unmount(mountpoint, unix.MNT_DETACH)
	} else {
		var out []byte
		if out, err = exec.Command("fusermount3", "-uz", mountpoint).CombinedOutput(); err != nil {
			err = fmt.Errorf("%v: %s", err, out)
		}
	}
	if err != nil {
		logger.Warn(fmt.Sprintf("detaching the failed mount at %s: %v", mountpoint, err))
	}
}

// readaheadKB is the kernel readahead window for the mount. FUSE starts at
// 128 KiB, so sequential reads arrive as 128 KiB requests; 1 MiB (the most
// one request can carry) cuts the round trips eightfold.
const readaheadKB = 1024

// raiseReadahead sets the mount's read_ahead_kb (root only; others keep
// the default). The mount's device number comes from mountinfo: stat of
// the mountpoint would be a request to this very process.
func raiseReadahead(mountpoint string, logger *slog.Logger) {
	m, found, err := FindMount(mountpoint)
	if err == nil && !found {
		err = fmt.Errorf("not in /proc/self/mountinfo")
	}
	if err == nil {
		err = os.WriteFile("/sys/class/bdi/"+m.Dev+"/read_ahead_kb", []byte(strconv.Itoa(readaheadKB)), 0)
	}
	if err != nil && os.Geteuid() == 0 {
		logger.Info(fmt.Sprintf("readahead for %s stays at the default: %v", mountpoint, err))
	}
}
