package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/safejaxfs/safejaxfs/internal/race"
)

// Under -race the commands a test runs (cli) are a plain build of this test
// binary, and their daemons this race-instrumented one: a command started
// race-built costs 80 ms of CPU and 4,700 page faults before it does
// anything (a plain one 21 ms and 680), and the tests start about 1,000 of
// them. The race detector stays where the concurrency is: the daemons
// serving FUSE requests, and the packages' own tests.
const (
	plainCLIEnv = "SAFEJAXFS_TEST_PLAIN_CLI"
	daemonEnv   = "SAFEJAXFS_TEST_DAEMON"
)

// plainCLI is the plain build of this test binary that runs the commands
// under -race (see plainCLIEnv), built by the first test that needs it, so
// a run of tests that start no command links nothing.
var plainCLI struct {
	once sync.Once
	dir  string // where to put it: the run's temp dir
	err  error  // why it could not be built, for TestDaemonsRaceBuilt
}

// ensurePlainCLI builds it once, before the first command or test process
// (isolated): a test process it starts finds it in the environment. Go's
// build cache already holds the plain packages (go vet compiles them), so
// this is mostly a link. If it fails, the commands run race-built, and
// TestDaemonsRaceBuilt says so.
func ensurePlainCLI() {
	if !race.Enabled || os.Getenv(plainCLIEnv) != "" {
		return
	}
	plainCLI.once.Do(func() {
		exe := filepath.Join(plainCLI.dir, "safejaxfs-plain.test")
		build := exec.Command("go", "test", "-c", "-o", exe, ".")
		build.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
		if out, err := build.CombinedOutput(); err != nil {
			plainCLI.err = fmt.Errorf("go test -c: %v\n%s", err, out)
			return
		}
		self, err := os.Executable()
		if err != nil {
			plainCLI.err = err
			return
		}
		os.Setenv(plainCLIEnv, exe)
		os.Setenv(daemonEnv, self)
	})
}

// cliExecutable is the safejaxfs command cli runs: the plain build under
// -race, else this binary.
func cliExecutable() string {
	ensurePlainCLI()
	if exe := os.Getenv(plainCLIEnv); exe != "" {
		return exe
	}
	return os.Args[0]
}

// TestDaemonsRaceBuilt: under -race the commands run plain-built, but the
// daemon a mount starts is this race-instrumented binary, and a command
// not: the race detector must keep watching the daemons.
func TestDaemonsRaceBuilt(t *testing.T) {
	t.Parallel()
	if !race.Enabled {
		t.Skip("a plain build runs plain commands and daemons")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if cliExecutable(); os.Getenv(plainCLIEnv) == "" {
		t.Errorf("the commands run race-built (%s): %v", self, plainCLI.err)
	}
	mnt := mount(t, copyFixture(t, "flax_mlp.safetensors"))
	pid, err := strconv.Atoi(getxattr(t, mnt, "user.safejaxfs.pid"))
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		t.Fatal(err)
	}
	if exe != self {
		t.Errorf("the daemon runs %s, want the race-built %s", exe, self)
	}
}
