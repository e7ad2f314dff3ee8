package fs

import (
	"github.com/hanwen/go-fuse/v2/fuse"
)

// allowRootFS is allow_root: the kernel lets everyone in (allow_other),
// and every request that starts an access (a lookup, an open, a stat, a
// listing, any change) from a user who is neither the one who mounted nor
// root is refused with EACCES, as libfuse does for allow_root (its
// fuse_lowlevel.c lets others send only the requests that use a file
// already opened: read, write, fsync, flush, release). The kernel knows no
// allow_root of its own.
//
// Listings are checked too: the daemon answers OPENDIR with ENOSYS
// (listingFS), so a READDIR arrives without an OPENDIR that was checked.
type allowRootFS struct {
	fuse.RawFileSystem
	owner uint32
}

func (a *allowRootFS) denied(h *fuse.InHeader) bool {
	return h.Uid != a.owner && h.Uid != 0
}

func (a *allowRootFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if a.denied(h) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Lookup(cancel, h, name, out)
}

func (a *allowRootFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.GetAttr(cancel, in, out)
}

func (a *allowRootFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.SetAttr(cancel, in, out)
}

func (a *allowRootFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Mknod(cancel, in, name, out)
}

func (a *allowRootFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Mkdir(cancel, in, name, out)
}

func (a *allowRootFS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	if a.denied(h) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Unlink(cancel, h, name)
}

func (a *allowRootFS) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	if a.denied(h) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Rmdir(cancel, h, name)
}

func (a *allowRootFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Rename(cancel, in, oldName, newName)
}

func (a *allowRootFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Link(cancel, in, name, out)
}

func (a *allowRootFS) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	if a.denied(h) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Symlink(cancel, h, target, name, out)
}

func (a *allowRootFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	if a.denied(h) {
		return nil, fuse.EACCES
	}
	return a.RawFileSystem.Readlink(cancel, h)
}

func (a *allowRootFS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Access(cancel, in)
}

func (a *allowRootFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	if a.denied(h) {
		return 0, fuse.EACCES
	}
	return a.RawFileSystem.GetXAttr(cancel, h, attr, dest)
}

func (a *allowRootFS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	if a.denied(h) {
		return 0, fuse.EACCES
	}
	return a.RawFileSystem.ListXAttr(cancel, h, dest)
}

func (a *allowRootFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.SetXAttr(cancel, in, attr, data)
}

func (a *allowRootFS) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	if a.denied(h) {
		return fuse.EACCES
	}
	return a.RawFileSystem.RemoveXAttr(cancel, h, attr)
}

func (a *allowRootFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Create(cancel, in, name, out)
}

func (a *allowRootFS) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Tmpfile(cancel, in, out)
}

func (a *allowRootFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Open(cancel, in, out)
}

func (a *allowRootFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.OpenDir(cancel, in, out)
}

func (a *allowRootFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.ReadDir(cancel, in, out)
}

func (a *allowRootFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.ReadDirPlus(cancel, in, out)
}

func (a *allowRootFS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	if a.denied(h) {
		return fuse.EACCES
	}
	return a.RawFileSystem.StatFs(cancel, h, out)
}

func (a *allowRootFS) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Statx(cancel, in, out)
}

func (a *allowRootFS) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Lseek(cancel, in, out)
}

func (a *allowRootFS) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.GetLk(cancel, in, out)
}

func (a *allowRootFS) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.SetLk(cancel, in)
}

func (a *allowRootFS) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.SetLkw(cancel, in)
}

func (a *allowRootFS) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	if a.denied(&in.InHeader) {
		return 0, fuse.EACCES
	}
	return a.RawFileSystem.CopyFileRange(cancel, in)
}

func (a *allowRootFS) Ioctl(cancel <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Ioctl(cancel, in, inbuf, out, outbuf)
}

func (a *allowRootFS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	if a.denied(&in.InHeader) {
		return fuse.EACCES
	}
	return a.RawFileSystem.Fallocate(cancel, in)
}
