package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// hungRoot is the root of a file system whose daemon reads statfs and
// getxattr requests and does not answer them until released: a deadlocked
// daemon, as the kernel sees one.
type hungRoot struct {
	gofs.Inode
	release chan struct{}
}

func (h *hungRoot) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	<-h.release
	return 0
}

func (h *hungRoot) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	<-h.release
	return 0, syscall.ENODATA
}

// TestStatusOfADeadlockedMount: a request the daemon has read but never
// answers leaves the thread waiting on it unkillable, and its process
// unable to exit. status must come back anyway, within its probe's time,
// and say the mount does not answer: its probe waits in a child process
// that status leaves behind, not in status, nor holding its output open.
//
// The mount is served by this test process (under the name a safejaxfs
// mount has, so status lists it) and only touched by the commands it runs.
func TestStatusOfADeadlockedMount(t *testing.T) {
	t.Parallel()
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	root := &hungRoot{release: make(chan struct{})}
	var once sync.Once
	release := func() { once.Do(func() { close(root.release) }) }
	srv, err := gofs.Mount(mnt, root, &gofs.Options{MountOptions: fuse.MountOptions{
		Name: "safejaxfs", FsName: "deadlocked", DirectMount: true,
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		release() // the probe it keeps waiting ends, and the mount with it
		srv.Unmount()
	})

	// run runs a command with the probe time at 1s. Only the mount's
	// answer could free one that waits on it: after 30 s the mount is
	// released, and the test fails.
	cliExecutable() // built before the clock starts (the plain build, under -race)
	run := func(args ...string) result {
		start := time.Now()
		done := make(chan result, 1)
		go func() { done <- cliEnv(t, []string{statusProbeEnv + "=1s"}, args...) }()
		select {
		case r := <-done:
			if took := time.Since(start); took > 15*time.Second {
				t.Errorf("%s took %v with a probe time of 1s", args[0], took.Round(time.Millisecond))
			}
			return r
		case <-time.After(30 * time.Second):
			release()
			<-done
			t.Fatalf("%s with a deadlocked mount came back only once the mount answered (%v)", args[0], time.Since(start).Round(time.Second))
			return result{}
		}
	}

	r := run("status", "--json", mnt)
	var reports []mountReport
	if err := json.Unmarshal([]byte(r.stdout), &reports); r.code != 0 || err != nil || len(reports) != 1 {
		t.Fatalf("status --json %s: exit %d %v\n%s%s", mnt, r.code, err, r.stdout, r.stderr)
	}
	if rep := reports[0]; rep.Answering == nil || *rep.Answering || rep.Problem != "not answering (no reply within 1s)" {
		t.Errorf("status of a deadlocked mount: answering %v, problem %q", rep.Answering, rep.Problem)
	}

	// Asked again, status does not start a second probe beside the one
	// still waiting: a status in a loop would leave one per run.
	if r := run("status", "--json", mnt); r.code != 0 || !strings.Contains(r.stdout, `"answering": false`) {
		t.Errorf("status again: exit %d %s%s", r.code, r.stdout, r.stderr)
	}

	// mount over it asks the same way, and says why it refuses.
	r = run("mount", copyFixture(t, "flax_mlp.safetensors"), mnt)
	if r.code != exitMount || !strings.Contains(r.stderr, "is already mounted, and that mount does not answer") {
		t.Errorf("mount over a deadlocked mount: exit %d %q", r.code, r.stderr)
	}
	if n := probesOf(t, mnt); n != 1 {
		t.Errorf("%d probe processes wait on the mount, want the first one only", n)
	}
}

// probesOf counts the probe processes (probe.go) asking mnt.
func probesOf(t *testing.T, mnt string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.HasPrefix(string(b), "/proc/self/exe\x00"+probeCommand+"\x00") && strings.Contains(string(b), "\x00"+mnt+"\x00") {
			n++
		}
	}
	return n
}
