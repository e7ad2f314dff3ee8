package main

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// hungRoot is the root of a file system whose daemon reads statfs and
// getxattr requests and does not answer them until released: a deadlocked
// daemon, as the kernel sees one.
type hungRoot struct {
	gofs.Inode
	release chan struct{}
	// statfsAnswers: only getxattr hangs (a deadlock that statfs, which
	// takes no lock, does not meet).
	statfsAnswers bool
}

func (h *hungRoot) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	if !h.statfsAnswers {
		<-h.release
	}
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
	mnt, run := mountDeadlocked(t, false)

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

// TestUnmountOfADeadlockedMount: unmount of a mount whose daemon answers
// statfs but deadlocks on the getxattr that asks its pid comes back: it
// asks from a child, finds no answer, aborts the connection and detaches.
// Asked in unmount's own process, the wait was unkillable.
func TestUnmountOfADeadlockedMount(t *testing.T) {
	t.Parallel()
	mnt, run := mountDeadlocked(t, true)
	r := run("unmount", mnt)
	if r.code != 0 || !strings.Contains(r.stderr, "does not answer within 1s: aborting its FUSE connection") || mounted(t, mnt) {
		t.Errorf("unmount of a deadlocked mount: exit %d %q (still mounted: %v)", r.code, r.stderr, mounted(t, mnt))
	}
}

// mountDeadlocked mounts a hungRoot, served by this test process under the
// name a safejaxfs mount has (so the commands take it for one); only the
// commands the test runs touch it. run runs a command with the probe and
// hang times at 1s: only the mount's answer could free one that waits on
// it, so after 30 s the mount is released, and the test fails.
func mountDeadlocked(t *testing.T, statfsAnswers bool) (mnt string, run func(args ...string) result) {
	mnt = filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	root := &hungRoot{release: make(chan struct{}), statfsAnswers: statfsAnswers}
	var once sync.Once
	release := func() { once.Do(func() { close(root.release) }) }
	srv, err := gofs.Mount(mnt, root, &gofs.Options{MountOptions: fuse.MountOptions{
		Name: "safejaxfs", FsName: "deadlocked", DirectMount: true,
		// Its answers after the abort have nobody to go to: not news.
		Logger: log.New(io.Discard, "", 0),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		release() // the probe it keeps waiting ends, and the mount with it
		// Until that probe has exited, its open descriptor keeps the
		// mount busy: an unmount right away failed now and then (EBUSY,
		// after go-fuse's few quick retries) and left the mount behind.
		deadline := time.Now().Add(20 * time.Second)
		for probesOf(t, mnt) > 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		for mounted(t, mnt) {
			err := srv.Unmount()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("unmounting the deadlocked mount: %v; detaching it", err)
				unix.Unmount(mnt, unix.MNT_DETACH)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	cliExecutable() // built before the clock starts (the plain build, under -race)
	run = func(args ...string) result {
		start := time.Now()
		done := make(chan result, 1)
		go func() { done <- cliEnv(t, []string{statusProbeEnv + "=1s", hangTimeoutEnv + "=1s"}, args...) }()
		select {
		case r := <-done:
			if took := time.Since(start); took > 15*time.Second {
				t.Errorf("%s took %v with probe and hang times of 1s", args[0], took.Round(time.Millisecond))
			}
			return r
		case <-time.After(30 * time.Second):
			release()
			<-done
			t.Fatalf("%s with a deadlocked mount came back only once the mount answered (%v)", args[0], time.Since(start).Round(time.Second))
			return result{}
		}
	}
	return mnt, run
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
