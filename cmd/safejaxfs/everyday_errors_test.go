package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Errors a user can act on: each write-back failure with its own errno,
// unmount --force that saves the edits somewhere (or refuses), a
// checkpoint the daemon could not save into mounted read-only, and a log
// that a background daemon keeps where the user can read it.

// mountEnv is mount with extra environment variables for the daemon.
func mountEnv(t testing.TB, env []string, ckpt string, flags ...string) string {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	r := cliEnv(t, env, append(append([]string{"mount"}, flags...), ckpt, mnt)...)
	if r.code != 0 {
		t.Fatalf("mount %s: exit %d: %s", ckpt, r.code, r.stderr)
	}
	t.Cleanup(func() { forceUnmount(t, mnt) })
	return mnt
}

// smallDisk mounts a tmpfs of size bytes for the test (root only).
func smallDisk(t testing.TB, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	d := t.TempDir()
	if err := unix.Mount("tmpfs", d, "tmpfs", 0, "size="+size); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	// Registered after the mount helper's cleanups run (LIFO): the
	// safejaxfs mount on top is gone by then.
	t.Cleanup(func() { unix.Unmount(d, unix.MNT_DETACH) })
	return d
}

// TestFullDisk: a full disk is ENOSPC, not EIO. An edit the log can take
// is acknowledged (durable in the log); one it cannot take fails its close
// with ENOSPC and is not made. The write-back at unmount cannot fit: unmount says so and
// keeps the mount; --force detaches, naming the log that holds the edits;
// once there is room, safejaxfs recover writes them back.
func TestFullDisk(t *testing.T) {
	if !isolated(t) {
		return
	}
	disk := smallDisk(t, "1m")
	big := raw("big", safetensors.U8, randomBytes(600<<10, 5), 600<<10)
	ckpt := filepath.Join(disk, "model.safetensors")
	if err := os.WriteFile(ckpt, canonical(t, nil, big), 0o644); err != nil {
		t.Fatal(err)
	}
	// The daemon's own directories (log, last-resort recovery) are on the
	// full disk too.
	for _, d := range []string{"run", "tmp"} {
		os.Mkdir(filepath.Join(disk, d), 0o700)
	}
	env := []string{"XDG_RUNTIME_DIR=" + filepath.Join(disk, "run"), "TMPDIR=" + filepath.Join(disk, "tmp")}
	mnt := mountEnv(t, env, ckpt)
	huge := raw("huge", safetensors.U8, randomBytes(600<<10, 7), 600<<10)
	if err := os.WriteFile(filepath.Join(mnt, "huge.npy"), npyFile(t, huge), 0o644); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("np.save that the log cannot take on a full disk: %v, want ENOSPC", err)
	}
	if msg := getxattr(t, mnt, "user.safejaxfs.error"); !strings.Contains(msg, "no space left") {
		t.Errorf("user.safejaxfs.error: %q", msg)
	}
	// The failed close changed nothing: no tensor "huge" (issue 15 item 7).
	if _, err := os.Stat(filepath.Join(mnt, "huge")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the tensor whose np.save failed exists: %v", err)
	}
	small := f32("small", 1, 64)
	if err := os.WriteFile(filepath.Join(mnt, "small.npy"), npyFile(t, small), 0o644); err != nil {
		t.Fatalf("np.save of a small tensor, which the log takes: %v", err)
	}
	r := cli(t, "unmount", mnt)
	if r.code != exitWriteBack || !strings.Contains(r.stderr, "no space left") || !mounted(t, mnt) {
		t.Errorf("unmount on a full disk: exit %d %q, mounted %v", r.code, r.stderr, mounted(t, mnt))
	}
	// The edits are durable in the log: --force detaches and says so.
	r = cliEnv(t, env, "unmount", "--force", mnt)
	if mounted(t, mnt) {
		t.Fatalf("unmount --force: still mounted: exit %d %q", r.code, r.stderr)
	}
	if r.code != exitWriteBack || !strings.Contains(r.stderr, "safejaxfs-log") {
		t.Errorf("unmount --force: exit %d %q; want %d naming the log", r.code, r.stderr, exitWriteBack)
	}
	if b, _ := os.ReadFile(ckpt); !bytes.Equal(b, canonical(t, nil, big)) {
		t.Error("the checkpoint changed")
	}
	if r := cli(t, "verify", ckpt); r.code != exitInvalid || !strings.Contains(r.stderr, "log") {
		t.Errorf("verify with the edits in the log: exit %d %q", r.code, r.stderr)
	}
	// Room again: recover writes them back.
	if err := unix.Mount("", disk, "", unix.MS_REMOUNT, "size=4m"); err != nil {
		t.Fatal(err)
	}
	if r := cli(t, "recover", ckpt); r.code != 0 {
		t.Fatalf("recover once there is room: exit %d %q", r.code, r.stderr)
	}
	checkFile(t, ckpt, nil, big, small)
}

// TestReadOnlyDirectory: a checkpoint in a directory the daemon cannot
// write into (no temp file, no journal, no rename) mounts read-only, and
// says so also when mounting in the background.
func TestReadOnlyDirectory(t *testing.T) {
	if !isolated(t) {
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (bind mounts)")
	}
	src := flaxModel(t)
	d := t.TempDir()
	if err := unix.Mount("tmpfs", d, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(d, unix.MNT_DETACH) })
	ckpt := filepath.Join(d, "model.safetensors")
	os.WriteFile(ckpt, nil, 0o644)
	if err := unix.Mount("", d, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	// The file itself is writable: a writable file bound over it.
	if err := unix.Mount(src, ckpt, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(ckpt, unix.MNT_DETACH) })
	if err := unix.Access(ckpt, unix.W_OK); err != nil {
		t.Fatalf("the bound file is not writable: %v", err)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	r := cli(t, "mount", ckpt, mnt)
	t.Cleanup(func() { forceUnmount(t, mnt) })
	if r.code != 0 || !strings.Contains(r.stderr, "read-only") || !strings.Contains(r.stderr, d) {
		t.Errorf("mount: exit %d %q; want 0 and a read-only notice naming the directory", r.code, r.stderr)
	}
	if err := os.WriteFile(filepath.Join(mnt, "x"), []byte("x"), 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write into the mount: %v, want EROFS", err)
	}
}

// TestDaemonLog: a background daemon's reasons land in a log file named by
// the root's user.safejaxfs.log attribute.
func TestDaemonLog(t *testing.T) {
	if !isolated(t) {
		return
	}
	run := t.TempDir()
	ckpt := flaxModel(t)
	mnt := mountEnv(t, []string{"XDG_RUNTIME_DIR=" + run}, ckpt)
	logPath := getxattr(t, mnt, "user.safejaxfs.log")
	if !strings.HasPrefix(logPath, filepath.Join(run, "safejaxfs")+"/") {
		t.Errorf("log at %q, want under $XDG_RUNTIME_DIR/safejaxfs", logPath)
	}
	// A refusal bash cannot report: the close error of a redirection.
	shell(t, "echo bad > "+filepath.Join(mnt, "__metadata__"))
	b, err := os.ReadFile(logPath)
	if err != nil || !strings.Contains(string(b), "__metadata__ is 'b', not an object of strings") {
		t.Errorf("log %s: %v\n%s", logPath, err, b)
	}
}

// TestUnsavedEditsKeepDaemon: SIGTERM does not unmount while the edits can
// be saved nowhere; after a plain umount the daemon stays alive with them,
// retrying, until a recovery file can be written.
func TestUnsavedEditsKeepDaemon(t *testing.T) {
	if !isolated(t) {
		return
	}
	disk := smallDisk(t, "1m")
	big := raw("big", safetensors.U8, randomBytes(600<<10, 6), 600<<10)
	ckpt := filepath.Join(disk, "model.safetensors")
	if err := os.WriteFile(ckpt, canonical(t, nil, big), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"run", "tmp"} {
		os.Mkdir(filepath.Join(disk, d), 0o700)
	}
	// The daemon retries every 50 ms instead of every 5 s: the test
	// waits for retries, not for the clock.
	env := []string{"XDG_RUNTIME_DIR=" + filepath.Join(disk, "run"), "TMPDIR=" + filepath.Join(disk, "tmp"), retryEveryEnv + "=50ms"}
	mnt := mountEnv(t, env, ckpt)
	pid := daemonOf(t, mnt)
	t.Cleanup(func() { unix.Kill(pid, unix.SIGKILL) })
	logPath := getxattr(t, mnt, "user.safejaxfs.log")
	logSays := func(s string) int {
		b, _ := os.ReadFile(logPath)
		return strings.Count(string(b), s)
	}
	// Too big for even the log: the close fails and the edit lives only
	// in the daemon. (An edit a close commits, like np.save or cp, is
	// not made when its close fails; bytes written into a tensor through
	// a descriptor opened without O_TRUNC are applied as they are
	// written, as on any file system.)
	edited := raw("big", safetensors.U8, randomBytes(600<<10, 8), 600<<10)
	f, err := os.OpenFile(filepath.Join(mnt, "big"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(edited.data, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("close of an in-place write the log cannot take: %v, want ENOSPC", err)
	}
	unix.Kill(pid, unix.SIGTERM)
	// The daemon has handled the signal once its log says why the mount
	// stays.
	waitUntil(t, "the log to say why the mount stays", func() bool { return logSays("NOT unmounting") > 0 })
	if got, err := os.ReadFile(filepath.Join(mnt, "big")); !mounted(t, mnt) || err != nil || !bytes.Equal(got, edited.data) {
		t.Fatalf("after SIGTERM with nowhere to save: mounted %v, %v", mounted(t, mnt), err)
	}
	// A plain umount: the mount goes, the daemon and the edits stay. It
	// says so at each retry; after three of them it must still be there.
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	const retrying = "keeps the edits and retries every"
	waitUntil(t, "three retries of the write-back", func() bool { return logSays(retrying) >= 3 || exited(pid) })
	if exited(pid) {
		t.Fatal("the daemon exited with edits it could save nowhere")
	}
	alt := t.TempDir()
	os.RemoveAll(filepath.Join(disk, "run"))
	if err := os.Symlink(alt, filepath.Join(disk, "run")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the daemon to save the edits once it could, and exit", func() bool { return exited(pid) })
	matches, _ := filepath.Glob(filepath.Join(alt, "safejaxfs", "model.safejaxfs-recovered-*.safetensors"))
	if len(matches) != 1 {
		t.Fatalf("recovery files: %v", matches)
	}
	if got, _ := os.ReadFile(matches[0]); !bytes.Equal(got, canonical(t, nil, edited)) {
		t.Error("the recovery file does not hold the edits")
	}
}

// TestCheckpointTruncatedUnderneath: another program truncates the
// checkpoint in place while it is mounted. Reads and writes of the lost
// bytes fail with EIO, and so does a read of a float32 view, which the
// daemon converts from the mapping itself (touching the lost pages would
// kill it with SIGBUS); the daemon (and every edit it holds) lives on.
func TestCheckpointTruncatedUnderneath(t *testing.T) {
	if !isolated(t) {
		return
	}
	big := raw("big", safetensors.U8, randomBytes(256<<10, 8), 256<<10)
	half := raw("half", safetensors.BF16, randomBytes(64<<10, 9), 32<<10)
	ckpt := writeCheckpoint(t, "model.safetensors", nil, f32("a", 1, 4), big, half)
	mnt := mount(t, ckpt)
	pid := daemonOf(t, mnt)
	if _, err := os.Stat(filepath.Join(mnt, "half.f32.npy")); err != nil {
		t.Fatalf("the float32 view before the truncate: %v", err)
	}
	if err := os.Truncate(ckpt, 100); err != nil {
		t.Fatal(err)
	}
	type outcome struct {
		what string
		err  error
	}
	done := make(chan outcome, 3)
	go func() {
		_, err := os.ReadFile(filepath.Join(mnt, "big"))
		done <- outcome{"read of big", err}
	}()
	go func() {
		_, err := os.ReadFile(filepath.Join(mnt, "half.f32.npy"))
		done <- outcome{"read of half.f32.npy", err}
	}()
	go func() {
		f, err := os.OpenFile(filepath.Join(mnt, "big"), os.O_WRONLY, 0)
		if err == nil {
			_, err = f.WriteAt([]byte{1}, 200<<10)
			f.Close()
		}
		done <- outcome{"write of big", err}
	}()
	for range 3 {
		select {
		case o := <-done:
			if !errors.Is(o.err, unix.EIO) {
				t.Errorf("a %s, whose bytes the truncate took: %v, want EIO", o.what, o.err)
			}
		case <-time.After(time.Minute):
			t.Fatal("a read or write of bytes the truncate took hangs")
		}
	}
	if exited(pid) {
		t.Fatal("the daemon died")
	}
	if _, err := os.Stat(filepath.Join(mnt, "a")); err != nil {
		t.Error(err)
	}
}
