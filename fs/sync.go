package fs

import "syscall"

// XattrSync, set on the mount root (safejaxfs sync), writes every edit
// back into the checkpoint files now instead of at unmount: a compaction
// of the log. Setting it returns once that is done, or fails with the
// errno of what failed (the reason in user.safejaxfs.error).
const XattrSync = "user.safejaxfs.sync"

func (f *FS) compact() syscall.Errno {
	if f.ck.ReadOnly() {
		return syscall.EROFS
	}
	if err := f.ck.Compact(); err != nil {
		f.fail(err)
		return writeBackErrno(err)
	}
	f.lastErr.Store(nil)
	return 0
}
