package fs

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// The test binary doubles as a mount daemon: with daemonEnv set it serves
// one mount and exits when it is unmounted. Tests touch the mount from the
// test process, never from the process serving it (that can deadlock).
const daemonEnv = "SAFEJAXFS_FS_TEST_DAEMON"

type daemonSpec struct {
	Ckpt, Mnt string
	NPY       bool
	// FailAfterAttach makes Mount fail once the mount answers.
	FailAfterAttach bool
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(daemonEnv); spec != "" {
		os.Exit(runTestDaemon(spec))
	}
	os.Exit(m.Run())
}

// runTestDaemon opens, mounts and serves, saying "ok" on stdout once the
// mount answers.
func runTestDaemon(spec string) int {
	var s daemonSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Println("bad spec:", err)
		return 1
	}
	ck, err := checkpoint.Open(s.Ckpt, checkpoint.Options{})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	f, err := New(ck, Options{NPY: s.NPY})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	mo := MountOptions{}
	if s.FailAfterAttach {
		mo.afterAttach = func() error {
			// Read from the mount table, never from the mount itself.
			_, attached, _ := FindMount(s.Mnt)
			return fmt.Errorf("injected failure after attaching (attached: %v)", attached)
		}
	}
	server, err := Mount(s.Mnt, f, mo)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println("ok")
	server.Wait()
	if err := ck.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "close:", err)
		return 1
	}
	return 0
}

// syncBuffer collects a child's stderr while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// mountTest serves ckpt from a child process and returns the mountpoint.
// The mount is unmounted and the child reaped when the test ends, whatever
// happened; a data race the child reports fails the test.
func mountTest(t *testing.T, ckpt string, npy bool) string {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("mount tests need /dev/fuse: %v", err)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	spec, _ := json.Marshal(daemonSpec{Ckpt: ckpt, Mnt: mnt, NPY: npy})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), daemonEnv+"="+string(spec), "GORACE=atexit_sleep_ms=0")
	var stderr syncBuffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- strings.TrimSpace(line)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if err := unmountTest(mnt); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("daemon: %v: %s", err, stderr.String())
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			unix.Unmount(mnt, unix.MNT_DETACH)
			t.Errorf("daemon did not exit after unmount: %s", stderr.String())
		}
		if strings.Contains(stderr.String(), "DATA RACE") {
			t.Errorf("data race in the daemon:\n%s", stderr.String())
		}
	})
	select {
	case line := <-ready:
		if line != "ok" {
			t.Fatalf("daemon for %s: %q %s", ckpt, line, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("mount at %s did not answer within 30s", mnt)
	}
	return mnt
}

// TestMountFailureAfterAttach: a Mount that fails once the kernel has
// attached the mount leaves no mount behind (a dead one would answer
// ENOTCONN to everyone until someone detached it).
func TestMountFailureAfterAttach(t *testing.T) {
	ckpt := writeCheckpoint(t, "a")
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountTest(mnt) })
	spec, _ := json.Marshal(daemonSpec{Ckpt: ckpt, Mnt: mnt, FailAfterAttach: true})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), daemonEnv+"="+string(spec), "GORACE=atexit_sleep_ms=0")
	out, err := cmd.Output()
	if !strings.Contains(string(out), "injected failure after attaching (attached: true)") {
		t.Fatalf("daemon: %v %q: the failure did not come after attaching", err, out)
	}
	if m, found, err := FindMount(mnt); err != nil || found {
		t.Errorf("a mount is left behind after the failure: %+v %v", m, err)
	}
}

// unmountTest unmounts mnt if it is mounted: directly as root, else with
// fusermount3.
func unmountTest(mnt string) error {
	m, found, err := FindMount(mnt)
	if err != nil || !found || !strings.HasPrefix(m.FSType, "fuse") {
		return err
	}
	if os.Geteuid() == 0 {
		err = unix.Unmount(mnt, 0)
	} else if out, ferr := exec.Command("fusermount3", "-u", mnt).CombinedOutput(); ferr != nil {
		err = fmt.Errorf("%v: %s", ferr, out)
	}
	if err != nil {
		// Busy (a failed test left a file open): detach it, so no mount
		// outlives the test; the daemon exits once the file is closed.
		if os.Geteuid() == 0 {
			unix.Unmount(mnt, unix.MNT_DETACH)
		} else {
			exec.Command("fusermount3", "-uz", mnt).Run()
		}
	}
	return err
}

// writeCheckpoint writes F32 tensors with the given keys (4 values each) and
// returns the file's path.
func writeCheckpoint(t *testing.T, keys ...string) string {
	t.Helper()
	src := make([]safetensors.Source, len(keys))
	for i, k := range keys {
		src[i] = safetensors.Source{Key: k, DType: safetensors.F32, Shape: []uint64{4}, Data: safetensors.Bytes(bytes.Repeat([]byte{byte(i)}, 16))}
	}
	return writeSources(t, src)
}

// writeSources writes src as a checkpoint and returns the file's path.
func writeSources(t *testing.T, src []safetensors.Source) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "model.safetensors")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := safetensors.Write(f, src, nil); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}
