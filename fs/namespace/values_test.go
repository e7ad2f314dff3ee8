package namespace

import (
	"slices"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Shapes as users type them: what getfattr shows, what numpy prints, the
// bare list. Anything else is refused, whole.
func TestParseShape(t *testing.T) {
	tests := []struct {
		in   string
		want []uint64 // nil: refused
	}{
		{"[2,2]", []uint64{2, 2}},
		{" [2, 2]\n", []uint64{2, 2}},
		{"[]", []uint64{}},
		{"(2, 2)", []uint64{2, 2}},
		{"(4,)", []uint64{4}},
		{"(2, 3, )", []uint64{2, 3}},
		{"()", []uint64{}},
		{"2,2", []uint64{2, 2}},
		{"48", []uint64{48}},
		{"0", []uint64{0}},
		{"[18446744073709551615]", []uint64{1<<64 - 1}},
		{"", nil},
		{"  ", nil},
		{"[2,", nil},
		{"[2,]", nil},
		{"2,,2", nil},
		{"(,)", nil},
		{"[-1]", nil},
		{"[+1]", nil},
		{"[2.0]", nil},
		{"[0x10]", nil},
		{"[1_000]", nil},
		{"2x2", nil},
		{"[18446744073709551616]", nil},
		{"[[2]]", nil},
		{"(2, 2]", nil},
	}
	for _, tc := range tests {
		got, ok := parseShape([]byte(tc.in))
		if ok != (tc.want != nil) || !slices.Equal(got, tc.want) {
			t.Errorf("parseShape(%q) = %v, %v; want %v", tc.in, got, ok, tc.want)
		}
	}
}

// Dtypes as users type them: getfattr's names, numpy's and PyTorch's.
// Names whose width depends on who says them, and big-endian strings,
// are refused.
func TestParseDType(t *testing.T) {
	tests := []struct {
		in   string
		want safetensors.DType
		ok   bool
	}{
		{"F32", safetensors.F32, true},
		{"F4", safetensors.F4, true},
		{"BF16", safetensors.BF16, true},
		{"F8_E4M3\n", safetensors.F8_E4M3, true},
		{"float32", safetensors.F32, true},
		{"bfloat16", safetensors.BF16, true},
		{"float8_e4m3fn", safetensors.F8_E4M3, true},
		{"float8_e8m0fnu", safetensors.F8_E8M0, true},
		{"bool", safetensors.BOOL, true},
		{"<f4", safetensors.F32, true},
		{"|u1", safetensors.U8, true},
		{"<c8", safetensors.C64, true},
		{"torch.float16", safetensors.F16, true},
		{"torch.int64", safetensors.I64, true},
		{"", 0, false},
		{"float", 0, false},
		{"int", 0, false},
		{"torch.float", 0, false},
		{">f4", 0, false},
		{"f4", 0, false},
		{"i8", 0, false},
		{"u8", 0, false},
		{"bf16", 0, false},
		{"F33", 0, false},
		{"FLOAT32", 0, false},
		{"float32x", 0, false},
	}
	for _, tc := range tests {
		got, ok := parseDType([]byte(tc.in))
		if ok != tc.ok || ok && got != tc.want {
			t.Errorf("parseDType(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}
