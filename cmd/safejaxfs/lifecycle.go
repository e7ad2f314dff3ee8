package main

import (
	"errors"
	"fmt"
	"log/slog"
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
// daemon_log.go), and the terminal when it runs in the foreground. One
// *slog.Logger, handed to every layer (fs, checkpoint, remote); its text
// handler quotes any value holding a control character, so nothing a
// checkpoint, a server or a path holds can forge a line.
type daemonLog struct {
	*slog.Logger
	path  string   // the log file; "" if none could be opened
	file  *os.File // the log file this daemon created in its state dir (nil with --log-file)
	state string   // the state directory; "" if none is usable
	ready *ready   // the parent waiting for a background daemon, until ready
	keep  bool     // kept even after a clean end: it names what the user must act on
}

// newDaemonLog sets up the daemon's logger for mountpoint mnt: to
// logFile if given (--log-file), else to a new file in the state
// directory; and to stderr in the foreground.
func newDaemonLog(mnt, logFile string, ready *ready) (*daemonLog, error) {
	l := &daemonLog{ready: ready}
	var handlers []slog.Handler
	if ready == nil {
		handlers = append(handlers, slog.NewTextHandler(os.Stderr, nil))
	}
	state, skipped, stateErr := stateDir()
	l.state = state
	var problem string
	switch {
	case logFile != "":
		// The user's own choice of file: followed wherever it points,
		// never cut short or removed (its rotation is the user's).
		lf, err := os.OpenFile(logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fail(exitUsage, "--log-file: %v", err)
		}
		l.path = logFile
		handlers = append(handlers, slog.NewTextHandler(lf, nil))
	case stateErr != nil:
		problem = fmt.Sprintf("no log file (%v): reasons for refused edits are only in the root's %s attribute", stateErr, "user.safejaxfs.error")
	default:
		f, err := createLog(state, mnt)
		if err != nil {
			problem = fmt.Sprintf("no log file (%v): reasons for refused edits are only in the root's %s attribute", err, "user.safejaxfs.error")
			break
		}
		l.file, l.path = f, f.Name()
		handlers = append(handlers, slog.NewTextHandler(newCappedFile(f), nil))
		pruneLogs(state)
	}
	l.Logger = slog.New(slog.NewMultiHandler(handlers...))
	if stateErr == nil {
		for _, err := range skipped {
			if errors.Is(err, errNotPrivate) {
				l.notice("%v; using %s", err, state)
			}
		}
	}
	if problem != "" {
		l.notice("%s", problem)
	}
	return l, nil
}

// cliLogger is the logger of a command that runs in the terminal (recover,
// unmount's recovery): warnings and errors on stderr, escaped.
func cliLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// printf logs a line about the daemon's life (mounted, signalled).
func (l *daemonLog) printf(format string, args ...any) { l.Info(fmt.Sprintf(format, args...)) }

// warnf logs a failure the user should know about.
func (l *daemonLog) warnf(format string, args ...any) { l.Warn(fmt.Sprintf(format, args...)) }

// notice tells the user something at mount time: on stderr in the
// foreground, through the parent that started a background daemon (which
// prints it), and in the log.
func (l *daemonLog) notice(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.Warn(msg)
	if l.ready != nil {
		l.ready.note(msg)
	}
}

// close ends the log. The log of a mount that ended cleanly is removed,
// unless it says something the user must read (keep); that of one that
// failed is kept. The newest keptLogs of those kept stay.
func (l *daemonLog) close(clean bool) {
	if l.file == nil {
		return
	}
	if clean && !l.keep {
		os.Remove(l.file.Name())
	}
	l.file.Close() // drops the flock: prunable from now on
	l.file = nil
	if !clean || l.keep {
		pruneLogs(l.state)
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
			l.warnf("write-back: %v", err)
		}
		return true
	}
	l.warnf("write-back: %v", err)
	p, rerr := ck.SaveRecovery(dirs...)
	if rerr != nil {
		l.warnf("NOT unmounting, so the edits are not lost: %v; free some space (or make a directory writable) and signal again, or run safejaxfs unmount", rerr)
		return false
	}
	l.warnf("edits saved to %s", p)
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
func finish(ck *checkpoint.Checkpoint, l *daemonLog, dirs []string, status *statusFile) error {
	for {
		err := ck.Sync()
		if err == nil {
			if err := ck.Close(); err != nil {
				l.warnf("write-back at unmount failed: %v", err)
				return fail(exitWriteBack, "write-back at unmount failed: %v", err)
			}
			return nil
		}
		if errors.Is(err, checkpoint.ErrChanged) {
			// The edits are in the recovery file Sync named; Close sets
			// the log aside, which would stop the next mount.
			if cerr := ck.Close(); cerr != nil {
				err = cerr
			}
			l.warnf("write-back at unmount failed: %v", err)
			return fail(exitWriteBack, "write-back at unmount failed: %v", err)
		}
		p, rerr := ck.SaveRecovery(dirs...)
		if rerr == nil {
			ck.Abandon()
			l.warnf("write-back at unmount failed: %v; your edits are in %s", err, p)
			return fail(exitWriteBack, "write-back at unmount failed: %v; your edits are in %s", err, p)
		}
		if !fixable(rerr) {
			ck.Abandon()
			l.warnf("write-back at unmount failed: %v; %v; the edits are lost", err, rerr)
			return fail(exitWriteBack, "write-back at unmount failed: %v; %v; the edits are lost", err, rerr)
		}
		l.warnf("write-back at unmount failed: %v; %v; the daemon (pid %d) keeps the edits and retries every %v", err, rerr, os.Getpid(), retryEvery)
		status.setState(stateRetrying)
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
