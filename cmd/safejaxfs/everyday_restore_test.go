package main

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Restoring and copying tensors with the tools people use for backups:
// rsync (temp file + rename over the tensor), tar (unlink + create), cp -a,
// rsync -X and tar --xattrs (dtype and shape from the user.safetensors.*
// attributes), cp -r inside the mount. A tensor replaced at its own path
// by bytes of its size keeps its dtype and shape.

func runCmd(t testing.TB, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// typedModel has tensors of several dtypes and ranks, so a restore that
// loses them is visible.
func typedModel(t testing.TB) (string, []genTensor) {
	i16 := make([]byte, 2*12)
	for i := range 12 {
		binary.LittleEndian.PutUint16(i16[2*i:], uint16(1000+i))
	}
	f64 := make([]byte, 8*6)
	for i := range 6 {
		binary.LittleEndian.PutUint64(f64[8*i:], math.Float64bits(float64(i)/3))
	}
	tensors := []genTensor{
		f32("params.Dense_0.kernel", 0, 3, 16),
		f32("params.Dense_0.bias", 100, 16),
		raw("params.Dense_0.scale", safetensors.F64, f64, 2, 3),
		raw("params.Dense_1.ids", safetensors.I16, i16, 3, 2, 2),
	}
	return writeCheckpoint(t, "typed.safetensors", nil, tensors...), tensors
}

// scramble overwrites every tensor of dir in place (same size), so that
// a restore has something to undo.
func scramble(t testing.TB, files ...string) {
	t.Helper()
	for _, p := range files {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(randomBytes(int(st.Size()), 9), 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func rekey(g genTensor, key string) genTensor {
	g.key = key
	return g
}

func TestRestoreKeepsDTypeAndShape(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt, tensors := typedModel(t)
	mnt := mount(t, ckpt)
	m := func(s string) string { return filepath.Join(mnt, s) }
	bk := t.TempDir()
	// A backup with the attributes (cp -a copies user.* xattrs).
	runCmd(t, "cp", "-a", m("params"), bk)
	if got := getxattr(t, filepath.Join(bk, "params/Dense_0/scale"), "user.safetensors.shape"); got != "[2,3]" {
		t.Fatalf("backup carries shape %q", got)
	}
	runCmd(t, "tar", "--xattrs", "--xattrs-include=user.*", "-cf", filepath.Join(bk, "b.tar"), "-C", bk, "params")
	runCmd(t, "tar", "-cf", filepath.Join(bk, "plain.tar"), "-C", bk, "params")
	all := []string{m("params/Dense_0/kernel"), m("params/Dense_0/bias"), m("params/Dense_0/scale"), m("params/Dense_1/ids")}

	// rsync without -X: a temp file renamed over each tensor.
	scramble(t, all...)
	runCmd(t, "rsync", "-a", "-I", filepath.Join(bk, "params")+"/", m("params")+"/")
	checkTyped(t, mnt, "params", tensors, "rsync -a")

	// tar without attributes: each tensor unlinked, then created again.
	scramble(t, all...)
	runCmd(t, "tar", "-xf", filepath.Join(bk, "plain.tar"), "-C", mnt)
	checkTyped(t, mnt, "params", tensors, "tar x")

	// Into new places, where only the attributes can tell.
	if err := os.Mkdir(m("viatar"), 0o755); err != nil {
		t.Fatal(err)
	}
	runCmd(t, "tar", "--xattrs", "--xattrs-include=user.*", "-xf", filepath.Join(bk, "b.tar"), "-C", m("viatar"))
	checkTyped(t, mnt, "viatar/params", tensors, "tar --xattrs x")
	runCmd(t, "rsync", "-a", "-X", filepath.Join(bk, "params")+"/", m("viarsync")+"/")
	checkTyped(t, mnt, "viarsync", tensors, "rsync -X")
	runCmd(t, "cp", "-a", filepath.Join(bk, "params"), m("viacp"))
	checkTyped(t, mnt, "viacp", tensors, "cp -a")
	// A copy inside the mount, without attributes.
	runCmd(t, "cp", "-r", m("params"), m("copy"))
	checkTyped(t, mnt, "copy", tensors, "cp -r inside the mount")

	unmountOK(t, mnt)
	var want []genTensor
	for _, prefix := range []string{"params", "viatar.params", "viarsync", "viacp", "copy"} {
		for _, g := range tensors {
			want = append(want, rekey(g, prefix+strings.TrimPrefix(g.key, "params")))
		}
	}
	checkFile(t, ckpt, nil, want...)
}

// checkTyped checks the tensors under dir (path prefix for "params")
// have the dtypes, shapes and bytes of want.
func checkTyped(t testing.TB, mnt, dir string, want []genTensor, what string) {
	t.Helper()
	for _, g := range want {
		rel := strings.ReplaceAll(strings.TrimPrefix(g.key, "params."), ".", "/")
		p := filepath.Join(mnt, dir, rel)
		got, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("%s: %v", what, err)
			continue
		}
		if string(got) != string(g.data) {
			t.Errorf("%s: %s does not hold the restored bytes", what, rel)
		}
		if d := getxattr(t, p, "user.safetensors.dtype"); d != g.dtype.String() {
			t.Errorf("%s: %s is %s, want %s", what, rel, d, g.dtype)
		}
		if s := getxattr(t, p, "user.safetensors.shape"); s != shapeJSONOf(g.shape) {
			t.Errorf("%s: %s has shape %s, want %s", what, rel, s, shapeJSONOf(g.shape))
		}
	}
}

func shapeJSONOf(shape []uint64) string {
	parts := make([]string, len(shape))
	for i, d := range shape {
		parts[i] = strconv.FormatUint(d, 10)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// TestReinterpretWithSetfattr: the README's recipe. A dtype change keeps
// the byte size (the last dimension follows); dtype and shape may be set
// in either order; a refusal says why.
func TestReinterpretWithSetfattr(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	m := func(s string) string { return filepath.Join(mnt, s) }
	data := f32("x", 1, 16).data
	for _, name := range []string{"a", "b"} {
		if err := os.WriteFile(m(name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	runCmd(t, "setfattr", "-n", "user.safetensors.dtype", "-v", "F32", m("a"))
	if s := getxattr(t, m("a"), "user.safetensors.shape"); s != "[16]" {
		t.Errorf("64 bytes as F32: shape %s, want [16]", s)
	}
	runCmd(t, "setfattr", "-n", "user.safetensors.shape", "-v", "[4,4]", m("a"))
	// The other order.
	runCmd(t, "setfattr", "-n", "user.safetensors.shape", "-v", "[4,4]", m("b"))
	runCmd(t, "setfattr", "-n", "user.safetensors.dtype", "-v", "F32", m("b"))
	for _, name := range []string{"a", "b"} {
		if d, s := getxattr(t, m(name), "user.safetensors.dtype"), getxattr(t, m(name), "user.safetensors.shape"); d != "F32" || s != "[4,4]" {
			t.Errorf("%s: %s %s, want F32 [4,4]", name, d, s)
		}
	}
	// The last dimension follows a dtype change of a 2-D tensor.
	runCmd(t, "setfattr", "-n", "user.safetensors.dtype", "-v", "F16", m("params/Dense_0/kernel"))
	if s := getxattr(t, m("params/Dense_0/kernel"), "user.safetensors.shape"); s != "[3,32]" {
		t.Errorf("F32 [3,16] as F16: shape %s, want [3,32]", s)
	}
	// Refusals: the bytes cannot be that dtype, or that shape.
	if err := os.WriteFile(m("odd"), []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(m("odd"), "user.safetensors.dtype", []byte("F32"), 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("10 bytes as F32: %v, want EINVAL", err)
	}
	if msg := getxattr(t, mnt, "user.safejaxfs.error"); !strings.Contains(msg, `"odd"`) || !strings.Contains(msg, "10 bytes") || !strings.Contains(msg, "F32") {
		t.Errorf("user.safejaxfs.error after a refused dtype: %q", msg)
	}
	if err := unix.Setxattr(m("params/Dense_0/bias"), "user.safetensors.shape", []byte("[7]"), 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("64 bytes as shape [7]: %v, want EINVAL", err)
	}
	if msg := getxattr(t, mnt, "user.safejaxfs.error"); !strings.Contains(msg, "params.Dense_0.bias") || !strings.Contains(msg, "[7]") {
		t.Errorf("user.safejaxfs.error after a refused shape: %q", msg)
	}
	unmountOK(t, mnt)
	want := flaxTensors()
	want[0] = raw("params.Dense_0.kernel", safetensors.F16, want[0].data, 3, 32)
	want = append(want,
		raw("a", safetensors.F32, data, 4, 4),
		raw("b", safetensors.F32, data, 4, 4),
		raw("odd", safetensors.U8, []byte("0123456789"), 10))
	checkFile(t, ckpt, flaxMeta, want...)
}
