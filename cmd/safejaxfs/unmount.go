package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/fs"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/remote"
)

func runUnmount(args []string) error {
	fl := newFlags("unmount", "[flags] MOUNTPOINT",
		"Unmount a safejaxfs mount and wait until its daemon has exited (and so has\nfinished writing edits back).")
	lazy := fl.BoolP("lazy", "z", false, "detach now even if files are open; the daemon exits once they are closed")
	force := fl.Bool("force", false, "unmount even if writing edits back failed, once the daemon has saved them to a recovery file")
	var pf progressFlags
	addProgressFlags(fl, &pf, true)
	rest, err := parseFlags(fl, args, 1, 1)
	if err != nil {
		return err
	}
	mnt, m, err := safejaxfsMount(rest[0])
	if err != nil {
		return err
	}
	// A mount whose daemon is stuck (killed while its own start-up probe
	// held a file of the mount open) answers nothing, ever: abort its
	// connection rather than wait with it. Asked from a child (probe.go):
	// should the abort fail, this process must still be able to exit. The
	// answer is the daemon's pid, to wait for its exit once detached (a
	// dead mount has no daemon: 0).
	probed, answered := probeMounts([]string{mnt}, []probeKind{probePID}, hangTimeout)[0]
	if !answered {
		fmt.Fprintf(os.Stderr, "safejaxfs: %s does not answer within %v: aborting its FUSE connection and detaching it\n", mnt, hangTimeout)
		if err := abortMount(mnt); err != nil {
			return fail(exitMount, "aborting %s: %v", mnt, err)
		}
		return settleDead(mnt, m)
	}
	pid := probed.pid
	stop := watchWriteBack(pid, pf)
	defer stop()
	untyped, logFile := rootAttr(mnt, fs.XattrUntyped), rootAttr(mnt, fs.XattrLog)
	reason, dead, err := writeBack(mnt)
	if err != nil && (!*force && !errors.Is(err, errChangedUnder) || errors.Is(err, errInterrupted)) {
		return err // interrupted: not even --force goes on, the user said stop
	}
	var rescued error
	if err != nil {
		// --force, or a checkpoint another program changed (its mount
		// takes no more edits): not before the edits are safe somewhere.
		p, rerr := askRecovery(mnt)
		if rerr != nil {
			return fail(exitWriteBack, "writing edits back failed (%s), and saving them to a recovery file failed too (%v): not unmounting, %s is still mounted and nothing is lost; make room (or a writable directory) and retry%s", reason, rerr, mnt, logHint(mnt))
		}
		rescued = fail(exitWriteBack, "writing edits back failed (%s); unmounted anyway: your edits are in %s", reason, p)
	}
	if err := detach(mnt, *lazy); err != nil {
		return err
	}
	if dead {
		return settleDead(mnt, m)
	}
	if pid > 0 {
		waitExit(pid)
	}
	noteUntyped(untyped, logFile, rescued != nil)
	return rescued
}

// settleDead runs once the mount of a daemon that died is detached. Edits
// it acknowledged (fsync, close) may be only in the checkpoint's log: they
// are written back now, as safejaxfs recover would, and unmount says so;
// if that fails, exit 4 with the command to run once the cause is fixed
// (nothing is lost: the log stays).
//
// The checkpoint is the mount's source only as its owner set it (fsname=
// can say anything): the write-back runs for the caller's own mounts of a
// checkpoint named by an absolute path; otherwise unmount says what to run.
func settleDead(mnt string, m fs.MountEntry) error {
	src := m.Source
	if src == "" || remote.IsURL(src) {
		return nil // a remote mount has no edits
	}
	if !filepath.IsAbs(src) || m.Owner != os.Geteuid() {
		fmt.Fprintf(os.Stderr, "safejaxfs: the daemon of %s died; if it left edits in its checkpoint's log, write them back with: safejaxfs recover CHECKPOINT\n", escapeControl(mnt))
		return nil
	}
	logPath, pending := checkpoint.Pending(src)
	if !pending {
		return nil
	}
	fmt.Fprintf(os.Stderr, "safejaxfs: the daemon of %s died with edits in its log %s: writing them back into %s (as safejaxfs recover does)\n", escapeControl(mnt), escapeControl(logPath), escapeControl(src))
	var err error
	// The dead daemon's lock goes with its last descriptor, which may
	// close just after its FUSE connection did.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, _, err = recoverCheckpoint(src)
		if !errors.Is(err, checkpoint.ErrLocked) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return fail(exitWriteBack, "writing back the edits the dead daemon left in %s failed: %v; nothing is lost (they stay in the log): once that is fixed, run: safejaxfs recover %s", logPath, err, shellQuote(src))
	}
	fmt.Fprintf(os.Stderr, "safejaxfs: wrote them back: %s is up to date\n", escapeControl(src))
	return nil
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+,:@%=") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// askRecovery asks the daemon to save every edit to a recovery file and
// returns its path.
func askRecovery(mnt string) (string, error) {
	if err := unix.Setxattr(mnt, fs.XattrRecover, []byte("1"), 0); err != nil {
		if msg := rootAttr(mnt, fs.XattrError); msg != "" {
			return "", errors.New(msg)
		}
		return "", err
	}
	p := rootAttr(mnt, fs.XattrRecover)
	if p == "" {
		return "", errors.New("the daemon did not say where it saved them")
	}
	return p, nil
}

// rootAttr reads one of the daemon's attributes of the mount root; "" if
// it has none.
func rootAttr(mnt, name string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Getxattr(mnt, name, buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

// logHint points at the daemon's log, if it has one.
func logHint(mnt string) string {
	if p := rootAttr(mnt, fs.XattrLog); p != "" {
		return " (the daemon's log: " + p + ")"
	}
	return ""
}

// errChangedUnder: the write-back found the checkpoint changed by another
// program (the daemon's ESTALE). The edits went to a recovery file and the
// mount takes no more, so unmount goes on as with --force.
var errChangedUnder = errors.New("the checkpoint was changed by another program while mounted")

// writeBack asks the daemon to write every edit back into the checkpoint
// files (safejaxfs sync) while the mount is still up, so a failure can be
// reported, with the daemon's reason, before anything is detached.
func writeBack(mnt string) (reason string, dead bool, err error) {
	var sfs unix.Statfs_t
	err = unix.Statfs(mnt, &sfs)
	if err == nil {
		// The whole write-back (the log folded into the checkpoint files),
		// so that its failure is reported while the mount is still up.
		err = askWriteBack(mnt)
	}
	if errors.Is(err, errInterrupted) {
		return "", false, fail(exitInterrupted, "%w: the daemon goes on writing the edits back, and %s stays mounted (safejaxfs status %s follows it; safejaxfs unmount %s again unmounts it)", err, mnt, shellQuote(mnt), shellQuote(mnt))
	}
	if deadConn(err) {
		// The daemon is gone (killed): nothing is left to write back, and
		// detaching is all that can be done.
		fmt.Fprintf(os.Stderr, "safejaxfs: %s: the daemon is gone; detaching the dead mount\n", escapeControl(mnt))
		return "", true, nil
	}
	if errors.Is(err, unix.ESTALE) {
		// The daemon saved the edits to a recovery file, which unmount
		// asks it for (as --force does) before it detaches.
		reason = err.Error()
		if msg := rootAttr(mnt, fs.XattrError); msg != "" {
			reason = msg
		}
		return reason, false, errChangedUnder
	}
	if err != nil && !errors.Is(err, unix.EROFS) && !errors.Is(err, unix.ENOTSUP) {
		reason = err.Error()
		if msg := rootAttr(mnt, fs.XattrError); msg != "" {
			reason = msg
		}
		return reason, false, fail(exitWriteBack, "writing edits back failed, %s is still mounted (use --force to unmount once the edits are saved to a recovery file): %s%s", mnt, reason, logHint(mnt))
	}
	return "", false, nil
}

// lazyUnmount detaches mnt even though it is busy.
func lazyUnmount(mnt string) {
	if os.Geteuid() == 0 && unix.Unmount(mnt, unix.MNT_DETACH) == nil {
		return
	}
	exec.Command("fusermount3", "-uz", mnt).Run()
}

// busyWait is how long unmount retries a mount the kernel finds busy. A
// stat or statfs of the mount by another program (df, safejaxfs status, a
// file manager) holds it for an instant, and an unmount at that instant
// fails: that must not fail the command. An open file or a working
// directory inside holds it until closed, and unmount then says so.
var busyWait = time.Second

// detach unmounts directly as root, through fusermount3 otherwise,
// retrying for busyWait while the mount is busy.
func detach(mnt string, lazy bool) error {
	deadline := time.Now().Add(busyWait)
	for {
		busy, err := detachOnce(mnt, lazy)
		switch {
		case !busy:
			return err
		case time.Now().After(deadline):
			// The holders are looked for once, when unmount gives up.
			return fail(exitMount, "%s is busy: %s (close them, or use --lazy)", mnt, busyReason(mnt))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// detachOnce tries once; busy reports that the kernel found the mount
// busy (err is then nil: detach says why).
func detachOnce(mnt string, lazy bool) (busy bool, err error) {
	if os.Geteuid() == 0 {
		flags := 0
		if lazy {
			flags = unix.MNT_DETACH
		}
		err := unix.Unmount(mnt, flags)
		if errors.Is(err, unix.EBUSY) {
			return true, nil
		}
		if err != nil {
			return false, fail(exitMount, "unmounting %s: %v", mnt, err)
		}
		return false, nil
	}
	bin, err := exec.LookPath("fusermount3")
	if err != nil {
		if bin, err = exec.LookPath("fusermount"); err != nil {
			return false, fail(exitMount, "unmounting %s needs fusermount3 (Debian package fuse3) when not root", mnt)
		}
	}
	argv := []string{"-u"}
	if lazy {
		argv = append(argv, "-z")
	}
	out, err := exec.Command(bin, append(argv, mnt)...).CombinedOutput()
	if err != nil {
		// fusermount3 says strerror(EBUSY).
		if strings.Contains(string(out), "Device or resource busy") {
			return true, nil
		}
		return false, fail(exitMount, "unmounting %s: %s", mnt, strings.TrimSpace(string(out)))
	}
	return false, nil
}

// waitExit returns once pid has exited. The daemon is not our child: a
// pidfd becomes readable at exit, even before whoever adopted the process
// reaps it (a zombie is done writing).
func waitExit(pid int) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		// Gone already (ESRCH), or a kernel without pidfds: poll.
		for !exited(pid) {
			time.Sleep(10 * time.Millisecond)
		}
		return
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(fds, -1); !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

// exited reports whether pid is gone or a zombie.
func exited(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// pid (comm) state ...: comm may hold spaces, so cut at the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z'
}

// mountType returns the file system type mounted at mnt.
func mountType(mnt string) (fstype string, found bool, err error) {
	m, found, err := fs.FindMount(mnt)
	return m.FSType, found, err
}

// hangTimeout is how long the daemon may take to say its pid (a getxattr
// of the mount root) before it is taken for stuck. It answers that without
// a lock, even while a long write-back runs, so only a daemon that answers
// nothing at all takes this long.
var hangTimeout = 5 * time.Second
