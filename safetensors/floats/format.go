package floats

import (
	"math"
	"math/bits"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// kind is how a format spends its special bit patterns.
type kind uint8

const (
	ieee kind = iota // Inf and NaN as IEEE 754: exponent all ones (F16, BF16, F8_E5M2)
	fn               // no Inf; S.1111.111 is NaN (F8_E4M3, "fn": finite + NaN)
	fnuz             // no Inf, no -0: 0x80 is the only NaN (the FNUZ formats)
	e8m0             // unsigned, exponent only, no zero: 0xFF is NaN
	mx               // no Inf, no NaN (F6_*, F4)
)

// format describes one narrow float: bits wide, exp exponent bits, man
// mantissa bits, and its bias (FNUZ formats use one more than IEEE would).
type format struct {
	bits, exp, man, bias int
	kind                 kind
	// numpyNaN: a float32 NaN keeps its payload's top bits, as numpy's
	// float16 cast does (F16); otherwise it becomes the format's quiet NaN.
	numpyNaN bool
}

var (
	fmtBF16       = format{16, 8, 7, 127, ieee, false}
	fmtF16        = format{16, 5, 10, 15, ieee, true}
	fmtE5M2       = format{8, 5, 2, 15, ieee, false}
	fmtE4M3       = format{8, 4, 3, 7, fn, false}
	fmtE4M3FNUZ   = format{8, 4, 3, 8, fnuz, false}
	fmtE5M2FNUZ   = format{8, 5, 2, 16, fnuz, false}
	fmtE8M0       = format{8, 8, 0, 127, e8m0, false}
	fmtF6E2M3     = format{6, 2, 3, 1, mx, false}
	fmtF6E3M2     = format{6, 3, 2, 3, mx, false}
	fmtF4         = format{4, 2, 1, 1, mx, false}
	formatOfDType = map[safetensors.DType]*format{
		safetensors.BF16:        &fmtBF16,
		safetensors.F16:         &fmtF16,
		safetensors.F8_E5M2:     &fmtE5M2,
		safetensors.F8_E4M3:     &fmtE4M3,
		safetensors.F8_E4M3FNUZ: &fmtE4M3FNUZ,
		safetensors.F8_E5M2FNUZ: &fmtE5M2FNUZ,
		safetensors.F8_E8M0:     &fmtE8M0,
		safetensors.F6_E2M3:     &fmtF6E2M3,
		safetensors.F6_E3M2:     &fmtF6E3M2,
		safetensors.F4:          &fmtF4,
	}
)

const (
	f32QNaN = 0x7FC00000
	f32Inf  = 0x7F800000
)

func (f *format) signed() bool            { return f.kind != e8m0 }
func (f *format) signBit() uint32         { return 1 << (f.bits - 1) }
func (f *format) manMask() uint32         { return 1<<f.man - 1 }
func (f *format) expOnes() uint32         { return 1<<f.exp - 1 }
func (f *format) absMask() uint32         { return f.signBit() - 1 }
func (f *format) codeMask() uint32        { return 1<<f.bits - 1 }
func (f *format) infCode() uint32         { return f.expOnes() << f.man } // ieee only
func (f *format) isIEEENaN(a uint32) bool { return a > f.infCode() }

// maxFinite is the largest finite code (without sign).
func (f *format) maxFinite() uint32 {
	switch f.kind {
	case ieee:
		return f.infCode() - 1
	case fn:
		return f.absMask() - 1 // S.1111.110: the all-ones pattern is NaN
	case e8m0:
		return 0xFE
	}
	return f.absMask() // fnuz, mx: every non-sign pattern is finite
}

// isNaN reports whether code is a NaN of the format.
func (f *format) isNaN(code uint32) bool {
	a := code & f.absMask()
	switch f.kind {
	case ieee:
		return f.isIEEENaN(a)
	case fn:
		return a == f.absMask()
	case fnuz:
		return code == f.signBit()
	case e8m0:
		return code == 0xFF
	}
	return false
}

// decode converts one code to float32 bits. It is the definition the tables
// are built from (BF16 and F16 have bit-twiddled equivalents in half.go).
func (f *format) decode(code uint32) uint32 {
	code &= f.codeMask()
	var sign uint32
	if f.signed() {
		sign = (code >> (f.bits - 1)) << 31
	}
	if f.isNaN(code) {
		if f.kind == ieee && f.bits == 16 {
			// BF16 and F16 carry their payload into float32 (a plain
			// bit extension for BF16, numpy's cast for F16).
			return sign | f32Inf | (code&f.manMask())<<(23-f.man)
		}
		return sign | f32QNaN // ml_dtypes: quiet NaN with the pattern's sign
	}
	a := code
	if f.signed() {
		a &= f.absMask()
	}
	if f.kind == ieee && a == f.infCode() {
		return sign | f32Inf
	}
	e := int(a >> f.man)
	m := a & f.manMask()
	var v float64
	if e == 0 && f.kind != e8m0 {
		v = math.Ldexp(float64(m), 1-f.bias-f.man) // subnormal (or zero)
	} else {
		v = math.Ldexp(float64(1<<f.man|m), e-f.bias-f.man)
	}
	return sign | math.Float32bits(float32(v))
}

// encode converts float32 bits to a code, rounding to nearest even. It
// follows ml_dtypes' ConvertImpl (non-saturating, not truncating) step by
// step, so the special cases land where ml_dtypes puts them; the NaN of F16
// follows numpy instead (F16 is numpy's type).
func (f *format) encode(x uint32) uint32 {
	sign := x >> 31
	abs := x & 0x7FFFFFFF
	switch {
	case abs > f32Inf:
		return f.nan(x)
	case abs == f32Inf:
		return f.withSign(f.overflow(), sign)
	case abs == 0:
		if f.kind == e8m0 {
			return 0xFF // no zero: NaN, as a non-saturating cast
		}
		return f.withSign(0, sign)
	}
	if sign == 1 && !f.signed() {
		return 0xFF
	}
	// Normalize: m holds the implicit bit at bit 23.
	var e int
	var m uint32
	if abs >= 1<<23 {
		e = int(abs>>23) - 127
		m = abs&0x7FFFFF | 1<<23
	} else {
		s := bits.LeadingZeros32(abs) - 8
		m = abs << s
		e = -126 - s
	}
	// tb is the biased exponent minus one: the implicit bit, still in m,
	// adds the one back when the two are summed (and a rounding carry out
	// of the mantissa bumps the exponent for free).
	tb := e + f.bias - 1
	shift := min(23-f.man+max(0, -tb), 25)
	m = roundNearestEven(m, shift) >> shift
	r := m + uint32(max(0, tb))<<f.man
	if r > f.maxFinite() {
		r = f.overflow()
	}
	return f.withSign(r, sign)
}

// roundNearestEven adds the bias that makes a right shift by n round to
// nearest, ties to even (n >= 1).
func roundNearestEven(v uint32, n int) uint32 {
	return v + (v>>n)&1 + (1<<(n-1) - 1)
}

// overflow is what a value too large for the format becomes (ml_dtypes'
// "infinity()" of the format, before the sign).
func (f *format) overflow() uint32 {
	switch f.kind {
	case ieee:
		return f.infCode()
	case fn:
		return f.absMask() // NaN
	case fnuz:
		return f.signBit() // NaN
	case e8m0:
		return 0xFF // NaN
	}
	return f.absMask() // mx: saturates to max
}

// withSign applies a sign the way ml_dtypes' unary minus does.
func (f *format) withSign(r, sign uint32) uint32 {
	if sign == 0 {
		return r
	}
	switch f.kind {
	case fnuz:
		if r&f.absMask() == 0 {
			return r // 0 stays +0; 0x80 (NaN) stays NaN
		}
	case e8m0:
		return 0xFF
	}
	return r ^ f.signBit()
}

// nan is what a float32 NaN (bits x) becomes.
func (f *format) nan(x uint32) uint32 {
	sign := x >> 31
	switch f.kind {
	case ieee:
		if f.numpyNaN {
			// numpy: keep the payload's top bits; if none are set, set the
			// lowest so the result stays a NaN.
			r := f.infCode() | (x&0x7FFFFF)>>13
			if r == f.infCode() {
				r++
			}
			return r | sign<<15
		}
		return f.withSign(f.infCode()|1<<(f.man-1), sign) // the quiet NaN
	case mx:
		// No NaN: ml_dtypes' quiet_NaN() of these types is the -0
		// pattern, and its minus flips the sign bit.
		return f.withSign(f.signBit(), sign)
	}
	return f.withSign(f.overflow(), sign) // fn, fnuz, e8m0: their one NaN
}
