package namespace

import (
	"bytes"
	"encoding/binary"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// npyOf is a version 1.0 .npy file as numpy writes one: the header dict,
// padded with spaces to a multiple of 64, then data.
func npyOf(descr string, fortran bool, shape string, data []byte) []byte {
	order := "False"
	if fortran {
		order = "True"
	}
	dict := "{'descr': '" + descr + "', 'fortran_order': " + order + ", 'shape': " + shape + ", }"
	for (10+len(dict)+1)%64 != 0 {
		dict += " "
	}
	b := append([]byte("\x93NUMPY\x01\x00"), 0, 0)
	binary.LittleEndian.PutUint16(b[8:], uint16(len(dict)+1))
	return append(append(append(b, dict...), '\n'), data...)
}

func le16(vs ...int16) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint16(b, uint16(v))
	}
	return b
}

func le32f(vs ...float32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

// What a .npy written as name.npy becomes, as a table: the dtype, shape
// and C-order bytes, or a refusal naming the tensor and the file.
func TestNPYTensor(t *testing.T) {
	f8 := checkpoint.Info{Key: "q", DType: safetensors.F8_E4M3, Shape: []uint64{3}, Size: 3}
	tests := []struct {
		name  string
		file  []byte
		old   checkpoint.Info
		dtype safetensors.DType
		shape []uint64
		data  []byte
		err   string // part of the refusal; "" = accepted
	}{
		{"C order", npyOf("<f4", false, "(2, 1)", le32f(1, 2)), checkpoint.Info{}, safetensors.F32, []uint64{2, 1}, le32f(1, 2), ""},
		// np.save(k.T): column-major bytes of [[0 1 2] [3 4 5]].
		{"Fortran order", npyOf("<i2", true, "(2, 3)", le16(0, 3, 1, 4, 2, 5)), checkpoint.Info{}, safetensors.I16, []uint64{2, 3}, le16(0, 1, 2, 3, 4, 5), ""},
		{"|V1 over a float8 keeps it", npyOf("|V1", false, "(3,)", []byte{1, 2, 3}), f8, safetensors.F8_E4M3, []uint64{3}, []byte{1, 2, 3}, ""},
		{"|V1 as a new tensor", npyOf("|V1", false, "(3,)", []byte{1, 2, 3}), checkpoint.Info{}, 0, nil, nil, `tensor "k": k.npy:`},
		{"a dtype safetensors lacks", npyOf("<U2", false, "(1,)", make([]byte, 8)), checkpoint.Info{}, 0, nil, nil, `tensor "k": k.npy:`},
		{"short data", npyOf("<f4", false, "(4,)", le32f(1, 2)), checkpoint.Info{}, 0, nil, nil, `tensor "k": k.npy:`},
		{"not a .npy", []byte("plain bytes, no magic"), checkpoint.Info{}, 0, nil, nil, `tensor "k": k.npy:`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, shape, data, err := ParseNPY(tc.file).Tensor(tc.old, "k", "k.npy")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("%v, want a refusal containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d != tc.dtype || !slices.Equal(shape, tc.shape) || !bytes.Equal(data, tc.data) {
				t.Fatalf("%v %v % x, want %v %v % x", d, shape, data, tc.dtype, tc.shape, tc.data)
			}
		})
	}
	if ParseNPY([]byte("plain")).IsNPY() || !ParseNPY(npyOf("|V1", false, "(1,)", []byte{0})).IsNPY() {
		t.Error("IsNPY: a plain file is not a .npy; a |V1 one is (its dtype is decided by the tensor it replaces)")
	}
}

// What a .npy written as a tensor's .f32.npy makes of it: its float32
// values encoded in the tensor's dtype, or a refusal saying what to write.
func TestNPYF32Values(t *testing.T) {
	bf := checkpoint.Info{Key: "w", DType: safetensors.BF16, Shape: []uint64{2}, Size: 4}
	out, err := ParseNPY(npyOf("<f4", false, "(2,)", le32f(1, -2))).F32Values(bf, "w.f32.npy")
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{0x80, 0x3f, 0x00, 0xc0}; !bytes.Equal(out, want) { // BF16 1.0, -2.0
		t.Fatalf("% x, want % x", out, want)
	}
	for _, tc := range []struct {
		name string
		file []byte
		cur  checkpoint.Info
		err  string
	}{
		{"float64", npyOf("<f8", false, "(2,)", make([]byte, 16)), bf, "astype(np.float32)"},
		{"another shape", npyOf("<f4", false, "(3,)", le32f(1, 2, 3)), bf, "not the shape (write w.npy"},
		{"a dtype with no float32 view", npyOf("<f4", false, "(2,)", le32f(1, 2)), checkpoint.Info{Key: "w", DType: safetensors.U8, Shape: []uint64{2}, Size: 2}, "no float32 view"},
		{"not a .npy", []byte("plain"), bf, `tensor "w": w.f32.npy:`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseNPY(tc.file).F32Values(tc.cur, "w.f32.npy"); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("%v, want a refusal containing %q", err, tc.err)
			}
		})
	}
}

// The check of a large upload from its first bytes refuses only what the
// commit would: no .npy header, or an array that does not fill the file.
func TestNPYPrecheck(t *testing.T) {
	f := npyOf("<f4", false, "(4,)", le32f(1, 2, 3, 4))
	if err := NPYPrecheck(f, int64(len(f))); err != nil {
		t.Errorf("a whole .npy: %v", err)
	}
	if err := NPYPrecheck(f, int64(len(f))+4); err == nil {
		t.Error("a file longer than its array was let through")
	}
	if err := NPYPrecheck([]byte("plain bytes"), 1<<30); err == nil {
		t.Error("a file with no .npy header was let through")
	}
	if err := NPYPrecheck(f[:12], 1<<30); err != nil {
		t.Errorf("a header longer than the prefix must be left to the commit: %v", err)
	}
}
