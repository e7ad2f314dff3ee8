package fs

import (
	"os"
	"syscall"
)

// Who owns the mount's files and what their modes are. The kernel checks
// them (default_permissions is always set, mount.go): with allow_other or
// allow_root other users reach the mount, and the modes it shows are all
// that stands between them and the tensors. So they come from the
// checkpoint file itself, as sshfs shows a remote file's and gocryptfs an
// underlying file's: a private (0600) checkpoint shows 0600 files and 0700
// directories, one the group may read 0640 and 0750. The mount's options
// (uid=, gid=, umask=) override them; a read-only mount drops every write
// bit.

// Perm is the owner and the permission bits of the mount's files and
// directories (bits only: no file type).
type Perm struct {
	Uid, Gid  uint32
	File, Dir uint32
}

// ModesOf derives the modes of tensor files and directories from the mode
// of the checkpoint file: its read and write bits (never execute, set-id or
// sticky) for files, and for directories the same plus search wherever
// read is given.
func ModesOf(mode uint32) (file, dir uint32) {
	file = mode & 0o666
	return file, file | (file&0o444)>>2
}

// ModesOfUmask are the modes umask leaves of 0666 and 0777, as rclone and
// the kernel's vfat take umask=.
func ModesOfUmask(umask uint32) (file, dir uint32) {
	return 0o666 &^ umask, 0o777 &^ umask
}

// defaultPerm is the mount's Perm when the caller chose none: the
// checkpoint file's owner and modes; for a remote checkpoint (st nil: no
// local file) the mounting user and 0444/0555.
func (f *FS) defaultPerm(st os.FileInfo) Perm {
	if st == nil {
		return Perm{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid()), File: 0o444, Dir: 0o555}
	}
	p := Perm{}
	p.File, p.Dir = ModesOf(uint32(st.Mode().Perm()))
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		p.Uid, p.Gid = sys.Uid, sys.Gid
	}
	return p
}

// fileMode is the permission of tensor files, views and the root's
// documents.
func (f *FS) fileMode() uint32 {
	if f.ck.ReadOnly() {
		return f.perm.File &^ 0o222
	}
	return f.perm.File
}

// dirMode is the permission of directories.
func (f *FS) dirMode() uint32 {
	if f.ck.ReadOnly() {
		return f.perm.Dir &^ 0o222
	}
	return f.perm.Dir
}
