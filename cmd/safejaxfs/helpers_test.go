package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
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

// Waits of the command that a test may change for its children (a
// duration, as time.ParseDuration reads it): how often a daemon whose
// mount is gone retries saving its edits, how long unmount waits for an
// answer before it calls a mount hung and how long it retries a busy one,
// and how long status waits for each mount's answer. And progressFrom and
// spillAt, in bytes.
const (
	retryEveryEnv   = "SAFEJAXFS_TEST_RETRY_EVERY"
	hangTimeoutEnv  = "SAFEJAXFS_TEST_HANG_TIMEOUT"
	busyWaitEnv     = "SAFEJAXFS_TEST_BUSY_WAIT"
	statusProbeEnv  = "SAFEJAXFS_TEST_STATUS_PROBE"
	progressFromEnv = "SAFEJAXFS_TEST_PROGRESS_FROM"
	spillAtEnv      = "SAFEJAXFS_TEST_SPILL_AT"
)

func TestMain(m *testing.M) {
	if os.Getenv(asCLIEnv) == "1" {
		if d, err := time.ParseDuration(os.Getenv(retryEveryEnv)); err == nil {
			retryEvery = d
		}
		if d, err := time.ParseDuration(os.Getenv(hangTimeoutEnv)); err == nil {
			hangTimeout = d
		}
		if d, err := time.ParseDuration(os.Getenv(busyWaitEnv)); err == nil {
			busyWait = d
		}
		if d, err := time.ParseDuration(os.Getenv(statusProbeEnv)); err == nil {
			statusProbe = d
		}
		if n, err := strconv.ParseInt(os.Getenv(progressFromEnv), 10, 64); err == nil {
			progressFrom = n
		}
		if n, err := strconv.ParseInt(os.Getenv(spillAtEnv), 10, 64); err == nil {
			spillAt = n
		}
		if exe := os.Getenv(daemonEnv); exe != "" {
			daemonExecutable = func() (string, error) { return exe, nil }
		}
		os.Exit(run(os.Args[1:]))
	}
	if _, err := os.Stat("/dev/fuse"); err != nil && os.Getenv("CI") == "" {
		// Developers without FUSE still get the unit tests; CI must fail.
		os.Stderr.WriteString("no /dev/fuse: mount tests will fail\n")
	}
	// Most tests here spend their time waiting for child processes and
	// FUSE round trips, not computing: unless -test.parallel says
	// otherwise, run up to 4 per CPU at once (the default is 1 per CPU).
	flag.Parse()
	parallelGiven := false
	flag.Visit(func(f *flag.Flag) { parallelGiven = parallelGiven || f.Name == "test.parallel" })
	if !parallelGiven {
		flag.Set("test.parallel", strconv.Itoa(4*runtime.GOMAXPROCS(0)))
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
	// Daemons keep their logs (one per mountpoint) in $XDG_RUNTIME_DIR,
	// and remote checkpoints opened without --cache-dir their chunks in
	// $XDG_CACHE_HOME: the run's own, removed with it, never the user's.
	// The S3 server scripts/test.sh keeps in the user's cache is found
	// before that.
	os.Setenv("XDG_RUNTIME_DIR", dir)
	testsrv.FindS3Server()
	// The go command's build cache defaults to a directory below
	// $XDG_CACHE_HOME: pinned first, or the build of TestVersionStamped
	// would compile every package again into an empty cache (a minute of
	// CPU) instead of linking what go test just built.
	if os.Getenv("GOCACHE") == "" {
		if out, err := exec.Command("go", "env", "GOCACHE").Output(); err == nil {
			os.Setenv("GOCACHE", strings.TrimSpace(string(out)))
		}
	}
	os.Setenv("XDG_CACHE_HOME", filepath.Join(dir, "cache"))
	plainCLI.dir = dir
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

// isolatedEnv names, in a test process started by isolated, the one test
// that process runs.
const isolatedEnv = "SAFEJAXFS_TEST_ISOLATED"

// isolated runs the calling test in a test process of its own, side by
// side with the other tests: in that process it reports true (run the
// test), in the one that started it false (the outcome is relayed: return).
//
// Why a process each: a process's open files are copied into every child
// it starts (a daemon, the CLI, python) and closed there at exec. Such a
// close decides nothing any more (fs/owner.go: only the opener's close
// commits), but until the child execs it holds the other tests' files
// open, and so their mounts busy for a moment (an unmount fails with
// EBUSY). A test in its own process meets only its own children, as when
// the tests ran one after another.
func isolated(t *testing.T) bool {
	t.Helper()
	if os.Getenv(isolatedEnv) == t.Name() {
		return true
	}
	t.Parallel()
	var pattern []string
	for _, part := range strings.Split(t.Name(), "/") {
		pattern = append(pattern, "^"+regexp.QuoteMeta(part)+"$")
	}
	args := []string{"-test.run=" + strings.Join(pattern, "/"), "-test.count=1", "-test.v"}
	if testing.Short() {
		args = append(args, "-test.short")
	}
	ctx := context.Background()
	if d, ok := t.Deadline(); ok {
		// The child's own timeout comes first, with its goroutine dump;
		// then it is killed, before this process's timeout.
		args = append(args, "-test.timeout="+max(time.Until(d)-30*time.Second, time.Second).Round(time.Second).String())
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-10*time.Second))
		defer cancel()
	}
	ensurePlainCLI() // before the child, which inherits it
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), isolatedEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	outcome := regexp.MustCompile(`(?m)^\s*--- (PASS|FAIL|SKIP): ` + regexp.QuoteMeta(t.Name()) + ` \(`).FindSubmatch(out)
	switch {
	case err != nil || outcome == nil || string(outcome[1]) == "FAIL":
		t.Fatalf("in a test process of its own: %v\n%s", err, out)
	case string(outcome[1]) == "SKIP":
		t.Skipf("in a test process of its own:\n%s", out)
	case testing.Verbose():
		t.Logf("in a test process of its own (%v of CPU, its children included):\n%s",
			(cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Round(10*time.Millisecond), out)
	}
	return false
}

type result struct {
	stdout, stderr string
	code           int
}

// cli runs the safejaxfs command line and returns its output and exit code.
func cli(t testing.TB, args ...string) result {
	t.Helper()
	return cliEnv(t, nil, args...)
}

// cliEnv is cli with extra environment variables (for the daemon too).
func cliEnv(t testing.TB, env []string, args ...string) result {
	t.Helper()
	// Bounded, so a hung daemon fails the test instead of hanging the run.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, cliExecutable(), args...)
	cmd.Env = append(append(os.Environ(), asCLIEnv+"=1"), env...)
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

// startCmd starts cmd; the channel gets what its Wait returns, once it
// has exited.
func startCmd(t testing.TB, cmd *exec.Cmd) <-chan error {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return exited
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
	waitUntil(t, fmt.Sprintf("process %d to exit", pid), func() bool { return exited(pid) })
}

// waitUntil waits for cond to hold. The bound only turns a hang into a
// failure: on a machine however loaded, cond holds long before it.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited a minute for %s", what)
		}
	}
}

// numpy returns Debian's python3, which has numpy, else skips (fails under
// CI: scripts/test.sh installs it).
func numpy(t testing.TB) string {
	t.Helper()
	const py = "/usr/bin/python3"
	if err := pythonHas(py, "numpy"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("numpy interop needs %s with numpy (apt-get install python3-numpy): %v", py, err)
		}
		t.Skipf("no numpy for %s", py)
	}
	return py
}

// pythonHas reports whether py has the modules, asking it once per
// test process and without importing them (importlib's find_spec): an
// interpreter that imports numpy costs 0.3 s of CPU, torch 2.5 s, and 80
// tests ask. A module present but broken fails the test that uses it.
func pythonHas(py string, modules ...string) error {
	key := py + " " + strings.Join(modules, " ")
	importsMu.Lock()
	defer importsMu.Unlock()
	err, ok := imports[key]
	if !ok {
		const script = "import importlib.util, sys\n" +
			"missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]\n" +
			"sys.exit('missing: ' + ' '.join(missing) if missing else 0)"
		if out, cerr := exec.Command(py, append([]string{"-c", script}, modules...)...).CombinedOutput(); cerr != nil {
			err = fmt.Errorf("%v: %s", cerr, bytes.TrimSpace(out))
		}
		imports[key] = err
	}
	return err
}

var (
	importsMu sync.Mutex
	imports   = map[string]error{}
)

func runPython(t testing.TB, script string, args ...string) string {
	t.Helper()
	cmd := exec.Command(numpy(t), append([]string{"-c", script}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// daemonPID reads the pid the daemon publishes on the mount root; 0 if it
// does not answer within a few seconds.
func daemonPID(mnt string) int {
	return probeHere([]string{mnt}, []probeKind{probePID}, 5*time.Second)[0].pid // 0 when none came
}
