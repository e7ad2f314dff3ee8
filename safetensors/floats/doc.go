// Package floats turns tensor elements into numbers a person can read: it
// converts every floating dtype of safetensors that numpy lacks (BF16, F16,
// the five 8-bit floats, F6_E2M3, F6_E3M2, F4) to float32 and back, and
// summarizes or compares tensors of any dtype (stats.go, compare.go).
//
// # Conversions
//
// To float32 every conversion is exact (each of these formats is a subset
// of float32), bit for bit as ml_dtypes converts (numpy for F16):
//
//   - BF16 and F16 keep NaN payloads (BF16 is the top half of a float32;
//     F16 as numpy's float16 -> float32 cast);
//   - the 8-bit formats give float32's quiet NaN (0x7FC00000) with the
//     pattern's sign bit, as ml_dtypes does: F8_E4M3 0x7F/0xFF, F8_E5M2 any
//     NaN pattern, F8_E4M3FNUZ/F8_E5M2FNUZ 0x80 (whose sign bit is set, so
//     -NaN), F8_E8M0 0xFF (unsigned: +NaN);
//   - F8_E8M0 0x00 is 2^-127 (a float32 subnormal): the format has no zero.
//
// From float32, every format rounds to nearest, ties to even (ml_dtypes'
// default, non-saturating casts; numpy's for F16). What cannot be
// represented:
//
//	format         overflow / ±Inf        NaN                     -0 / tiny negative
//	BF16           ±Inf                   0x7FC0 / 0xFFC0         -0
//	F16            ±Inf                   sign, top 10 payload bits; 0x7C01 if those are 0 (numpy)   -0
//	F8_E5M2        ±Inf                   0x7E / 0xFE             -0
//	F8_E4M3        NaN 0x7F / 0xFF        0x7F / 0xFF             -0
//	F8_E4M3FNUZ    NaN 0x80               0x80                    +0 (no -0)
//	F8_E5M2FNUZ    NaN 0x80               0x80                    +0 (no -0)
//	F8_E8M0        NaN 0xFF               0xFF                    NaN (no zero, no sign)
//	F6_E2M3, F6_E3M2, F4  saturate to ±max  a zero, as ml_dtypes: +NaN the -0 pattern, -NaN +0   -0
//
// F8_E8M0 keeps ml_dtypes' two quirks: a tie between powers of two (1.5 *
// 2^k) rounds up (there is no mantissa to be even), and a float32 in
// (2^-127, 2^-126) becomes 2^-126 (its rounding treats the format as if
// it had subnormals).
//
// Sub-byte dtypes are packed as PyTorch's float4_e2m1fn_x2 packs F4 (the
// only sub-byte float a framework writes to safetensors): element 2i in the
// low nibble of byte i, element 2i+1 in the high nibble. F6 follows the same
// little-endian bit order: 4 elements in 3 bytes, element k of a group at
// bits 6k..6k+5 of the 24-bit little-endian word. The reference library only
// checks that numel*bits is a whole number of bytes.
package floats
