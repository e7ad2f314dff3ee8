package fs

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/safejaxfs/safejaxfs/safetensors"
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

// DefaultPerm is the mount's Perm when its options override nothing, for
// the checkpoint at loc (nil: a remote checkpoint). A local checkpoint's
// are its main file's owner (the index of a sharded one) and the modes its
// files all allow (the most private one wins: a mount must not open what
// one shard keeps closed). A remote one belongs to the user who mounts it,
// less the process umask (as rclone shows remote files); it is read-only,
// so fileMode and dirMode drop the write bits.
func DefaultPerm(loc *safetensors.Location) (Perm, error) {
	if loc == nil {
		p := Perm{Uid: uint32(os.Geteuid()), Gid: uint32(os.Getegid())}
		p.File, p.Dir = ModesOfUmask(ProcessUmask())
		return p, nil
	}
	var p Perm
	main := loc.Index
	if main == "" {
		main = loc.Paths[0]
	}
	mode := uint32(0o7777)
	for i, f := range append([]string{main}, loc.Paths...) {
		var st syscall.Stat_t
		if err := syscall.Stat(f, &st); err != nil {
			return Perm{}, fmt.Errorf("%s: %v", f, err)
		}
		if i == 0 {
			p.Uid, p.Gid = st.Uid, st.Gid
		}
		mode &= st.Mode & 0o7777
	}
	p.File, p.Dir = ModesOf(mode)
	return p, nil
}

// ProcessUmask reads this process's umask without changing it (umask(2)
// can only be read by setting it, which would race with files being
// created).
func ProcessUmask() uint32 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0o022
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Umask:"); ok {
			if n, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
				return uint32(n)
			}
		}
	}
	return 0o022
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
