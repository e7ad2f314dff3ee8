package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/fs"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// runSync writes a mount's edits back into its checkpoint files now. A
// mount keeps edits durable in its log and writes the files once, at
// unmount; other programs that read the checkpoint file while it is
// mounted see it as of the last write-back.
func runSync(args []string) error {
	fl := newFlags("sync", "MOUNTPOINT",
		"Write every edit made under MOUNTPOINT back into the checkpoint files now (they\nare always durable in the mount's log; the files themselves are written at\nunmount, when the log grows large, and by this command).")
	rest, err := parseFlags(fl, args, 1, 1)
	if err != nil {
		return err
	}
	mnt, err := filepath.Abs(rest[0])
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	if fstype, found, err := mountType(mnt); err != nil || !found || fstype != "fuse.safejaxfs" {
		return fail(exitMount, "%s is not a safejaxfs mount", mnt)
	}
	if err := askWriteBack(mnt); err != nil {
		if errors.Is(err, errInterrupted) {
			return fail(exitInterrupted, "%w: the daemon goes on writing the edits back (safejaxfs status %s follows it)", err, shellQuote(mnt))
		}
		reason := err.Error()
		buf := make([]byte, 4096)
		if n, xerr := unix.Getxattr(mnt, fs.XattrError, buf); xerr == nil {
			reason = string(buf[:n])
		}
		if errors.Is(err, unix.EROFS) {
			return fail(exitMount, "%s is mounted read-only: nothing to write back", mnt)
		}
		return fail(exitWriteBack, "writing back %s: %s", mnt, reason)
	}
	return nil
}

// runRecover finishes, without mounting, what a crash left in a
// checkpoint's log: the edits are written back into the files and the log
// removed, as the next read-write mount would do. A log that does not
// belong to the files as they are is never applied: recover says so, and
// --discard moves it aside (nothing is deleted) so the checkpoint can be
// used as it is.
func runRecover(args []string) error {
	fl := newFlags("recover", "[--discard] CHECKPOINT",
		"Write back the edits a crashed or killed mount left in CHECKPOINT's log (as the\nnext read-write mount would), then exit. Does nothing if nothing is pending.\nA log that was not written for the files as they are now is not applied;\n--discard moves it aside (renamed .stale-<time>, not deleted) instead.")
	discard := fl.Bool("discard", false, "move the checkpoint's log aside unapplied, and remove leftover temp files")
	rest, err := parseFlags(fl, args, 1, 1)
	if err != nil {
		return err
	}
	if err := checkCheckpoint(rest[0]); err != nil {
		return err
	}
	if *discard {
		moved, err := checkpoint.Discard(rest[0])
		if errors.Is(err, checkpoint.ErrLocked) {
			return fail(exitMount, "%v", err)
		}
		if err != nil {
			return fail(exitWriteBack, "%v", err)
		}
		if moved == "" {
			fmt.Fprintf(os.Stdout, "%s: no log to discard\n", rest[0])
		} else {
			fmt.Fprintf(os.Stdout, "%s: moved the log aside to %s (unapplied; delete it when you no longer want its edits)\n", rest[0], moved)
		}
		return nil
	}
	p, pending, err := recoverCheckpoint(rest[0])
	if err != nil {
		return err
	}
	if pending {
		fmt.Fprintf(os.Stdout, "%s: wrote back the edits in %s\n", rest[0], p)
	} else {
		fmt.Fprintf(os.Stdout, "%s: nothing to recover\n", rest[0])
	}
	return nil
}

// recoverCheckpoint is what recover does (and unmount of a mount whose
// daemon died): a read-write open, which finishes or replays the log, and
// a close, which writes the edits back. It returns the log's path and
// whether one was pending.
func recoverCheckpoint(ckpt string) (logPath string, pending bool, err error) {
	logPath, pending = checkpoint.Pending(ckpt)
	c, err := checkpoint.Open(ckpt, checkpoint.Options{Logger: cliLogger()})
	if errors.Is(err, checkpoint.ErrLocked) {
		return logPath, pending, fail(exitMount, "%v", err)
	}
	var le *checkpoint.LogError
	if errors.As(err, &le) {
		// Edits wait in a log that will not be applied: exit 4, and the
		// message offers recover --discard.
		return logPath, pending, fail(exitWriteBack, "%v", err)
	}
	if err != nil {
		return logPath, pending, fail(exitInvalid, "%v", err)
	}
	if err := c.Close(); err != nil {
		return logPath, pending, fail(exitWriteBack, "%v", err)
	}
	return logPath, pending, nil
}

// errInterrupted: the wait for a write-back was interrupted; the
// write-back itself goes on in the daemon.
var errInterrupted = errors.New("interrupted")

// askWriteBack asks mnt's daemon to write every edit back now
// (fs.XattrSync) and waits until it is done. Ctrl-C or SIGTERM ends the
// wait, not the write-back: the daemon answers the interrupted request at
// once and goes on, and errInterrupted says so. A signal that comes as the
// answer does counts too: the user asked to stop here.
func askWriteBack(mnt string) error {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	tid, done := make(chan int, 1), make(chan error, 1)
	var interrupted atomic.Bool
	defer func() {
		// Once interrupted, the signals stay caught: the command ends
		// now, with its message and exit 130, which a second Ctrl-C
		// must not cut short.
		if !interrupted.Load() {
			signal.Stop(sigs)
		}
	}()
	go func() {
		// Never unlocked: the thread ends with the goroutine, so its id
		// is not another's while the wait below may still signal it.
		runtime.LockOSThread()
		tid <- unix.Gettid()
		for {
			err := unix.Setxattr(mnt, fs.XattrSync, []byte("1"), 0)
			if err == unix.EINTR && !interrupted.Load() {
				// Any signal with a handler interrupts the wait (a
				// terminal resize's SIGWINCH too). The daemon goes on
				// waiting unless it sees the caller give up, but one
				// that cannot see this process (/proc mounted
				// hidepid) answers EINTR; the write-back went on, and
				// asking again waits for it.
				continue
			}
			done <- err
			return
		}
	}()
	waiter := <-tid
	for {
		select {
		case err := <-done:
			if interrupted.Load() || errors.Is(err, unix.EINTR) {
				return errInterrupted
			}
			return err
		case <-sigs:
			if !interrupted.Swap(true) {
				// The kernel tells the daemon of an interrupt (which
				// then answers) only when the signal lands on the
				// thread waiting for the answer; a signal to the
				// process goes to whichever thread takes it.
				unix.Tgkill(os.Getpid(), waiter, unix.SIGINT)
			}
		}
	}
}
