package checkpoint

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// identity is what we remember of the checkpoint file to detect that someone
// else changed it while mounted. Device and inode catch a rename-replace (the
// way most tools save); size and mtime catch an in-place write. mtime keeps
// full nanoseconds because whole seconds would miss an edit made in the same
// second as ours. It cannot catch a writer that restores mtime afterwards
// with the same size; nothing short of hashing the file can.
type identity struct {
	dev, ino uint64
	size     int64
	mtime    time.Time // full ns
}

// statIdentity stats by path, not by an open descriptor, so that a file
// renamed over the checkpoint by another program shows up as a different
// inode. Symlinks are followed: the identity is the file's, not the link's.
func statIdentity(path string) (identity, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return identity{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return identityOf(&st), nil
}

// fileIdentity is the identity of an open file, whatever its name is now.
func fileIdentity(f *os.File) (identity, error) {
	st, err := fstat(f)
	if err != nil {
		return identity{}, err
	}
	return identityOf(&st), nil
}

func identityOf(st *unix.Stat_t) identity {
	return identity{
		dev:   uint64(st.Dev), // Dev is uint32 on some architectures
		ino:   st.Ino,
		size:  st.Size,
		mtime: time.Unix(st.Mtim.Unix()),
	}
}

func (a identity) same(b identity) bool {
	return a.dev == b.dev && a.ino == b.ino && a.size == b.size && a.mtime.Equal(b.mtime)
}

func (a identity) String() string {
	return fmt.Sprintf("dev %d inode %d, %d bytes, modified %s", a.dev, a.ino, a.size, a.mtime.Format(time.RFC3339Nano))
}

// fileKey names an inode: what an flock is attached to.
type fileKey struct{ dev, ino uint64 }

func keyOf(st *unix.Stat_t) fileKey {
	return fileKey{uint64(st.Dev), st.Ino}
}

func fstat(f *os.File) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := control(f, func(fd int) error { return unix.Fstat(fd, &st) })
	if err != nil {
		return st, &os.PathError{Op: "fstat", Path: f.Name(), Err: err}
	}
	return st, nil
}

// control runs fn on f's descriptor. SyscallConn rather than Fd, because Fd
// would put the descriptor in blocking mode for good.
func control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// realPath is the absolute path of the file ckpt names, symlinks resolved.
// Everything this package puts next to a checkpoint (journal, temp files,
// recovery files) goes next to the real file, not next to a symlink to it:
// a rewrite must replace the file (renaming over a symlink would replace
// the link and leave the file it points to stale), and two paths to the same
// file must find the same journal. When the file does not exist the absolute
// path is returned with the error.
func realPath(ckpt string) (string, error) {
	abs, err := filepath.Abs(ckpt)
	if err != nil {
		return ckpt, err
	}
	r, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return abs, err
	}
	return r, nil
}

// sidePath names a file that belongs to checkpoint path (already resolved):
// a dot file in the same directory, so it is on the same filesystem (rename
// is atomic only within one) and hidden from a plain ls.
func sidePath(path, suffix string) string {
	dir, base := filepath.Split(path)
	return filepath.Join(dir, "."+base+suffix)
}
