package main

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
	"github.com/safejaxfs/safejaxfs/safetensors"
)

// The hidden <name>.f32.npy views through real mounts. The truth is
// truth.py (safetensors/floats/testdata): numpy decoding every code of
// every format from its definition, and rounding float32 back by value.

const truthDir = "../../safetensors/floats/testdata"

// converted are the dtypes with a float32 view.
var converted = []safetensors.DType{
	safetensors.BF16, safetensors.F16, safetensors.F8_E5M2, safetensors.F8_E4M3,
	safetensors.F8_E4M3FNUZ, safetensors.F8_E5M2FNUZ, safetensors.F8_E8M0,
	safetensors.F6_E2M3, safetensors.F6_E3M2, safetensors.F4,
}

// viewModel has a tensor of every converted dtype, holding every code of
// its format at least once (random bytes, 6000 elements), plus an F32
// and an I32 tensor, which have no float32 view, and a tensor literally
// named w.f32 beside w.
func viewModel(t testing.TB) (string, []genTensor) {
	var ts []genTensor
	for _, d := range converted {
		ts = append(ts, raw("model."+strings.ToLower(d.String()), d, numbers(d, 6000, uint64(d)+50), 20, 300))
	}
	ts = append(ts,
		raw("model.f32", safetensors.F32, numbers(safetensors.F32, 8, 1), 8),
		raw("model.i32", safetensors.I32, numbers(safetensors.I32, 8, 2), 8),
		raw("model.w", safetensors.BF16, numbers(safetensors.BF16, 4, 3), 4),
		raw("model.w.f32", safetensors.F16, numbers(safetensors.F16, 2, 4), 2))
	return writeCheckpoint(t, "views.safetensors", map[string]string{"format": "pt"}, ts...), ts
}

// checkViewsScript loads every .f32.npy view under a mount with np.load
// and compares it bit for bit with truth.py's decoding of the tensor's
// bytes, read from the checkpoint file itself.
const checkViewsScript = `
import sys, json, struct, math
import numpy as np
sys.path.insert(0, sys.argv[1])
import truth
mnt, ckpt, keys = sys.argv[2], sys.argv[3], sys.argv[4:]
raw = open(ckpt, 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
for key in keys:
    e = hdr[key]
    lo, hi = e['data_offsets']
    count = math.prod(e['shape'])
    want = truth.tensor_values(e['dtype'], raw[8 + n + lo:8 + n + hi], count)
    # tensor_values widens to float64; the view's float32 bits come from
    # the decode table directly, NaN payloads included.
    table = truth.decode_table(e['dtype']).astype(np.uint32)
    bits = table[truth.unpack_codes(e['dtype'], raw[8 + n + lo:8 + n + hi], count)]
    path = mnt + '/' + key.replace('.', '/') + '.f32.npy'
    a = np.load(path)
    assert a.dtype == np.dtype('<f4'), (key, a.dtype)
    assert list(a.shape) == e['shape'], (key, a.shape)
    assert np.array_equal(a.reshape(-1).view(np.uint32), bits), key
    m = np.load(path, mmap_mode='r')
    assert np.array_equal(np.asarray(m).reshape(-1).view(np.uint32), bits), key + ' (mmap)'
print('ok', len(keys))
`

func TestF32ViewsRead(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt, ts := viewModel(t)
	mnt := mount(t, ckpt, "--npy")
	var keys []string
	for _, g := range ts[:len(converted)] {
		keys = append(keys, g.key)
	}
	if out := runPython(t, checkViewsScript, append([]string{truthDir, mnt, ckpt}, keys...)...); out != fmt.Sprintf("ok %d", len(keys)) {
		t.Fatalf("numpy: %s", out)
	}

	// Listed with --npy for the converted dtypes only; a real tensor's .npy
	// view wins over a float32 view of the same name.
	names := listDir(t, filepath.Join(mnt, "model"))
	for _, d := range converted {
		if !slices.Contains(names, strings.ToLower(d.String())+".f32.npy") {
			t.Errorf("%v: no .f32.npy in %v", d, names)
		}
	}
	for _, absent := range []string{"f32.f32.npy", "i32.f32.npy"} {
		if slices.Contains(names, absent) {
			t.Errorf("%s listed: %v", absent, names)
		}
		if _, err := os.Stat(filepath.Join(mnt, "model", absent)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v, want ENOENT", absent, err)
		}
	}
	if n := countOf(names, "w.f32.npy"); n != 1 {
		t.Errorf("w.f32.npy listed %d times: %v", n, names)
	}
	// w.f32.npy is the .npy view of the F16 tensor w.f32 (|f2), not the
	// float32 view of w.
	b, err := os.ReadFile(filepath.Join(mnt, "model", "w.f32.npy"))
	if err != nil || !bytes.Contains(b[:64], []byte("'<f2'")) {
		t.Errorf("w.f32.npy: %v, header %q", err, b[:min(len(b), 64)])
	}
	// Without --npy: not listed, still there by name.
	plain := mount(t, ckpt, "--read-only")
	for _, n := range listDir(t, filepath.Join(plain, "model")) {
		if strings.HasSuffix(n, ".npy") {
			t.Errorf("listed without --npy: %s", n)
		}
	}
	if _, err := os.Stat(filepath.Join(plain, "model", "bf16.f32.npy")); err != nil {
		t.Error(err)
	}

	// Reads at any offset and length agree with the whole file (element
	// and group boundaries of the sub-byte formats included).
	r := rand.New(rand.NewPCG(7, 8))
	for _, d := range converted {
		p := filepath.Join(mnt, "model", strings.ToLower(d.String())+".f32.npy")
		whole, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		for range 40 {
			off := r.IntN(len(whole))
			buf := make([]byte, 1+r.IntN(9000))
			n, err := unix.Pread(int(f.Fd()), buf, int64(off))
			want := whole[off:min(len(whole), off+len(buf))]
			if err != nil || !bytes.Equal(buf[:n], want) {
				t.Fatalf("%v: pread %d at %d: %d bytes, %v; differ from the whole file", d, len(buf), off, n, err)
			}
		}
		f.Close()
		// The same attributes as the tensor.
		for _, a := range []string{"user.safetensors.key", "user.safetensors.dtype", "user.safetensors.shape"} {
			if got, want := getxattr(t, p, a), getxattr(t, strings.TrimSuffix(p, ".f32.npy"), a); got != want || got == "" {
				t.Errorf("%s %s = %q, tensor %q", p, a, got, want)
			}
		}
	}
	// A view is not removable.
	if err := os.Remove(filepath.Join(mnt, "model", "bf16.f32.npy")); !errors.Is(err, syscall.EPERM) {
		t.Errorf("rm of a view: %v, want EPERM", err)
	}
}

func countOf(l []string, s string) int {
	n := 0
	for _, x := range l {
		if x == s {
			n++
		}
	}
	return n
}

func listDir(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// writeViewsScript saves float32 arrays into every .f32.npy view: values
// around the tensor's range, exact ties, overflow, ±Inf, NaN, -0 and
// float32 subnormals, and writes the codes truth.py's rounding gives, packed
// as the format is, to OUT/<key> for the test to compare.
const writeViewsScript = `
import sys, os
import numpy as np
sys.path.insert(0, sys.argv[1])
import truth
mnt, out, keys = sys.argv[2], sys.argv[3], sys.argv[4:]
rng = np.random.default_rng(11)

def pack(name, codes):
    bits = truth.FORMATS[name][0]
    c = codes.astype(np.uint64)
    if bits == 16:
        return c.astype('<u2').tobytes()
    if bits == 8:
        return c.astype(np.uint8).tobytes()
    if bits == 4:
        return (c[0::2] | (c[1::2] << np.uint64(4))).astype(np.uint8).tobytes()
    w = c[0::4] | (c[1::4] << np.uint64(6)) | (c[2::4] << np.uint64(12)) | (c[3::4] << np.uint64(18))
    return np.stack([w & np.uint64(255), (w >> np.uint64(8)) & np.uint64(255), w >> np.uint64(16)], axis=1).astype(np.uint8).tobytes()

for key in keys:
    name = key.split('.')[-1].upper()
    path = mnt + '/' + key.replace('.', '/') + '.f32.npy'
    a = np.load(path)
    vals, _ = truth.positive_finite(name)
    mids = ((vals[1:] + vals[:-1]) / 2).astype(np.float32)
    x = rng.standard_normal(a.size).astype(np.float32) * np.float32(vals[-1] / 3)
    specials = np.concatenate([mids, -mids, np.float32([np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0, 1e-40, -1e-40, vals[-1] * 4, -vals[-1] * 4])]).astype(np.float32)
    k = min(len(specials), a.size)
    x[:k] = specials[:k]
    x = x.reshape(a.shape)
    np.save(path, x)
    with open(os.path.join(out, key), 'wb') as f:
        f.write(pack(name, truth.encode(name, x.reshape(-1).view(np.uint32).astype(np.uint64))))
    # The view now reads back the rounded values.
    back = np.load(path)
    want = truth.decode_table(name).astype(np.uint32)[truth.encode(name, x.reshape(-1).view(np.uint32).astype(np.uint64))]
    assert np.array_equal(back.reshape(-1).view(np.uint32), want), key
print('ok')
`

func TestF32ViewsWrite(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt, ts := viewModel(t)
	mnt := mount(t, ckpt)
	var keys []string
	for _, g := range ts[:len(converted)] {
		keys = append(keys, g.key)
	}
	want := t.TempDir()
	if out := runPython(t, writeViewsScript, append([]string{truthDir, mnt, want}, keys...)...); out != "ok" {
		t.Fatalf("numpy: %s", out)
	}
	check := func(where string, read func(key string) []byte) {
		for _, k := range keys {
			w, err := os.ReadFile(filepath.Join(want, k))
			if err != nil {
				t.Fatal(err)
			}
			if got := read(k); !bytes.Equal(got, w) {
				t.Errorf("%s: %s: the tensor's bytes are not truth.py's rounding (first difference at %d of %d)", where, k, firstDiff(got, w), len(w))
			}
		}
	}
	check("through the mount", func(k string) []byte {
		b, err := os.ReadFile(filepath.Join(mnt, strings.ReplaceAll(k, ".", "/")))
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
	// Untouched tensors keep their bytes; the dtype and shape stay.
	if got := getxattr(t, filepath.Join(mnt, "model", "bf16"), "user.safetensors.shape"); got != "[20,300]" {
		t.Errorf("shape after writing the view: %s", got)
	}
	forceUnmount(t, mnt)
	entries, _, data := rawHeader(t, ckpt)
	check("in the checkpoint after unmount", func(k string) []byte {
		e := entries[k]
		if e.DType != strings.ToUpper(strings.TrimPrefix(k, "model.")) {
			t.Errorf("%s: dtype %s after writing its view", k, e.DType)
		}
		return data[e.Offsets[0]:e.Offsets[1]]
	})
	for _, g := range ts[len(converted):] {
		if e := entries[g.key]; !bytes.Equal(data[e.Offsets[0]:e.Offsets[1]], g.data) {
			t.Errorf("%s changed", g.key)
		}
	}
	if r := cli(t, "verify", ckpt); r.code != 0 {
		t.Errorf("verify after writing views: %s", r.stderr)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// What a float32 view refuses, and that it follows the tensor when the
// tensor changes through another name.
func TestF32ViewsRefuseAndFollow(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt, _ := viewModel(t)
	mnt := mount(t, ckpt)
	view := filepath.Join(mnt, "model", "bf16.f32.npy")
	raw := filepath.Join(mnt, "model", "bf16")
	before, _ := os.ReadFile(raw)
	for name, script := range map[string]string{
		"another shape": `np.save(p, np.zeros((300, 20), np.float32))`,
		"float64":       `np.save(p, np.zeros((20, 300)))`,
		"not a .npy":    "with open(p, 'wb') as f: f.write(b'hello')",
	} {
		out := runPython(t, `
import sys
import numpy as np
p = sys.argv[1]
try:
    `+script+`
    print('accepted')
except OSError as e:
    print('refused', e.errno)
`, view)
		if out != fmt.Sprintf("refused %d", syscall.EINVAL) {
			t.Errorf("%s: %s, want refused with EINVAL", name, out)
		}
		if after, _ := os.ReadFile(raw); !bytes.Equal(after, before) {
			t.Fatalf("%s: the tensor changed", name)
		}
	}
	if e := getxattr(t, mnt, "user.safejaxfs.error"); !strings.Contains(e, "not the shape") && !strings.Contains(e, "npy") {
		t.Errorf("last error %q", e)
	}

	// A write through the raw file shows in the view already read (its
	// page cache is invalidated).
	v1, err := os.ReadFile(view)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(raw, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0x80, 0x3F, 0x00, 0x40}, 2*1000); err != nil { // 1.0, 2.0 at elements 1000, 1001
		t.Fatal(err)
	}
	f.Close()
	v2, _ := os.ReadFile(view)
	hn := len(v1) - 4*6000
	want := slices.Clone(v1)
	copy(want[hn+4*1000:], []byte{0, 0, 0x80, 0x3F, 0, 0, 0, 0x40})
	if !bytes.Equal(v2, want) {
		t.Errorf("the view after a raw write differs at %d", firstDiff(v2, want))
	}

	// Renamed, the tensor's view follows it; the old name is gone.
	if err := os.Rename(filepath.Join(mnt, "model", "f16"), filepath.Join(mnt, "model", "half")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "model", "f16.f32.npy")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the old view name after a rename: %v", err)
	}
	if out := runPython(t, checkViewsScript, truthDir, mnt, synced(t, mnt, ckpt), "model.half"); out != "ok 1" {
		t.Errorf("the renamed tensor's view: %s", out)
	}
	// Removed while its view is open, the view reads on (POSIX), then is gone.
	f8view := filepath.Join(mnt, "model", "f8_e4m3.f32.npy")
	before8, err := os.ReadFile(f8view)
	if err != nil {
		t.Fatal(err)
	}
	vf, err := os.Open(f8view)
	if err != nil {
		t.Fatal(err)
	}
	defer vf.Close()
	if err := os.Remove(filepath.Join(mnt, "model", "f8_e4m3")); err != nil {
		t.Fatal(err)
	}
	unix.Fadvise(int(vf.Fd()), 0, 0, unix.FADV_DONTNEED) // read from the daemon, not the page cache
	kept := make([]byte, len(before8)+10)
	if k, _ := vf.ReadAt(kept, 0); !bytes.Equal(kept[:k], before8) {
		t.Errorf("reading an open view of a removed tensor: %d bytes, want the %d it had", k, len(before8))
	}
	if _, err := os.Stat(filepath.Join(mnt, "model", "f8_e4m3.f32.npy")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the view of a removed tensor by name: %v", err)
	}

	// Read-only mounts refuse writing a view.
	other, _ := viewModel(t)
	ro := mount(t, other, "--read-only")
	if _, err := os.OpenFile(filepath.Join(ro, "model", "f16.f32.npy"), os.O_WRONLY|os.O_TRUNC, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write open on a read-only mount: %v", err)
	}
}

// Through an http mount: converted from the remote chunks.
func TestF32ViewsRemote(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt, ts := viewModel(t)
	www := t.TempDir()
	os.Symlink(ckpt, filepath.Join(www, "views.safetensors"))
	_, ports := testsrv.StartNginx(t, testsrv.StaticServer(www))
	mnt, _ := remoteMount(t, fmt.Sprintf("http://127.0.0.1:%d/views.safetensors", ports[0]))
	var keys []string
	for _, g := range ts[:len(converted)] {
		keys = append(keys, g.key)
	}
	if out := runPython(t, checkViewsScript, append([]string{truthDir, mnt, ckpt}, keys...)...); out != fmt.Sprintf("ok %d", len(keys)) {
		t.Fatalf("numpy: %s", out)
	}
	if _, err := os.OpenFile(filepath.Join(mnt, "model", "bf16.f32.npy"), os.O_WRONLY|os.O_TRUNC, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write open on a remote mount: %v", err)
	}
}

// synced writes the mount's edits back and returns its checkpoint, whose
// file then holds them (checkViewsScript reads the truth from it).
func synced(t *testing.T, mnt, ckpt string) string {
	t.Helper()
	if r := cli(t, "sync", mnt); r.code != 0 {
		t.Fatalf("sync: %s", r.stderr)
	}
	return ckpt
}
