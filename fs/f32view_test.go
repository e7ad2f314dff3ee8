package fs

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
)

// TestF32Ino: float32 views have inode numbers of their own.
func TestF32Ino(t *testing.T) {
	seen := map[uint64]bool{}
	for id := range checkpoint.ID(1000) {
		for _, i := range []uint64{ino(kindDir, uint64(id)), tensorIno(id), npyIno(id), ino(kindF32, uint64(id))} {
			if seen[i] {
				t.Fatalf("ino %d given twice", i)
			}
			seen[i] = true
		}
	}
}

// TestReadF32Windows: a read of the converted bytes at any offset and
// length (the kernel sends page-aligned ones, but nothing relies on it)
// is that window of the whole conversion, across element and group
// boundaries and the passes of a large read.
func TestReadF32Windows(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	var src []safetensors.Source
	var raw [][]byte
	dtypes := []safetensors.DType{safetensors.BF16, safetensors.F8_E4M3, safetensors.F6_E3M2, safetensors.F4}
	for _, d := range dtypes {
		n := uint64(3*f32Step + 12) // several passes, a multiple of every group
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
	ck, err := checkpoint.Open(p, checkpoint.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	f, err := New(ck, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, key := range ck.Keys() {
		id := checkpoint.ID(i)
		info, _ := ck.Info(id)
		var b []byte
		for j, d := range dtypes {
			if d == info.DType {
				b = raw[j]
			}
		}
		n := len(b) * 8 / info.DType.Bits()
		whole := make([]byte, 4*n)
		floats.DecodeLE(info.DType, whole, b)
		for k := range 300 {
			off := r.IntN(len(whole) + 8)
			size := 1 + r.IntN(9000)
			if k%10 == 0 {
				size = 1 + r.IntN(len(whole)) // large: several passes
			}
			dst := make([]byte, size)
			got, err := f.readF32(context.Background(), id, dst, int64(off))
			want := whole[min(off, len(whole)):min(off+size, len(whole))]
			if err != nil || !bytes.Equal(dst[:got], want) {
				t.Fatalf("%s: %d bytes at %d: got %d (%v), differ from the whole conversion", key, size, off, got, err)
			}
		}
	}
}
