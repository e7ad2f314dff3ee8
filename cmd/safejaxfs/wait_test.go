package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Waiting for the write-back after an unmount that does not wait for it
// (umount, fusermount3 -u, systemd): safejaxfs wait, on the daemon's lock.

// detachLazily detaches mnt whatever its daemon is doing, as umount -l
// and fusermount3 -uz do.
func detachLazily(t testing.TB, mnt string) {
	t.Helper()
	if os.Geteuid() == 0 {
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			t.Fatal(err)
		}
		return
	}
	if out, err := exec.Command("fusermount3", "-uz", mnt).CombinedOutput(); err != nil {
		t.Fatalf("fusermount3 -uz: %v: %s", err, out)
	}
}

// flockWaiter reports whether pid waits for an flock on the file at p
// (a "->" line of /proc/locks).
func flockWaiter(t testing.TB, pid int, p string) bool {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	f, err := os.Open("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 7 && fields[1] == "->" && fields[2] == "FLOCK" && fields[5] == strconv.Itoa(pid) && fields[6] == want {
			return true
		}
	}
	return false
}

// The daemon is stopped (SIGSTOP) before the unmount, so its write-back
// cannot have happened when wait starts: wait must block until it has.
func TestWaitAfterUmount(t *testing.T) {
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	edit := f32("", 77).data
	if err := os.WriteFile(filepath.Join(mnt, "step_scale"), edit, 0); err != nil {
		t.Fatal(err)
	}
	pid := daemonOf(t, mnt)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	waitUntil(t, "the daemon to stop", func() bool { return allStopped(pid) })
	detachLazily(t, mnt)

	cmd := cliCmd("wait", ckpt)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	exited := startCmd(t, cmd)
	// wait blocks on the daemon's lock, and stays blocked while the
	// daemon cannot write back.
	for deadline := time.Now().Add(30 * time.Second); !flockWaiter(t, cmd.Process.Pid, ckpt); time.Sleep(5 * time.Millisecond) {
		select {
		case err := <-exited:
			t.Fatalf("wait returned (%v: %s) while the daemon, stopped, had not written back", err, errb.String())
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("wait never blocked on the checkpoint's lock")
		}
	}
	if entries, _, data := rawHeader(t, ckpt); bytes.Equal(data[entries["step_scale"].Offsets[0]:entries["step_scale"].Offsets[1]], edit) {
		t.Fatal("the checkpoint already holds the edit: this test proves nothing")
	}
	syscall.Kill(pid, syscall.SIGCONT)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("wait: %v: %s", err, errb.String())
		}
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatal("wait did not return after the daemon went on")
	}
	entries, _, data := rawHeader(t, ckpt)
	if got := data[entries["step_scale"].Offsets[0]:entries["step_scale"].Offsets[1]]; !bytes.Equal(got, edit) {
		t.Errorf("after wait the checkpoint holds %v, not the edit", got)
	}
	if logs, _ := filepath.Glob(filepath.Join(filepath.Dir(ckpt), ".*safejaxfs-log")); len(logs) != 0 {
		t.Errorf("after wait a log is left: %v", logs)
	}
}

func TestWaitReturnsAtOnce(t *testing.T) {
	ckpt := flaxModel(t)
	if r := cli(t, "wait", ckpt); r.code != 0 || r.stderr != "" {
		t.Errorf("wait, not mounted: exit %d %q", r.code, r.stderr)
	}
	mnt := mount(t, ckpt, "--read-only")
	if r := cli(t, "wait", ckpt); r.code != 0 {
		t.Errorf("wait, mounted read-only: exit %d %q", r.code, r.stderr)
	}
	unmountOK(t, mnt)
	mnt = mount(t, ckpt)
	r := cli(t, "wait", "--timeout", "300ms", ckpt)
	pid := strconv.Itoa(daemonOf(t, mnt))
	if r.code != exitMount || !strings.Contains(r.stderr, "pid "+pid) || !strings.Contains(r.stderr, mnt) || !strings.Contains(r.stderr, "--timeout") {
		t.Errorf("wait --timeout while mounted read-write: exit %d %q; want %d naming pid %s and %s", r.code, r.stderr, exitMount, pid, mnt)
	}
	if r := cli(t, "wait", "http://example.invalid/model.safetensors"); r.code != 0 {
		t.Errorf("wait of a URL: exit %d %q", r.code, r.stderr)
	}
	if r := cli(t, "wait", filepath.Join(t.TempDir(), "missing.safetensors")); r.code != exitInvalid {
		t.Errorf("wait of a missing checkpoint: exit %d %q", r.code, r.stderr)
	}
}

// A daemon killed with edits in its log: wait returns (nobody holds the
// checkpoint) but says the files are not current, and how to finish.
func TestWaitAfterDeadDaemon(t *testing.T) {
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	f, err := os.OpenFile(filepath.Join(mnt, "step_scale"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(f32("", 5).data)
	if err := f.Sync(); err != nil { // in the log now
		t.Fatal(err)
	}
	f.Close()
	pid := daemonOf(t, mnt)
	syscall.Kill(pid, syscall.SIGKILL)
	waitGone(t, pid)
	detachLazily(t, mnt)
	r := cli(t, "wait", ckpt)
	if r.code != exitWriteBack || !strings.Contains(r.stderr, "safejaxfs recover") {
		t.Errorf("wait after a killed daemon: exit %d %q; want %d and the way out", r.code, r.stderr, exitWriteBack)
	}
	if r := cli(t, "recover", ckpt); r.code != 0 {
		t.Fatalf("recover: exit %d %s", r.code, r.stderr)
	}
	if r := cli(t, "wait", ckpt); r.code != 0 {
		t.Errorf("wait after recover: exit %d %q", r.code, r.stderr)
	}
}
