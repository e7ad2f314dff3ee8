package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"golang.org/x/sys/unix"
)

var validFixtures = []string{
	"fixtures.safetensors",
	"safetensors_fixtures.safetensors",
	"vandermonde.safetensors",
	"model_f64.safetensors",
}

// checkMountMatches walks the mount and checks it against an independent
// parse of the checkpoint: every tensor reachable exactly once, with its
// exact bytes and xattrs.
func checkMountMatches(t *testing.T, ckpt, mnt string) {
	t.Helper()
	entries, meta, data := rawHeader(t, ckpt)
	seen := map[string]string{}
	for _, rel := range walkFiles(t, mnt) {
		p := filepath.Join(mnt, rel)
		if rel == "__metadata__" {
			continue
		}
		key := getxattr(t, p, "user.safetensors.key")
		if prev, dup := seen[key]; dup {
			t.Errorf("key %q reachable twice: %s and %s", key, prev, rel)
		}
		seen[key] = rel
		e, ok := entries[key]
		if !ok {
			t.Errorf("%s: key %q is not in the checkpoint", rel, key)
			continue
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if want := data[e.Offsets[0]:e.Offsets[1]]; !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes differ from the checkpoint's %d", rel, len(got), len(want))
		}
		if d := getxattr(t, p, "user.safetensors.dtype"); d != e.DType {
			t.Errorf("%s: dtype xattr %q, want %q", rel, d, e.DType)
		}
		shape, _ := json.Marshal(e.Shape)
		if s := getxattr(t, p, "user.safetensors.shape"); s != string(shape) {
			t.Errorf("%s: shape xattr %q, want %q", rel, s, shape)
		}
	}
	if len(seen) != len(entries) {
		t.Errorf("%d tensors reachable, checkpoint has %d", len(seen), len(entries))
	}
	var gotMeta map[string]string
	b, err := os.ReadFile(filepath.Join(mnt, "__metadata__"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &gotMeta); err != nil {
		t.Fatalf("__metadata__ is not JSON: %v: %q", err, b)
	}
	if meta == nil {
		meta = map[string]string{}
	}
	if !reflect.DeepEqual(gotMeta, meta) {
		t.Errorf("__metadata__ = %v, want %v", gotMeta, meta)
	}
}

func TestMountFixtures(t *testing.T) {
	if !isolated(t) {
		return
	}
	for _, name := range validFixtures {
		t.Run(name, func(t *testing.T) {
			ckpt := copyFixture(t, name)
			mnt := mount(t, ckpt, "--read-only")
			checkMountMatches(t, ckpt, mnt)
		})
	}
}

func TestMountFlaxTree(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt, "--read-only")
	checkMountMatches(t, ckpt, mnt)

	got := walkFiles(t, mnt)
	want := []string{
		"__metadata__",
		"batch_stats/BatchNorm_0/mean",
		"batch_stats/BatchNorm_0/var",
		"params/Dense_0/bias",
		"params/Dense_0/kernel",
		"params/Dense_1/bias",
		"params/Dense_1/kernel",
		"step_scale",
	}
	if !slices.Equal(got, want) {
		t.Errorf("tree:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	b, err := os.ReadFile(filepath.Join(mnt, "__metadata__"))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "{\"framework\":\"flax\",\"step\":\"1200\"}\n" {
		t.Errorf("__metadata__ = %q", b)
	}

	st, err := os.Stat(filepath.Join(mnt, "params/Dense_0/kernel"))
	if err != nil {
		t.Fatal(err)
	}
	ckst, err := os.Stat(ckpt)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 3*16*4 || st.Mode() != 0o444 || !st.ModTime().Equal(ckst.ModTime()) {
		t.Errorf("kernel: size %d mode %v mtime %v; want 192, -r--r--r--, %v", st.Size(), st.Mode(), st.ModTime(), ckst.ModTime())
	}
	buf := make([]byte, 1024)
	n, err := unix.Listxattr(filepath.Join(mnt, "params/Dense_0/kernel"), buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:n]); got != "user.safetensors.key\x00user.safetensors.dtype\x00user.safetensors.shape\x00" {
		t.Errorf("listxattr = %q", got)
	}
	// Inode numbers are stable: a second stat of the same file agrees.
	st2, _ := os.Stat(filepath.Join(mnt, "params/Dense_0/kernel"))
	if st.Sys().(*syscall.Stat_t).Ino != st2.Sys().(*syscall.Stat_t).Ino {
		t.Error("inode number changed between stats")
	}
}

// TestMountConventions mounts keys as real frameworks write them.
func TestMountConventions(t *testing.T) {
	if !isolated(t) {
		return
	}
	four := []byte{1, 2, 3, 4}
	ckpt := writeCheckpoint(t, "conv.safetensors", nil,
		raw("res_net50/~/initial_conv.w", safetensors.U8, four, 4),
		raw("model.layers.0.self_attn.q_proj.weight", safetensors.U8, four, 4),
		raw("x.weight", safetensors.U8, four, 4),
		raw("x.weight.absmax", safetensors.U8, four, 4),
		raw("x.weight.quant_map", safetensors.U8, four, 4),
		raw("dense/kernel:0", safetensors.U8, four, 4),
		raw("模型.权重", safetensors.U8, four, 4),
		raw("__metadata__.x", safetensors.U8, four, 4),
	)
	mnt := mount(t, ckpt, "--read-only")
	checkMountMatches(t, ckpt, mnt)
	for _, p := range []string{
		"res_net50/~/initial_conv/w",
		"model/layers/0/self_attn/q_proj/weight",
		"x/weight",
		"x/weight.absmax",
		"x/weight.quant_map",
		"dense/kernel:0",
		"模型/权重",
	} {
		if _, err := os.Stat(filepath.Join(mnt, p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	// The metadata file wins the reserved root name; the tensor stays
	// reachable under another name.
	if st, err := os.Stat(filepath.Join(mnt, "__metadata__")); err != nil || !st.Mode().IsRegular() {
		t.Errorf("__metadata__: %v", err)
	}
}

func TestNPYViews(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt, "--read-only")
	// Not listed without --npy, but reachable by name.
	if _, err := os.Stat(filepath.Join(mnt, "params/Dense_0/kernel.npy")); err != nil {
		t.Fatal(err)
	}
	for _, f := range walkFiles(t, mnt) {
		if strings.HasSuffix(f, ".npy") {
			t.Errorf("%s listed without --npy", f)
		}
	}
	out := runPython(t, `
import sys, numpy as np
mnt = sys.argv[1]
k = np.load(mnt + '/params/Dense_0/kernel.npy')
assert k.shape == (3, 16) and k.dtype == np.float32, (k.shape, k.dtype)
assert (k.ravel() == np.arange(48, dtype=np.float32)).all()
raw = np.fromfile(mnt + '/params/Dense_0/kernel', '<f4').reshape(3, 16)
assert (raw == k).all()
m = np.memmap(mnt + '/params/Dense_1/bias', dtype='<f4', mode='r')
assert list(m) == [300, 301, 302, 303], list(m)
s = np.load(mnt + '/step_scale.npy')
assert s.shape == () and s == 7
print("ok")
`, mnt)
	if out != "ok" {
		t.Fatal(out)
	}
}

func TestNPYListed(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt, "--read-only", "--npy")
	files := walkFiles(t, mnt)
	if !slices.Contains(files, "params/Dense_0/kernel.npy") {
		t.Errorf("--npy: kernel.npy not listed in %v", files)
	}
}

// TestNPYHeadersMatchNumpy compares every view's bytes with what np.save
// writes for the same array, for every fixture.
func TestNPYHeadersMatchNumpy(t *testing.T) {
	if !isolated(t) {
		return
	}
	for _, name := range validFixtures {
		t.Run(name, func(t *testing.T) {
			ckpt := copyFixture(t, name)
			mnt := mount(t, ckpt, "--read-only", "--npy")
			out := runPython(t, `
import sys, os, io, json, struct, numpy as np
ckpt, mnt = sys.argv[1], sys.argv[2]
b = open(ckpt, 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8+n])
descr = {'BOOL': '|b1', 'U8': '|u1', 'I8': '|i1', 'I16': '<i2', 'U16': '<u2', 'F16': '<f2',
         'I32': '<i4', 'U32': '<u4', 'F32': '<f4', 'F64': '<f8', 'I64': '<i8', 'U64': '<u8',
         'BF16': 'V2'}
checked = 0
for k, v in h.items():
    if k == '__metadata__':
        continue
    s, e = v['data_offsets']
    a = np.frombuffer(b[8+n+s:8+n+e], dtype=descr[v['dtype']]).reshape(v['shape'])
    want = io.BytesIO(); np.save(want, a)
    path = os.path.join(mnt, k + '.npy')
    got = open(path, 'rb').read()
    assert got == want.getvalue(), (k, got[:128], want.getvalue()[:128])
    loaded = np.load(path)
    assert loaded.shape == a.shape and loaded.dtype == a.dtype and (loaded.view(np.uint8) == a.view(np.uint8)).all(), k
    checked += 1
print(checked)
`, ckpt, mnt)
			entries, _, _ := rawHeader(t, ckpt)
			if out != fmt.Sprint(len(entries)) {
				t.Errorf("checked %s views, want %d", out, len(entries))
			}
		})
	}
}

func TestProcMountsAndStatfs(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt, "--read-only", "-o", "noatime")
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	want := ckpt + " " + mnt + " fuse.safejaxfs ro,"
	line := ""
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, want) {
			line = l
		}
	}
	if line == "" {
		t.Errorf("/proc/mounts has no line starting %q:\n%s", want, b)
	} else if !strings.Contains(line, "noatime") {
		t.Errorf("-o noatime not applied: %s", line)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		t.Fatalf("statfs: %v", err)
	}
	if st.Blocks == 0 || st.Bsize == 0 {
		t.Errorf("statfs: %+v", st)
	}
}

func TestReadOnlyRefusesWrites(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	before, _ := os.ReadFile(ckpt)
	mnt := mount(t, ckpt, "--read-only")
	for _, err := range []error{
		os.WriteFile(filepath.Join(mnt, "params/Dense_0/bias"), []byte("x"), 0o644),
		os.WriteFile(filepath.Join(mnt, "new"), []byte("x"), 0o644),
		os.Remove(filepath.Join(mnt, "step_scale")),
		os.Mkdir(filepath.Join(mnt, "d"), 0o755),
	} {
		if err == nil {
			t.Error("write succeeded on a read-only mount")
		}
	}
	forceUnmount(t, mnt)
	after, _ := os.ReadFile(ckpt)
	if !bytes.Equal(before, after) {
		t.Error("checkpoint changed under a read-only mount")
	}
}

func TestPosixReadOnly(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt, "--read-only")
	posixtest.ReadDirConsistency(t, filepath.Join(mnt, "params"))
}
