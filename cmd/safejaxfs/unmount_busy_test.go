package main

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A mount in use is not unmounted: a working directory (or an open file)
// inside keeps it busy, and unmount says so (exit 3) once it has retried
// for busyWait. A use that ends while unmount retries does not fail it:
// another program's stat or statfs (df, safejaxfs status) holds a mount
// for an instant, and an unmount at that instant must not fail.
func TestUnmountBusy(t *testing.T) {
	t.Parallel()
	mnt := mount(t, flaxModel(t), "--read-only")
	// A process whose working directory is the mount; the returned func
	// ends it (and waits, so the mount is no longer held).
	hold := func() func() {
		cmd := exec.Command("sleep", "600")
		cmd.Dir = mnt
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		release := func() {
			cmd.Process.Kill()
			cmd.Wait()
		}
		t.Cleanup(release)
		return release
	}

	release := hold()
	if r := cli(t, "unmount", mnt); r.code != exitMount || !strings.Contains(r.stderr, "is busy") || !mounted(t, mnt) {
		t.Fatalf("unmount of a mount in use: exit %d: %s (mounted: %v), want exit %d saying it is busy", r.code, r.stderr, mounted(t, mnt), exitMount)
	}
	release()

	release = hold()
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
