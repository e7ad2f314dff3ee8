package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/internal/race"
)

// --help on every command prints on stdout and exits 0; a wrong command
// line prints on stderr and exits 2 (as GNU tools do).
func TestHelpOnStdout(t *testing.T) {
	for _, c := range commands {
		r := cli(t, c.name, "--help")
		if r.code != 0 || !strings.HasPrefix(r.stdout, "Usage: safejaxfs "+c.name) || r.stderr != "" {
			t.Errorf("%s --help: exit %d, stdout %q, stderr %q", c.name, r.code, r.stdout, r.stderr)
		}
		if r := cli(t, "help", c.name); r.code != 0 || !strings.HasPrefix(r.stdout, "Usage: safejaxfs "+c.name) {
			t.Errorf("help %s: exit %d, stdout %q", c.name, r.code, r.stdout)
		}
	}
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		r := cli(t, args...)
		if r.code != 0 || !strings.Contains(r.stdout, "safejaxfs mount") || !strings.Contains(r.stdout, "safejaxfs status") || r.stderr != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}
	for _, args := range [][]string{{}, {"frobnicate"}, {"mount", "only-one"}, {"status", "--bogus"}, {"wait"}, {"unmount", "a", "b"}} {
		r := cli(t, args...)
		if r.code != exitUsage || r.stdout != "" || r.stderr == "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %d and stderr only", args, r.code, r.stdout, r.stderr, exitUsage)
		}
	}
}

// --version shows the version stamped with -ldflags -X main.version, as
// scripts/ and the README build it.
func TestVersionStamped(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the command")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	bin := filepath.Join(t.TempDir(), "safejaxfs")
	// Built as this test binary was (with -race under go test -race):
	// every package but main is in the build cache then, so the build is
	// a link, not a compile of every dependency (about a minute of CPU
	// on 2 cores, which a fresh CI machine would pay here).
	args := []string{"build", "-ldflags", "-X main.version=v0.12.0-3-gdeadbee-dirty", "-o", bin}
	if race.Enabled {
		args = append(args, "-race")
	}
	build := exec.Command(gobin, append(args, ".")...)
	build.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"--version"}, {"version"}} {
		out, err := exec.Command(bin, args...).Output()
		if err != nil || !strings.HasPrefix(string(out), "safejaxfs v0.12.0-3-gdeadbee-dirty, go1.") {
			t.Errorf("%v: %v %q", args, err, out)
		}
	}
	// Unstamped (and without VCS information): the module's version.
	if r := cli(t, "--version"); r.code != 0 || !strings.HasPrefix(r.stdout, "safejaxfs ") {
		t.Errorf("--version unstamped: %q", r.stdout)
	}
}
