package fs

import (
	"log"
	"os"
	"path/filepath"
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
	src, err := filepath.Abs(f.ck.Path())
	if err != nil {
		return nil, err
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
		MountOptions: fuse.MountOptions{
			FsName:               src,
			Name:                 "safejaxfs",
			AllowOther:           mo.AllowOther,
			Options:              opts,
			DirectMount:          os.Geteuid() == 0,
			IgnoreSecurityLabels: true,
			// Bigger requests mean fewer round trips on sequential reads
			// and writes: 1 MiB is the kernel's maximum.
			MaxWrite:     1 << 20,
			MaxReadAhead: 1 << 20,
			Debug:        mo.Debug,
			Logger:       mo.Logger,
		},
	}
	return fs.Mount(mountpoint, f.Root(), fsOpts)
}
