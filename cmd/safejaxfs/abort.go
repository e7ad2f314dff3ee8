package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/fs"
)

// A daemon that dies while mounting can leave a mount behind that no one
// answers: dead (ENOTCONN) if its /dev/fuse descriptor closed, or hung if
// one of its own threads was waiting on a request to that very mount (go-
// fuse's start-up probe opens a file in it): the dying process cannot
// finish exiting, so the descriptor never closes and every access to the
// mount waits forever. The CLI that started the daemon cleans up: it
// aborts the FUSE connection (which fails every waiting request, so the
// daemon can finish dying) and detaches the mount.

const fuseConnections = "/sys/fs/fuse/connections"

// abortMount aborts the FUSE connection of the safejaxfs mount at mnt and
// detaches it. It never touches the mount itself (that could hang): the
// connection is found through the mount table. It acts on what it
// checked: the mount is pinned by a descriptor (O_PATH, which asks the
// file system nothing) whose mount ID must be the one the table showed.
// While pinned, the mount's connection cannot end, so its number cannot
// be reused by another mount's connection before the abort reaches it.
// The detach (which Linux only does by path) checks the ID once more.
func abortMount(mnt string) error {
	mnt, err := filepath.Abs(mnt)
	if err != nil {
		return err
	}
	m, found, err := fs.FindMount(mnt)
	if err != nil || !found {
		return err
	}
	if m.FSType != "fuse.safejaxfs" {
		return fmt.Errorf("%s is a %s mount, not safejaxfs", mnt, m.FSType)
	}
	pin, err := pinMount(mnt, m.ID)
	if err != nil {
		return err
	}
	defer unix.Close(pin)
	var aerr error
	if _, minor, ok := strings.Cut(m.Dev, ":"); ok {
		aerr = abortConnection(minor)
	}
	return errors.Join(aerr, detachChecked(mnt, m.ID))
}

// detachChecked lazily detaches the mount at mnt if it is still the mount
// with ID id; one mounted over it meanwhile is left alone.
func detachChecked(mnt, id string) error {
	fd, err := pinMount(mnt, id)
	if err != nil {
		return err
	}
	unix.Close(fd)
	if os.Geteuid() == 0 {
		return unix.Unmount(mnt, unix.MNT_DETACH)
	}
	lazyUnmount(mnt)
	return nil
}

// pinMount opens the root of the mount on top at mnt as O_PATH (no
// request goes to the file system, so a hung mount cannot hang it) and
// checks that it is the mount with ID id.
func pinMount(mnt, id string) (int, error) {
	fd, err := unix.Open(mnt, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	got, err := mountIDOf(fd)
	if err != nil || got != id {
		unix.Close(fd)
		return -1, errors.Join(err, fmt.Errorf("the mount at %s changed meanwhile (mount %s, not %s): not touching it", mnt, got, id))
	}
	return fd, nil
}

// mountIDOf reads the ID of the mount fd is on from /proc/self/fdinfo.
func mountIDOf(fd int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "mnt_id:"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", errors.New("no mnt_id in fdinfo")
}

// abortConnection writes to the connection's abort file in fusectl,
// mounting fusectl first if needed (root only).
func abortConnection(minor string) error {
	abort := filepath.Join(fuseConnections, minor, "abort")
	if _, err := os.Stat(abort); err != nil && os.Geteuid() == 0 {
		unix.Mount("fusectl", fuseConnections, "fusectl", 0, "")
	}
	return os.WriteFile(abort, []byte("1"), 0)
}

// dying reports whether process pid has exited, or was killed and cannot
// finish dying: a thread stuck in an uninterruptible FUSE request keeps
// SIGKILL pending (and, if it is the main thread, the process does not
// even show as a zombie).
func dying(pid int) bool {
	if exited(pid) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return true
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok || (k != "SigPnd" && k != "ShdPnd") {
			continue
		}
		if mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil && mask&(1<<(unix.SIGKILL-1)) != 0 {
			return true
		}
	}
	return false
}
