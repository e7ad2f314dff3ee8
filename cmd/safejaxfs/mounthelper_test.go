package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// safejaxfs as mount(8)'s helper: called by the name mount(8) looks for,
// through Debian's mount.fuse3, and from an fstab line.

// helperBin links the test binary under name in a directory of its own,
// which it returns.
func helperBin(t testing.TB, name string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Symlink(os.Args[0], filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// runHelper runs a command with the test binary acting as safejaxfs.
func runHelper(t testing.TB, env []string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(append(os.Environ(), asCLIEnv+"=1"), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("%s %v: %v", name, args, err)
		}
		code = ee.ExitCode()
	}
	return result{out.String(), errb.String(), code}
}

// What libmount runs for mount -t fuse.safejaxfs when
// /sbin/mount.fuse.safejaxfs exists (seen on Debian 12: it drops noauto
// and x-*, keeps _netdev, passes -v and the type along).
func TestMountHelperByName(t *testing.T) {
	ckpt := flaxModel(t)
	mnt := newMountpoint(t)
	helper := filepath.Join(helperBin(t, "mount.fuse.safejaxfs"), "mount.fuse.safejaxfs")
	t.Cleanup(func() { forceUnmount(t, mnt) })
	r := runHelper(t, nil, helper, ckpt, mnt, "-n", "-o", "ro,npy,_netdev", "-t", "fuse.safejaxfs")
	if r.code != 0 {
		t.Fatalf("mount.fuse.safejaxfs: exit %d: %s", r.code, r.stderr)
	}
	if _, opts := procMount(t, mnt); !strings.HasPrefix(opts, "ro,") {
		t.Errorf("-o ro: mounted %s", opts)
	}
	if _, err := os.Stat(filepath.Join(mnt, "params", "Dense_0", "kernel.npy")); err != nil {
		t.Error(err)
	}
	unmountOK(t, mnt)

	// mount -f: everything checked, nothing mounted.
	if r := runHelper(t, nil, helper, ckpt, mnt, "-f", "-o", "ro"); r.code != 0 || mounted(t, mnt) {
		t.Errorf("mount -f: exit %d %q, mounted %v", r.code, r.stderr, mounted(t, mnt))
	}
	if r := runHelper(t, nil, helper, ckpt, mnt, "-f", "-o", "bogus"); r.code != exitUsage || !strings.Contains(r.stderr, "bogus") {
		t.Errorf("mount -f -o bogus: exit %d %q", r.code, r.stderr)
	}
	// mount -s: unknown options are skipped, with a word.
	r = runHelper(t, nil, helper, ckpt, mnt, "-s", "-o", "bogus,ro")
	if r.code != 0 || !strings.Contains(r.stderr, "bogus") || !mounted(t, mnt) {
		t.Errorf("mount -s -o bogus: exit %d %q", r.code, r.stderr)
	}
	unmountOK(t, mnt)
	for _, args := range [][]string{{ckpt}, {ckpt, mnt, "-t", "ext4"}, {ckpt, mnt, "-N", "1"}, {ckpt, mnt, "-x"}} {
		if r := runHelper(t, nil, helper, args...); r.code != exitUsage || mounted(t, mnt) {
			t.Errorf("mount.fuse.safejaxfs %q: exit %d %q, want %d", args, r.code, r.stderr, exitUsage)
		}
	}
}

// Debian's mount.fuse3 runs "safejaxfs SOURCE DIR -o OPTIONS" (via /bin/sh
// and PATH) for "safejaxfs#SOURCE" and for -t fuse.safejaxfs, after
// dropping noauto, nofail and _netdev and adding dev,suid as root.
func TestMountThroughMountFuse3(t *testing.T) {
	bin, err := exec.LookPath("mount.fuse3")
	if err != nil {
		bin = "/sbin/mount.fuse3"
		if _, err := os.Stat(bin); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatal("no mount.fuse3 (Debian package fuse3)")
			}
			t.Skip("no mount.fuse3")
		}
	}
	ckpt := flaxModel(t)
	mnt := newMountpoint(t)
	path := "PATH=" + helperBin(t, "safejaxfs") + ":" + os.Getenv("PATH")
	t.Cleanup(func() { forceUnmount(t, mnt) })
	r := runHelper(t, []string{path}, bin, "safejaxfs#"+ckpt, mnt, "-o", "ro,noauto,nofail,_netdev,x-systemd.automount,comment=x,allow_other")
	if r.code != 0 {
		t.Fatalf("mount.fuse3 safejaxfs#%s: exit %d: %s", ckpt, r.code, r.stderr)
	}
	if _, opts := procMount(t, mnt); !strings.HasPrefix(opts, "ro,") || !strings.Contains(opts, "allow_other") {
		t.Errorf("mounted with %s", opts)
	}
	sameTensors(t, mnt, ckpt)
	unmountOK(t, mnt)

	r = runHelper(t, []string{path}, bin, ckpt, mnt, "-t", "fuse.safejaxfs", "-o", "rw")
	if r.code != 0 || !mounted(t, mnt) {
		t.Fatalf("mount.fuse3 -t fuse.safejaxfs: exit %d: %s", r.code, r.stderr)
	}
	if err := os.WriteFile(filepath.Join(mnt, "step_scale"), f32("", 9).data, 0); err != nil {
		t.Error(err)
	}
	unmountOK(t, mnt)
	if entries, _, data := rawHeader(t, ckpt); string(data[entries["step_scale"].Offsets[0]:entries["step_scale"].Offsets[1]]) != string(f32("", 9).data) {
		t.Error("the edit made through a mount.fuse3 mount was not written back")
	}
	// Not a path and not a command: a usage error, not a mount attempt.
	if r := cli(t, "no-such-thing", mnt); r.code != exitUsage || !strings.Contains(r.stderr, "unknown command") {
		t.Errorf("safejaxfs no-such-thing DIR: exit %d %q", r.code, r.stderr)
	}
}

// An fstab line, mounted and unmounted by mount(8) and umount(8) as an
// administrator would (mount -T reads another fstab file). It needs
// /sbin/mount.fuse.safejaxfs: the test links it for its duration, unless
// one is installed already (then it is left alone and the test skipped).
func TestFstabLine(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mount(8) of an fstab line without 'user' needs root")
	}
	if _, err := exec.LookPath("mount"); err != nil {
		t.Skip("no mount(8)")
	}
	const helper = "/sbin/mount.fuse.safejaxfs"
	if err := os.Symlink(os.Args[0], helper); err != nil {
		t.Skipf("cannot install %s for the test: %v", helper, err)
	}
	t.Cleanup(func() { os.Remove(helper) })
	ckpt := flaxModel(t)
	mnt := newMountpoint(t)
	fstab := filepath.Join(t.TempDir(), "fstab")
	line := ckpt + " " + mnt + " fuse.safejaxfs rw,allow_other,noauto,_netdev,x-systemd.automount,x-systemd.mount-timeout=30 0 0\n"
	if err := os.WriteFile(fstab, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { forceUnmount(t, mnt) })
	if r := runHelper(t, nil, "mount", "-T", fstab, mnt); r.code != 0 {
		t.Fatalf("mount -T fstab %s: exit %d: %s", mnt, r.code, r.stderr)
	}
	if _, opts := procMount(t, mnt); !strings.HasPrefix(opts, "rw,") || !strings.Contains(opts, "allow_other") {
		t.Errorf("mounted with %s", opts)
	}
	if err := os.WriteFile(filepath.Join(mnt, "step_scale"), f32("", 42).data, 0); err != nil {
		t.Fatal(err)
	}
	if r := runHelper(t, nil, "umount", mnt); r.code != 0 {
		t.Fatalf("umount: exit %d: %s", r.code, r.stderr)
	}
	// umount returned; the daemon writes back after: wait for it.
	if r := cli(t, "wait", ckpt); r.code != 0 {
		t.Fatalf("wait: exit %d: %s", r.code, r.stderr)
	}
	entries, _, data := rawHeader(t, ckpt)
	if got := data[entries["step_scale"].Offsets[0]:entries["step_scale"].Offsets[1]]; string(got) != string(f32("", 42).data) {
		t.Errorf("after umount and wait the checkpoint holds %v, not the edit", got)
	}
}
