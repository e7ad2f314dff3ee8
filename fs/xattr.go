package fs

import (
	"strings"
	"syscall"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// The extended attributes every tensor file (and its .npy view) carries.
// user.* so that getfattr -d lists them without flags.
const (
	xattrKey   = "user.safetensors.key"
	xattrDType = "user.safetensors.dtype"
	xattrShape = "user.safetensors.shape"
	// xattrShard names the file of a sharded checkpoint holding the tensor.
	xattrShard = "user.safetensors.shard"
)

var (
	xattrList        = []byte(xattrKey + "\x00" + xattrDType + "\x00" + xattrShape + "\x00")
	xattrListSharded = []byte(xattrKey + "\x00" + xattrDType + "\x00" + xattrShape + "\x00" + xattrShard + "\x00")
)

// unsupportedXattr is EOPNOTSUPP for a name outside the user namespace:
// the mount has no ACLs, security labels or trusted attributes, and saying
// "not supported" rather than "no such attribute" is what lets tools stop
// asking. ls -l asks every file for security.selinux and
// system.posix_acl_access (a FUSE round trip each, which cost more than the
// listing itself); coreutils remembers an EOPNOTSUPP per device and asks no
// further file on it, as on any file system without ACLs.
func unsupportedXattr(attr string) syscall.Errno {
	if strings.HasPrefix(attr, "user.") {
		return 0
	}
	return syscall.EOPNOTSUPP
}

func (f *FS) getxattr(id checkpoint.ID, attr string, dest []byte) (uint32, syscall.Errno) {
	if errno := unsupportedXattr(attr); errno != 0 {
		return 0, errno
	}
	info, ok := f.ck.Info(id)
	if !ok {
		return 0, syscall.ENOENT
	}
	var v []byte
	switch attr {
	case xattrKey:
		v = []byte(info.Key)
	case xattrDType:
		v = []byte(f.foreignType(id, info.DType.String()))
	case xattrShape:
		v = safetensors.AppendShape(nil, f.foreignShape(id, info.Shape))
	case xattrShard:
		if !f.ck.Sharded() {
			return 0, syscall.ENODATA
		}
		v = []byte(info.Shard)
	default:
		return 0, syscall.ENODATA
	}
	return copyAttr(dest, v)
}

func (f *FS) listxattr(id checkpoint.ID, dest []byte) (uint32, syscall.Errno) {
	if _, ok := f.ck.Info(id); !ok {
		return 0, syscall.ENOENT
	}
	if f.ck.Sharded() {
		return copyAttr(dest, xattrListSharded)
	}
	return copyAttr(dest, xattrList)
}

// copyAttr follows the getxattr(2) protocol: a size probe with an empty
// buffer, ERANGE when the buffer is too small.
func copyAttr(dest, v []byte) (uint32, syscall.Errno) {
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}
