package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The daemon's state directory on a shared machine: another user may have
// made it first, or left a symlink there, or a symlink for a log file. It
// is never used then, nothing is written through the symlinks, and the
// mount goes on with a directory that is private, saying so.

const nobodyUID = 65534

// stateEnv is an environment whose state directory candidates are under
// the test's control: $XDG_RUNTIME_DIR/safejaxfs, then (as root)
// /run/safejaxfs, then $TMPDIR/safejaxfs-<uid>.
func stateEnv(t *testing.T) (env []string, run, tmp string) {
	run, tmp = t.TempDir(), t.TempDir()
	return []string{"XDG_RUNTIME_DIR=" + run, "TMPDIR=" + tmp}, run, tmp
}

// hostileStateDir mounts with $XDG_RUNTIME_DIR/safejaxfs prepared by
// prepare and checks that the daemon refused it: the notice names it, the
// log is elsewhere, in a private directory, and nothing was written into
// the hostile one or through it.
func hostileStateDir(t *testing.T, why string, prepare func(state string)) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown to another user)")
	}
	env, run, _ := stateEnv(t)
	state := filepath.Join(run, "safejaxfs")
	prepare(state)
	ckpt := flaxModel(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	r := cliEnv(t, env, "mount", ckpt, mnt)
	if r.code != 0 {
		t.Fatalf("mount: exit %d %q", r.code, r.stderr)
	}
	t.Cleanup(func() { forceUnmount(t, mnt) })
	if !strings.Contains(r.stderr, state) || !strings.Contains(r.stderr, why) {
		t.Errorf("mount's notice %q does not name %s and %q", r.stderr, state, why)
	}
	logPath := getxattr(t, mnt, "user.safejaxfs.log")
	if strings.HasPrefix(logPath, run) {
		t.Fatalf("log at %s: inside the refused directory", logPath)
	}
	if err := checkPrivateDir(filepath.Dir(logPath)); err != nil {
		t.Errorf("the directory used instead: %v", err)
	}
	shell(t, "echo bad > "+filepath.Join(mnt, "__metadata__"))
	if b, err := os.ReadFile(logPath); err != nil || !strings.Contains(string(b), "not an object of strings") {
		t.Errorf("log %s: %v %q", logPath, err, b)
	}
	unmountOK(t, mnt)
	if _, err := os.Stat(logPath); !os.IsNotExist(err) {
		t.Errorf("the log of a clean mount is still there: %v", err)
	}
}

func TestStateDirOfAnotherUser(t *testing.T) {
	var planted string
	hostileStateDir(t, "belongs to uid 65534", func(state string) {
		if err := os.Mkdir(state, 0o700); err != nil {
			t.Fatal(err)
		}
		// The attacker's plant: our log would land in their file.
		planted = filepath.Join(state, "planted")
		os.WriteFile(planted, nil, 0o666)
		if err := os.Chown(state, nobodyUID, nobodyUID); err != nil {
			t.Fatal(err)
		}
	})
	if b, _ := os.ReadFile(planted); len(b) != 0 {
		t.Errorf("something was written into the other user's directory: %q", b)
	}
}

func TestStateDirSymlink(t *testing.T) {
	target := t.TempDir()
	hostileStateDir(t, "is a symlink", func(state string) {
		if err := os.Symlink(target, state); err != nil {
			t.Fatal(err)
		}
	})
	if entries, _ := os.ReadDir(target); len(entries) != 0 {
		t.Errorf("files written through the symlinked state directory: %v", entries)
	}
}

func TestStateDirOpenToOthers(t *testing.T) {
	hostileStateDir(t, "mode 0777", func(state string) {
		if err := os.Mkdir(state, 0o700); err != nil {
			t.Fatal(err)
		}
		os.Chmod(state, 0o777)
	})
}

// TestLogSymlinkNotFollowed: a symlink in the state directory where a log
// file would go (the old fixed name, or the new one) is neither followed
// nor removed: the daemon creates its log under a fresh name.
func TestLogSymlinkNotFollowed(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "bashrc")
	os.WriteFile(victim, []byte("original\n"), 0o644)
	base := "%tmp%m.20250101-000000.42"
	if err := os.Symlink(victim, filepath.Join(dir, base+logSuffix)); err != nil {
		t.Fatal(err)
	}
	f, err := createLogNamed(dir, base)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Name() == filepath.Join(dir, base+logSuffix) {
		t.Fatalf("created %s over the symlink", f.Name())
	}
	if _, err := f.WriteString("line\n"); err != nil {
		t.Fatal(err)
	}
	pruneLogs(dir)
	if b, _ := os.ReadFile(victim); string(b) != "original\n" {
		t.Errorf("the symlink's target changed: %q", b)
	}
	if _, err := os.Lstat(filepath.Join(dir, base+logSuffix)); err != nil {
		t.Errorf("the symlink was removed: %v", err)
	}

	// The same through a mount: the old per-mountpoint name is a symlink.
	env, run, _ := stateEnv(t)
	state := filepath.Join(run, "safejaxfs")
	os.Mkdir(state, 0o700)
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	if err := os.Symlink(victim, filepath.Join(state, logStem(mnt)+logSuffix)); err != nil {
		t.Fatal(err)
	}
	if r := cliEnv(t, env, "mount", flaxModel(t), mnt); r.code != 0 {
		t.Fatalf("mount: exit %d %q", r.code, r.stderr)
	}
	t.Cleanup(func() { forceUnmount(t, mnt) })
	shell(t, "echo bad > "+filepath.Join(mnt, "__metadata__"))
	unmountOK(t, mnt)
	if b, _ := os.ReadFile(victim); string(b) != "original\n" {
		t.Errorf("the symlink's target changed: %q", b)
	}
}

// TestLogEscapesNewline: a mountpoint whose name holds a newline and what
// looks like a log record cannot add a line to the log: every line is one
// record the daemon wrote.
func TestLogEscapesNewline(t *testing.T) {
	env, _, _ := stateEnv(t)
	forged := "level=ERROR msg=forged"
	mnt := filepath.Join(t.TempDir(), "m\n"+forged+"\r\x1b[2J")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if r := cliEnv(t, env, "mount", flaxModel(t), mnt); r.code != 0 {
		t.Fatalf("mount: exit %d %q", r.code, r.stderr)
	}
	t.Cleanup(func() { forceUnmount(t, mnt) })
	logPath := getxattr(t, mnt, "user.safejaxfs.log")
	// A refused edit logs the mount's path (the metadata file's path).
	shell(t, "echo bad > '"+filepath.Join(mnt, "__metadata__")+"'")
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) < 2 {
		t.Fatalf("log:\n%s", b)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "time=") || strings.ContainsAny(l, "\r\x1b") {
			t.Errorf("a log line the daemon did not write as one record: %q", l)
		}
	}
	if !strings.Contains(string(b), `m\n`+forged) {
		t.Errorf("the mountpoint is not in the log, escaped:\n%s", b)
	}
	unmountOK(t, mnt)
}

// TestFailedLogsBounded: the log of a mount that fails stays for the user
// to read, but only the newest few; a clean mount removes its own, and a
// live daemon's is never pruned.
func TestFailedLogsBounded(t *testing.T) {
	env, run, _ := stateEnv(t)
	state := filepath.Join(run, "safejaxfs")
	ckpt := flaxModel(t)
	live := filepath.Join(t.TempDir(), "live")
	os.Mkdir(live, 0o755)
	if r := cliEnv(t, env, "mount", ckpt, live); r.code != 0 {
		t.Fatalf("mount: exit %d %q", r.code, r.stderr)
	}
	t.Cleanup(func() { forceUnmount(t, live) })
	liveLog := getxattr(t, live, "user.safejaxfs.log")
	// A second read-write mount of the same checkpoint fails in the
	// daemon, after its log is made.
	for i := range keptLogs + 3 {
		mnt := filepath.Join(t.TempDir(), "second")
		os.Mkdir(mnt, 0o755)
		r := cliEnv(t, env, "mount", ckpt, mnt)
		if r.code != exitMount {
			t.Fatalf("second read-write mount %d: exit %d %q", i, r.code, r.stderr)
		}
	}
	logs, _ := filepath.Glob(filepath.Join(state, "*"+logSuffix))
	failed := 0
	for _, l := range logs {
		if l == liveLog {
			continue
		}
		failed++
		if b, _ := os.ReadFile(l); !strings.Contains(string(b), "already mounted read-write") {
			t.Errorf("failed mount's log %s does not say why:\n%s", l, b)
		}
	}
	if failed != keptLogs || !slices.Contains(logs, liveLog) {
		t.Errorf("state dir holds %d logs of failed mounts (want %d) and the live one: %v", failed, keptLogs, logs)
	}
	unmountOK(t, live)
	if _, err := os.Stat(liveLog); !os.IsNotExist(err) {
		t.Errorf("the log of a mount that ended cleanly is still there: %v", err)
	}
	st, err := os.Lstat(state)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("state directory: %v %v", st.Mode(), err)
	}
	var sfs unix.Stat_t
	if unix.Stat(state, &sfs) == nil && sfs.Uid != uint32(os.Geteuid()) {
		t.Errorf("state directory owned by %d", sfs.Uid)
	}
}
