package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// canonical is what the reference writer produces for these tensors: the
// truth a checkpoint must equal byte for byte after a write-back.
func canonical(t testing.TB, meta map[string]string, tensors ...genTensor) []byte {
	t.Helper()
	src := make([]safetensors.Source, len(tensors))
	size := 1 << 16 // the header, and room to spare
	for i, g := range tensors {
		src[i] = safetensors.Source{Key: g.key, DType: g.dtype, Shape: g.shape, Data: safetensors.Bytes(g.data)}
		size += len(g.data) + 256
	}
	// Sized once: grown by doubling, a large checkpoint was copied several
	// times, which under -race was 3% of the package's CPU.
	var b bytes.Buffer
	b.Grow(size)
	if _, err := safetensors.Write(&b, src, meta); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// checkCheckpoint asserts the file on disk is valid and exactly the
// canonical bytes for want.
func checkFile(t testing.TB, ckpt string, meta map[string]string, want ...genTensor) {
	t.Helper()
	f, err := safetensors.Open(ckpt)
	if err != nil {
		t.Fatalf("checkpoint no longer valid: %v", err)
	}
	f.Close()
	got, err := os.ReadFile(ckpt)
	if err != nil {
		t.Fatal(err)
	}
	if exp := canonical(t, meta, want...); !bytes.Equal(got, exp) {
		entries, gotMeta, _ := rawHeader(t, ckpt)
		t.Fatalf("checkpoint differs from the canonical writer's bytes (%d vs %d bytes)\nheader: %v\nmeta: %v", len(got), len(exp), entries, gotMeta)
	}
}

func unmountOK(t testing.TB, mnt string) {
	t.Helper()
	if r := cli(t, "unmount", mnt); r.code != 0 {
		t.Fatalf("unmount: exit %d: %s", r.code, r.stderr)
	}
}

func TestWriteInPlaceMemmap(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	runPython(t, `
import sys, numpy as np
k = np.memmap(sys.argv[1] + '/params/Dense_0/kernel', dtype='<f4', mode='r+', shape=(3, 16))
k[1, :] = 0
k.flush()
del k
v = np.load(sys.argv[1] + '/params/Dense_0/kernel.npy')
assert (v[1] == 0).all() and v[0, 1] == 1 and v[2, 0] == 32, v
`, mnt)
	unmountOK(t, mnt)
	want := flaxTensors()
	k := f32("params.Dense_0.kernel", 0, 3, 16)
	copy(k.data[16*4:32*4], make([]byte, 64))
	want[0] = k
	checkFile(t, ckpt, flaxMeta, want...)
}

func TestWriteFsyncIsDurable(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	f, err := os.OpenFile(filepath.Join(mnt, "params/Dense_1/bias"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 16)
	for i := range 4 {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(-1))
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// The fsync returned: the edit survives the daemon's death (SIGKILL,
	// the file still open), and the next read-write open writes it back.
	pid := daemonPID(mnt)
	if pid == 0 {
		t.Fatal("no daemon pid")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	f.Close()
	lazyUnmount(mnt)
	if r := cli(t, "verify", ckpt); r.code != exitInvalid || !strings.Contains(r.stderr, "log") {
		t.Errorf("verify before recovery: exit %d %q, want a pending log named", r.code, r.stderr)
	}
	if r := cli(t, "recover", ckpt); r.code != 0 || !strings.Contains(r.stdout, "wrote back") {
		t.Fatalf("recover: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	want := flaxTensors()
	want[3] = raw("params.Dense_1.bias", safetensors.F32, b, 4)
	checkFile(t, ckpt, flaxMeta, want...)
	if r := cli(t, "recover", ckpt); r.code != 0 || !strings.Contains(r.stdout, "nothing to recover") {
		t.Errorf("recover again: exit %d %q", r.code, r.stdout)
	}
}

// safejaxfs sync writes the checkpoint file while it stays mounted.
func TestSyncCommand(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	before, _ := os.ReadFile(ckpt)
	b := []byte{1, 2, 3, 4}
	if err := os.WriteFile(filepath.Join(mnt, "step_scale"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(ckpt); !bytes.Equal(after, before) {
		t.Error("the checkpoint file changed before a write-back (edits go to the log)")
	}
	if r := cli(t, "sync", mnt); r.code != 0 {
		t.Fatalf("sync: exit %d %s", r.code, r.stderr)
	}
	want := flaxTensors()
	for i, g := range want {
		if g.key == "step_scale" {
			want[i] = raw("step_scale", safetensors.F32, b)
		}
	}
	checkFile(t, ckpt, flaxMeta, want...)
	if r := cli(t, "sync", t.TempDir()); r.code != exitMount {
		t.Errorf("sync of a directory that is no mount: exit %d", r.code)
	}
}

func TestWriteLayoutChanges(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	p := func(s string) string { return filepath.Join(mnt, s) }
	// np.save: a new tensor, and one replaced with a new dtype and shape.
	if err := os.Mkdir(p("params/Dense_3"), 0o755); err != nil {
		t.Fatal(err)
	}
	runPython(t, `
import sys, numpy as np
m = sys.argv[1]
np.save(m + '/params/Dense_3/kernel.npy', np.zeros((16, 4), np.float32))
np.save(m + '/params/Dense_1/bias.npy', np.arange(5, dtype=np.int32))
b = np.fromfile(m + '/params/Dense_1/bias', '<i4')
assert list(b) == [0, 1, 2, 3, 4], b
`, mnt)
	// cp of the right size replaces; a wrong size is refused, bytes kept.
	newBias := f32("x", 900, 16).data
	src := filepath.Join(t.TempDir(), "new_bias.bin")
	os.WriteFile(src, newBias, 0o644)
	if out, err := exec.Command("cp", src, p("params/Dense_0/bias")).CombinedOutput(); err != nil {
		t.Fatalf("cp same size: %v %s", err, out)
	}
	os.WriteFile(src, newBias[:12], 0o644)
	if out, err := exec.Command("cp", src, p("params/Dense_0/bias")).CombinedOutput(); err == nil {
		t.Errorf("cp of 12 bytes over a 64-byte tensor succeeded: %s", out)
	}
	if got, _ := os.ReadFile(p("params/Dense_0/bias")); !bytes.Equal(got, newBias) {
		t.Errorf("after a refused cp the tensor holds %d bytes, not its previous ones", len(got))
	}
	if err := os.Remove(p("batch_stats/BatchNorm_0/var")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p("batch_stats"), p("stats")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("__metadata__"), []byte(`{"step": "1300"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("__metadata__"), []byte(`{"step": 1300}`), 0o644); err == nil {
		t.Error("metadata with a non-string value accepted")
	}
	if err := unix.Setxattr(p("params/Dense_0/kernel"), "user.safetensors.shape", []byte("[48]"), 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(p("params/Dense_0/kernel"), "user.safetensors.shape", []byte("[47]"), 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("reshape to the wrong size: %v, want EINVAL", err)
	}
	if got := getxattr(t, p("stats/BatchNorm_0/mean"), "user.safetensors.key"); got != "stats.BatchNorm_0.mean" {
		t.Errorf("renamed key %q", got)
	}
	// A plain new file is a 1-D U8 tensor.
	if err := os.WriteFile(p("notes"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	unmountOK(t, mnt)

	i32 := make([]byte, 20)
	for i := range 5 {
		binary.LittleEndian.PutUint32(i32[4*i:], uint32(i))
	}
	checkFile(t, ckpt, map[string]string{"step": "1300"},
		f32("params.Dense_0.kernel", 0, 48),
		raw("params.Dense_0.bias", safetensors.F32, newBias, 16),
		f32("params.Dense_1.kernel", 200, 16, 4),
		raw("params.Dense_1.bias", safetensors.I32, i32, 5),
		raw("params.Dense_3.kernel", safetensors.F32, make([]byte, 16*4*4), 16, 4),
		f32("stats.BatchNorm_0.mean", 400, 16),
		f32("step_scale", 7),
		raw("notes", safetensors.U8, []byte("hello"), 5),
	)
	// And the remount shows the same tree.
	mnt = mount(t, ckpt, "--read-only")
	for _, f := range []string{"params/Dense_3/kernel", "stats/BatchNorm_0/mean", "notes"} {
		if _, err := os.Stat(p(f)); err != nil {
			t.Errorf("after remount: %v", err)
		}
	}
	_ = mnt
}

func TestWriteRefusals(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	before, _ := os.ReadFile(ckpt)
	mnt := mount(t, ckpt)
	p := func(s string) string { return filepath.Join(mnt, s) }
	f, err := os.OpenFile(p("params/Dense_1/bias"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 8), 12); !errors.Is(err, syscall.EFBIG) {
		t.Errorf("write past the tensor's end: %v, want EFBIG", err)
	}
	f.Close()
	if err := os.WriteFile(p("x.npy"), []byte("not an npy"), 0o644); err == nil {
		t.Error("garbage .npy accepted")
	}
	// (A Fortran-ordered .npy is accepted and stored in C order: see
	// TestNPYFortranOrder.)
	if err := os.Mkdir(p("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, p("params/Dense_0"), unix.AT_FDCWD, p("params/Dense_1"), unix.RENAME_NOREPLACE); !errors.Is(err, unix.EEXIST) {
		t.Errorf("RENAME_NOREPLACE onto an existing dir: %v", err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, p("params/Dense_0/bias"), unix.AT_FDCWD, p("params/Dense_1/bias"), unix.RENAME_EXCHANGE); err == nil {
		t.Error("RENAME_EXCHANGE claimed success")
	}
	if err := os.Remove(p("params")); err == nil {
		t.Error("rmdir of a non-empty dir")
	}
	if err := os.Remove(p("d")); err != nil {
		t.Errorf("rmdir of an empty dir: %v", err)
	}
	unmountOK(t, mnt)
	if after, _ := os.ReadFile(ckpt); !bytes.Equal(before, after) {
		t.Error("refused edits changed the checkpoint")
	}
}

func TestSecondWriterRefused(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mount(t, ckpt)
	mnt2 := filepath.Join(t.TempDir(), "mnt2")
	os.Mkdir(mnt2, 0o755)
	r := cli(t, "mount", ckpt, mnt2)
	t.Cleanup(func() { forceUnmount(t, mnt2) })
	if r.code != exitMount || !strings.Contains(r.stderr, "write lock") || strings.Contains(r.stderr, "panic") {
		t.Errorf("second read-write mount: exit %d %q", r.code, r.stderr)
	}
	// Read-only mounts don't write, so they may share it.
	mount(t, ckpt, "--read-only")
}

func TestChangedBehindOurBack(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	if err := os.WriteFile(filepath.Join(mnt, "notes"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Someone replaces the checkpoint while it is mounted.
	theirs := canonical(t, nil, f32("theirs", 1, 2))
	tmp := ckpt + ".new"
	os.WriteFile(tmp, theirs, 0o644)
	if err := os.Rename(tmp, ckpt); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "notes2"), []byte("more"), 0o644); err == nil {
		t.Error("persist over a replaced checkpoint reported success")
	}
	// From then on the mount takes no edit (each would otherwise write a
	// whole new recovery file): refused, as a read-only file system's;
	// reads go on.
	for i, edit := range []func() error{
		func() error { return os.WriteFile(filepath.Join(mnt, "notes3"), []byte("x"), 0o644) },
		func() error { return os.WriteFile(filepath.Join(mnt, "params/Dense_0/bias"), make([]byte, 64), 0o644) },
		func() error { return os.Rename(filepath.Join(mnt, "notes"), filepath.Join(mnt, "renamed")) },
		func() error { return os.Remove(filepath.Join(mnt, "params/Dense_1/bias")) },
		func() error {
			return unix.Setxattr(filepath.Join(mnt, "params/Dense_0/kernel"), "user.safetensors.shape", []byte("[16,3]"), 0)
		},
	} {
		if err := edit(); !errors.Is(err, unix.EROFS) {
			t.Errorf("edit %d after the checkpoint was replaced: %v, want EROFS", i, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "notes2")); err != nil || string(b) != "more" {
		t.Errorf("reading the mount after: %q, %v", b, err)
	}
	st := cli(t, "status", mnt).stdout
	if !strings.Contains(st, "no more edits") || !strings.Contains(st, ".safejaxfs-recovered-") {
		t.Errorf("status does not say why edits are refused:\n%s", st)
	}
	// unmount names the recovery file and unmounts (no --force needed:
	// the edits are saved, and the mount would take no more).
	r := cli(t, "unmount", mnt)
	if r.code != exitWriteBack || !strings.Contains(r.stderr, "unmounted anyway: your edits are in") || !strings.Contains(r.stderr, "recovered") || mounted(t, mnt) {
		t.Errorf("unmount: exit %d %q, still mounted %v; want %d naming the recovery file, unmounted", r.code, r.stderr, mounted(t, mnt), exitWriteBack)
	}
	// The files it saved as U8 are in the recovery file, not the
	// checkpoint, and the note says so.
	if !strings.Contains(r.stderr, "They are with your other edits") || strings.Contains(r.stderr, "Mount again") {
		t.Errorf("unmount's note of the tensors saved as U8 sends the user to the checkpoint:\n%s", r.stderr)
	}
	if got, _ := os.ReadFile(ckpt); !bytes.Equal(got, theirs) {
		t.Error("their checkpoint was overwritten")
	}
	// The mount's log (of edits to the file as it was) is set aside, not
	// left to stop the next mount: theirs mounts as it is.
	if r := cli(t, "verify", ckpt); r.code != 0 {
		t.Errorf("verify after: exit %d: %s", r.code, r.stderr)
	}
	if got, err := os.ReadFile(filepath.Join(mount(t, ckpt), "theirs")); err != nil || !bytes.Equal(got, theirs[len(theirs)-8:]) {
		t.Errorf("mounting their checkpoint after: %v", err)
	}
	matches, _ := filepath.Glob(strings.TrimSuffix(ckpt, ".safetensors") + ".safejaxfs-recovered-*.safetensors")
	if len(matches) != 1 {
		t.Fatalf("recovery files %q, want one", matches)
	}
	rf, err := safetensors.Open(matches[len(matches)-1])
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	if _, ok := rf.Index("notes2"); !ok {
		t.Error("recovery file lacks the edits")
	}
}

// TestViewCoherentAfterRawWrite: a write through the raw file shows in the
// .npy view's cached pages at once (the daemon invalidates the written range
// of the view).
func TestViewCoherentAfterRawWrite(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	view := filepath.Join(mnt, "params/Dense_0/kernel.npy")
	before, err := os.ReadFile(view) // now in the kernel's page cache
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(mnt, "params/Dense_0/kernel"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	patch := []byte{0xde, 0xad, 0xbe, 0xef}
	if _, err := f.WriteAt(patch, 100); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(view)
	if err != nil {
		t.Fatal(err)
	}
	hdr := len(before) - 3*16*4
	want := append([]byte(nil), before...)
	copy(want[hdr+100:], patch)
	if !bytes.Equal(after, want) {
		t.Errorf("view after a raw write differs from the expected bytes at header %d + 100", hdr)
	}
}
