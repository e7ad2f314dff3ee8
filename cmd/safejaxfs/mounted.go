package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// ls, verify, stats and diff of a checkpoint that is mounted read-write.
// Its files on disk are as of the last write-back: the edits made since
// are in its log and in the daemon, and a write-back under way may be
// patching them in place. So these commands read the mounted state
// instead, through the mount's files directory (/.files/, the checkpoint
// as the next write-back will write it), and say so on stderr. A mount
// without one (--no-files), or one that does not answer, is refused with
// the pid and the mountpoint. A read-only mount changes nothing on disk
// and holds no lock: its checkpoint is read as it is.

// rwMount is a daemon that holds a checkpoint's write lock.
type rwMount struct {
	pid      int
	mnt      string // "" when its status cannot be found
	filesDir string
}

// mainFile is the file of a local checkpoint a read-write mount locks: its
// index, else its one file; "" if ckpt names neither (the command then
// says why). Only the path is needed: Resolve finds it without reading
// the index, as Locate would.
func mainFile(ckpt string) string {
	main, err := safetensors.Resolve(ckpt)
	if err != nil {
		return ""
	}
	return main
}

// mountedRW reports the daemon that has ckpt mounted read-write, if one
// does.
func mountedRW(ckpt string) (*rwMount, string) {
	main := mainFile(ckpt)
	if main == "" {
		return nil, ""
	}
	pid := checkpoint.LockHolder(main)
	if pid == 0 {
		return nil, main
	}
	m := &rwMount{pid: pid}
	if st, ok := statusOf(pid); ok {
		m.mnt, m.filesDir = st.Mountpoint, st.FilesDir
	}
	return m, main
}

// mountedProbe bounds the wait for a mount a command reads through.
const mountedProbe = 5 * time.Second

// readablePath is the path a read-only command (verb) reads ckpt
// through: ckpt itself, unless a daemon has it mounted read-write; then
// the mount's files directory, after a note on stderr, or a refusal.
func readablePath(verb, ckpt string) (string, error) {
	m, main := mountedRW(ckpt)
	if m == nil {
		return ckpt, nil
	}
	where := fmt.Sprintf("%s is mounted read-write by safejaxfs (pid %d", ckpt, m.pid)
	if m.mnt != "" {
		where += " at " + m.mnt
	}
	where += ")"
	lags := "its files on disk lag the edits made there until it is unmounted (or safejaxfs sync)"
	if m.mnt == "" {
		return "", fail(exitMount, "%s: %s; run %s after unmounting it, or on the checkpoint's files in the mount's files directory", where, lags, verb)
	}
	if m.filesDir == "" {
		return "", fail(exitMount, "%s: %s, and the mount shows no files directory (--no-files); run %s after safejaxfs unmount %s", where, lags, verb, shellQuote(m.mnt))
	}
	through := filepath.Join(m.mnt, m.filesDir, filepath.Base(main))
	if !statWithin(through, mountedProbe) {
		return "", fail(exitMount, "%s: %s, and %s does not answer within %v; run %s after safejaxfs unmount %s", where, lags, through, mountedProbe, verb, shellQuote(m.mnt))
	}
	fmt.Fprintf(os.Stderr, "safejaxfs %s: %s: reading the mounted state, as the next write-back will write it, through %s\n", verb, escapeControl(where), escapeControl(through))
	return through, nil
}

// statWithin reports whether p can be stat'ed within d (a hung mount
// keeps the goroutine; the process exits anyway).
func statWithin(p string, d time.Duration) bool {
	done := make(chan error, 1)
	go func() {
		_, err := os.Stat(p)
		done <- err
	}()
	select {
	case err := <-done:
		return err == nil
	case <-time.After(d):
		return false
	}
}
