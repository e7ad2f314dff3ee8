package main

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// childOf returns a child process of ppid, or 0.
func childOf(ppid int) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(ppid) {
			return pid
		}
	}
	return 0
}

// TestKilledWhileMounting: kill -9 of the daemon at any moment of its
// start never leaves a mount that no one answers: the CLI that started it
// removes whatever it left. The daemons are plain-built even under -race:
// what is tested is the CLI's cleanup, and a plain daemon's start (about
// 25 ms, a race-built one's 150 ms) is what the kills' random 0-40 ms
// cover.
func TestKilledWhileMounting(t *testing.T) {
	if !isolated(t) {
		return
	}
	exe := cliExecutable()
	ckpt := flaxModel(t)
	rng := rand.New(rand.NewPCG(7, 7))
	const runs = 25
	for i := range runs {
		mnt := filepath.Join(t.TempDir(), "mnt")
		os.Mkdir(mnt, 0o755)
		cmd := exec.Command(exe, "mount", "--read-only", ckpt, mnt)
		cmd.Env = append(os.Environ(), asCLIEnv+"=1", daemonEnv+"="+exe)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if mounted(t, mnt) {
				abortMount(mnt)
			}
		})
		var daemon int
		// Polled every 200 µs: a spin would take the CPU the start needs.
		for deadline := time.Now().Add(30 * time.Second); daemon == 0 && time.Now().Before(deadline); time.Sleep(200 * time.Microsecond) {
			daemon = childOf(cmd.Process.Pid)
		}
		if daemon != 0 {
			time.Sleep(time.Duration(rng.IntN(40_000)) * time.Microsecond)
			unix.Kill(daemon, unix.SIGKILL)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			t.Fatalf("run %d: the CLI did not return after its daemon was killed", i)
		}
		if mounted(t, mnt) {
			// A dead mount answers at once (ENOTCONN); the bound only
			// tells one that never answers from it.
			if _, answered := probeHere([]string{mnt}, []probeKind{probeStatfs}, 30*time.Second)[0]; !answered {
				t.Fatalf("run %d: a mount no one answers was left at %s", i, mnt)
			}
			// The daemon said ok before it was killed: a dead mount
			// (ENOTCONN) for unmount to clean up, as after any crash.
			if r := cli(t, "unmount", mnt); r.code != 0 || mounted(t, mnt) {
				t.Errorf("run %d: unmount of the dead mount: exit %d %s", i, r.code, r.stderr)
			}
		}
	}
}

// TestUnmountOfStuckDaemon: a mount whose daemon answers nothing (here:
// stopped) is aborted and detached by safejaxfs unmount instead of
// hanging it.
func TestUnmountOfStuckDaemon(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := newMountpoint(t)
	d := startDaemon(t, ckpt, mnt, "--read-only")
	if err := unix.Kill(d.pid, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(d.pid, unix.SIGKILL); unix.Kill(d.pid, unix.SIGCONT) })
	waitUntil(t, "the daemon to stop", func() bool { return allStopped(d.pid) })
	// A stopped daemon never answers: any wait tells it from a live one,
	// so a short one (not the 5 s a loaded machine's daemon is given).
	r := cliEnv(t, []string{hangTimeoutEnv + "=500ms"}, "unmount", mnt)
	if r.code != 0 || mounted(t, mnt) || !strings.Contains(r.stderr, "does not answer") {
		t.Errorf("unmount of a stuck daemon's mount: exit %d %q, mounted %v", r.code, r.stderr, mounted(t, mnt))
	}
}
