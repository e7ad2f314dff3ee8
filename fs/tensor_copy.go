package fs

import (
	"context"
	"math"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
)

var _ = (fs.NodeCopyFileRanger)((*tensorNode)(nil))

// CopyFileRange serves copy_file_range(2) between two tensor files of the
// mount (cp uses it). A whole tensor copied into an empty new file shares
// the bytes instead of copying them, and the copy takes the tensor's dtype
// and shape when it is closed: cp -r of a layer inside the mount keeps its
// dtypes and costs no more than its metadata. Anything else is copied
// through the usual write path. Other pairs (views, metadata) get
// EOPNOTSUPP, and the kernel falls back to reading and writing.
func (t *tensorNode) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut uint64, n uint64, flags uint64) (uint32, syscall.Errno) {
	dst, ok := out.Operations().(*tensorNode)
	hOut, isWrite := fhOut.(*writeHandle)
	if !ok || !isWrite || flags != 0 {
		return 0, syscall.EOPNOTSUPP
	}
	f := t.fsys
	src, ok := f.ck.Info(t.id)
	if !ok {
		return 0, syscall.ENOENT
	}
	n = min(n, math.MaxUint32&^(1<<20-1)) // the reply holds 32 bits
	if offIn == 0 && offOut == 0 && n >= uint64(src.Size) && hOut.rewrite() == nil && t.rewriteOf(fhIn) == nil {
		if err := f.ck.CopyInto(dst.id, t.id); err == nil {
			f.ns.HintCopy(dst.id, src)
			f.changed(dst.id, tensorIno(dst.id))
			return uint32(src.Size), 0
		}
	}
	// The general case: read and write through the handles.
	segs, release, err := t.readFor(ctx, fhIn)(int64(offIn), int(min(n, 1<<30)))
	if err != nil {
		return 0, toErrno(err)
	}
	defer release()
	done := uint64(0)
	for _, s := range segs {
		if _, errno := dst.Write(ctx, fhOut, s, int64(offOut+done)); errno != 0 {
			if done > 0 {
				break
			}
			return 0, errno
		}
		done += uint64(len(s))
	}
	return uint32(done), 0
}
