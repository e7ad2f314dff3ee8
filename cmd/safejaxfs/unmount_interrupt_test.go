package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUnmountInterrupted: Ctrl-C during unmount's write-back ends unmount
// at once (exit 130, saying why), not when the write-back ends: the kernel
// waits for the daemon's answer to a request it has read, so the signal
// must reach the thread that waits, and the daemon must answer it. The
// daemon goes on writing back, the mount stays, and the next unmount
// finishes. The write-back rewrites a 1 GiB checkpoint (a new tensor sorts
// before its one big tensor): seconds of copying, during which unmount is
// interrupted.
func TestUnmountInterrupted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "big.safetensors")
	const n = 1 << 30
	header := fmt.Sprintf(`{"b":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}`, n, n)
	header += strings.Repeat(" ", (8-len(header)%8)%8)
	f, err := os.Create(ckpt)
	if err != nil {
		t.Fatal(err)
	}
	binary.Write(f, binary.LittleEndian, uint64(len(header)))
	f.WriteString(header)
	if err := f.Truncate(int64(8 + len(header) + n)); err != nil { // sparse: zeros
		t.Fatal(err)
	}
	f.Close()

	// unmountWith adds tensor key (it sorts before b: the write-back is a
	// rewrite), starts unmount, sends sig to each of its threads once the
	// rewrite's temp file is there, and returns how unmount ended and
	// whether the temp file was still there then.
	tmp := filepath.Join(dir, ".big.safetensors.safejaxfs-tmp-*")
	unmountWith := func(mnt, key string, sig syscall.Signal) (err error, stderr string, stillWriting bool) {
		if err := os.WriteFile(filepath.Join(mnt, key+".npy"), npyFile(t, f32(key, 1, 4)), 0o644); err != nil {
			t.Fatal(err)
		}
		unmount := cliCmd("unmount", mnt)
		var errb strings.Builder
		unmount.Stderr = &errb
		exited := startCmd(t, unmount)
		waitUntil(t, "the write-back to begin", func() bool { m, _ := filepath.Glob(tmp); return len(m) > 0 })
		signalThreads(t, unmount.Process.Pid, sig)
		select {
		case err = <-exited:
		case <-time.After(time.Minute):
			t.Fatalf("unmount did not end after its %v", sig)
		}
		m, _ := filepath.Glob(tmp)
		return err, errb.String(), len(m) > 0
	}

	// Any signal with a handler interrupts a wait for a FUSE answer: a
	// terminal resize's SIGWINCH must not end unmount, nor even the
	// daemon's wait (it answers once the caller gives up, not at each
	// interrupt: other programs do not ask again as unmount does).
	logFile := filepath.Join(dir, "daemon.log")
	mnt := mount(t, ckpt, "--log-file", logFile)
	if err, stderr, _ := unmountWith(mnt, "a", syscall.SIGWINCH); err != nil || mounted(t, mnt) {
		t.Fatalf("unmount given SIGWINCH during its write-back: %v %s (mounted: %v)", err, stderr, mounted(t, mnt))
	}
	if l := readLog(t, logFile); strings.Contains(l, "after its caller was interrupted") {
		t.Errorf("the daemon answered the sync of a caller that went on after SIGWINCH:\n%s", l)
	}

	// Ctrl-C ends it, and the write-back goes on.
	mnt = mount(t, ckpt)
	err2, stderr, stillWriting := unmountWith(mnt, "a2", syscall.SIGINT)
	var ee *exec.ExitError
	if !errors.As(err2, &ee) || ee.ExitCode() != exitInterrupted || !strings.Contains(stderr, "interrupted: the daemon goes on writing the edits back") {
		t.Errorf("unmount interrupted: %v %q, want exit %d saying the write-back goes on", err2, stderr, exitInterrupted)
	}
	if !stillWriting {
		t.Error("unmount ended only once the write-back was done (its temp file was gone)")
	}
	if !mounted(t, mnt) {
		t.Fatal("an interrupted unmount unmounted")
	}
	// The next unmount waits for the write-back under way (or finds it
	// done) and unmounts; the checkpoint holds the new tensor.
	if r := cli(t, "unmount", mnt); r.code != 0 || mounted(t, mnt) {
		t.Fatalf("unmount after the interrupted one: exit %d %s", r.code, r.stderr)
	}
	cliOK(t, "verify", ckpt)
	if ls := "\n" + cliOK(t, "ls", ckpt).stdout; !strings.Contains(ls, "\na ") || !strings.Contains(ls, "\na2 ") {
		t.Errorf("the new tensors are not in the checkpoint:\n%s", ls)
	}
}

// signalThreads sends sig to each thread of process pid, one by one: a
// signal to the process reaches only the thread that takes it.
func signalThreads(t *testing.T, pid int, sig syscall.Signal) {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		if tid, err := strconv.Atoi(task.Name()); err == nil {
			syscall.Tgkill(pid, tid, sig)
		}
	}
}
