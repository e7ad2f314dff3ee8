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
)

func runUnmount(args []string) error {
	fl := newFlags("unmount", "[flags] MOUNTPOINT",
		"Unmount a safejaxfs mount and wait until its daemon has exited (and so has\nfinished writing edits back).")
	lazy := fl.BoolP("lazy", "z", false, "detach now even if files are open; the daemon exits once they are closed")
	force := fl.Bool("force", false, "unmount even if writing edits back failed (they are then lost, unless a recovery file was written)")
	rest, err := parseFlags(fl, args, 1, 1)
	if err != nil {
		return err
	}
	mnt, err := filepath.Abs(rest[0])
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	fstype, found, err := mountType(mnt)
	if err != nil {
		return fail(exitMount, "%v", err)
	}
	if !found {
		return fail(exitMount, "%s is not mounted", mnt)
	}
	if fstype != "fuse.safejaxfs" {
		return fail(exitMount, "%s is a %s mount, not safejaxfs", mnt, fstype)
	}
	// Ask the daemon who it is before detaching it; a dead mount has no
	// daemon to wait for.
	pid := daemonPID(mnt)
	if err := writeBack(mnt); err != nil && !*force {
		return err
	}
	if err := detach(mnt, *lazy); err != nil {
		return err
	}
	if pid > 0 {
		waitExit(pid)
	}
	return nil
}

// writeBack asks the daemon to persist everything (fsync of the mount root)
// while the mount is still up, so a failure can be reported, with the
// daemon's reason, before anything is lost.
func writeBack(mnt string) error {
	var sfs unix.Statfs_t
	err := unix.Statfs(mnt, &sfs)
	if err == nil {
		var d *os.File
		if d, err = os.Open(mnt); err == nil {
			err = d.Sync()
			d.Close()
		}
	}
	if errors.Is(err, unix.ENOTCONN) {
		// The daemon is gone (killed): nothing is left to write back, and
		// detaching is all that can be done.
		fmt.Fprintf(os.Stderr, "safejaxfs: %s: the daemon is gone; detaching the dead mount\n", mnt)
		return nil
	}
	if err != nil && !errors.Is(err, unix.EROFS) && !errors.Is(err, unix.ENOTSUP) {
		reason := err.Error()
		buf := make([]byte, 4096)
		if n, xerr := unix.Getxattr(mnt, fs.XattrError, buf); xerr == nil {
			reason = string(buf[:n])
		}
		return fail(exitWriteBack, "writing edits back failed, %s is still mounted (use --force to unmount anyway): %s", mnt, reason)
	}
	return nil
}

// daemonPID reads the pid the daemon publishes on the mount root; 0 if it
// does not answer within a few seconds (a hung daemon must not hang
// unmount too: detaching still works without it).
func daemonPID(mnt string) int {
	got := make(chan int, 1)
	go func() {
		buf := make([]byte, 32)
		n, err := unix.Getxattr(mnt, fs.XattrPID, buf)
		pid := 0
		if err == nil {
			pid, _ = strconv.Atoi(string(buf[:n]))
		}
		got <- pid
	}()
	select {
	case pid := <-got:
		return pid
	case <-time.After(5 * time.Second):
		return 0
	}
}

// lazyUnmount detaches mnt even though it is busy.
func lazyUnmount(mnt string) {
	if os.Geteuid() == 0 && unix.Unmount(mnt, unix.MNT_DETACH) == nil {
		return
	}
	exec.Command("fusermount3", "-uz", mnt).Run()
}

// detach unmounts directly as root, through fusermount3 otherwise.
func detach(mnt string, lazy bool) error {
	if os.Geteuid() == 0 {
		flags := 0
		if lazy {
			flags = unix.MNT_DETACH
		}
		err := unix.Unmount(mnt, flags)
		if errors.Is(err, unix.EBUSY) {
			return fail(exitMount, "%s is busy: files are open or a process has its cwd inside (close them, or use --lazy)", mnt)
		}
		if err != nil {
			return fail(exitMount, "unmounting %s: %v", mnt, err)
		}
		return nil
	}
	bin, err := exec.LookPath("fusermount3")
	if err != nil {
		if bin, err = exec.LookPath("fusermount"); err != nil {
			return fail(exitMount, "unmounting %s needs fusermount3 (Debian package fuse3) when not root", mnt)
		}
	}
	argv := []string{"-u"}
	if lazy {
		argv = append(argv, "-z")
	}
	out, err := exec.Command(bin, append(argv, mnt)...).CombinedOutput()
	if err != nil {
		return fail(exitMount, "unmounting %s: %s", mnt, strings.TrimSpace(string(out)))
	}
	return nil
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
