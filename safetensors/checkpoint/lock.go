package checkpoint

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrLocked: another read-write mount holds the checkpoint's write lock.
var ErrLocked = errors.New("checkpoint is already mounted read-write (another safejaxfs holds its write lock); unmount it first, or mount this one read-only")

// Why the lock is an flock on the checkpoint's own inode and not on a
// sidecar lock file (".<name>.safejaxfs-lock"):
//
//   - it follows the file, not the name: a second mount through a symlink,
//     a hard link or a bind mount reaches the same inode and is refused,
//     where a sidecar next to each name would let both write;
//   - nothing is left behind after a crash and no write permission on the
//     directory is needed to take it;
//   - its one weakness, that a rewrite renames a new inode over the
//     checkpoint and the lock on the old inode stops protecting it, is closed
//     by rewriteAtomic: when this process holds the lock, the rewrite locks
//     the new file before renaming it into place and hands that lock to the
//     caller's next lockFile of the new file. From the instant the new file
//     has the checkpoint's name it is locked, so no other mount can slip in
//     between the rename and the caller's relock.
//
// flock locks belong to an open file description: two opens of the same file
// conflict even inside one process, which is what makes a second read-write
// mount in the same process fail too. Linux maps flock onto byte-range
// locks on NFS, so the lock also holds between NFS clients.

// held is what this process knows about its own locks.
var held struct {
	sync.Mutex
	// count of lockFile locks this process holds per inode, so maintenance
	// (journal replay, temp cleanup) by the lock holder itself is not
	// refused by its own lock.
	locks map[fileKey]int
	// locks taken by rewriteAtomic on a new file, waiting for the caller's
	// lockFile of that file; from says which lock they continue, so that
	// dropping that lock also drops a handoff nobody adopted.
	handoff map[fileKey]handoff
}

type handoff struct {
	f    *os.File
	from fileKey
	path string // where a rewrite renamed it (cdir.join of its name)
}

// lockFile takes a non-blocking exclusive flock on the checkpoint file f
// (open for reading or writing), which is name below d, and returns the
// func that releases it. A second read-write mount of the same file, from
// this or any other process, gets an error wrapping ErrLocked that names
// the path and, when the kernel says, the pid holding the lock.
//
// Take it before touching anything that belongs to the checkpoint (log
// replay, temp cleanup, writes): those may belong to a live writer until
// the lock says otherwise.
//
// After a rewrite the checkpoint is a new inode: call lockFile on the new
// file (it adopts the lock the rewrite already took on it), then release
// the old lock. The lock holds its own descriptor, so f may be closed before
// or after unlock.
func lockFile(d *cdir, name string, f *os.File) (unlock func() error, err error) {
	st, err := fstat(f)
	if err != nil {
		return nil, err
	}
	key := keyOf(&st)
	path := d.join(name)

	held.Lock()
	h, adopted := held.handoff[key]
	if adopted {
		delete(held.handoff, key)
	} else {
		for _, o := range held.handoff {
			if o.path == path {
				// We just renamed a file to this name, and f is not that
				// file: someone replaced it in between. Locking theirs
				// would make it ours.
				held.Unlock()
				return nil, fmt.Errorf("%s: %w: it was replaced right after this mount rewrote it", path, ErrChanged)
			}
		}
	}
	held.Unlock()

	lf := h.f
	if !adopted {
		// A duplicate, so the lock does not depend on f staying open. It
		// shares f's open file description (and so its lock).
		lf, err = dupFile(f)
		if err != nil {
			return nil, err
		}
		if err := flock(lf, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			lf.Close()
			if err == unix.EWOULDBLOCK {
				return nil, fmt.Errorf("%s: %w%s", path, ErrLocked, lockHolder(key))
			}
			return nil, &os.PathError{Op: "flock", Path: path, Err: err}
		}
	}
	held.Lock()
	if held.locks == nil {
		held.locks = make(map[fileKey]int)
	}
	held.locks[key]++
	held.Unlock()

	var once sync.Once
	var uerr error
	unlock = func() error {
		once.Do(func() {
			held.Lock()
			if held.locks[key]--; held.locks[key] <= 0 {
				delete(held.locks, key)
			}
			var orphans []*os.File
			for k, h := range held.handoff {
				if h.from == key {
					orphans = append(orphans, h.f)
					delete(held.handoff, k)
				}
			}
			held.Unlock()
			for _, o := range orphans {
				o.Close()
			}
			// Explicit LOCK_UN: the description may still be open through
			// f, and closing only our duplicate would not release it.
			uerr = flock(lf, unix.LOCK_UN)
			if cerr := lf.Close(); uerr == nil {
				uerr = cerr
			}
		})
		return uerr
	}

	// Between open and flock the file may have been renamed over; a lock on
	// an inode that is no longer the checkpoint protects nothing.
	if now, err := d.lstat(name); err == nil && keyOf(&now) != key {
		unlock()
		return nil, fmt.Errorf("%s: %w: the file was replaced while it was being locked", path, ErrChanged)
	}
	return unlock, nil
}

// heldByUs reports whether this process holds lockFile's lock on the inode.
func heldByUs(key fileKey) bool {
	held.Lock()
	defer held.Unlock()
	return held.locks[key] > 0
}

// offerHandoff makes locked (a descriptor of a new file holding its flock)
// the lock of the next lockFile of that file, if this process holds the lock
// on from (the file it replaces). It returns false, taking nothing, if not.
func offerHandoff(locked *os.File, key, from fileKey, path string) bool {
	held.Lock()
	defer held.Unlock()
	if held.locks[from] <= 0 {
		return false
	}
	if held.handoff == nil {
		held.handoff = make(map[fileKey]handoff)
	}
	if old, ok := held.handoff[key]; ok {
		old.f.Close()
	}
	held.handoff[key] = handoff{locked, from, path}
	return true
}

// withWriteLock runs fn while no other mount can be writing the checkpoint
// f (name below d): under a lock of its own, or under the lock this
// process already holds. Log replay and temp cleanup use it, so a mount
// that is about to be refused cannot replay or delete files that belong to
// the live writer.
func withWriteLock(d *cdir, name string, f *os.File, fn func() error) error {
	st, err := fstat(f)
	if err != nil {
		return err
	}
	if heldByUs(keyOf(&st)) {
		return fn()
	}
	unlock, err := lockFile(d, name, f)
	if err != nil {
		return err
	}
	err = fn()
	if uerr := unlock(); err == nil {
		err = uerr
	}
	return err
}

func flock(f *os.File, how int) error {
	return control(f, func(fd int) error {
		for {
			err := unix.Flock(fd, how)
			if err != unix.EINTR {
				return err
			}
		}
	})
}

func dupFile(f *os.File) (*os.File, error) {
	var nfd int
	err := control(f, func(fd int) error {
		var err error
		nfd, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return nil, &os.PathError{Op: "dup", Path: f.Name(), Err: err}
	}
	return os.NewFile(uintptr(nfd), f.Name()), nil
}

// lockHolder names the process holding an flock on key, from /proc/locks,
// for the error message; "" when it cannot tell. Any holder is named, a
// shared one too (safejaxfs wait takes one): it is what refused the lock.
func lockHolder(key fileKey) string {
	if pid := flockHolder(key, false); pid > 0 {
		return fmt.Sprintf(" (held by pid %d)", pid)
	}
	return ""
}

// LockHolder returns the pid of the process holding an exclusive flock on
// the file at path (a read-write mount's lock, see lockFile), 0 if none or
// if it cannot tell. Shared locks (a safejaxfs wait) are not counted: they
// mean no daemon is writing.
func LockHolder(path string) int {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0
	}
	return flockHolder(keyOf(&st), true)
}

// flockHolder is the one reader of /proc/locks: the pid holding an flock
// on key (only an exclusive one if exclusive), 0 if none or unreadable.
func flockHolder(key fileKey, exclusive bool) int {
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer f.Close()
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(key.dev), unix.Minor(key.dev), key.ino)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters have
		// "->" after the number and are not holders.
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" || fields[5] != want {
			continue
		}
		if exclusive && fields[3] != "WRITE" {
			continue
		}
		if pid, err := strconv.Atoi(fields[4]); err == nil && pid > 0 {
			return pid
		}
	}
	return 0
}
