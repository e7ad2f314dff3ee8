package main

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// malformed builds checkpoints that break one rule each.
func malformed(t *testing.T) map[string][]byte {
	file := func(header string, data []byte) []byte {
		b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
		return append(append(b, header...), data...)
	}
	abuse, err := os.ReadFile("../../testdata/abuse_attempt_1.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{
		"abuse fixture":             abuse,
		"too small":                 {1, 2, 3},
		"header too long":           binary.LittleEndian.AppendUint64(nil, 200_000_000),
		"not json":                  file("{nope", nil),
		"unknown dtype":             file(`{"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)),
		"size mismatch":             file(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, make([]byte, 4)),
		"duplicate key":             file(`{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, make([]byte, 2)),
		"trailing data":             file(`{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, make([]byte, 2)),
		"truncated data":            file(`{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}`, make([]byte, 2)),
		"gap":                       file(`{"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, make([]byte, 2)),
		"metadata value":            file(`{"__metadata__":{"a":1}}`, nil),
		"invalid utf-8":             file("{\"w\xff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", make([]byte, 1)),
		"wrong schema":              file(`{"w":{"dtype":"U8","shape":"1","data_offsets":[0,1]}}`, make([]byte, 1)),
		"missing field":             file(`{"w":{"dtype":"U8","data_offsets":[0,1]}}`, make([]byte, 1)),
		"overlap":                   file(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}`, make([]byte, 3)),
		"end before begin":          file(`{"w":{"dtype":"U8","shape":[0],"data_offsets":[1,0]}}`, make([]byte, 1)),
		"shape overflow":            file(`{"w":{"dtype":"F64","shape":[4294967296,4294967296,2],"data_offsets":[0,0]}}`, nil),
		"sub-byte":                  file(`{"w":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}`, make([]byte, 2)),
		"tensor named __metadata__": file(`{"__metadata__":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, make([]byte, 1)),
		"header not json object":    file(`[]`, nil),
	}
}

func TestInvalidCheckpointsRefused(t *testing.T) {
	if !isolated(t) {
		return
	}
	for name, b := range malformed(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ckpt := filepath.Join(t.TempDir(), "bad.safetensors")
			if err := os.WriteFile(ckpt, b, 0o644); err != nil {
				t.Fatal(err)
			}
			r := cli(t, "verify", ckpt)
			if r.code != exitInvalid || !strings.Contains(r.stderr, "safetensors") {
				t.Errorf("verify: exit %d, stderr %q; want %d and a reason", r.code, r.stderr, exitInvalid)
			}
			if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n != 0 {
				t.Errorf("verify: want one line, got %q", r.stderr)
			}
			mnt := filepath.Join(t.TempDir(), "mnt")
			os.Mkdir(mnt, 0o755)
			r = cli(t, "mount", ckpt, mnt)
			t.Cleanup(func() { forceUnmount(t, mnt) })
			if r.code != exitInvalid {
				t.Errorf("mount: exit %d (%q), want %d", r.code, r.stderr, exitInvalid)
			}
			if mounted(t, mnt) {
				t.Error("invalid checkpoint was mounted")
			}
		})
	}
}

func TestVerifyAndLs(t *testing.T) {
	t.Parallel()
	ckpt := flaxModel(t)
	r := cli(t, "verify", ckpt)
	if r.code != 0 || !strings.Contains(r.stdout, "ok, 7 tensors") {
		t.Errorf("verify: %d %q %q", r.code, r.stdout, r.stderr)
	}
	r = cli(t, "ls", ckpt)
	if r.code != 0 {
		t.Fatalf("ls: %d %s", r.code, r.stderr)
	}
	for _, want := range []string{`(?m)^params/`, `(?m)^  Dense_0/`, `(?m)^    kernel +F32 +\[3,16\] +192$`, `(?m)^step_scale +F32 +\[\] +4$`} {
		if !regexp.MustCompile(want).MatchString(r.stdout) {
			t.Errorf("ls output does not match %s:\n%s", want, r.stdout)
		}
	}
	r = cli(t, "ls", "--json", ckpt, "params.Dense_1")
	var got []struct {
		Key   string   `json:"key"`
		Path  string   `json:"path"`
		DType string   `json:"dtype"`
		Shape []uint64 `json:"shape"`
		Bytes uint64   `json:"bytes"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("ls --json: %v\n%s", err, r.stdout)
	}
	if len(got) != 2 || got[0].Path != "params/Dense_1/bias" || got[1].Key != "params.Dense_1.kernel" || got[1].Bytes != 256 {
		t.Errorf("ls --json params.Dense_1: %+v", got)
	}
	if r := cli(t, "ls", ckpt, "nope"); r.code != exitInvalid {
		t.Errorf("ls of a missing prefix: exit %d", r.code)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{}, {"frobnicate"}, {"mount", "only-one"}, {"mount", "--bogus", "a", "b"}, {"verify"}} {
		if r := cli(t, args...); r.code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, r.code, exitUsage)
		}
	}
	for _, c := range []string{"mount", "unmount", "ls", "verify"} {
		if r := cli(t, c, "--help"); r.code != 0 || !strings.Contains(r.stdout, "Usage: safejaxfs "+c) || r.stderr != "" {
			t.Errorf("%s --help: exit %d, stdout %q, stderr %q", c, r.code, r.stdout, r.stderr)
		}
	}
}

func TestMountpointErrors(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	cases := map[string]struct {
		ckpt, mnt, want string
		code            int
	}{
		"missing checkpoint": {filepath.Join(dir, "nope.safetensors"), dir, "does not exist", exitInvalid},
		"missing mountpoint": {ckpt, filepath.Join(dir, "nope"), "does not exist", exitMount},
		"not a directory":    {ckpt, file, "not a directory", exitMount},
	}
	for name, c := range cases {
		r := cli(t, "mount", c.ckpt, c.mnt)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: exit %d %q, want %d and %q", name, r.code, r.stderr, c.code, c.want)
		}
	}
	mnt := mount(t, ckpt, "--read-only")
	r := cli(t, "mount", "--read-only", ckpt, mnt)
	if r.code != exitMount || !strings.Contains(r.stderr, "already mounted") {
		t.Errorf("second mount: exit %d %q", r.code, r.stderr)
	}
	if r := cli(t, "unmount", dir); r.code != exitMount || !strings.Contains(r.stderr, "not mounted") {
		t.Errorf("unmount of a plain dir: exit %d %q", r.code, r.stderr)
	}
}

func TestUnmountWaitsForDaemon(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt, "--read-only")
	pid := daemonPID(mnt)
	if pid <= 0 || pid == os.Getpid() {
		t.Fatalf("daemon pid %d", pid)
	}
	if r := cli(t, "unmount", mnt); r.code != 0 {
		t.Fatalf("unmount: %d %s", r.code, r.stderr)
	}
	if mounted(t, mnt) {
		t.Error("still mounted after unmount")
	}
	if !exited(pid) {
		t.Errorf("daemon %d still running after unmount returned", pid)
	}
}

func TestForegroundSignalUnmounts(t *testing.T) {
	if !isolated(t) {
		return
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			ckpt := flaxModel(t)
			mnt := filepath.Join(t.TempDir(), "mnt")
			os.Mkdir(mnt, 0o755)
			cmd := exec.Command(os.Args[0], "mount", "-f", "--read-only", ckpt, mnt)
			cmd.Env = append(os.Environ(), asCLIEnv+"=1")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { forceUnmount(t, mnt); cmd.Process.Kill(); cmd.Wait() })
			deadline := time.Now().Add(time.Minute)
			for !mounted(t, mnt) {
				if time.Now().After(deadline) {
					t.Fatal("foreground mount never appeared")
				}
				time.Sleep(20 * time.Millisecond)
			}
			if _, err := os.Stat(filepath.Join(mnt, "params")); err != nil {
				t.Fatal(err)
			}
			cmd.Process.Signal(sig)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("daemon exit: %v", err)
				}
			case <-time.After(time.Minute):
				t.Fatal("daemon did not exit on signal")
			}
			if mounted(t, mnt) {
				t.Error("still mounted after signal")
			}
		})
	}
}

func TestDaemonPIDHidden(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt, "--read-only")
	buf := make([]byte, 1024)
	n, _ := unix.Listxattr(mnt, buf)
	if strings.Contains(string(buf[:n]), "pid") {
		t.Errorf("root lists %q", buf[:n])
	}
	if _, err := strconv.Atoi(getxattr(t, mnt, "user.safejaxfs.pid")); err != nil {
		t.Error(err)
	}
}

// TestDeadMount: after the daemon is killed, mount refuses the dead
// mountpoint with a hint, and unmount cleans it up.
func TestDeadMount(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	pid := daemonPID(mnt)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	if r := cli(t, "mount", ckpt, mnt); r.code != exitMount || !strings.Contains(r.stderr, "dead FUSE mount") {
		t.Errorf("mount over a dead mount: exit %d %q", r.code, r.stderr)
	}
	if r := cli(t, "unmount", mnt); r.code != 0 {
		t.Fatalf("unmount of a dead mount: exit %d %q", r.code, r.stderr)
	}
	if mounted(t, mnt) {
		t.Error("dead mount still there")
	}
	// The checkpoint is fine and mounts again.
	if r := cli(t, "verify", ckpt); r.code != 0 {
		t.Errorf("verify after kill: %s", r.stderr)
	}
	mount(t, ckpt)
}
