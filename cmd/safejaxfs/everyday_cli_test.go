package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The command line as a new user meets it: --version, ls in numeric order,
// refusals that say what to do.

func TestVersion(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--version"}, {"version"}} {
		r := cli(t, args...)
		if r.code != 0 || !strings.HasPrefix(r.stdout, "safejaxfs ") || !strings.Contains(r.stdout, "go1.") {
			t.Errorf("safejaxfs %s: exit %d, %q %q", args[0], r.code, r.stdout, r.stderr)
		}
	}
}

func TestLsNumericOrder(t *testing.T) {
	t.Parallel()
	var tensors []genTensor
	for i := range 12 {
		tensors = append(tensors, f32(fmt.Sprintf("model.layers.%d.w", i), 0, 1))
	}
	tensors = append(tensors, f32("model.layer10x", 0, 1), f32("model.layer9x", 0, 1))
	ckpt := writeCheckpoint(t, "layers.safetensors", nil, tensors...)
	r := cli(t, "ls", ckpt)
	if r.code != 0 {
		t.Fatalf("ls: exit %d %s", r.code, r.stderr)
	}
	var names []string
	for _, l := range strings.Split(r.stdout, "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.HasSuffix(f[0], "/") {
			names = append(names, strings.TrimSuffix(f[0], "/"))
		} else if len(f) > 0 && strings.HasPrefix(f[0], "layer") {
			names = append(names, f[0])
		}
	}
	want := "model layer9x layer10x layers 0 1 2 3 4 5 6 7 8 9 10 11"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("ls order: %s\nwant:     %s", got, want)
	}
}

func TestMountRefusals(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	for _, args := range [][]string{{"mount", "--sep", "", ckpt, mnt}, {"ls", "--sep", "", ckpt}} {
		if r := cli(t, args...); r.code != exitUsage || !strings.Contains(r.stderr, "sep") {
			t.Errorf("%s --sep '': exit %d %q, want %d", args[0], r.code, r.stderr, exitUsage)
		}
	}
	// A non-empty mountpoint: its files would be hidden.
	os.WriteFile(filepath.Join(mnt, "precious"), []byte("x"), 0o644)
	r := cli(t, "mount", ckpt, mnt)
	t.Cleanup(func() { forceUnmount(t, mnt) })
	if r.code != exitMount || !strings.Contains(r.stderr, "not empty") || !strings.Contains(r.stderr, "nonempty") || mounted(t, mnt) {
		t.Errorf("mount over a non-empty directory: exit %d %q", r.code, r.stderr)
	}
	if r := cli(t, "mount", "-o", "nonempty", ckpt, mnt); r.code != 0 {
		t.Fatalf("mount -o nonempty: exit %d %q", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(mnt, "params")); err != nil {
		t.Error(err)
	}
	unmountOK(t, mnt)
	if _, err := os.Stat(filepath.Join(mnt, "precious")); err != nil {
		t.Error("the hidden file is gone after unmount")
	}
}

// asNobody runs the safejaxfs command line as user nobody with PATH set to
// path, returning exit code and stderr. The test binary is copied where
// nobody may run it.
func asNobody(t testing.TB, path string, args ...string) (int, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run as another user")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("no setpriv")
	}
	dir, err := os.MkdirTemp("", "safejaxfs-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "safejaxfs")
	copyFile(t, os.Args[0], bin, 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", bin}, args...)...)
	// No race reports from a user that cannot write where they go.
	cmd.Env = []string{"PATH=" + path, asCLIEnv + "=1", "GORACE=", "HOME=/nonexistent"}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	code := 0
	if err := cmd.Run(); err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatal(err)
		}
		code = ee.ExitCode()
	}
	return code, errb.String()
}

func copyFile(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestNonRootMountErrors: what fusermount3 refused, with its real exit
// status, and what to do about /dev/fuse.
func TestNonRootMountErrors(t *testing.T) {
	if !isolated(t) {
		return
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		t.Skip("no fusermount3")
	}
	base, err := os.MkdirTemp("", "safejaxfs-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	ckpt := filepath.Join(base, "model.safetensors")
	copyFile(t, flaxModel(t), ckpt, 0o644)
	mnt := filepath.Join(base, "mnt")
	os.Mkdir(mnt, 0o755)
	os.Chown(mnt, 65534, 65534)
	t.Cleanup(func() { forceUnmount(t, mnt) })

	// fusermount3 refuses allow_other without user_allow_other, or
	// cannot open /dev/fuse at all (as in containers that keep it 0600).
	check := func(what, stderr string, code int) (devFuse bool) {
		t.Helper()
		devFuse = strings.Contains(stderr, "/dev/fuse")
		if code != exitMount || strings.Contains(stderr, "code 256") || !strings.Contains(stderr, "fusermount3 failed (exit status 1)") {
			t.Errorf("%s: exit %d %q; want %d with fusermount3's exit status", what, code, stderr, exitMount)
		}
		if devFuse && !strings.Contains(stderr, "setuid") {
			t.Errorf("%s: a /dev/fuse permission error without the way out: %q", what, stderr)
		}
		if mounted(t, mnt) {
			t.Errorf("%s: mounted anyway", what)
		}
		return devFuse
	}
	allowOther := true
	if b, _ := os.ReadFile("/etc/fuse.conf"); strings.Contains(stripComments(string(b)), "user_allow_other") {
		allowOther = false
	}
	code, stderr := asNobody(t, "/usr/bin:/bin", "mount", "--read-only", "--allow-other", ckpt, mnt)
	if devFuse := check("--allow-other as nobody", stderr, code); devFuse {
		return // the case below is this one
	} else if allowOther && !strings.Contains(stderr, "allow_other") {
		t.Errorf("fusermount3's reason is missing: %q", stderr)
	}
	// A fusermount3 that is not setuid root cannot open /dev/fuse.
	plain := filepath.Join(base, "bin")
	os.Mkdir(plain, 0o755)
	copyFile(t, "/usr/bin/fusermount3", filepath.Join(plain, "fusermount3"), 0o755)
	code, stderr = asNobody(t, plain+":/usr/bin:/bin", "mount", "--read-only", ckpt, mnt)
	if !check("fusermount3 not setuid", stderr, code) {
		t.Errorf("no /dev/fuse error: %q", stderr)
	}
}

func stripComments(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestFIFORefused: verify, ls and mount of a FIFO refuse at once instead of
// waiting for a writer.
func TestFIFORefused(t *testing.T) {
	if !isolated(t) {
		return
	}
	p := filepath.Join(t.TempDir(), "pipe.safetensors")
	if err := unix.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	t.Cleanup(func() { forceUnmount(t, mnt) })
	for _, args := range [][]string{{"verify", p}, {"ls", p}, {"mount", p, mnt}, {"mount", "-f", p, mnt}} {
		done := make(chan result, 1)
		go func() { done <- cli(t, args...) }()
		select {
		case r := <-done:
			if r.code != exitInvalid || !strings.Contains(r.stderr, "FIFO") {
				t.Errorf("%s of a FIFO: exit %d %q", args[0], r.code, r.stderr)
			}
		case <-time.After(time.Minute):
			// Unblock it: open the FIFO for writing and close.
			if f, err := os.OpenFile(p, os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
				f.Close()
			}
			<-done
			t.Errorf("%s of a FIFO hung", args[0])
		}
	}
}
