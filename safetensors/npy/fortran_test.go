package npy

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"
)

// TestToCOrderMatchesNumpy: numpy writes Fortran-ordered arrays of several
// ranks, dtypes and shapes (ones and zeros among the dims); ParseAnyOrder
// and ToCOrder must give exactly the bytes numpy gives for the same array
// in C order.
func TestToCOrderMatchesNumpy(t *testing.T) {
	if err := exec.Command(pythonPath, "-c", "import numpy").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s with numpy is needed: %v", pythonPath, err)
		}
		t.Skip("no numpy")
	}
	const gen = `
import io, json, numpy as np
out = []
cases = [('<f4', (3, 16)), ('<f4', (16, 3)), ('<i2', (2, 3, 4, 5)), ('<f8', (1, 4, 6)),
         ('|u1', (7, 1, 3)), ('<u4', (2, 2, 2, 2, 2)), ('<c8', (3, 2)), ('|b1', (5, 4)),
         ('<f2', (4, 1)), ('<i8', (0, 3)), ('<f4', (2, 0, 3))]
for dt, shape in cases:
    n = int(np.prod(shape))
    a = (np.arange(n) * 7 % 251).astype(dt).reshape(shape)
    f = np.asfortranarray(a)
    buf = io.BytesIO()
    np.save(buf, f)
    out.append({'file': buf.getvalue().hex(), 'c': np.ascontiguousarray(a).tobytes().hex(), 'size': a.dtype.itemsize, 'what': dt + str(shape)})
print(json.dumps(out))
`
	b, err := exec.Command(pythonPath, "-c", gen).Output()
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		File, C, What string
		Size          int
	}
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		file, _ := hex.DecodeString(c.File)
		want, _ := hex.DecodeString(c.C)
		if _, err := Parse(file); err != nil && !errors.Is(err, ErrFortran) {
			t.Errorf("%s: Parse: %v", c.What, err)
		}
		info, err := ParseAnyOrder(file)
		if err != nil {
			t.Errorf("%s: ParseAnyOrder: %v", c.What, err)
			continue
		}
		data := file[info.DataOffset:]
		if info.NeedsReorder() {
			if data, err = ToCOrder(data, info.Shape, c.Size); err != nil {
				t.Errorf("%s: ToCOrder: %v", c.What, err)
				continue
			}
		}
		if !bytes.Equal(data, want) {
			t.Errorf("%s: the C-order bytes differ from numpy's", c.What)
		}
	}
}

// TestToCOrderIndex: against the definition, on random shapes: element
// (i0, ..., in-1) is at i0 + d0*(i1 + d1*(...)) in Fortran order and at
// (...(i0*d1 + i1)*d2 ...) in C order.
func TestToCOrderIndex(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 300 {
		k := 1 + r.IntN(5)
		shape := make([]uint64, k)
		n := 1
		for i := range shape {
			shape[i] = uint64(r.IntN(5))
			n *= int(shape[i])
		}
		size := []int{1, 2, 4, 8}[r.IntN(4)]
		want := make([]byte, n*size)
		for i := range want {
			want[i] = byte(r.Uint32())
		}
		fortran := make([]byte, len(want))
		idx := make([]int, k)
		for c := range n {
			// idx of C position c.
			rem := c
			for a := k - 1; a >= 0; a-- {
				idx[a] = rem % int(shape[a])
				rem /= int(shape[a])
			}
			f := 0
			for a := k - 1; a >= 0; a-- {
				f = f*int(shape[a]) + idx[a]
			}
			copy(fortran[f*size:(f+1)*size], want[c*size:(c+1)*size])
		}
		got, err := ToCOrder(fortran, shape, size)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("shape %v, %d-byte elements: %v", shape, size, err)
		}
	}
	if _, err := ToCOrder(make([]byte, 5), []uint64{2, 3}, 1); err == nil {
		t.Error("ToCOrder took 5 bytes for a 2x3 array")
	}
}
