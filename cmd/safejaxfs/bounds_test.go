package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

// vmRSS is a process's resident memory now.
func vmRSS(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// TestSparseUploadBoundedMemory: a .npy upload truncated to 1 GiB with a
// few bytes written (which used to take 1 GiB of the daemon's RSS) waits
// in a sparse temp file: the daemon's peak memory hardly moves. Its close
// is refused (it is no .npy) and nothing changes.
func TestSparseUploadBoundedMemory(t *testing.T) {
	ckpt := flaxModel(t)
	before, _ := os.ReadFile(ckpt)
	mnt := mount(t, ckpt)
	pid := daemonOf(t, mnt)
	hwm0, rss0 := vmHWM(t, pid), vmRSS(t, pid)
	f, err := os.OpenFile(filepath.Join(mnt, "sparse.npy"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("not a numpy header"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("end"), 1<<30-3); err != nil {
		t.Fatal(err)
	}
	rss1 := vmRSS(t, pid)
	if err := f.Close(); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("close of a 1 GiB file that is no .npy: %v, want EINVAL", err)
	}
	hwm1 := vmHWM(t, pid)
	t.Logf("daemon RSS %d MiB before, %d MiB holding the 1 GiB sparse upload; peak %d -> %d MiB", rss0>>20, rss1>>20, hwm0>>20, hwm1>>20)
	if grew := hwm1 - hwm0; grew > 64<<20 {
		t.Errorf("the daemon's peak memory grew by %d MiB for a sparse 1 GiB upload", grew>>20)
	}
	if _, err := os.Stat(filepath.Join(mnt, "sparse")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused upload left a tensor: %v", err)
	}
	unmountOK(t, mnt)
	if after, _ := os.ReadFile(ckpt); !bytes.Equal(after, before) {
		t.Error("the checkpoint changed")
	}
}

// TestLargeUploadSpilledRoundTrip: an np.save larger than what an upload
// keeps in memory goes through the temp file and arrives whole: numpy
// reads back what it saved. The daemon spills here past 4 MiB, not its
// default 64 MiB (spillAt; the same code, a sixteenth of the bytes through
// a race-built daemon), and the test sees the temp file among its open
// files before the close.
func TestLargeUploadSpilledRoundTrip(t *testing.T) {
	t.Parallel()
	ckpt := flaxModel(t)
	mnt := mountEnv(t, []string{spillAtEnv + "=" + strconv.Itoa(4<<20)}, ckpt)
	got := runPython(t, `
import numpy as np, os, sys
def unnamed(pid):
    fd = '/proc/%s/fd' % pid
    n = 0
    for d in os.listdir(fd):
        try:
            n += os.readlink(os.path.join(fd, d)).endswith(' (deleted)')
        except OSError:
            pass
    return n
before = unnamed(sys.argv[2])
a = (np.arange(5 << 18, dtype=np.float32) * 3 - 7)  # 5 MiB
with open(sys.argv[1] + '/big.npy', 'wb') as f:
    np.save(f, a)
    f.flush()
    print('temp files', unnamed(sys.argv[2]) - before)
b = np.load(sys.argv[1] + '/big.npy')
assert b.dtype == a.dtype and np.array_equal(a, b), 'differs'
`, mnt, getxattr(t, mnt, "user.safejaxfs.pid"))
	if got != "temp files 1" {
		t.Errorf("while np.save wrote 5 MiB the daemon held %q, want the spilled upload's", got)
	}
	unmountOK(t, mnt)
	runPython(t, `
import numpy as np, sys, json, struct
f = open(sys.argv[1], 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n))
e = h['big']; assert e['dtype'] == 'F32' and e['shape'] == [5 << 18], e
f.seek(8 + n + e['data_offsets'][0]); b = np.frombuffer(f.read(e['data_offsets'][1] - e['data_offsets'][0]), dtype='<f4')
assert np.array_equal(b, np.arange(5 << 18, dtype=np.float32) * 3 - 7), 'file differs'
`, ckpt)
}
