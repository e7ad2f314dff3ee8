package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Checkpoints in other formats, written by the real libraries (Debian's
// python3-torch, numpy, python3-msgpack with flax's own serialization
// code) and by the GGUF specification, read through the CLI and through a
// real mount, and compared with what those libraries read back.

// refDir holds the Python references: st_ref.py (a safetensors writer
// following the reference implementation), flax_ref.py (flax's msgpack
// serialization), gguf_ref.py (GGUF writer and numpy dequantization).
var refDir, _ = filepath.Abs("../../testdata/foreign")

// pythonWith returns Debian's python3 when it has the modules, else skips
// (fails under CI: scripts/test.sh installs them).
func pythonWith(t testing.TB, modules ...string) string {
	t.Helper()
	py := numpy(t)
	if err := pythonHas(py, modules...); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s lacks %v (apt-get install python3-torch python3-msgpack python3-h5py): %v", py, modules, err)
		}
		t.Skipf("%s lacks %v", py, modules)
	}
	return py
}

// py runs a script with the references importable, in dir.
func py(t testing.TB, interp, dir, script string, args ...string) string {
	t.Helper()
	cmd := exec.Command(interp, append([]string{"-c", "import sys; sys.path.insert(0, " + pyQuote(refDir) + ")\n" + script}, args...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

func pyQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `\'`) + "'" }

func mustEqualFiles(t testing.TB, got, want string) {
	t.Helper()
	a, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		n := 0
		for n < len(a) && n < len(b) && a[n] == b[n] {
			n++
		}
		t.Fatalf("%s (%d bytes) differs from %s (%d bytes) from byte %d:\n got %.300q\nwant %.300q", got, len(a), want, len(b), n, a[:min(len(a), 300)], b[:min(len(b), 300)])
	}
}

func cliOK(t testing.TB, args ...string) result {
	t.Helper()
	r := cli(t, args...)
	if r.code != 0 {
		t.Fatalf("safejaxfs %s: exit %d: %s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

const torchScript = `
import torch, collections, numpy as np, st_ref
torch.manual_seed(0)
emb = torch.randn(10, 4)
big = torch.arange(24, dtype=torch.float32).reshape(4, 6)
sd = collections.OrderedDict()
sd["model.embed.weight"] = emb
sd["lm_head.weight"] = emb                 # tied: one storage, two keys
sd["h16"] = torch.randn(3, 5).half()
sd["bf"] = torch.randn(7).bfloat16()
sd["i8"] = torch.arange(-5, 5, dtype=torch.int8)
sd["view.rows"] = big[1:3]                 # an offset into the storage
sd["view.t"] = big.t()                     # strided
sd["view.col"] = big[:, 2]                 # strided with an offset
sd["view.big"] = big
sd["long"] = torch.tensor([1, -2, 3])
sd["flag"] = torch.tensor([True, False])
torch.save(sd, "zip.pt")
torch.save(sd, "legacy.pt", _use_new_zipfile_serialization=False)
# The truth: what torch.load(weights_only=True) gives, written by the
# reference-rules writer as each tensor's contiguous bytes.
for name in ["zip.pt", "legacy.pt"]:
    loaded = torch.load(name, weights_only=True)
    out = {}
    for k, v in loaded.items():
        v = v.contiguous()
        dt = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int8: "I8",
              torch.int64: "I64", torch.bool: "BOOL"}[v.dtype]
        raw = v.view(torch.int16).numpy().tobytes() if v.dtype == torch.bfloat16 else v.numpy().tobytes()
        out[k] = (dt, tuple(v.shape), raw)
    st_ref.save(name + ".expected.safetensors", out)
`

func TestForeignTorch(t *testing.T) {
	t.Parallel()
	interp := pythonWith(t, "torch", "numpy")
	dir := t.TempDir()
	py(t, interp, dir, torchScript)
	for _, name := range []string{"zip.pt", "legacy.pt"} {
		t.Run(name, func(t *testing.T) {
			in := filepath.Join(dir, name)
			out := filepath.Join(dir, name+".safetensors")
			r := cliOK(t, "convert", in, out)
			if !strings.Contains(r.stderr, "model.embed.weight, lm_head.weight share storage") {
				t.Errorf("convert does not report the tied weights: %q", r.stderr)
			}
			mustEqualFiles(t, out, in+".expected.safetensors")

			ls := cliOK(t, "ls", in).stdout
			for _, want := range []string{"tied with lm_head.weight", "tied with model.embed.weight", "shares storage with", "BF16  [7]"} {
				if !strings.Contains(ls, want) {
					t.Errorf("ls %s lacks %q:\n%s", name, want, ls)
				}
			}
			v := cliOK(t, "verify", in).stdout
			if !strings.Contains(v, "tied (the same tensor): model.embed.weight, lm_head.weight") || !strings.Contains(v, "views of one storage: view.rows, view.t, view.col, view.big") {
				t.Errorf("verify %s does not report shared storages:\n%s", name, v)
			}
			if r := cli(t, "diff", in, out); r.code != 0 {
				t.Errorf("diff %s and its conversion: exit %d: %s%s", name, r.code, r.stdout, r.stderr)
			}

			mnt := mount(t, in)
			got := py(t, interp, dir, `
import sys, torch, numpy as np
mnt = sys.argv[1]
sd = torch.load(sys.argv[2], weights_only=True)
bad = []
for k, v in sd.items():
    raw = open(mnt + "/" + k.replace(".", "/"), "rb").read()
    v = v.contiguous()
    want = v.view(torch.int16).numpy().tobytes() if v.dtype == torch.bfloat16 else v.numpy().tobytes()
    if raw != want:
        bad.append(k)
    if v.dtype != torch.bfloat16:
        a = np.load(mnt + "/" + k.replace(".", "/") + ".npy")
        if not np.array_equal(a, v.numpy()):
            bad.append(k + ".npy")
print("bad:", bad)
`, mnt, in)
			if got != "bad: []" {
				t.Errorf("the mount of %s differs from torch.load: %s", name, got)
			}
			// Read-only, whatever was asked.
			if err := os.WriteFile(filepath.Join(mnt, "i8"), []byte("x"), 0); err == nil || !strings.Contains(err.Error(), "read-only") {
				t.Errorf("writing into the mount of %s: %v, want a read-only file system", name, err)
			}
		})
	}
}

func TestForeignTorchRefusesCode(t *testing.T) {
	t.Parallel()
	interp := pythonWith(t, "torch")
	dir := t.TempDir()
	marker := filepath.Join(dir, "pwned")
	py(t, interp, dir, `
import os, pickle, sys, zipfile, torch
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[1],))
torch.save({"w": torch.zeros(2)}, "evil.pt")
# The same checkpoint, with a data.pkl that runs a command when unpickled.
z = zipfile.ZipFile("evil.pt")
names = z.namelist()
with zipfile.ZipFile("evil2.pt", "w") as out:
    for n in names:
        data = z.read(n)
        if n.endswith("data.pkl"):
            data = pickle.dumps({"w": Evil()}, protocol=2)
        out.writestr(n, data)
`, marker)
	for _, args := range [][]string{{"ls"}, {"verify"}, {"convert", "", filepath.Join(dir, "x.safetensors")}, {"stats"}} {
		a := append([]string{}, args...)
		if len(a) == 1 {
			a = append(a, filepath.Join(dir, "evil2.pt"))
		} else {
			a[1] = filepath.Join(dir, "evil2.pt")
		}
		r := cli(t, a...)
		if r.code == 0 || !strings.Contains(r.stderr, `refused global "posix.system"`) {
			t.Errorf("safejaxfs %v: exit %d, %q; want a refusal naming posix.system", a, r.code, r.stderr)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the pickle's command ran")
	}
}

const numpyScript = `
import numpy as np, st_ref
rng = np.random.default_rng(0)
a = rng.standard_normal((4, 6)).astype(np.float32)
arrays = {"a": a, "fortran": np.asfortranarray(rng.standard_normal((3, 5, 2))), "bigendian": np.arange(7, dtype=">i4"),
          "half": rng.standard_normal(9).astype(np.float16), "flags": np.array([True, False, True]),
          "empty": np.zeros((0, 3), np.int64), "scalar": np.float64(2.5), "u16": np.arange(5, dtype=np.uint16)}
np.savez("stored.npz", **arrays)
np.savez_compressed("deflated.npz", **arrays)
np.save("fortran.npy", np.asfortranarray(a))
st_ref.save("expected.safetensors", {k: st_ref.from_numpy(np.asarray(v)) for k, v in arrays.items()})
st_ref.save("fortran.expected.safetensors", {"fortran": st_ref.from_numpy(a)})
`

func TestForeignNumpy(t *testing.T) {
	t.Parallel()
	interp := pythonWith(t, "numpy")
	dir := t.TempDir()
	py(t, interp, dir, numpyScript)
	for _, name := range []string{"stored.npz", "deflated.npz", "fortran.npy"} {
		t.Run(name, func(t *testing.T) {
			in := filepath.Join(dir, name)
			out := filepath.Join(dir, name+".safetensors")
			cliOK(t, "convert", in, out)
			want := filepath.Join(dir, "expected.safetensors")
			if name == "fortran.npy" {
				want = filepath.Join(dir, "fortran.expected.safetensors")
			}
			mustEqualFiles(t, out, want)
			cliOK(t, "verify", in)
			mnt := mount(t, in)
			got := py(t, interp, dir, `
import sys, numpy as np
mnt, src = sys.argv[1], sys.argv[2]
d = np.load(src)
items = d.items() if hasattr(d, "items") else [("fortran", d)]
bad = [k for k, v in items if not np.array_equal(np.load(mnt + "/" + k + ".npy"), v) or np.load(mnt + "/" + k + ".npy").dtype != v.dtype.newbyteorder("<")]
print("bad:", bad)
`, mnt, in)
			if got != "bad: []" {
				t.Errorf("the mount of %s differs from np.load: %s", name, got)
			}
			// The files view is the file itself, byte for byte: what
			// np.load (or torch.load) of /.files/NAME reads.
			mustEqualFiles(t, filepath.Join(mnt, defaultFilesDir, name), in)
		})
	}
}

const flaxScript = `
import numpy as np, msgpack, st_ref, flax_ref
flax_ref.MAX_CHUNK_SIZE = 256   # so a small array is chunked as a >1 GiB one would be
rng = np.random.default_rng(0)
k = rng.standard_normal((8, 16)).astype(np.float32)       # 512 bytes: chunked
tree = {"params": {"Dense_0": {"kernel": k, "bias": np.zeros(16, np.float32)},
                   "LayerNorm_0": {"scale": np.ones(16, np.float16)},
                   "layers": {"0": {"w": np.arange(6, dtype=np.int32).reshape(2, 3)}, "1": {"w": np.arange(6, dtype=np.int64)}}},
        "batch_stats": {}, "step": 1000, "lr": 0.25, "opt": "adamw", "last": None, "s": np.float32(1.5)}
blob = flax_ref.msgpack_serialize(tree)
# A bfloat16 array as flax writes it (ml_dtypes' name, its 16-bit patterns).
bf = rng.integers(0, 65536, size=5, dtype=np.uint16)
ext = msgpack.ExtType(1, msgpack.packb(((5,), "bfloat16", bf.tobytes()), use_bin_type=True))
obj = msgpack.unpackb(blob, raw=False)
obj["bf"] = ext
open("params.msgpack", "wb").write(msgpack.packb(obj, strict_types=True))
exp = {"params.Dense_0.kernel": st_ref.from_numpy(k), "params.Dense_0.bias": st_ref.from_numpy(np.zeros(16, np.float32)),
       "params.LayerNorm_0.scale": st_ref.from_numpy(np.ones(16, np.float16)),
       "params.layers.0.w": st_ref.from_numpy(np.arange(6, dtype=np.int32).reshape(2, 3)),
       "params.layers.1.w": st_ref.from_numpy(np.arange(6, dtype=np.int64)),
       "step": st_ref.from_numpy(np.array(1000, np.int64)), "lr": st_ref.from_numpy(np.array(0.25)),
       "s": st_ref.from_numpy(np.array(1.5, np.float32)), "bf": ("BF16", (5,), bf.tobytes())}
st_ref.save("expected.safetensors", exp, {"batch_stats": "{}", "opt": "adamw", "last": "None"})
`

func TestForeignFlax(t *testing.T) {
	t.Parallel()
	interp := pythonWith(t, "numpy", "msgpack")
	dir := t.TempDir()
	py(t, interp, dir, flaxScript)
	in := filepath.Join(dir, "params.msgpack")
	out := filepath.Join(dir, "params.safetensors")
	cliOK(t, "convert", in, out)
	mustEqualFiles(t, out, filepath.Join(dir, "expected.safetensors"))
	ls := cliOK(t, "ls", in).stdout
	for _, want := range []string{"kernel  F32  [8,16]", "bf", "BF16", "step"} {
		if !strings.Contains(ls, want) {
			t.Errorf("ls lacks %q:\n%s", want, ls)
		}
	}
	mnt := mount(t, in)
	got := py(t, interp, dir, `
import sys, json, numpy as np, flax_ref
mnt = sys.argv[1]
tree = flax_ref.msgpack_restore(open("params.msgpack", "rb").read())
ok = np.array_equal(np.load(mnt + "/params/Dense_0/kernel.npy"), tree["params"]["Dense_0"]["kernel"])
ok = ok and np.array_equal(np.load(mnt + "/params/layers/0/w.npy"), tree["params"]["layers"]["0"]["w"])
ok = ok and np.load(mnt + "/step.npy") == 1000
ok = ok and np.array_equal(np.load(mnt + "/bf.f32.npy").view(np.uint32) >> 16, tree["bf"].astype(np.uint32))
meta = json.load(open(mnt + "/__metadata__"))
print(ok, meta == {"batch_stats": "{}", "opt": "adamw", "last": "None"})
`, mnt)
	if got != "True True" {
		t.Errorf("the mount differs from msgpack_restore: %s", got)
	}

	// The way back: safetensors -> Flax msgpack. msgpack_restore gives the
	// arrays back (a 0-d tensor as a numpy scalar), and for the params
	// subtree the bytes are what flax's msgpack_serialize writes for the
	// restored dict, keys in order.
	back := filepath.Join(dir, "back.msgpack")
	r := cliOK(t, "convert", out, back)
	if !strings.Contains(r.stderr, "3 metadata entries are not written") {
		t.Errorf("convert to msgpack does not say the metadata is left out: %q", r.stderr)
	}
	sub := filepath.Join(dir, "params.msgpack.out.msgpack")
	cliOK(t, "convert", out, sub, "params")
	got = py(t, interp, dir, `
import sys, numpy as np, flax_ref
orig = flax_ref.msgpack_restore(open("params.msgpack", "rb").read())
tree = flax_ref.msgpack_restore(open(sys.argv[1], "rb").read())
same = np.array_equal(tree["params"]["Dense_0"]["kernel"], orig["params"]["Dense_0"]["kernel"])
same = same and tree["step"] == 1000 and type(tree["step"]) == np.int64 and np.array_equal(tree["bf"], orig["bf"])
def srt(d):
    return {k: srt(v) for k, v in sorted(d.items())} if isinstance(d, dict) else d
blob = open(sys.argv[2], "rb").read()
print(same, flax_ref.msgpack_serialize(srt(flax_ref.msgpack_restore(blob))) == blob)
`, back, sub)
	if got != "True True" {
		t.Errorf("msgpack written by convert: %s (want the arrays back, and the bytes flax writes)", got)
	}
}

func TestForeignGGUF(t *testing.T) {
	t.Parallel()
	interp := pythonWith(t, "numpy")
	dir := t.TempDir()
	py(t, interp, dir, `
import numpy as np, gguf_ref as g
rng = np.random.default_rng(1)
tensors, exp = [], {}
for typ, ne in [("Q8_0", [64, 3]), ("Q4_0", [32, 2]), ("Q4_1", [64, 1]), ("Q4_K", [256, 2]), ("Q6_K", [512, 3]),
                ("Q5_0", [64, 2]), ("Q5_1", [32, 3]), ("Q2_K", [256, 2]), ("Q3_K", [256, 2]), ("Q5_K", [256, 2])]:
    nb = int(np.prod(ne)) // g.TYPES[typ][1]
    b = g.random_blocks(typ, nb, rng)
    tensors.append(("blk.0." + typ, ne, typ, b.tobytes()))
    exp["blk.0." + typ] = g.dequant(typ, b).reshape(ne[::-1])
f32 = rng.standard_normal((3, 5)).astype(np.float32)
f16 = rng.standard_normal((2, 4)).astype(np.float16)
tensors += [("output.weight", [5, 3], "F32", f32.tobytes()), ("norm", [4, 2], "F16", f16.tobytes())]
exp["output.weight"], exp["norm"] = f32, f16.astype(np.float32)
g.write("model.gguf", [("general.architecture", 8, "llama"), ("general.alignment", 4, 64),
                       ("tokenizer.ggml.tokens", 9, (8, ["<s>", "a\"b"])), ("llama.rope.freq_base", 6, 10000.0)], tensors, alignment=64)
np.savez("expected.npz", **exp)
`)
	in := filepath.Join(dir, "model.gguf")
	ls := cliOK(t, "ls", in).stdout
	for _, want := range []string{"Q4_K  Q4_K  [2,256]  288", "Q6_K  Q6_K  [3,512]  1260", "weight  F32  [3,5]"} {
		if !strings.Contains(ls, want) {
			t.Errorf("ls lacks %q:\n%s", want, ls)
		}
	}
	r := cli(t, "convert", in, filepath.Join(dir, "raw.safetensors"))
	if r.code == 0 || !strings.Contains(r.stderr, "--dequantize") || !strings.Contains(r.stderr, "blk.0.Q4_K (Q4_K)") {
		t.Errorf("convert of quantized tensors without --dequantize: exit %d %q", r.code, r.stderr)
	}
	deq := filepath.Join(dir, "deq.safetensors")
	cliOK(t, "convert", "--dequantize", in, deq)
	mnt := mount(t, in)
	got := py(t, interp, dir, `
import sys, json, struct, numpy as np
mnt, deq = sys.argv[1], sys.argv[2]
e = np.load("expected.npz")
b = open(deq, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
bad = []
for k in e.files:
    path = mnt + "/" + k.replace(".", "/")
    view = np.load(path + (".npy" if k == "output.weight" else ".f32.npy")).astype(np.float32)
    if view.shape != e[k].shape or not np.array_equal(view.view(np.uint32), e[k].view(np.uint32)):
        bad.append(k + ".f32.npy")
    lo, hi = h[k]["data_offsets"]
    if k != "norm":
        got = np.frombuffer(b[8 + n + lo:8 + n + hi], np.float32).reshape(h[k]["shape"])
        if not np.array_equal(got.view(np.uint32), e[k].view(np.uint32)):
            bad.append(k + " (convert)")
meta = json.load(open(mnt + "/__metadata__"))
print("bad:", bad, meta["general.architecture"], meta["tokenizer.ggml.tokens"], meta["llama.rope.freq_base"])
`, mnt, deq)
	if want := `bad: [] llama ["<s>","a\"b"] 10000`; got != want {
		t.Errorf("GGUF values:\n got %s\nwant %s", got, want)
	}
	if v := getxattr(t, filepath.Join(mnt, "blk", "0", "Q4_K"), "user.safetensors.dtype"); v != "Q4_K" {
		t.Errorf("dtype attribute %q, want Q4_K", v)
	}
	if v := getxattr(t, filepath.Join(mnt, "blk", "0", "Q4_K"), "user.safetensors.shape"); v != "[2,256]" {
		t.Errorf("shape attribute %q, want [2,256]", v)
	}
}

// TestForeignNotCheckpoints: files that are something else get a message
// naming what they are and what to do, from every command.
func TestForeignNotCheckpoints(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	st := filepath.Join(refDir, "..", "flax_mlp.safetensors")
	raw, err := os.ReadFile(st)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var gz bytes.Buffer
	cmd := exec.Command("gzip", "-c", st)
	cmd.Stdout = &gz
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path string
		want []string
	}{
		{write("model.safetensors", []byte("version https://git-lfs.github.com/spec/v1\noid sha256:"+strings.Repeat("ab", 32)+"\nsize 4942382848\n")),
			[]string{"is a Git LFS pointer", "git lfs pull", "4942382848 bytes"}},
		{write("page.safetensors", []byte("<!DOCTYPE html>\n<html><head><title>Access to model denied</title></head><body>log in</body></html>\n")),
			[]string{"is an HTML page", `"Access to model denied"`, "download it again"}},
		{write("model.safetensors.gz", gz.Bytes()), []string{"gzip-compressed", "gunzip -k"}},
		{write("model.safetensors.zst", append([]byte{0x28, 0xb5, 0x2f, 0xfd}, raw[:64]...)), []string{"zstd-compressed", "zstd -d"}},
		{write("weights.h5", append([]byte("\x89HDF\r\n\x1a\n"), make([]byte, 100)...)), []string{"is HDF5", "Keras"}},
		{write("error.safetensors", []byte(`{"error":"Repository Not Found for url"}`)), []string{"is a JSON document", "Repository Not Found"}},
	}
	for _, c := range cases {
		for _, cmd := range [][]string{{"ls", c.path}, {"verify", c.path}, {"stats", c.path}, {"diff", c.path, st}, {"convert", c.path, filepath.Join(dir, "o.safetensors")}} {
			r := cli(t, cmd...)
			if r.code == 0 || strings.Contains(r.stderr, "header length") {
				t.Errorf("safejaxfs %v: exit %d: %s", cmd, r.code, r.stderr)
				continue
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("safejaxfs %v: %q lacks %q", cmd, r.stderr, w)
				}
			}
		}
	}
	// A shard of a sharded set that is an LFS pointer is named too.
	set := filepath.Join(dir, "set")
	os.Mkdir(set, 0o755)
	cliOK(t, "convert", "--max-shard-size", "200", st, filepath.Join(set, "model.safetensors"))
	lfs, _ := os.ReadFile(cases[0].path)
	os.WriteFile(filepath.Join(set, "model-00002-of-00004.safetensors"), lfs, 0o644)
	for _, cmd := range []string{"ls", "verify", "stats"} {
		if r := cli(t, cmd, set); r.code == 0 || !strings.Contains(r.stderr, "model-00002-of-00004.safetensors is a Git LFS pointer") {
			t.Errorf("safejaxfs %s of a set with an LFS pointer shard: exit %d: %s", cmd, r.code, r.stderr)
		}
	}
	// And a mount says the same before it daemonizes.
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	r := cli(t, "mount", cases[0].path, mnt)
	if r.code == 0 || !strings.Contains(r.stderr, "git lfs pull") {
		t.Errorf("mount of an LFS pointer: exit %d: %s", r.code, r.stderr)
		forceUnmount(t, mnt)
	}
}

func TestForeignMountNotice(t *testing.T) {
	t.Parallel()
	interp := pythonWith(t, "numpy")
	dir := t.TempDir()
	py(t, interp, dir, `import numpy as np; np.save("a.npy", np.arange(4.0))`)
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	r := cli(t, "mount", filepath.Join(dir, "a.npy"), mnt)
	if r.code != 0 {
		t.Fatalf("mount: %d %s", r.code, r.stderr)
	}
	t.Cleanup(func() { forceUnmount(t, mnt) })
	if !strings.Contains(r.stderr, "is a numpy .npy checkpoint: mounting read-only") || !strings.Contains(r.stderr, "safejaxfs convert") {
		t.Errorf("mount does not say it is read-only and how to convert: %q", r.stderr)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil || st.Flags&1 == 0 { // ST_RDONLY
		t.Errorf("the mount is not read-only (statfs flags %#x, %v)", st.Flags, err)
	}
}
