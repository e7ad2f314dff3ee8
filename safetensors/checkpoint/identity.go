package checkpoint

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// identity is what we remember of a checkpoint file to detect that someone
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

// identityAt stats name below d without following it, so that a file
// renamed over the checkpoint by another program shows up as a different
// inode, and a symlink put in its place as not the file at all.
func identityAt(d *cdir, name string) (identity, error) {
	st, err := d.lstat(name)
	if err != nil {
		return identity{}, err
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
