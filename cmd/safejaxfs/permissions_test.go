package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Permissions as another user meets them: the mount's modes come from the
// checkpoint file, the kernel enforces them for everyone allow_other lets
// in, and uid=, gid=, umask= and allow_root change them as documented. The
// other user is nobody (setpriv), reading with cat, as anyone would.

// sharedDir is a directory other users may traverse (t.TempDir is 0700),
// removed when the test ends.
func sharedDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "safejaxfs-shared-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// sharedCheckpoint copies the flax model into a shared directory with the
// given mode, and makes a mountpoint beside it.
func sharedCheckpoint(t testing.TB, mode os.FileMode) (ckpt, mnt string) {
	t.Helper()
	d := sharedDir(t)
	ckpt = filepath.Join(d, "model.safetensors")
	copyFile(t, flaxModel(t), ckpt, mode)
	if err := os.Chmod(ckpt, mode); err != nil {
		t.Fatal(err)
	}
	mnt = filepath.Join(d, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	return ckpt, mnt
}

// mountAt mounts ckpt at mnt with flags and unmounts it when the test ends.
func mountAt(t testing.TB, ckpt, mnt string, flags ...string) {
	t.Helper()
	r := cli(t, append(append([]string{"mount"}, flags...), ckpt, mnt)...)
	if r.code != 0 {
		t.Fatalf("mount %v: exit %d: %s", flags, r.code, r.stderr)
	}
	t.Cleanup(func() { forceUnmount(t, mnt) })
}

// asNobodyRun runs a command as nobody and returns its stdout, stderr and
// whether it succeeded.
func asNobodyRun(t testing.TB, name string, args ...string) (stdout, stderr string, ok bool) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run as another user")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("no setpriv")
	}
	cmd := exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", name}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err == nil
}

func modeOf(t testing.TB, p string) (perm uint32, uid uint32) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Mode & 0o7777, st.Uid
}

// A private checkpoint mounted with allow_other stays private: the files
// show 0600, the directories 0700, and another user can neither list nor
// read them.
func TestPrivateCheckpointStaysPrivate(t *testing.T) {
	ckpt, mnt := sharedCheckpoint(t, 0o600)
	mountAt(t, ckpt, mnt, "--allow-other")
	tensor := filepath.Join(mnt, "params", "Dense_0", "bias")
	if m, _ := modeOf(t, tensor); m != 0o600 {
		t.Errorf("tensor mode %04o, want 0600", m)
	}
	for _, d := range []string{mnt, filepath.Join(mnt, "params")} {
		if m, _ := modeOf(t, d); m != 0o700 {
			t.Errorf("%s: mode %04o, want 0700", d, m)
		}
	}
	if m, _ := modeOf(t, filepath.Join(mnt, "__metadata__")); m != 0o600 {
		t.Errorf("__metadata__ mode %04o, want 0600", m)
	}
	if m, _ := modeOf(t, filepath.Join(mnt, ".files", "model.safetensors")); m != 0o400 {
		t.Errorf(".files/model.safetensors mode %04o, want 0400", m)
	}
	if out, _, ok := asNobodyRun(t, "cat", tensor); ok || out != "" {
		t.Errorf("nobody read a 0600 checkpoint's tensor through an allow_other mount: %q", out)
	}
	if _, errs, ok := asNobodyRun(t, "ls", mnt); ok || !strings.Contains(errs, "ermission denied") {
		t.Errorf("nobody listed a 0600 checkpoint's mount: ok %v, %q", ok, errs)
	}
	if out, _, ok := asNobodyRun(t, "cat", filepath.Join(mnt, ".files", "model.safetensors")); ok || out != "" {
		t.Error("nobody read the checkpoint through .files")
	}
	// Its owner (root here) reads it, of course.
	if _, err := os.ReadFile(tensor); err != nil {
		t.Error(err)
	}
}

// A world-readable checkpoint is readable by others through allow_other,
// byte for byte; read-only mounts drop the write bits.
func TestReadableCheckpointShared(t *testing.T) {
	ckpt, mnt := sharedCheckpoint(t, 0o644)
	mountAt(t, ckpt, mnt, "-o", "allow_other,ro")
	tensor := filepath.Join(mnt, "params", "Dense_0", "bias")
	if m, _ := modeOf(t, tensor); m != 0o444 {
		t.Errorf("read-only mount: tensor mode %04o, want 0444", m)
	}
	if m, _ := modeOf(t, mnt); m != 0o555 {
		t.Errorf("read-only mount: root mode %04o, want 0555", m)
	}
	out, errs, ok := asNobodyRun(t, "cat", tensor)
	want := f32("", 100, 16).data
	if !ok || out != string(want) {
		t.Errorf("nobody reading a 0644 checkpoint's tensor: ok %v, %d bytes, %s", ok, len(out), errs)
	}
}

// umask= and uid= override the checkpoint's modes and owner.
func TestUmaskAndUIDOverride(t *testing.T) {
	ckpt, mnt := sharedCheckpoint(t, 0o644)
	mountAt(t, ckpt, mnt, "-o", "allow_other,umask=077")
	tensor := filepath.Join(mnt, "params", "Dense_0", "bias")
	if m, _ := modeOf(t, tensor); m != 0o600 {
		t.Errorf("umask=077: tensor mode %04o, want 0600", m)
	}
	if m, _ := modeOf(t, filepath.Join(mnt, "params")); m != 0o700 {
		t.Errorf("umask=077: directory mode %04o, want 0700", m)
	}
	if _, _, ok := asNobodyRun(t, "cat", tensor); ok {
		t.Error("umask=077: nobody read a tensor")
	}
	unmountOK(t, mnt)

	// A private checkpoint given to nobody.
	os.Chmod(ckpt, 0o600)
	mountAt(t, ckpt, mnt, "--allow-other", "--uid", "nobody", "--gid", "65534")
	if m, uid := modeOf(t, tensor); m != 0o600 || uid != 65534 {
		t.Errorf("uid=nobody: tensor mode %04o owner %d, want 0600 and 65534", m, uid)
	}
	if out, errs, ok := asNobodyRun(t, "cat", tensor); !ok || out != string(f32("", 100, 16).data) {
		t.Errorf("uid=nobody: nobody could not read the tensor: %s", errs)
	}
	unmountOK(t, mnt)

	for _, bad := range [][]string{{"-o", "umask=999"}, {"-o", "uid=no-such-user-here"}, {"--gid", "no-such-group-here"}} {
		r := cli(t, append(append([]string{"mount"}, bad...), ckpt, mnt)...)
		if r.code != exitUsage || mounted(t, mnt) {
			t.Errorf("mount %v: exit %d %q, want %d and nothing mounted", bad, r.code, r.stderr, exitUsage)
		}
	}
}

// allow_root lets root in, and no other user, whatever the modes say.
func TestAllowRoot(t *testing.T) {
	ckpt, mnt := sharedCheckpoint(t, 0o644)
	mountAt(t, ckpt, mnt, "-o", "allow_root")
	tensor := filepath.Join(mnt, "params", "Dense_0", "bias")
	if _, errs, ok := asNobodyRun(t, "cat", tensor); ok || !strings.Contains(errs, "ermission denied") {
		t.Errorf("allow_root: nobody read a 0644 tensor: %q", errs)
	}
	if _, errs, ok := asNobodyRun(t, "stat", mnt); ok || !strings.Contains(errs, "ermission denied") {
		t.Errorf("allow_root: nobody could stat the mount root: %q", errs)
	}
	if _, errs, ok := asNobodyRun(t, "ls", mnt); ok {
		t.Errorf("allow_root: nobody listed the mount root: %q", errs)
	}
	if b, err := os.ReadFile(tensor); err != nil || !bytes.Equal(b, f32("", 100, 16).data) {
		t.Errorf("allow_root: root (who mounted it) could not read: %v", err)
	}
	if !strings.Contains(mountOptionsOf(t, mnt), "allow_other") {
		t.Error("allow_root: the kernel was not told to let others reach the daemon")
	}
}

// Root mounting another user's checkpoint shows that user as the owner.
func TestRootMountShowsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	ckpt, mnt := sharedCheckpoint(t, 0o640)
	if err := os.Chown(ckpt, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	mountAt(t, ckpt, mnt, "--read-only")
	p, uid := modeOf(t, filepath.Join(mnt, "params", "Dense_0", "kernel"))
	var st unix.Stat_t
	unix.Stat(filepath.Join(mnt, "params"), &st)
	if uid != 65534 || st.Gid != 65534 || p != 0o440 {
		t.Errorf("owner %d group %d mode %04o, want 65534, 65534, 0440", uid, st.Gid, p)
	}
}

// A sharded checkpoint is as private as its most private file.
func TestShardedModesMostPrivate(t *testing.T) {
	src := writeShardedSet(t, nil, []genTensor{f32("a.w", 0, 4)}, []genTensor{f32("b.w", 10, 4)})
	d := sharedDir(t)
	for _, n := range []string{indexName, shardName(0, 2), shardName(1, 2)} {
		copyFile(t, filepath.Join(src, n), filepath.Join(d, n), 0o644)
	}
	os.Chmod(filepath.Join(d, shardName(1, 2)), 0o640)
	mnt := filepath.Join(d, "mnt")
	os.Mkdir(mnt, 0o755)
	mountAt(t, filepath.Join(d, indexName), mnt, "--allow-other")
	if m, _ := modeOf(t, filepath.Join(mnt, "a", "w")); m != 0o640 {
		t.Errorf("tensor of the 0644 shard: mode %04o, want 0640 (the set's most private file)", m)
	}
	if _, _, ok := asNobodyRun(t, "cat", filepath.Join(mnt, "a", "w")); ok {
		t.Error("nobody read a tensor of a set with a 0640 shard")
	}
}

// mountOptionsOf is the kernel's options of the mount at mnt.
func mountOptionsOf(t testing.TB, mnt string) string {
	t.Helper()
	_, opts := procMount(t, mnt)
	return opts
}
