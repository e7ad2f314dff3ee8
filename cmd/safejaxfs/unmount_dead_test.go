package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// killWithEdits mounts ckpt, makes acknowledged edits (an np.save of a new
// tensor and an fsynced write into another: both only in the log until a
// write-back), kills the daemon with SIGKILL and returns the tensors the
// checkpoint must hold once they are written back.
func killWithEdits(t *testing.T, ckpt string) (mnt string, want []genTensor) {
	mnt = mount(t, ckpt)
	added := f32("added", 7, 3, 5)
	if err := os.WriteFile(filepath.Join(mnt, "added.npy"), npyFile(t, added), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(mnt, "params/Dense_1/bias"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	bias := f32("params.Dense_1.bias", -3, 4)
	if _, err := f.WriteAt(bias.data, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	pid := daemonOf(t, mnt)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	if _, pending := checkpoint.Pending(ckpt); !pending {
		t.Fatal("no log pending after the kill: the test proves nothing")
	}
	want = flaxTensors()
	want[3] = bias
	return mnt, append(want, added)
}

// TestUnmountDeadDaemonRecovers: unmount of a mount whose daemon was
// killed with acknowledged edits in its log writes them back (as recover
// does), says so, and exits 0 with the checkpoint up to date.
func TestUnmountDeadDaemonRecovers(t *testing.T) {
	ckpt := flaxModel(t)
	mnt, want := killWithEdits(t, ckpt)
	// Meanwhile every command that reads the checkpoint opens it as a
	// read-only mount does: it refuses the checkpoint, naming the way out,
	// rather than show files a write-back may have left torn.
	for _, verb := range []string{"ls", "verify", "stats"} {
		if r := cli(t, verb, ckpt); r.code != exitInvalid || !strings.Contains(r.stderr, "safejaxfs recover") {
			t.Errorf("%s with the dead daemon's log pending: exit %d %q", verb, r.code, r.stderr)
		}
	}
	r := cli(t, "unmount", mnt)
	if r.code != 0 || !strings.Contains(r.stderr, "died with edits in its log") || !strings.Contains(r.stderr, "wrote them back") {
		t.Fatalf("unmount of a dead daemon's mount: exit %d %q", r.code, r.stderr)
	}
	if mounted(t, mnt) {
		t.Error("still mounted")
	}
	if p, pending := checkpoint.Pending(ckpt); pending {
		t.Errorf("log %s still pending", p)
	}
	checkFile(t, ckpt, flaxMeta, want...)
}

// TestUnmountDeadDaemonRecoveryFails: when the write-back cannot be done
// (here the checkpoint's file system went read-only), unmount exits 4 and
// names the exact command; nothing is lost, and that command works once
// the cause is gone.
func TestUnmountDeadDaemonRecoveryFails(t *testing.T) {
	disk := smallDisk(t, "4m")
	src := flaxModel(t)
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	ckpt := filepath.Join(disk, "my model.safetensors")
	if err := os.WriteFile(ckpt, b, 0o644); err != nil {
		t.Fatal(err)
	}
	mnt, want := killWithEdits(t, ckpt)
	// The killed daemon's leader shows as a zombie before its last thread
	// has closed the files they share: until then a read-only remount is
	// EBUSY. Wait for that, not for a time.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := unix.Mount("", disk, "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
		if err == nil {
			break
		}
		if err != unix.EBUSY || time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	r := cli(t, "unmount", mnt)
	cmd := "safejaxfs recover '" + ckpt + "'"
	if r.code != exitWriteBack || !strings.Contains(r.stderr, cmd) {
		t.Fatalf("unmount when the write-back fails: exit %d %q; want %d naming %q", r.code, r.stderr, exitWriteBack, cmd)
	}
	t.Logf("unmount said: %s", r.stderr)
	if mounted(t, mnt) {
		t.Error("the dead mount is still there")
	}
	if got, _ := os.ReadFile(ckpt); string(got) != string(b) {
		t.Error("the checkpoint changed on a read-only file system")
	}
	if err := unix.Mount("", disk, "", unix.MS_REMOUNT, ""); err != nil {
		t.Fatal(err)
	}
	if r := cli(t, "recover", ckpt); r.code != 0 {
		t.Fatalf("%s: exit %d %q", cmd, r.code, r.stderr)
	}
	checkFile(t, ckpt, flaxMeta, want...)
}
