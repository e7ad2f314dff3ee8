package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A mount in use is not unmounted: a working directory or an open file
// inside keeps it busy, and unmount says so (exit 3), naming who holds it,
// once it has retried for busyWait. A use that ends while unmount retries
// does not fail it: another program's stat or statfs (df, safejaxfs
// status) holds a mount for an instant, and an unmount at that instant
// must not fail.
func TestUnmountBusy(t *testing.T) {
	t.Parallel()
	mnt := mount(t, flaxModel(t), "--read-only")
	// hold starts a process that holds the mount; release ends it (and
	// waits, so the mount is no longer held).
	hold := func(cmd *exec.Cmd) (pid int, release func()) {
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		release = func() {
			cmd.Process.Kill()
			cmd.Wait()
		}
		t.Cleanup(release)
		return cmd.Process.Pid, release
	}
	inMount := func() *exec.Cmd {
		cmd := exec.Command("sleep", "600")
		cmd.Dir = mnt
		return cmd
	}
	// The shell opens the file and execs sleep: the test process never
	// holds it (its files reach the other tests' children for an instant).
	kernel := filepath.Join(mnt, "params", "Dense_0", "kernel")
	openFile := func() *exec.Cmd { return exec.Command("sh", "-c", `exec sleep 600 < "$1"`, "sh", kernel) }

	for _, c := range []struct {
		cmd  func() *exec.Cmd
		want string
	}{
		{inMount, "(sleep: working directory)"},
		{openFile, "(sleep: open file " + kernel + ")"},
	} {
		pid, release := hold(c.cmd())
		want := fmt.Sprintf("pid %d %s", pid, c.want)
		// The shell may not have opened the file yet.
		waitUntil(t, "the holder to hold the mount", func() bool { return holds(fmt.Sprintf("/proc/%d", pid), mnt) != "" })
		if r := cli(t, "unmount", mnt); r.code != exitMount || !strings.Contains(r.stderr, "is busy: held by ") || !strings.Contains(r.stderr, want) || !mounted(t, mnt) {
			t.Errorf("unmount of a mount in use: exit %d: %s (mounted: %v), want exit %d saying %q", r.code, r.stderr, mounted(t, mnt), exitMount, want)
		}
		release()
	}

	_, release := hold(inMount())
	unmount := cliCmd("unmount", mnt)
	unmount.Env = append(unmount.Env, busyWaitEnv+"=2m")
	var stderr strings.Builder
	unmount.Stderr = &stderr
	exited := startCmd(t, unmount)
	select {
	case err := <-exited:
		t.Fatalf("unmount gave up while the mount was busy, before its 2 minutes: %v %s", err, stderr.String())
	case <-time.After(1500 * time.Millisecond):
	}
	release()
	if err := <-exited; err != nil || mounted(t, mnt) {
		t.Fatalf("unmount once the mount is no longer in use: %v %s (mounted: %v)", err, stderr.String(), mounted(t, mnt))
	}
}
