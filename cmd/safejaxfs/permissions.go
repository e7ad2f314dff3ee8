package main

import (
	"fmt"
	"os/user"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/safejaxfs/safejaxfs/fs"
	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Who the mount's files belong to and their modes (fs/perm.go says why):
// by default the checkpoint's owner and its files' own modes; uid=, gid=
// and umask= override them, as for sshfs, rclone mount and vfat.

type permFlags struct {
	uid, gid, umask string
}

func addPermFlags(fl *pflag.FlagSet, pf *permFlags) {
	fl.StringVar(&pf.uid, "uid", "", "owner of every file and directory, a `USER` name or number (default: the checkpoint file's owner)")
	fl.StringVar(&pf.gid, "gid", "", "group of every file and directory, a `GROUP` name or number (default: the checkpoint file's group)")
	fl.StringVar(&pf.umask, "umask", "", "octal `MODE` bits: files show 0666, directories 0777, less these bits (default: the checkpoint file's own mode; read-only mounts drop write bits either way)")
}

// parsed returns the overrides, checking them: -1 for one not given.
func (pf *permFlags) parsed() (uid, gid, umask int64, err error) {
	uid, gid, umask = -1, -1, -1
	if pf.uid != "" {
		if uid, err = lookupID(pf.uid, "uid", func(s string) (string, error) {
			u, err := user.Lookup(s)
			if err != nil {
				return "", err
			}
			return u.Uid, nil
		}); err != nil {
			return
		}
	}
	if pf.gid != "" {
		if gid, err = lookupID(pf.gid, "gid", func(s string) (string, error) {
			g, err := user.LookupGroup(s)
			if err != nil {
				return "", err
			}
			return g.Gid, nil
		}); err != nil {
			return
		}
	}
	if pf.umask != "" {
		n, perr := strconv.ParseUint(pf.umask, 8, 32)
		if perr != nil || n > 0o777 {
			return 0, 0, 0, fail(exitUsage, "umask %q is not an octal mode from 000 to 777 (e.g. umask=077 for owner-only access)", pf.umask)
		}
		umask = int64(n)
	}
	return
}

func lookupID(s, what string, byName func(string) (string, error)) (int64, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return int64(n), nil
	}
	id, err := byName(s)
	if err != nil {
		return 0, fail(exitUsage, "%s %q is neither a number nor a known name: %v", what, s, err)
	}
	n, err := strconv.ParseUint(id, 10, 32)
	if err != nil {
		return 0, fail(exitUsage, "%s %q: %v", what, s, err)
	}
	return int64(n), nil
}

// mountPerm is the owner and modes of a mount of loc (nil: a remote
// checkpoint): fs.DefaultPerm's, less what uid=, gid= and umask= override.
func mountPerm(pf *permFlags, loc *safetensors.Location) (*fs.Perm, error) {
	uid, gid, umask, err := pf.parsed()
	if err != nil {
		return nil, err
	}
	p, err := fs.DefaultPerm(loc)
	if err != nil {
		return nil, fail(exitInvalid, "%v", err)
	}
	if uid >= 0 {
		p.Uid = uint32(uid)
	}
	if gid >= 0 {
		p.Gid = uint32(gid)
	}
	if umask >= 0 {
		p.File, p.Dir = fs.ModesOfUmask(uint32(umask))
	}
	return &p, nil
}

// permSummary describes the modes for the log.
func permSummary(p *fs.Perm) string {
	return fmt.Sprintf("files %04o, directories %04o, owner %d:%d", p.File, p.Dir, p.Uid, p.Gid)
}
