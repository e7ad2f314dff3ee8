package checkpoint

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Cross-process tests re-run this test binary as a helper that locks the
// checkpoint the way another safejaxfs mount would.
const (
	helperModeEnv = "SAFEJAXFS_TEST_LOCK_HELPER"
	helperPathEnv = "SAFEJAXFS_TEST_LOCK_PATH"
)

// TestLockHelperProcess is not a test: it is the other process.
//
//	try:  lockFile the checkpoint; exit 0 if it got the lock, 3 with the
//	      error on stdout if ErrLocked, 4 on any other error.
//	hold: lockFile it, print "locked", hold it until stdin closes.
func TestLockHelperProcess(t *testing.T) {
	t.Parallel()
	mode := os.Getenv(helperModeEnv)
	if mode == "" {
		t.Skip("helper process for the cross-process lock tests")
	}
	f, err := os.Open(os.Getenv(helperPathEnv))
	if err != nil {
		fmt.Println(err)
		os.Exit(4)
	}
	unlock, err := lockPath(f)
	switch {
	case errors.Is(err, ErrLocked):
		fmt.Println(err)
		os.Exit(3)
	case err != nil:
		fmt.Println(err)
		os.Exit(4)
	}
	if mode == "hold" {
		fmt.Println("locked")
		io.Copy(io.Discard, os.Stdin)
	}
	unlock()
	os.Exit(0)
}

func helperCmd(path, mode string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperModeEnv+"="+mode, helperPathEnv+"="+path)
	return cmd
}

// otherProcessLocks reports whether another process can take the lock now,
// and what it said when it could not.
func otherProcessLocks(t *testing.T, path string) (bool, string) {
	t.Helper()
	out, err := helperCmd(path, "try").Output()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true, ""
	case errors.As(err, &ee) && ee.ExitCode() == 3:
		return false, strings.TrimSpace(string(out))
	default:
		t.Fatalf("helper: %v: %s", err, out)
		return false, ""
	}
}

// rawLockable reports whether a new open file description of path can
// flock it: what any other locker, in or out of this process, would see,
// without going through lockFile's handoff bookkeeping.
func rawLockable(t *testing.T, path string) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = flock(f, unix.LOCK_EX|unix.LOCK_NB)
	if err == unix.EWOULDBLOCK {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	flock(f, unix.LOCK_UN)
	return true
}

func TestLockFile(t *testing.T) {
	t.Parallel()
	c := defaultCkpt(t)
	f1, f2 := mustOpen(t, c.path), openRW(t, c.path)
	unlock1, err := lockPath(f1)
	if err != nil {
		t.Fatal(err)
	}
	// A second open in the same process is a second mount: refused.
	_, err = lockPath(f2)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock: %v, want ErrLocked", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, c.path) || !strings.Contains(msg, "pid "+strconv.Itoa(os.Getpid())) {
		t.Errorf("message should name the path and the holder: %s", msg)
	}
	if err := unlock1(); err != nil {
		t.Fatal(err)
	}
	if err := unlock1(); err != nil {
		t.Errorf("second unlock: %v", err)
	}
	unlock2, err := lockPath(f2)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	// The lock does not depend on the caller's descriptor staying open.
	f2.Close()
	if rawLockable(t, c.path) {
		t.Error("closing the locked file released the lock")
	}
	if err := unlock2(); err != nil {
		t.Fatal(err)
	}
	if !rawLockable(t, c.path) {
		t.Error("unlock did not release the lock")
	}
}

// Two names for one file are one checkpoint.
func TestLockFileAliases(t *testing.T) {
	t.Parallel()
	c := defaultCkpt(t)
	dir := t.TempDir()
	sym, hard := filepath.Join(dir, "sym.safetensors"), filepath.Join(filepath.Dir(c.path), "hard.safetensors")
	if err := os.Symlink(c.path, sym); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(c.path, hard); err != nil {
		t.Fatal(err)
	}
	unlock, err := lockPath(mustOpen(t, c.path))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	for _, p := range []string{sym, hard} {
		if _, err := lockPath(mustOpen(t, p)); !errors.Is(err, ErrLocked) {
			t.Errorf("lock through %s: %v, want ErrLocked", p, err)
		}
	}
}

func TestLockFileCrossProcess(t *testing.T) {
	t.Parallel()
	c := defaultCkpt(t)
	// Another process holds it.
	cmd := helperCmd(c.path, "hold")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if line != "locked\n" {
		stdin.Close()
		cmd.Wait()
		t.Fatalf("helper did not lock: %q", line)
	}
	_, err := lockPath(mustOpen(t, c.path))
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(cmd.Process.Pid)) {
		t.Errorf("lock held by pid %d: %v", cmd.Process.Pid, err)
	}
	if got := LockHolder(c.path); got != cmd.Process.Pid {
		t.Errorf("LockHolder = %d, want the helper's pid %d", got, cmd.Process.Pid)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := LockHolder(c.path); got != 0 {
		t.Errorf("LockHolder after the helper exited = %d, want 0", got)
	}
	// Free again once it lets go.
	unlock, err := lockPath(mustOpen(t, c.path))
	if err != nil {
		t.Fatal(err)
	}
	// And this process holding it refuses the other one.
	if ok, msg := otherProcessLocks(t, c.path); ok || !strings.Contains(msg, c.path) {
		t.Errorf("other process got the lock we hold (%q)", msg)
	}
	unlock()
	if ok, msg := otherProcessLocks(t, c.path); !ok {
		t.Errorf("other process refused after unlock: %s", msg)
	}
}

// A rewrite renames a new inode over the checkpoint. The lock must be on
// the new inode from the moment it has the name, stay there while the
// caller moves its own lock over (lockFile of the new file, then unlock of
// the old one), and go away only with the caller's unlock.
func TestLockSurvivesRewrite(t *testing.T) {
	t.Parallel()
	c := defaultCkpt(t)
	rw := openRW(t, c.path)
	unlockOld, err := lockPath(rw)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := otherProcessLocks(t, c.path); ok {
		t.Fatal("other process locked before the rewrite")
	}
	fd, mapped := openOld(t, c.path)
	src, meta := relayout(t, c, fd, mapped)

	// Between the rename and the caller's relock.
	hooks := &crashHooks{at: func(p string) error {
		if p == "renamed" && rawLockable(t, c.path) {
			t.Error("the new file was unlocked at the moment of the rename")
		}
		return nil
	}}
	if err := rewriteAtomicPath(c.path, src, meta, hooks); err != nil {
		t.Fatal(err)
	}
	if rawLockable(t, c.path) {
		t.Error("new file unlocked after the rewrite, before the caller relocked")
	}
	if ok, _ := otherProcessLocks(t, c.path); ok {
		t.Error("other process locked the new file after the rewrite")
	}

	// The caller's relock, as Checkpoint.openForWrite does it.
	rw2 := openRW(t, c.path)
	unlockNew, err := lockPath(rw2)
	if err != nil {
		t.Fatalf("relock of the new file: %v", err)
	}
	if err := unlockOld(); err != nil {
		t.Fatal(err)
	}
	if ok, _ := otherProcessLocks(t, c.path); ok {
		t.Error("other process locked the new file after the old lock was released")
	}
	// A second mount in this process is still refused.
	if _, err := lockPath(mustOpen(t, c.path)); !errors.Is(err, ErrLocked) {
		t.Errorf("second lock in this process after the rewrite: %v", err)
	}
	// And it survives a second rewrite the same way.
	fd2, mapped2 := openOld(t, c.path)
	nc := describeCkpt(t, c.path)
	src2, meta2 := relayoutAgain(nc, fd2, mapped2)
	if err := rewriteAtomicPath(c.path, src2, meta2, nil); err != nil {
		t.Fatal(err)
	}
	if ok, _ := otherProcessLocks(t, c.path); ok {
		t.Error("other process locked the file after a second rewrite")
	}
	unlock3, err := lockPath(openRW(t, c.path))
	if err != nil {
		t.Fatal(err)
	}
	unlockNew()
	unlock3()
	if ok, msg := otherProcessLocks(t, c.path); !ok {
		t.Errorf("other process refused after the last unlock: %s", msg)
	}
}

func relayoutAgain(c *testCkpt, fd *os.File, _ *safetensors.File) ([]safetensors.Source, map[string]string) {
	k := c.tensors["params.dense.kernel"]
	return []safetensors.Source{{Key: "only", DType: safetensors.F32, Shape: []uint64{256, 64}, Data: fd, Off: k[0]}}, nil
}

// A handoff the caller never takes (its reopen failed) must not hold the
// new file locked past the caller's unlock of the old lock.
func TestLockHandoffDroppedWithOldLock(t *testing.T) {
	t.Parallel()
	c := defaultCkpt(t)
	unlock, err := lockPath(openRW(t, c.path))
	if err != nil {
		t.Fatal(err)
	}
	fd, mapped := openOld(t, c.path)
	src, meta := relayout(t, c, fd, mapped)
	if err := rewriteAtomicPath(c.path, src, meta, nil); err != nil {
		t.Fatal(err)
	}
	if rawLockable(t, c.path) {
		t.Fatal("new file not locked")
	}
	unlock()
	if !rawLockable(t, c.path) {
		t.Error("new file still locked after the only lock was released")
	}
}

// Without the lock there is nothing to carry over: the new file is free.
func TestRewriteWithoutLockLeavesNewFileUnlocked(t *testing.T) {
	t.Parallel()
	c := defaultCkpt(t)
	fd, mapped := openOld(t, c.path)
	src, meta := relayout(t, c, fd, mapped)
	if err := rewriteAtomicPath(c.path, src, meta, nil); err != nil {
		t.Fatal(err)
	}
	if !rawLockable(t, c.path) {
		t.Error("rewrite without a lock left the new file locked")
	}
}

// Locking a file that was renamed over between open and flock protects
// nothing, and says so.
func TestLockFileReplacedBeforeLock(t *testing.T) {
	t.Parallel()
	c := defaultCkpt(t)
	f := mustOpen(t, c.path)
	s, m := testSources(3)
	o := makeCkpt(t, filepath.Dir(c.path), "new.safetensors", s, m)
	if err := os.Rename(o.path, c.path); err != nil {
		t.Fatal(err)
	}
	if _, err := lockPath(f); !errors.Is(err, ErrChanged) {
		t.Fatalf("lock of a replaced file: %v, want ErrChanged", err)
	}
	if !rawLockable(t, c.path) {
		t.Error("failed lock left a lock behind")
	}
}

// Someone renames their file over the checkpoint right after our rewrite
// and before the caller relocks: the relock must not take their file for
// the rewritten one.
func TestLockRelockAfterRewriteRefusesReplacedFile(t *testing.T) {
	t.Parallel()
	c := defaultCkpt(t)
	unlock, err := lockPath(openRW(t, c.path))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	fd, mapped := openOld(t, c.path)
	src, meta := relayout(t, c, fd, mapped)
	if err := rewriteAtomicPath(c.path, src, meta, nil); err != nil {
		t.Fatal(err)
	}
	s, m := testSources(8)
	theirs := makeCkpt(t, filepath.Dir(c.path), "theirs.safetensors", s, m)
	if err := os.Rename(theirs.path, c.path); err != nil {
		t.Fatal(err)
	}
	if _, err := lockPath(openRW(t, c.path)); !errors.Is(err, ErrChanged) {
		t.Fatalf("relock after the file was replaced: %v, want ErrChanged", err)
	}
	if !rawLockable(t, c.path) {
		t.Error("their file was locked")
	}
}

// LockHolder names only exclusive holders (a read-write mount), not a
// shared one (safejaxfs wait); the refusal message names either, since
// either is what refused the lock.
func TestLockHolderExclusiveOnly(t *testing.T) {
	t.Parallel()
	c := defaultCkpt(t)
	f := mustOpen(t, c.path)
	st, err := fstat(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := flock(f, unix.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	if got := LockHolder(c.path); got != 0 {
		t.Errorf("LockHolder under a shared lock = %d, want 0", got)
	}
	if got, want := lockHolder(keyOf(&st)), fmt.Sprintf(" (held by pid %d)", os.Getpid()); got != want {
		t.Errorf("lockHolder under a shared lock = %q, want %q", got, want)
	}
	if err := flock(f, unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if got := LockHolder(c.path); got != os.Getpid() {
		t.Errorf("LockHolder under an exclusive lock = %d, want %d", got, os.Getpid())
	}
	flock(f, unix.LOCK_UN)
}
