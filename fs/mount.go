package fs

import (
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// MountOptions are the FUSE-level choices of a mount.
type MountOptions struct {
	AllowOther bool
	Extra      []string // -o options passed through to the kernel
	Debug      bool
	Logger     *log.Logger
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
	// /proc/mounts shows the source: the checkpoint's absolute path, or
	// a remote checkpoint's URL (which never carries credentials).
	src := f.ck.Path()
	if f.ck.Remote() == nil {
		var err error
		if src, err = filepath.Abs(src); err != nil {
			return nil, err
		}
	}
	timeout := cacheTimeout
	opts := []string{"default_permissions"}
	if f.ck.ReadOnly() {
		opts = append(opts, "ro")
	}
	opts = append(opts, mo.Extra...)
	fsOpts := &fs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		Logger:          mo.Logger,
		RootStableAttr:  &fs.StableAttr{Ino: inoRoot},
		MountOptions: fuse.MountOptions{
			FsName:      src,
			Name:        "safejaxfs",
			AllowOther:  mo.AllowOther,
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
			Debug:        mo.Debug,
			Logger:       mo.Logger,
		},
	}
	raw := &listingFS{RawFileSystem: &filesRawFS{fs.NewNodeFS(f.Root(), fsOpts)}}
	server, err := fuse.NewServer(raw, mountpoint, &fsOpts.MountOptions)
	if err != nil {
		return nil, err
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		return nil, err
	}
	raiseReadahead(mountpoint, mo.Logger)
	return server, nil
}

// readaheadKB is the kernel readahead window for the mount. FUSE starts at
// 128 KiB, so sequential reads arrive as 128 KiB requests; 1 MiB (the most
// one request can carry) cuts the round trips eightfold.
const readaheadKB = 1024

// raiseReadahead sets the mount's read_ahead_kb (root only; others keep
// the default). The mount's device number comes from mountinfo: stat of
// the mountpoint would be a request to this very process.
func raiseReadahead(mountpoint string, logger *log.Logger) {
	m, found, err := FindMount(mountpoint)
	if err == nil && !found {
		err = fmt.Errorf("not in /proc/self/mountinfo")
	}
	if err == nil {
		err = os.WriteFile("/sys/class/bdi/"+m.Dev+"/read_ahead_kb", []byte(strconv.Itoa(readaheadKB)), 0)
	}
	if err != nil && os.Geteuid() == 0 && logger != nil {
		logger.Printf("readahead for %s stays at the default: %v", mountpoint, err)
	}
}
