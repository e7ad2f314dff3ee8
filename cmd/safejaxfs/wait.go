package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/remote"
)

// Waiting for a write-back, after any unmount. A read-write mount's daemon
// holds an exclusive flock on each of the checkpoint's files (its index
// and shards; checkpoint/lock.go) from the moment it opens them until the
// last write-back has made them current, after its mount is gone: so
// whoever unmounted it (safejaxfs unmount, umount, fusermount3 -u, systemd)
// can wait for the files with a shared flock. A write-back renames new
// files over the old ones, each locked before it has the name; a lock
// taken on the old inode while that happened protects nothing, so each
// file's lock is taken, then checked to be on the file the name holds now,
// and taken again if not.
//
// safejaxfs wait does exactly that for every file of the checkpoint and
// returns when all are current. flock -s FILE -c CMD works for a plain
// checkpoint too (the daemon releases the old inode only after the new one
// has the name, so what CMD opens is current), but not for a sharded one.

func runWait(args []string) error {
	fl := newFlags("wait", "[flags] CHECKPOINT",
		"Wait until no safejaxfs daemon holds CHECKPOINT read-write, i.e. until its files\n"+
			"are current after an unmount of any kind (safejaxfs unmount, umount,\n"+
			"fusermount3 -u, systemd stopping a mount): the daemon writes edits back after\n"+
			"its mount is gone. Returns at once if no daemon holds it (never mounted,\n"+
			"read-only, remote). While still mounted it waits for the unmount. Exit 0 once\n"+
			"the files are current; 4 if a daemon died before finishing (the edits are in\n"+
			"the log: safejaxfs recover finishes them); 3 on --timeout.")
	timeout := fl.Duration("timeout", 0, "give up after this long (e.g. 10m; default: wait as long as it takes)")
	var pf progressFlags
	addProgressFlags(fl, &pf, true)
	rest, err := parseFlags(fl, args, 1, 1)
	if err != nil {
		return err
	}
	ckpt := rest[0]
	if remote.IsURL(ckpt) {
		return nil // never written back
	}
	if err := checkCheckpoint(ckpt); err != nil {
		return err
	}
	var deadline <-chan time.Time
	if *timeout > 0 {
		deadline = time.After(*timeout)
	}
	prog := &waitProgress{pf: pf}
	defer prog.finish()
	for {
		loc, _, err := safetensors.Locate(ckpt)
		if err != nil {
			return fail(exitInvalid, "%s: %v", ckpt, err)
		}
		files := loc.Paths
		if loc.Sharded() {
			files = append([]string{loc.Index}, files...)
		}
		moved := false
		for _, f := range files {
			current, err := waitFile(f, deadline, prog)
			if err != nil {
				return err
			}
			if !current {
				moved = true
				break
			}
		}
		if moved {
			continue // a write-back renamed files meanwhile: look again
		}
		// Every file was free at some point; none may be held now (a
		// shard locked after the index was checked).
		if held := anyHeld(files); held != "" {
			continue
		}
		break
	}
	prog.finish()
	if p, pending := checkpoint.Pending(ckpt); pending {
		return fail(exitWriteBack, "%s: no daemon holds it, but its log %s holds edits not written back (a daemon died before finishing): safejaxfs recover %s writes them back", ckpt, p, shellQuote(ckpt))
	}
	return nil
}

// waitFile waits for a shared flock on the file at p, then releases it.
// current is false when the name meanwhile holds another file (a
// write-back renamed a new one over it): the caller looks again.
func waitFile(p string, deadline <-chan time.Time, prog *waitProgress) (current bool, err error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return false, nil // renamed away between the listing and now
	}
	if err != nil {
		return false, fail(exitInvalid, "%s: %v", p, err)
	}
	defer unix.Close(fd)
	if unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB) != nil {
		// Held: wait in a goroutine (a blocked flock cannot be given
		// up), showing what the holder is doing.
		got := make(chan error, 1)
		go func() {
			for {
				err := unix.Flock(fd, unix.LOCK_SH)
				if err != unix.EINTR {
					got <- err
					return
				}
			}
		}()
		tick := time.NewTicker(statusEvery)
		defer tick.Stop()
		pid := checkpoint.LockHolder(p)
		prog.show(pid)
		for done := false; !done; {
			select {
			case err := <-got:
				if err != nil {
					return false, fail(exitMount, "%s: %v", p, err)
				}
				done = true
			case <-tick.C:
				prog.show(pid)
			case <-deadline:
				return false, fail(exitMount, "%s is still held by safejaxfs (pid %d)%s: gave up waiting (--timeout)", p, pid, prog.where(pid))
			}
		}
	}
	unix.Flock(fd, unix.LOCK_UN)
	var st, now unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, fail(exitInvalid, "%s: %v", p, err)
	}
	if err := unix.Stat(p, &now); err != nil {
		return false, nil
	}
	return st.Dev == now.Dev && st.Ino == now.Ino, nil
}

// anyHeld returns a file some daemon holds right now, "" if none.
func anyHeld(files []string) string {
	for _, f := range files {
		if checkpoint.LockHolder(f) != 0 {
			return f
		}
	}
	return ""
}

// waitProgress shows what the daemon being waited for is doing, from its
// status file: mounted still, or how far its write-back is.
type waitProgress struct {
	pf   progressFlags
	p    *progress
	said bool
}

func (w *waitProgress) where(pid int) string {
	if st, ok := statusOf(pid); ok {
		return fmt.Sprintf(", %s at %s", st.State, st.Mountpoint)
	}
	return ""
}

func (w *waitProgress) show(pid int) {
	st, ok := statusOf(pid)
	if !ok {
		return
	}
	if st.State == stateMounted && !w.said && !w.pf.quiet {
		// Not a progress: the wait lasts until someone unmounts.
		fmt.Fprintf(os.Stderr, "safejaxfs wait: pid %d still has it mounted at %s: waiting for the unmount and its write-back\n", pid, escapeControl(st.Mountpoint))
		w.said = true
	}
	if b := st.WriteBack; b != nil {
		note := fmt.Sprintf("pid %d", pid)
		if w.p == nil {
			w.p = newProgress(w.pf.show(true), "writing back", unitBytes, b.Total, note)
		}
		w.p.set(b.Done, b.Total, note)
	}
}

func (w *waitProgress) finish() { w.p.finish() }

// watchWriteBack shows the progress of daemon pid's write-back, from its
// status file, until stop is called: unmount runs it while it waits for
// the daemon.
func watchWriteBack(pid int, pf progressFlags) (stop func()) {
	if pid <= 0 || !pf.show(true) {
		return func() {}
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		w := &waitProgress{pf: pf, said: true}
		defer w.finish()
		t := time.NewTicker(statusEvery)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				w.show(pid)
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}
