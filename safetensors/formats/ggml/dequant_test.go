package ggml

import (
	"math"
	"testing"
)

// Golden vectors worked out by hand from the block layouts in
// ggml-common.h and the formulas of dequantize_row_* in ggml-quants.c.
func TestDequantGolden(t *testing.T) {
	check := func(name string, got []float32, want map[int]float32) {
		t.Helper()
		for i, w := range want {
			if got[i] != w {
				t.Errorf("%s: element %d = %v, want %v", name, i, got[i], w)
			}
		}
	}
	// Q8_0: d = 0.5; x = q * d.
	b := make([]byte, 34)
	b[0], b[1] = 0x00, 0x38
	b[2], b[3], b[4] = 0xfd, 0, 127 // -3, 0, 127
	y := make([]float32, 32)
	Q8_0(y, b)
	check("Q8_0", y, map[int]float32{0: -1.5, 1: 0, 2: 63.5})

	// Q4_0: d = 2; element j < 16 is the low nibble of byte j, j+16 the
	// high one; x = (q - 8) * d.
	b = make([]byte, 18)
	b[0], b[1] = 0x00, 0x40
	b[2] = 0x1f
	Q4_0(y, b)
	check("Q4_0", y, map[int]float32{0: 14, 16: -14, 1: -16})

	// Q4_K: d = 1, dmin = 0.5; sub-block 0 scale 2 min 3, sub-block 1
	// scale 4 min 1, sub-block 4 (the packed high half) scale 1 min 2.
	b = make([]byte, 144)
	b[0], b[1], b[2], b[3] = 0x00, 0x3c, 0x00, 0x38
	sc := b[4:16]
	sc[0], sc[4] = 2, 3
	sc[1], sc[5] = 4, 1
	sc[8] = 0x21
	qs := b[16:]
	qs[0] = 0x5a
	qs[64] = 0x07
	y = make([]float32, 256)
	Q4K(y, b)
	check("Q4_K", y, map[int]float32{0: 2*10 - 1.5, 32: 4*5 - 0.5, 128: 7 - 1, 1: -1.5})

	// Q6_K: d = 0.25; scales 4 (sub-block 0), 1 (sub-block 4).
	b = make([]byte, 210)
	ql, qh, s6 := b[:128], b[128:192], b[192:208]
	b[208], b[209] = 0x00, 0x34
	s6[0], s6[4] = 4, 1
	ql[0] = 0x31
	qh[0] = 0x09 // q1 high bits 01, q2 high bits 10
	Q6K(y, b)
	check("Q6_K", y, map[int]float32{0: 0.25 * 4 * -15, 32: 0, 64: 0.25 * 1 * -29})
}

func TestF16(t *testing.T) {
	for h, want := range map[uint16]float32{0x3c00: 1, 0xc000: -2, 0x0001: float32(math.Ldexp(1, -24)), 0x03ff: float32(math.Ldexp(1023, -24)),
		0x7bff: 65504, 0x8000: float32(math.Copysign(0, -1)), 0x7c00: float32(math.Inf(1))} {
		if got := F16(h); got != want || math.Signbit(float64(got)) != math.Signbit(float64(want)) {
			t.Errorf("F16(%#04x) = %v, want %v", h, got, want)
		}
	}
	if !math.IsNaN(float64(F16(0x7e00))) {
		t.Error("F16(0x7e00) is not NaN")
	}
}
