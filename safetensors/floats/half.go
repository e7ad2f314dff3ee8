package floats

import "math"

// The 16-bit formats are too wide for a table (256 KiB would not stay in
// cache next to the data); these are the bit manipulations the generic
// format code describes, written for speed.

// f16Bits converts an IEEE half to float32 bits exactly, NaN payload
// included (as numpy's float16 cast).
func f16Bits(h uint16) uint32 {
	sign := uint32(h&0x8000) << 16
	a := uint32(h & 0x7FFF)
	switch {
	case a >= 0x7C00: // Inf, NaN
		return sign | f32Inf | (a&0x3FF)<<13
	case a >= 0x0400: // normal: rebias the exponent from 15 to 127
		return sign | (a<<13 + (127-15)<<23)
	case a == 0:
		return sign
	}
	// Subnormal: a * 2^-24 is exact in float32.
	return sign | math.Float32bits(float32(a)*0x1p-24)
}

// bf16FromBits rounds float32 bits to BF16, to nearest even, as Eigen's
// float_to_bfloat16_rtne (ml_dtypes' bfloat16): overflow carries into the
// exponent and gives Inf; a NaN becomes the quiet NaN with its sign.
func bf16FromBits(x uint32) uint16 {
	if x&0x7FFFFFFF > f32Inf {
		return uint16(x>>16)&0x8000 | 0x7FC0
	}
	return uint16((x + 0x7FFF + (x>>16)&1) >> 16)
}
