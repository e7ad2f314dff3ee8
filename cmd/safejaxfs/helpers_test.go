package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
)

// The test binary doubles as the safejaxfs command: with this variable set it
// runs main's dispatch instead of the tests. Mounts are served by that child
// process, never by the test process itself (touching a mount from inside its
// own daemon can deadlock).
const asCLIEnv = "SAFEJAXFS_TEST_AS_CLI"

func TestMain(m *testing.M) {
	if os.Getenv(asCLIEnv) == "1" {
		os.Exit(run(os.Args[1:]))
	}
	if _, err := os.Stat("/dev/fuse"); err != nil && os.Getenv("CI") == "" {
		// Developers without FUSE still get the unit tests; CI must fail.
		os.Stderr.WriteString("no /dev/fuse: mount tests will fail\n")
	}
	os.Exit(runTests(m))
}

// runTests runs the tests with the children (CLI runs and daemons, which
// are this binary, race-instrumented under -race) writing race reports to
// files: a background daemon has no stderr to print them on. Any report
// fails the run. atexit_sleep_ms=0 spares each child the race runtime's
// one-second pause at exit.
func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "safejaxfs-race-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	os.Setenv("GORACE", "atexit_sleep_ms=0 log_path="+filepath.Join(dir, "report"))
	// Daemons keep their logs (one per mountpoint) in $XDG_RUNTIME_DIR:
	// the run's own, removed with it.
	os.Setenv("XDG_RUNTIME_DIR", dir)
	code := m.Run()
	testsrv.StopS3() // the S3 server of the remote tests, if one ran
	reports, _ := filepath.Glob(filepath.Join(dir, "report*"))
	for _, r := range reports {
		b, _ := os.ReadFile(r)
		fmt.Fprintf(os.Stderr, "data race in a safejaxfs child process (%s):\n%s\n", filepath.Base(r), b)
		code = 1
	}
	return code
}

type result struct {
	stdout, stderr string
	code           int
}

// cli runs the safejaxfs command line and returns its output and exit code.
func cli(t testing.TB, args ...string) result {
	t.Helper()
	// Bounded, so a hung daemon fails the test instead of hanging the run.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), asCLIEnv+"=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("running safejaxfs %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return result{out.String(), errb.String(), code}
}

// mount mounts ckpt in the background (as a user would) on a fresh
// mountpoint and unmounts it when the test ends, whatever happened.
func mount(t testing.TB, ckpt string, flags ...string) string {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"mount"}, flags...)
	r := cli(t, append(args, ckpt, mnt)...)
	if r.code != 0 {
		t.Fatalf("mount %s: exit %d: %s", ckpt, r.code, r.stderr)
	}
	t.Cleanup(func() { forceUnmount(t, mnt) })
	return mnt
}

// forceUnmount is the safety net: a clean unmount first, then a lazy one, so
// no mount outlives the test.
func forceUnmount(t testing.TB, mnt string) {
	if !mounted(t, mnt) {
		return
	}
	r := cli(t, "unmount", mnt)
	if r.code == 0 && !mounted(t, mnt) {
		return
	}
	t.Errorf("unmount %s: exit %d: %s", mnt, r.code, r.stderr)
	if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
		exec.Command("fusermount3", "-uz", mnt).Run()
	}
}

// mounted reports whether mnt appears in the mount table.
func mounted(t testing.TB, mnt string) bool {
	t.Helper()
	_, found, err := mountType(mnt)
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func copyFixture(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// rawHeader parses a checkpoint's header with encoding/json, independently
// of our parser, as the truth to compare the mount against.
type rawEntry struct {
	DType   string    `json:"dtype"`
	Shape   []uint64  `json:"shape"`
	Offsets [2]uint64 `json:"data_offsets"`
}

func rawHeader(t testing.TB, path string) (entries map[string]rawEntry, meta map[string]string, data []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b)
	var h map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &h); err != nil {
		t.Fatal(err)
	}
	entries = map[string]rawEntry{}
	for k, v := range h {
		if k == "__metadata__" {
			if err := json.Unmarshal(v, &meta); err != nil {
				t.Fatal(err)
			}
			continue
		}
		var e rawEntry
		if err := json.Unmarshal(v, &e); err != nil {
			t.Fatal(err)
		}
		entries[k] = e
	}
	return entries, meta, b[8+n:]
}

func getxattr(t testing.TB, path, name string) string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Getxattr(path, name, buf)
	if err != nil {
		t.Fatalf("getxattr %s %s: %v", path, name, err)
	}
	return string(buf[:n])
}

// walkFiles returns every regular file under root, relative paths,
// except the mount's files directory (files_test.go tests that).
func walkFiles(t testing.TB, root string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p == filepath.Join(root, defaultFilesDir) {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(root, p)
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// waitGone waits for a process to exit.
func waitGone(t testing.TB, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if exited(pid) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process %d still running", pid)
}

func numpy(t testing.TB) string {
	t.Helper()
	const py = "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import numpy").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("numpy interop needs %s with numpy (apt-get install python3-numpy): %v", py, err)
		}
		t.Skipf("no numpy for %s", py)
	}
	return py
}

func runPython(t testing.TB, script string, args ...string) string {
	t.Helper()
	cmd := exec.Command(numpy(t), append([]string{"-c", script}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}
