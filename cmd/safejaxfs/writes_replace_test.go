package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Issue 17 items 3, 4, 5: np.memmap(mode='w+') on a tensor, np.save of a
// Fortran-ordered array, and __metadata__ replaced the ways tools replace
// files, each as a user does it.

// metadataOf reads the mount's __metadata__ as JSON.
func metadataOf(t testing.TB, mnt string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(mnt, "__metadata__"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("__metadata__ %q: %v", b, err)
	}
	return m
}

// tensorFiles is every tensor file in the mount: what a temp file that
// became a tensor would show up in.
func tensorFiles(t testing.TB, mnt string) []string {
	t.Helper()
	var out []string
	for _, f := range walkFiles(t, mnt) {
		if f != "__metadata__" {
			out = append(out, f)
		}
	}
	slices.Sort(out)
	return out
}

func TestMetadataReplacedByRename(t *testing.T) {
	t.Parallel()
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	m := func(p string) string { return filepath.Join(mnt, p) }
	files := tensorFiles(t, mnt)
	want := map[string]string{"framework": "flax", "step": "1200"}
	check := func(what string) {
		t.Helper()
		if got := metadataOf(t, mnt); !mapsEqual(got, want) {
			t.Errorf("%s: __metadata__ = %v, want %v", what, got, want)
		}
		// No temp file of a replace-by-rename became a tensor, in any
		// directory.
		if got := tensorFiles(t, mnt); !slices.Equal(got, files) {
			t.Errorf("%s: tensor files %v, want %v", what, got, files)
		}
	}

	// sed -i writes a temp file beside it and renames it over.
	runCmd(t, "sed", "-i", `s/"1200"/"1300"/`, m("__metadata__"))
	want["step"] = "1300"
	check("sed -i")

	// mv of a file written in a subdirectory of the mount.
	if err := os.WriteFile(m("params/meta.json"), []byte(`{"step": "1400"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	runCmd(t, "mv", m("params/meta.json"), m("__metadata__"))
	want = map[string]string{"step": "1400"}
	check("mv within the mount")

	// os.replace, as Python code writes a file atomically.
	runPython(t, `
import os, sys
tmp = os.path.join(sys.argv[1], 'batch_stats', '.meta.tmp')
with open(tmp, 'w') as f:
    f.write('{"step": "1500", "note": "<&>"}')
os.replace(tmp, os.path.join(sys.argv[1], '__metadata__'))
`, mnt)
	want = map[string]string{"step": "1500", "note": "<&>"}
	check("os.replace")

	// A cross-device mv: rename fails with EXDEV, mv removes the target
	// and copies the file in.
	outside := filepath.Join(t.TempDir(), "meta.json")
	if err := os.WriteFile(outside, []byte(`{"step": "1600"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mv", outside, m("__metadata__")).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("cross-device mv: %v: %s", err, out)
	}
	want = map[string]string{"step": "1600"}
	check("cross-device mv")
	if _, err := os.Stat(outside); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mv left its source: %v", err)
	}

	// A rename of something that is no metadata is refused with the
	// reason, and nothing changes (sed removes its temp file).
	if out, err := exec.Command("sed", "-i", `s/{/[/`, m("__metadata__")).CombinedOutput(); err == nil {
		t.Errorf("sed -i writing no JSON object succeeded: %s", out)
	}
	check("refused sed -i")
	if e := getxattr(t, mnt, "user.safejaxfs.error"); !strings.Contains(e, "__metadata__") {
		t.Errorf("the refusal's reason: %q", e)
	}
	if err := os.WriteFile(m("params/big"), make([]byte, 64), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(m("params/big"), m("__metadata__")); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("renaming zeros over __metadata__: %v, want EINVAL", err)
	}
	os.Remove(m("params/big"))
	check("refused rename")

	// The name reads as the metadata at once, every time (the kernel's
	// entry for it was the temp file's).
	for _, step := range []string{"1700", "1800", "1900"} {
		runCmd(t, "sed", "-i", `s/"step":"[0-9]*"/"step":"`+step+`"/`, m("__metadata__"))
		want = map[string]string{"step": step}
		check("sed -i, again")
	}
	unmountOK(t, mnt)
	checkFile(t, ckpt, want, flaxTensors()...)
}

// rm __metadata__ empties it (the header keeps an empty one) and the name
// is gone until a new one is written; a new mount does not show it again.
func TestMetadataRemovedAndCreated(t *testing.T) {
	t.Parallel()
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	m := func(p string) string { return filepath.Join(mnt, p) }
	if err := os.Remove(m("__metadata__")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m("__metadata__")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after rm: %v", err)
	}
	ents, _ := os.ReadDir(mnt)
	for _, e := range ents {
		if e.Name() == "__metadata__" {
			t.Error("listed after rm")
		}
	}
	if err := os.Remove(m("__metadata__")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("second rm: %v", err)
	}
	unmountOK(t, mnt)
	checkFile(t, ckpt, map[string]string{}, flaxTensors()...)

	mnt = mount(t, ckpt)
	if _, err := os.Stat(m("__metadata__")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("removed __metadata__ shown again by a new mount: %v", err)
	}
	// Created again (O_EXCL, as cp and tar after removing the target).
	f, err := os.OpenFile(m("__metadata__"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"step": "1"}`); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := metadataOf(t, mnt); !mapsEqual(got, map[string]string{"step": "1"}) {
		t.Errorf("created again: %v", got)
	}
	unmountOK(t, mnt)
	checkFile(t, ckpt, map[string]string{"step": "1"}, flaxTensors()...)
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// np.memmap(mode='w+') on a tensor: numpy opens it with O_TRUNC, finds it
// already as long as the array (stat shows the tensor), maps it and closes
// the file before writing through the mapping. The tensor becomes zeros
// plus what was written, as on any file system.
func TestMemmapWPlus(t *testing.T) {
	t.Parallel()
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	dir := t.TempDir() // numpy's truth for the expected bytes
	runPython(t, `
import sys, numpy as np
m, out = sys.argv[1] + '/params/', sys.argv[2]
k = np.memmap(m + 'Dense_0/kernel', dtype='<f4', mode='w+', shape=(3, 16))
k[1, 2] = 5
k.flush()
del k
want = np.zeros((3, 16), '<f4'); want[1, 2] = 5
got = np.fromfile(m + 'Dense_0/kernel', '<f4').reshape(3, 16)
assert (got == want).all(), got
want.tofile(out + '/kernel')

b = np.memmap(m + 'Dense_1/kernel', dtype='<f4', mode='w+', shape=(16, 4))
b[:] = np.arange(64, dtype='<f4').reshape(16, 4) * -1
del b
assert (np.load(m + 'Dense_1/kernel.npy') == np.arange(64, dtype='<f4').reshape(16, 4) * -1).all()
(np.arange(64, dtype='<f4') * -1).tofile(out + '/kernel1')

# Opened for rewriting and closed with nothing written: nothing changes,
# and the close does not fail.
open(m + 'Dense_0/bias', 'wb').close()
assert np.fromfile(m + 'Dense_0/bias', '<f4')[0] == 100
`, mnt, dir)
	unmountOK(t, mnt)
	want := flaxTensors()
	for i, name := range map[int]string{0: "kernel", 2: "kernel1"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		want[i].data = b
	}
	checkFile(t, ckpt, flaxMeta, want...)
}

// np.save of a Fortran-ordered array (k.T, np.asfortranarray) stores the
// C-order tensor of the same values: written into a view, as a new
// tensor, through rsync's temp file, and into a float32 view.
func TestNPYFortranOrder(t *testing.T) {
	t.Parallel()
	_, tensors := typedModel(t)
	half := make([]byte, 2*6) // F16 zeros [2,3]: its float32 view is written below
	ckpt := writeCheckpoint(t, "typed.safetensors", nil, append(slices.Clone(tensors), raw("params.half", safetensors.F16, half, 2, 3))...)
	mnt := mount(t, ckpt)
	dir := t.TempDir() // numpy's truth: the C-order bytes of each array
	src := t.TempDir()
	runPython(t, `
import sys, numpy as np
m, out, src = sys.argv[1] + '/params/', sys.argv[2], sys.argv[3]
def save(path, a, name):
    assert a.flags.f_contiguous and not a.flags.c_contiguous
    np.save(path, a)
    np.ascontiguousarray(a).tofile(out + '/' + name)
    got = np.load(path)
    assert got.shape == a.shape and got.dtype == a.dtype and (got == a).all(), (path, got, a)

k = np.load(m + 'Dense_0/kernel.npy')
save(m + 'Dense_0/kernel_t.npy', k.T, 'kernel_t')                    # a new tensor
save(m + 'Dense_0/kernel.npy', np.asfortranarray(k * 2), 'kernel')  # replaced, same dtype and shape
ids = np.arange(2 * 3 * 4 * 5, dtype='<i2').reshape(2, 3, 4, 5)
save(m + 'Dense_1/ids.npy', np.asfortranarray(ids), 'ids')          # replaced, another shape
x = np.asfortranarray(np.linspace(0, 1, 24).reshape(1, 4, 6))       # a leading 1
save(m + 'Dense_1/x.npy', x, 'x')
# Through rsync: a temp file renamed to name.npy.
y = np.asfortranarray(np.arange(12, dtype='<u4').reshape(3, 4))
np.save(src + '/y.npy', y)
np.ascontiguousarray(y).tofile(out + '/y')
# Into the float32 view of an F16 tensor: the values, converted back.
h = np.asfortranarray(np.arange(6, dtype='<f4').reshape(2, 3) - 2.5)
np.save(m + 'half.f32.npy', h)
assert (np.load(m + 'half.f32.npy') == h).all()
np.ascontiguousarray(h.astype('<f2')).tofile(out + '/half')
`, mnt, dir, src)
	runCmd(t, "rsync", "-a", src+"/", filepath.Join(mnt, "params/Dense_1")+"/")
	unmountOK(t, mnt)
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	want := []genTensor{
		raw("params.Dense_0.kernel", safetensors.F32, read("kernel"), 3, 16),
		raw("params.Dense_0.kernel_t", safetensors.F32, read("kernel_t"), 16, 3),
		tensors[1], tensors[2],
		raw("params.Dense_1.ids", safetensors.I16, read("ids"), 2, 3, 4, 5),
		raw("params.Dense_1.x", safetensors.F64, read("x"), 1, 4, 6),
		raw("params.Dense_1.y", safetensors.U32, read("y"), 3, 4),
		raw("params.half", safetensors.F16, read("half"), 2, 3),
	}
	checkFile(t, ckpt, nil, want...)
}
