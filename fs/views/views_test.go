package views

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/floats"
	"github.com/safejaxfs/safejaxfs/safetensors/npy"
)

var viewed = []safetensors.DType{safetensors.BF16, safetensors.F8_E4M3, safetensors.F6_E3M2, safetensors.F4}

// open writes one tensor of random bytes per dtype in viewed (n elements
// each, a multiple of every group) and opens the file; raw[i] is tensor
// i's bytes.
func open(t *testing.T, n uint64, readOnly bool) (*checkpoint.Checkpoint, [][]byte) {
	t.Helper()
	r := rand.New(rand.NewPCG(1, 1))
	var src []safetensors.Source
	var raw [][]byte
	for _, d := range viewed {
		size, _ := safetensors.ByteSize(d, []uint64{n})
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		raw = append(raw, b)
		src = append(src, safetensors.Source{Key: d.String(), DType: d, Shape: []uint64{n}, Data: safetensors.Bytes(b)})
	}
	p := filepath.Join(t.TempDir(), "m.safetensors")
	out, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := safetensors.Write(out, src, nil); err != nil {
		t.Fatal(err)
	}
	out.Close()
	ck, err := checkpoint.Open(p, checkpoint.Options{ReadOnly: readOnly})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ck.Close() })
	// Keys are the dtypes' names, which sort as viewed does not: raw in
	// the checkpoint's order.
	byKey := map[string][]byte{}
	for i, d := range viewed {
		byKey[d.String()] = raw[i]
	}
	raw = raw[:0]
	for _, k := range ck.Keys() {
		raw = append(raw, byKey[k])
	}
	return ck, raw
}

// TestReadF32Windows: a read of the converted bytes at any offset and
// length (the kernel sends page-aligned ones, but nothing relies on it)
// is that window of the whole conversion, across element and group
// boundaries and the passes of a large read; F32Bytes is the header and
// the whole conversion.
func TestReadF32Windows(t *testing.T) {
	ck, raw := open(t, 3*Step+12, true) // several passes
	r := rand.New(rand.NewPCG(2, 2))
	for i, key := range ck.Keys() {
		id := checkpoint.ID(i)
		info, _ := ck.Info(id)
		b := raw[i]
		n := len(b) * 8 / info.DType.Bits()
		whole := make([]byte, 4*n)
		floats.DecodeLE(info.DType, whole, b)
		h, _, elems := F32(ck, id)
		if want, _ := npy.Header("F32", info.Shape); !bytes.Equal(h, want) || elems != int64(n) {
			t.Fatalf("%s: F32 gave header %q and %d elements, want %q and %d", key, h, elems, want, n)
		}
		if all, err := F32Bytes(ck, id); err != nil || !bytes.Equal(all, append(h[:len(h):len(h)], whole...)) {
			t.Fatalf("%s: F32Bytes differs from header + conversion (%v)", key, err)
		}
		for k := range 300 {
			off := r.IntN(len(whole) + 8)
			size := 1 + r.IntN(9000)
			if k%10 == 0 {
				size = 1 + r.IntN(len(whole)) // large: several passes
			}
			dst := make([]byte, size)
			got, err := ReadF32(context.Background(), ck, id, dst, int64(off))
			want := whole[min(off, len(whole)):min(off+size, len(whole))]
			if err != nil || !bytes.Equal(dst[:got], want) {
				t.Fatalf("%s: %d bytes at %d: got %d (%v), differ from the whole conversion", key, size, off, got, err)
			}
		}
	}
}

// TestF32Changed: after a write of any bytes of the tensor, every byte of
// the float32 view that changed lies in the range F32Changed names (the
// kernel's pages outside it are kept, so one missed would be served
// stale).
func TestF32Changed(t *testing.T) {
	ck, raw := open(t, 4096, false)
	r := rand.New(rand.NewPCG(3, 3))
	for i, key := range ck.Keys() {
		id := checkpoint.ID(i)
		before, err := F32Bytes(ck, id)
		if err != nil {
			t.Fatal(err)
		}
		for range 200 {
			off := r.IntN(len(raw[i]))
			p := make([]byte, 1+r.IntN(min(64, len(raw[i])-off)))
			for j := range p {
				p[j] = byte(r.Uint32())
			}
			if err := ck.WriteAt(id, p, int64(off)); err != nil {
				t.Fatal(err)
			}
			h, info, _ := F32(ck, id)
			vOff, vN := F32Changed(h, info, int64(off), int64(len(p)))
			after, err := F32Bytes(ck, id)
			if err != nil {
				t.Fatal(err)
			}
			for j := range after {
				if after[j] != before[j] && (int64(j) < vOff || int64(j) >= vOff+vN) {
					t.Fatalf("%s: a write of %d bytes at %d changed view byte %d, outside [%d, %d)", key, len(p), off, j, vOff, vOff+vN)
				}
			}
			before = after
		}
		if vOff, vN := F32Changed(nil, checkpoint.Info{}, 0, 8); vOff != 0 || vN != 0 {
			t.Errorf("no view: F32Changed = %d, %d; want 0, 0 (all)", vOff, vN)
		}
	}
}

// TestNPYBytes: the .npy view is np.save's header then the tensor's own
// bytes; a dtype numpy lacks has none.
func TestNPYBytes(t *testing.T) {
	ck, raw := open(t, 64, true)
	for i, key := range ck.Keys() {
		id := checkpoint.ID(i)
		info, _ := ck.Info(id)
		want, err := npy.Header(info.DType.String(), info.Shape)
		h, _ := NPY(ck, id)
		if err != nil {
			if h != nil {
				t.Errorf("%s: numpy has no %v, yet a .npy header %q", key, info.DType, h)
			}
			if _, err := NPYBytes(ck, id); err == nil {
				t.Errorf("%s: NPYBytes of a dtype numpy lacks succeeded", key)
			}
			continue
		}
		got, err := NPYBytes(ck, id)
		if err != nil || !bytes.Equal(got, append(want, raw[i]...)) {
			t.Errorf("%s: NPYBytes is not the header and the tensor's bytes (%v)", key, err)
		}
	}
}
