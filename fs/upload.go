package fs

import (
	"context"
	"errors"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/safejaxfs/safejaxfs/fs/namespace"
	"github.com/safejaxfs/safejaxfs/fs/upload"
)

// Files written whole (a .npy, a .f32.npy view, __metadata__) are collected
// until they are closed: an upload. Holding the bytes, spilling them to a
// temp file and the budgets are package upload's; this file only ties an
// upload to the file handle and the opener, and maps its refusals to
// errnos. The sizes of all open uploads together are capped at the mount's
// upload limit (half the RAM): a close turns an upload into a tensor held
// in memory until it is logged.

// uploadFile is an open file whose content is an upload.
type uploadFile struct {
	*upload.Buffer
	// owner opened the file: only its closes decide (owner.go).
	owner opener
}

// newUpload starts an upload of the file name holding buf (nil for a new
// or truncated file) and adds it to set, the node's open uploads.
func (f *FS) newUpload(set *upload.Set, owner opener, name string, buf []byte, wrote bool, limit int64) *uploadFile {
	return &uploadFile{Buffer: set.Add(f.upPool.New(name, buf, wrote, limit, nil)), owner: owner}
}

// newNPYUpload is newUpload of a .npy file (a view, or one that makes a
// tensor): one that cannot be a .npy of its size is refused from its
// header.
func (f *FS) newNPYUpload(set *upload.Set, owner opener, name string, buf []byte, wrote bool) *uploadFile {
	return &uploadFile{Buffer: set.Add(f.upPool.New(name, buf, wrote, f.maxUpload, namespace.NPYPrecheck)), owner: owner}
}

// uploadErrno is the errno of an upload's refusal: the one the upload
// chose (EFBIG past a limit, the temp file's), EPERM for a truncate by
// path with no upload open, else that of a refused commit (closeErrno).
func uploadErrno(err error) syscall.Errno {
	var ue *upload.Error
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		return ue.Errno
	case errors.Is(err, upload.ErrNotOpen):
		return syscall.EPERM
	}
	return closeErrno(err)
}

// writeUpload is Write for a node whose open files are uploads (the
// special files, the float32 views).
func writeUpload(fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	u, ok := fh.(*uploadFile)
	if !ok {
		return 0, syscall.EBADF
	}
	if err := u.WriteAt(data, off); err != nil {
		return 0, uploadErrno(err) // the pool logged why
	}
	return uint32(len(data)), 0
}

// readUpload is Read of an upload: what was written so far.
func readUpload(u *uploadFile, dest []byte, off int64) fuse.ReadResult {
	return fuse.ReadResultData(u.ReadAt(dest, off))
}

// truncateUpload truncates the upload of handle fh, or (a truncate by
// path, no handle of this node) every upload open in set.
func truncateUpload(fh fs.FileHandle, set *upload.Set, size uint64) syscall.Errno {
	if u, ok := fh.(*uploadFile); ok {
		return uploadErrno(u.Truncate(int64(size)))
	}
	return uploadErrno(set.TruncateAll(int64(size)))
}

// flushUpload commits what an upload collected (once per write session):
// commit makes the change durable before it returns, or not at all (the
// checkpoint's *Sync edits). A refused commit fails the close with EINVAL
// (EFBIG past the header limit), one that could not be made durable with
// the errno of what failed (ENOSPC, EIO...); either way the old state is
// kept, now and after unmount.
func (f *FS) flushUpload(ctx context.Context, u *uploadFile, commit func([]byte) error) syscall.Errno {
	if !u.owner.decides(ctx) {
		// A copy of the descriptor that a forked process inherited: its
		// close decides nothing (owner.go).
		return 0
	}
	return f.commitUpload(ctx, u, commit)
}

// releaseUpload is the last close of an upload: what was written since
// the last close that decided (a process its owner handed the file to
// wrote after the owner closed it) is committed now, and the upload is
// freed. The kernel ignores Release's errors: a refusal is recorded as at
// any close.
func (f *FS) releaseUpload(ctx context.Context, set *upload.Set, u *uploadFile, commit func([]byte) error) {
	f.commitUpload(ctx, u, commit)
	set.Release(u.Buffer)
}

// commitUpload commits what u collected since its last commit, if anything.
func (f *FS) commitUpload(ctx context.Context, u *uploadFile, commit func([]byte) error) syscall.Errno {
	return uploadErrno(u.Flush(func(b []byte) error {
		if err := commit(b); err != nil {
			f.fail(err)
			return err
		}
		f.syncAfterCommit(ctx)
		return nil
	}))
}
