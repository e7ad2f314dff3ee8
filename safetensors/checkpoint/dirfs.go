package checkpoint

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Files are reached through the checkpoint's directory, never by path.
//
// A checkpoint directory is untrusted input (README, Threat model): it may
// come from a download or from another user, and its index, shard names,
// logs and temp files may be crafted. The path the user names is trusted
// as given: its symlinks are resolved once, as any tool resolves its
// argument, and the directory it lands in is opened. Nothing found inside
// that directory is trusted: every file this package creates, writes,
// renames, removes or opens for writing is reached from the directory's
// descriptor with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) and the *at
// system calls, so a shard or log that is a symlink, or a shard name whose
// directories are symlinks, is refused, and nothing outside the directory
// is ever written, whatever the names say and however they change between
// two calls. Kernels without openat2 (before 5.6, or a seccomp filter that
// refuses it) get the same rule by walking the name one component at a
// time with O_NOFOLLOW.

// cdir is a checkpoint's directory, open.
type cdir struct {
	path string   // absolute, symlinks resolved: for messages only
	f    *os.File // O_RDONLY|O_DIRECTORY: fsync needs a readable descriptor
}

// ErrSymlink: a file or directory inside the checkpoint's directory that
// safejaxfs would write is a symlink (it could point anywhere).
var ErrSymlink = errors.New("is a symlink inside the checkpoint's directory; safejaxfs never writes through one (it could point outside the directory)")

// openDir opens dir, a path the user gave (symlinks in it are followed).
func openDir(dir string) (*cdir, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	f, err := os.OpenFile(abs, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return &cdir{path: abs, f: f}, nil
}

func (d *cdir) close() {
	if d != nil && d.f != nil {
		d.f.Close()
		d.f = nil
	}
}

// join is the path of name inside d, for messages; name itself when there
// is no directory (a remote checkpoint's URL).
func (d *cdir) join(name string) string {
	if d == nil {
		return name
	}
	return filepath.Join(d.path, filepath.FromSlash(name))
}

// fd is the directory's descriptor. d stays open while the checkpoint is.
func (d *cdir) fd() int { return int(d.f.Fd()) }

// checkName refuses names that are not clean relative paths below d.
func checkName(name string) error {
	switch {
	case name == "" || name == "." || strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("invalid file name %q", name)
	case strings.HasPrefix(name, "/") || path.Clean(name) != name:
		return fmt.Errorf("file name %q is not a clean relative path", name)
	case name == ".." || strings.HasPrefix(name, "../"):
		return fmt.Errorf("file name %q escapes the checkpoint's directory", name)
	}
	return nil
}

// parent resolves the directory holding name (beneath d, no symlinks) and
// calls fn with a descriptor of it and name's last component.
func (d *cdir) parent(name string, fn func(pfd int, base string) error) error {
	if err := checkName(name); err != nil {
		return err
	}
	dir, base := path.Split(name)
	if dir == "" {
		return fn(d.fd(), base)
	}
	pfd, err := d.openBeneath(strings.TrimSuffix(dir, "/"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return d.pathErr("open", dir, err)
	}
	defer unix.Close(pfd)
	return fn(pfd, base)
}

// openBeneath opens name (relative, maybe several components) below d
// refusing symlinks anywhere in it.
func (d *cdir) openBeneath(name string, flags int, perm uint32) (int, error) {
	// RESOLVE_NO_SYMLINKS refuses a symlink anywhere, the last component
	// included, with ELOOP (O_NOFOLLOW with O_DIRECTORY would say ENOTDIR).
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Mode:    uint64(perm),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	if flags&unix.O_CREAT == 0 {
		how.Mode = 0
	}
	for {
		fd, err := unix.Openat2(d.fd(), name, &how)
		switch err {
		case nil:
			return fd, nil
		case unix.EINTR:
			continue
		case unix.ENOSYS, unix.EPERM, unix.E2BIG:
			// No openat2 here (or a seccomp filter refuses it): the
			// same rule, one component at a time.
			return d.walk(name, flags, perm)
		}
		return -1, symlinkErr(err)
	}
}

// walk is openBeneath without openat2: every directory on the way is
// opened with O_NOFOLLOW|O_DIRECTORY from the one before.
func (d *cdir) walk(name string, flags int, perm uint32) (int, error) {
	parts := strings.Split(name, "/")
	cur := d.fd()
	for i, p := range parts {
		if p == ".." || p == "." || p == "" {
			closeUnless(cur, d.fd())
			return -1, unix.EXDEV
		}
		fl := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		mode := uint32(0)
		if i == len(parts)-1 {
			fl, mode = flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm
		}
		fd, err := openat(cur, p, fl, mode)
		if err == unix.ENOTDIR {
			// O_NOFOLLOW|O_DIRECTORY on a symlink: say what it is.
			var st unix.Stat_t
			if unix.Fstatat(cur, p, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				err = unix.ELOOP
			}
		}
		closeUnless(cur, d.fd())
		if err != nil {
			return -1, symlinkErr(err)
		}
		cur = fd
	}
	return cur, nil
}

func openat(dirfd int, name string, flags int, perm uint32) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, flags, perm)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func closeUnless(fd, keep int) {
	if fd != keep {
		unix.Close(fd)
	}
}

// symlinkErr turns the kernel's answers to a symlink where none may be
// (ELOOP from O_NOFOLLOW or RESOLVE_NO_SYMLINKS, EXDEV from
// RESOLVE_BENEATH) into ErrSymlink.
func symlinkErr(err error) error {
	if err == unix.ELOOP || err == unix.EXDEV {
		return ErrSymlink
	}
	return err
}

func (d *cdir) pathErr(op, name string, err error) error {
	if errors.Is(err, ErrSymlink) {
		return fmt.Errorf("%s %w", d.join(name), ErrSymlink)
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		return err
	}
	return &os.PathError{Op: op, Path: d.join(name), Err: err}
}

// open opens name below d. For writing, and whenever the file must be the
// directory's own, it is refused if it is a symlink or not a regular file
// (a FIFO or device opened for writing could block or do worse).
func (d *cdir) open(name string, flags int, perm uint32) (*os.File, error) {
	var f *os.File
	err := d.parent(name, func(pfd int, base string) error {
		fd, err := openat(pfd, base, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, perm)
		if err != nil {
			return d.pathErr("open", name, symlinkErr(err))
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return d.pathErr("fstat", name, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			unix.Close(fd)
			return d.pathErr("open", name, errors.New("not a regular file"))
		}
		// O_NONBLOCK only guarded the open; regular files ignore it, but
		// clear it so the descriptor behaves as any other.
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
			unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
		}
		f = os.NewFile(uintptr(fd), d.join(name))
		return nil
	})
	return f, err
}

// lstat stats name below d without following it.
func (d *cdir) lstat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := d.parent(name, func(pfd int, base string) error {
		if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return d.pathErr("lstat", name, err)
		}
		return nil
	})
	return st, err
}

// exists reports whether name is there (whatever it is).
func (d *cdir) exists(name string) bool {
	_, err := d.lstat(name)
	return err == nil
}

// rename renames from over to, both below d.
func (d *cdir) rename(from, to string) error {
	return d.parent(from, func(pf int, fb string) error {
		return d.parent(to, func(pt int, tb string) error {
			if err := unix.Renameat(pf, fb, pt, tb); err != nil {
				return &os.LinkError{Op: "rename", Old: d.join(from), New: d.join(to), Err: err}
			}
			return nil
		})
	})
}

// renameNoReplace renames from to to unless to exists (an error matching
// fs.ErrExist then): RENAME_NOREPLACE where the file system has it, else a
// hard link (which fails on an existing name) and an unlink.
func (d *cdir) renameNoReplace(from, to string) error {
	return d.parent(from, func(pf int, fb string) error {
		return d.parent(to, func(pt int, tb string) error {
			lerr := func(err error) error {
				return &os.LinkError{Op: "rename", Old: d.join(from), New: d.join(to), Err: err}
			}
			err := unix.Renameat2(pf, fb, pt, tb, unix.RENAME_NOREPLACE)
			switch err {
			case nil:
				return nil
			case unix.EINVAL, unix.ENOSYS, unix.EOPNOTSUPP:
			default:
				return lerr(err)
			}
			if err := unix.Linkat(pf, fb, pt, tb, 0); err != nil {
				return lerr(err)
			}
			if err := unix.Unlinkat(pf, fb, 0); err != nil {
				return lerr(err)
			}
			return nil
		})
	})
}

// remove removes name below d; a name already gone is not an error.
func (d *cdir) remove(name string) error {
	return d.parent(name, func(pfd int, base string) error {
		if err := unix.Unlinkat(pfd, base, 0); err != nil && err != unix.ENOENT {
			return d.pathErr("remove", name, err)
		}
		return nil
	})
}

// mkdir creates directory name below d.
func (d *cdir) mkdir(name string, perm uint32) error {
	return d.parent(name, func(pfd int, base string) error {
		if err := unix.Mkdirat(pfd, base, perm); err != nil {
			if err == unix.EEXIST {
				return &os.PathError{Op: "mkdir", Path: d.join(name), Err: fs.ErrExist}
			}
			return d.pathErr("mkdir", name, err)
		}
		return nil
	})
}

// symlink creates name below d pointing at target.
func (d *cdir) symlink(target, name string) error {
	return d.parent(name, func(pfd int, base string) error {
		if err := unix.Symlinkat(target, pfd, base); err != nil {
			return d.pathErr("symlink", name, err)
		}
		return nil
	})
}

// chown gives name below d (not followed) the owner of st.
func (d *cdir) chown(name string, st *unix.Stat_t) error {
	return d.parent(name, func(pfd int, base string) error {
		return unix.Fchownat(pfd, base, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW)
	})
}

// names lists the entries of directory sub below d ("" for d itself).
func (d *cdir) names(sub string) ([]string, error) {
	// A fresh open of its own (".", not a dup: a dup would share the
	// directory offset with every other listing).
	if sub == "" {
		sub = "."
	}
	fd, err := d.openBeneath(sub, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, d.pathErr("open", sub, err)
	}
	f := os.NewFile(uintptr(fd), d.join(sub))
	defer f.Close()
	return f.Readdirnames(-1)
}

// syncDirOf makes renames, creations and removals of name's directory
// durable. File systems that cannot sync a directory say EINVAL; there is
// nothing more to do there.
func (d *cdir) syncDirOf(name string) error {
	return d.parent(name, func(pfd int, _ string) error {
		for {
			err := unix.Fsync(pfd)
			switch err {
			case unix.EINTR:
				continue
			case nil, unix.EINVAL:
				return nil
			}
			return d.pathErr("fsync", path.Dir(name), err)
		}
	})
}

// sideName names a file that belongs to file name: a dot file in the same
// directory, so it is on the same file system (rename is atomic only
// within one) and hidden from a plain ls.
func sideName(name, suffix string) string {
	dir, base := path.Split(name)
	return dir + "." + base + suffix
}
