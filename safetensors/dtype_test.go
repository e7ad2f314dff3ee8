package safetensors

import (
	"errors"
	"testing"
)

func TestDTypeTable(t *testing.T) {
	t.Parallel()
	// Reference enum order and bit widths (DESIGN.md); the writer's sort
	// depends on the order, so it is pinned here name by name.
	want := []struct {
		name string
		bits int
	}{
		{"BOOL", 8}, {"F4", 4}, {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"U8", 8}, {"I8", 8},
		{"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8},
		{"I16", 16}, {"U16", 16}, {"F16", 16}, {"BF16", 16}, {"I32", 32}, {"U32", 32},
		{"F32", 32}, {"C64", 64}, {"F64", 64}, {"I64", 64}, {"U64", 64},
	}
	if len(want) != int(numDTypes) {
		t.Fatalf("%d dtypes, want %d", numDTypes, len(want))
	}
	for i, w := range want {
		d := DType(i)
		if d.String() != w.name || d.Bits() != w.bits {
			t.Errorf("DType(%d) = %s/%d bits, want %s/%d", i, d, d.Bits(), w.name, w.bits)
		}
		if p, ok := ParseDType(w.name); !ok || p != d {
			t.Errorf("ParseDType(%q) = %v, %v", w.name, p, ok)
		}
	}
	if F32 != 17 || U64 != 21 || BF16 != 14 {
		t.Errorf("enum values moved: F32=%d BF16=%d U64=%d", F32, BF16, U64)
	}
	for _, s := range []string{"", "f32", "F32 ", "FP32", "float32", "F8_E4M3FN", "BOOL\x00"} {
		if _, ok := ParseDType(s); ok {
			t.Errorf("ParseDType(%q) accepted", s)
		}
	}
	if s := DType(200).String(); s != "DType(200)" || DType(200).Bits() != 0 || DType(200).Valid() {
		t.Errorf("out-of-range dtype: %q", s)
	}
}

func TestByteSize(t *testing.T) {
	t.Parallel()
	cases := []struct {
		d     DType
		shape []uint64
		want  uint64
		err   error
	}{
		{F32, []uint64{1, 2, 3}, 24, nil},
		{F32, []uint64{}, 4, nil},
		{F32, nil, 4, nil},
		{BOOL, []uint64{3}, 3, nil},
		{U64, []uint64{2, 0, 5}, 0, nil},
		{C64, []uint64{3}, 24, nil},
		{F4, []uint64{1, 2}, 1, nil},
		{F4, []uint64{1, 3}, 0, ErrSubByte},
		{F4, []uint64{0, 3}, 0, nil},
		{F6_E2M3, []uint64{4}, 3, nil},
		{F6_E3M2, []uint64{2}, 0, ErrSubByte},
		{I32, []uint64{2, 18446744073709551614}, 0, ErrShapeOverflow},
		{I32, []uint64{2, 9223372036854775807}, 0, ErrShapeOverflow},
		{U8, []uint64{1 << 61}, 0, ErrShapeOverflow}, // bits overflow though bytes would fit
		{U8, []uint64{1<<61 - 1}, 1<<61 - 1, nil},
		{U8, []uint64{1 << 32, 1 << 32, 0}, 0, ErrShapeOverflow}, // folded left to right, like the reference
		{U8, []uint64{0, 1 << 32, 1 << 32}, 0, nil},
		{DType(99), []uint64{1}, 0, ErrUnknownDType},
	}
	for _, c := range cases {
		got, err := ByteSize(c.d, c.shape)
		if got != c.want || !errors.Is(err, c.err) {
			t.Errorf("ByteSize(%v, %v) = %d, %v; want %d, %v", c.d, c.shape, got, err, c.want, c.err)
		}
	}
}

func TestAppendShape(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		shape []uint64
		want  string
	}{{nil, "[]"}, {[]uint64{}, "[]"}, {[]uint64{5}, "[5]"}, {[]uint64{3, 16}, "[3,16]"}, {[]uint64{1 << 40, 0}, "[1099511627776,0]"}} {
		if got := string(AppendShape(nil, c.shape)); got != c.want || ShapeString(c.shape) != c.want {
			t.Errorf("AppendShape(%v) = %s, want %s", c.shape, got, c.want)
		}
	}
}
