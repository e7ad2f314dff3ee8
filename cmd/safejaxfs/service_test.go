package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// safejaxfs mount -f as a systemd service (Type=notify) would run it,
// with systemd played by the test: a notify socket to say READY=1 on, and
// SIGTERM to stop it. systemd sees a service stop when its main process
// exits: that must come after the write-back.
func TestForegroundServiceStop(t *testing.T) {
	ckpt := flaxModel(t)
	mnt := newMountpoint(t)
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cmd := exec.Command(os.Args[0], "mount", "-f", ckpt, mnt)
	cmd.Env = append(os.Environ(), asCLIEnv+"=1", "NOTIFY_SOCKET="+sock)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				t.Errorf("the service did not stop on SIGTERM")
			}
		}
		forceUnmount(t, mnt)
	})
	next := func(want string) string {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(time.Minute))
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				t.Fatalf("waiting for %s from the service: %v (it printed %q)", want, err, out.String())
			}
			if msg := string(buf[:n]); strings.Contains(msg, want) {
				return msg
			}
		}
	}
	if msg := next("READY=1"); !strings.Contains(msg, "STATUS=mounted "+mnt) {
		t.Errorf("ready message %q", msg)
	}
	if !mounted(t, mnt) {
		t.Fatal("READY=1 before the mount exists")
	}
	edit := f32("", 123).data
	if err := os.WriteFile(filepath.Join(mnt, "step_scale"), edit, 0); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	next("STOPPING=1")
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("the service exited with %v: %s", waitErr, out.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("the service did not stop")
	}
	// It has exited: the checkpoint is current, nothing is left.
	if mounted(t, mnt) {
		t.Error("still mounted after the service stopped")
	}
	entries, _, data := rawHeader(t, ckpt)
	if got := data[entries["step_scale"].Offsets[0]:entries["step_scale"].Offsets[1]]; !bytes.Equal(got, edit) {
		t.Errorf("when the service had stopped the checkpoint held %v, not the edit", got)
	}
	if logs, _ := filepath.Glob(filepath.Join(filepath.Dir(ckpt), ".*safejaxfs-log")); len(logs) != 0 {
		t.Errorf("a log is left: %v", logs)
	}
}
