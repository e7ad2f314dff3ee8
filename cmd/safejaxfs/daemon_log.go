package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A daemon in the background has no terminal, yet the reasons it refused
// an edit or failed a write-back are what the user needs. It writes them
// to a log file of its own in its state directory:
//
//	$XDG_RUNTIME_DIR/safejaxfs/<mountpoint>.<time>.<pid>.log
//
// falling back to /run/user/<uid>/safejaxfs, then $TMPDIR/safejaxfs-<uid>
// (root without a runtime dir: /run/safejaxfs). The mount root's
// user.safejaxfs.log attribute names it. The same directory is where edits
// go as a last resort when the checkpoint's own directory cannot take a
// recovery file.
//
// On a shared machine another local user is an attacker: /tmp is everyone's,
// so $TMPDIR/safejaxfs-<uid> may have been made by someone else, or be a
// symlink to a place of their choosing, and a log file in it may be a
// symlink to the victim's ~/.bashrc. The rules are those of ssh-agent, tmux
// and systemd: the directory must be a real directory (not a symlink),
// owned by us, with no access for group or others, or it is not used; each
// daemon creates a log file of its own, new (O_EXCL) and never through a
// symlink (O_NOFOLLOW); and every line is escaped (slog's text handler
// quotes control characters), so a mountpoint named "x\nsomething" cannot
// forge a line.

// stateDirCandidates lists where the state directory may be, best first.
func stateDirCandidates() []string {
	var out []string
	// systemd's rule: a relative XDG_RUNTIME_DIR is ignored.
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" && filepath.IsAbs(d) {
		out = append(out, filepath.Join(d, "safejaxfs"))
	}
	uid := os.Geteuid()
	if uid == 0 {
		out = append(out, "/run/safejaxfs")
	} else if st, err := os.Lstat(fmt.Sprintf("/run/user/%d", uid)); err == nil && st.IsDir() {
		out = append(out, fmt.Sprintf("/run/user/%d/safejaxfs", uid))
	}
	return append(out, filepath.Join(os.TempDir(), fmt.Sprintf("safejaxfs-%d", uid)))
}

// stateDir returns the daemon's directory for logs and last-resort
// recovery files: the first candidate that is, or could be made, a
// private directory. skipped says why earlier candidates were not used
// (one that exists but fails the checks is never used, and never
// repaired: someone else may be waiting in it).
func stateDir() (dir string, skipped []error, err error) {
	for _, d := range stateDirCandidates() {
		if err := privateDir(d); err != nil {
			skipped = append(skipped, err)
			continue
		}
		return d, skipped, nil
	}
	return "", skipped, fmt.Errorf("no private state directory: %w", errors.Join(skipped...))
}

// errNotPrivate: a state directory that exists but is not ours alone.
var errNotPrivate = errors.New("not a private directory")

// privateDir creates d (mode 0700) unless it exists, then checks that it
// is a directory, not a symlink, owned by the effective uid, with no
// permission bits for group or others. Its parent must exist: creating
// $XDG_RUNTIME_DIR itself is the login manager's job.
func privateDir(d string) error {
	if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("state directory %s: %w", d, err)
	}
	return checkPrivateDir(d)
}

// checkPrivateDir checks d as it is, through a descriptor opened without
// following a symlink, so what is checked is what is there.
func checkPrivateDir(d string) error {
	fd, err := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		// Refused either way; Lstat only tells which for the message.
		if st, lerr := os.Lstat(d); lerr == nil && st.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("state directory %s is a symlink: refused (%w)", d, errNotPrivate)
		}
		return fmt.Errorf("state directory %s is not a directory: refused (%w)", d, errNotPrivate)
	}
	if err != nil {
		return fmt.Errorf("state directory %s: %w", d, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("state directory %s: %w", d, err)
	}
	if uid := uint32(os.Geteuid()); st.Uid != uid {
		return fmt.Errorf("state directory %s belongs to uid %d, not to uid %d: refused, another user may read or plant files in it (%w)", d, st.Uid, uid, errNotPrivate)
	}
	if perm := st.Mode & 0o7777; perm&0o077 != 0 {
		return fmt.Errorf("state directory %s has mode %04o, open to group or others: refused (chmod 700 it, or remove it) (%w)", d, perm, errNotPrivate)
	}
	return nil
}

// logStem is the start of a log file's name for a mountpoint: its
// absolute path with "/" as "%" ("%tmp%m" for /tmp/m), or a hash when
// that is too long.
func logStem(mnt string) string {
	name := strings.ReplaceAll(mnt, "%", "%25")
	name = strings.ReplaceAll(name, "/", "%")
	if len(name) > 180 {
		sum := sha256.Sum256([]byte(mnt))
		name = name[len(name)-120:] + "-" + hex.EncodeToString(sum[:8])
	}
	return name
}

// logSuffix ends the name of every log file this daemon makes; pruning
// touches nothing else in the state directory (recovery files live there
// too).
const logSuffix = ".log"

// createLog creates a new log file in dir for mountpoint mnt: a fresh name
// (time and pid), O_EXCL and O_NOFOLLOW, mode 0600. It holds an flock on
// the file for as long as the daemon lives, which is how pruning tells a
// live daemon's log from one left by a daemon that failed.
func createLog(dir, mnt string) (*os.File, error) {
	return createLogNamed(dir, logStem(mnt)+"."+time.Now().Format("20060102-150405")+"."+strconv.Itoa(os.Getpid()))
}

// createLogNamed is createLog with the name's stem given: base.log, else
// (something is there: a leftover, or a planted symlink, which O_EXCL
// refuses to follow) base-1.log, ...
func createLogNamed(dir, base string) (*os.File, error) {
	for i := 0; ; i++ {
		name := base
		if i > 0 {
			name += "-" + strconv.Itoa(i)
		}
		p := filepath.Join(dir, name+logSuffix)
		fd, err := unix.Open(p, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) && i < 100 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("log file %s: %w", p, err)
		}
		if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			unix.Close(fd)
			os.Remove(p)
			return nil, fmt.Errorf("log file %s: %w", p, err)
		}
		return os.NewFile(uintptr(fd), p), nil
	}
}

// keptLogs is how many logs of failed mounts the state directory keeps;
// older ones are removed. A mount that ends cleanly removes its own.
const keptLogs = 5

// pruneLogs removes all but the newest keptLogs log files in dir that no
// live daemon holds (one that does holds an flock on it). Only regular
// files named *.log are considered, opened without following symlinks.
func pruneLogs(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	type old struct {
		name  string
		mtime time.Time
	}
	var dead []old
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), logSuffix) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		live := unix.Fstat(fd, &st) != nil || unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB) != nil
		unix.Close(fd)
		if live {
			continue
		}
		dead = append(dead, old{e.Name(), time.Unix(st.Mtim.Unix())})
	}
	if len(dead) <= keptLogs {
		return
	}
	slices.SortFunc(dead, func(a, b old) int { return b.mtime.Compare(a.mtime) })
	for _, o := range dead[keptLogs:] {
		os.Remove(filepath.Join(dir, o.name))
	}
}

// maxLogSize bounds a log file: past it, the file starts over (with a
// line saying so), so a daemon that logs a failing remote read for days
// cannot fill the disk. The newest lines are the ones that explain.
const maxLogSize = 4 << 20

// cappedFile is a log file that starts over past maxLogSize.
type cappedFile struct {
	mu sync.Mutex
	f  *os.File
	n  int64
}

func newCappedFile(f *os.File) *cappedFile {
	c := &cappedFile{f: f}
	if st, err := f.Stat(); err == nil {
		c.n = st.Size()
	}
	return c
}

func (c *cappedFile) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n+int64(len(p)) > maxLogSize && c.f.Truncate(0) == nil {
		// O_APPEND: the next write lands at the new end, 0.
		msg := fmt.Sprintf("time=%s level=WARN msg=\"the log passed %d bytes: earlier lines were dropped\"\n", time.Now().Format(time.RFC3339), maxLogSize)
		k, _ := c.f.WriteString(msg)
		c.n = int64(k)
	}
	k, err := c.f.Write(p)
	c.n += int64(k)
	return k, err
}
