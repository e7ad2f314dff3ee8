package main

import (
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// The daemon's life around the mount: where it says things, whether it
// may write, and how it ends without losing an edit.

// daemonLog is where a daemon explains itself: the log file always (see
// daemon_log.go), and the terminal when it runs in the foreground.
type daemonLog struct {
	*log.Logger
	path  string // the log file; "" if it could not be opened
	ready *ready // the parent waiting for a background daemon, until ready
}

func newDaemonLog(mnt string, ready *ready) (*daemonLog, string) {
	var out []io.Writer
	if ready == nil {
		out = append(out, os.Stderr)
	}
	dir, err := stateDir()
	l := &daemonLog{ready: ready}
	var problem string
	if err == nil {
		var f *os.File
		if f, l.path, err = openLog(dir, mnt); err == nil {
			out = append(out, f)
		}
	}
	if err != nil {
		problem = fmt.Sprintf("no log file (%v): reasons for refused edits are only in the root's %s attribute", err, "user.safejaxfs.error")
	}
	l.Logger = log.New(io.MultiWriter(out...), "safejaxfs: ", log.LstdFlags)
	if problem != "" {
		l.notice("%s", problem)
	}
	return l, dir
}

// notice tells the user something at mount time: on stderr in the
// foreground, through the parent that started a background daemon (which
// prints it), and in the log.
func (l *daemonLog) notice(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.Print(msg)
	if l.ready != nil {
		l.ready.note(msg)
	}
}

// writableDirs reports why the daemon could not write edits back next to
// the checkpoint's files: a write-back creates temp files in their
// directories and renames them, and the log lives there too.
func writableDirs(loc *safetensors.Location) error {
	files := loc.Paths
	if loc.Sharded() {
		files = append([]string{loc.Index}, files...)
	}
	for _, f := range files {
		if err := writableDir(f); err != nil {
			return err
		}
	}
	return nil
}

// writableDir reports why the directory of the file ckpt (symlinks
// resolved) cannot take new files.
func writableDir(ckpt string) error {
	real, err := filepath.EvalSymlinks(ckpt)
	if err != nil {
		return err
	}
	dir := filepath.Dir(real)
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return fmt.Errorf("its directory %s is not writable (%v)", dir, err)
	}
	return nil
}

// recoveryDirs are where edits go when the checkpoint's directory cannot
// take a recovery file: the daemon's state directory, then $TMPDIR.
func recoveryDirs(state string) []string {
	var dirs []string
	if state != "" {
		dirs = append(dirs, state)
	}
	return append(dirs, os.TempDir())
}

// saveBeforeUnmount is what SIGINT/SIGTERM do first: persist, else save
// the edits to a recovery file. false when neither worked: the daemon then
// stays mounted, since unmounting would lose the edits.
func saveBeforeUnmount(ck *checkpoint.Checkpoint, l *daemonLog, dirs []string) bool {
	err := ck.Sync()
	if err == nil || errors.Is(err, checkpoint.ErrChanged) {
		if err != nil {
			l.Printf("write-back: %v", err)
		}
		return true
	}
	l.Printf("write-back: %v", err)
	p, rerr := ck.SaveRecovery(dirs...)
	if rerr != nil {
		l.Printf("NOT unmounting, so the edits are not lost: %v; free some space (or make a directory writable) and signal again, or run safejaxfs unmount", rerr)
		return false
	}
	l.Printf("edits saved to %s", p)
	return true
}

// retryEvery is how often a daemon whose mount is gone retries saving
// edits it could save nowhere.
var retryEvery = 5 * time.Second

// finish runs once the mount is gone: the last write-back. If the
// checkpoint cannot take the edits, they go to a recovery file; if no
// recovery file can be written either, the daemon stays alive and retries
// until one can (the mount is gone, but the edits live in this process),
// saying so in the log. The error, if any, names where the edits are.
func finish(ck *checkpoint.Checkpoint, l *daemonLog, dirs []string) error {
	for {
		err := ck.Sync()
		if err == nil {
			if err := ck.Close(); err != nil {
				l.Printf("write-back at unmount failed: %v", err)
				return fail(exitWriteBack, "write-back at unmount failed: %v", err)
			}
			return nil
		}
		if errors.Is(err, checkpoint.ErrChanged) {
			// The edits are in the recovery file Sync named.
			ck.Abandon()
			l.Printf("write-back at unmount failed: %v", err)
			return fail(exitWriteBack, "write-back at unmount failed: %v", err)
		}
		p, rerr := ck.SaveRecovery(dirs...)
		if rerr == nil {
			ck.Abandon()
			l.Printf("write-back at unmount failed: %v; your edits are in %s", err, p)
			return fail(exitWriteBack, "write-back at unmount failed: %v; your edits are in %s", err, p)
		}
		if !fixable(rerr) {
			ck.Abandon()
			l.Printf("write-back at unmount failed: %v; %v; the edits are lost", err, rerr)
			return fail(exitWriteBack, "write-back at unmount failed: %v; %v; the edits are lost", err, rerr)
		}
		l.Printf("write-back at unmount failed: %v; %v; the daemon (pid %d) keeps the edits and retries every %v", err, rerr, os.Getpid(), retryEvery)
		time.Sleep(retryEvery)
	}
}

// fixable reports whether a failure to save is one the user can fix (room
// on a disk, permission on a directory) so that retrying makes sense; a
// checkpoint whose mapped bytes another program truncated away never
// comes back.
func fixable(err error) bool {
	var e syscall.Errno
	if !errors.As(err, &e) || errors.Is(err, checkpoint.ErrFault) {
		return false
	}
	switch e {
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, syscall.EACCES, syscall.EPERM, syscall.ENOENT:
		return true
	}
	return false
}
