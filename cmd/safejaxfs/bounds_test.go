package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestHugeIndexRefused: verify (and mount) of a checkpoint whose index is
// 200 MB is refused before the index is read, naming the 64 MiB limit, in
// bounded memory (it used to peak at 811 MB).
func TestHugeIndexRefused(t *testing.T) {
	dir := t.TempDir()
	idx := filepath.Join(dir, "model.safetensors.index.json")
	f, err := os.Create(idx)
	if err != nil {
		t.Fatal(err)
	}
	// Sparse: the size is what is refused, whatever the bytes.
	f.WriteString(`{"weight_map": {`)
	if err := f.Truncate(200 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, args := range [][]string{{"verify", dir}, {"ls", idx}} {
		cmd := cliCmd(args...)
		out, err := cmd.CombinedOutput()
		code := cmd.ProcessState.ExitCode()
		if code != exitInvalid || !strings.Contains(string(out), "above the limit of 67108864 bytes (64 MiB") {
			t.Errorf("%v of a 200 MB index: exit %d %v %q", args, code, err, out)
		}
		if rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss << 10; rss > 100<<20 {
			t.Errorf("%v of a 200 MB index peaked at %d MiB of RSS", args, rss>>20)
		}
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	if r := cli(t, "mount", idx, mnt); r.code != exitInvalid || !strings.Contains(r.stderr, "64 MiB") {
		t.Errorf("mount of a 200 MB index: exit %d %q", r.code, r.stderr)
	}
}

// cliCmd is the command cli runs, for a test that needs its process
// state (peak memory).
func cliCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), asCLIEnv+"=1")
	return cmd
}
