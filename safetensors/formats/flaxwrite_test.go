package formats

import (
	"bytes"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// TestWriteFlaxMatchesFlax: WriteFlax writes byte for byte what flax's own
// msgpack_serialize writes for the same nested dict of numpy arrays (keys
// in order), chunking included (MAX_CHUNK_SIZE lowered on both sides so a
// small array is chunked as one over 2^30 bytes is).
func TestWriteFlaxMatchesFlax(t *testing.T) {
	const py = "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import numpy, msgpack").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s lacks numpy or msgpack: %v", py, err)
		}
		t.Skip("no numpy/msgpack")
	}
	ref, _ := filepath.Abs("../../testdata/foreign")
	dir := t.TempDir()
	want := filepath.Join(dir, "flax.msgpack")
	script := `
import sys; sys.path.insert(0, sys.argv[1])
import numpy as np, flax_ref
flax_ref.MAX_CHUNK_SIZE = 100
tree = {"a": {"b": np.arange(60, dtype=np.float32).reshape(3, 20), "c": np.arange(5, dtype=np.int8)},
        "d": np.float64(0.5), "e": np.arange(300, dtype=np.uint16)}
open(sys.argv[2], "wb").write(flax_ref.msgpack_serialize(tree))
`
	if out, err := exec.Command(py, "-c", script, ref, want).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	le := func(n int, elem int, f func(i int) uint64) []byte {
		b := make([]byte, n*elem)
		for i := range n {
			v := f(i)
			for k := range elem {
				b[i*elem+k] = byte(v >> (8 * k))
			}
		}
		return b
	}
	f32 := le(60, 4, func(i int) uint64 { return uint64(math.Float32bits(float32(i))) })
	srcs := []safetensors.Source{
		{Key: "e", DType: safetensors.U16, Shape: []uint64{300}, Data: safetensors.Bytes(le(300, 2, func(i int) uint64 { return uint64(i) }))},
		{Key: "a.c", DType: safetensors.I8, Shape: []uint64{5}, Data: safetensors.Bytes([]byte{0, 1, 2, 3, 4})},
		{Key: "d", DType: safetensors.F64, Shape: []uint64{}, Data: safetensors.Bytes(le(1, 8, func(int) uint64 { return 0x3fe0000000000000 }))},
		{Key: "a.b", DType: safetensors.F32, Shape: []uint64{3, 20}, Data: safetensors.Bytes(f32)},
	}
	var got bytes.Buffer
	if _, err := WriteFlax(&got, srcs, 100); err != nil {
		t.Fatal(err)
	}
	w, _ := os.ReadFile(want)
	if !bytes.Equal(got.Bytes(), w) {
		t.Fatalf("WriteFlax differs from flax:\n got % x\nwant % x", got.Bytes()[:min(200, got.Len())], w[:min(200, len(w))])
	}
	// And through a file (kernel-side copies from file sources).
	p := filepath.Join(dir, "src")
	os.WriteFile(p, f32, 0o644)
	sf, _ := os.Open(p)
	defer sf.Close()
	srcs[3].Data = sf
	out, _ := os.Create(filepath.Join(dir, "out.msgpack"))
	n, err := WriteFlax(out, srcs, 100)
	out.Close()
	b, _ := os.ReadFile(filepath.Join(dir, "out.msgpack"))
	if err != nil || !bytes.Equal(b, w) || n != int64(len(w)) {
		t.Fatalf("WriteFlax to a file: %d bytes, %v; equal: %v", n, err, bytes.Equal(b, w))
	}
	if _, err := WriteFlax(&got, []safetensors.Source{{Key: "a", DType: safetensors.F32, Shape: []uint64{1}}, {Key: "a.b", DType: safetensors.F32, Shape: []uint64{1}}}, 100); err == nil {
		t.Error("keys a and a.b are accepted: a would be both an array and a dict")
	}
}
