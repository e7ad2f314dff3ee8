package fs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
)

// XattrSync, set on the mount root (safejaxfs sync), writes every edit
// back into the checkpoint files now instead of at unmount: a compaction
// of the log. Setting it returns once that is done, or fails with the
// errno of what failed (the reason in user.safejaxfs.error).
const XattrSync = "user.safejaxfs.sync"

var _ = (fs.NodeSetxattrer)((*dirNode)(nil))

func (d *dirNode) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if !d.isRoot() || attr != XattrSync {
		return syscall.ENOTSUP
	}
	if d.fsys.ck.ReadOnly() {
		return syscall.EROFS
	}
	if err := d.fsys.ck.Compact(); err != nil {
		d.fsys.fail(err)
		return toErrno(err)
	}
	d.fsys.lastErr.Store(nil)
	return 0
}
