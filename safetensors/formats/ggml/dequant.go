package ggml

import (
	"encoding/binary"
	"math"
)

// Each function follows its dequantize_row_* in ggml-quants.c line for
// line: the scales are float32 (fp16 widened exactly), the products are
// float32 and evaluated in the same order, so the results are the same
// bits. Go does not fuse a*b-c into an FMA on amd64 unless asked (the
// float32(...) conversions below also forbid it), as C does not at -O2
// without -ffp-contract=fast.

// F16 is GGML_FP16_TO_FP32: IEEE half to single, exactly.
func F16(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp != 0:
		return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
	case mant == 0:
		return math.Float32frombits(sign)
	}
	// Subnormal: normalize.
	e := uint32(113)
	for mant&0x400 == 0 {
		mant <<= 1
		e--
	}
	return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
}

func half(b []byte) float32 { return F16(binary.LittleEndian.Uint16(b)) }

// Q4_0: d (f16), 16 bytes; x = (nibble - 8) * d, low nibbles first.
func Q4_0(y []float32, x []byte) {
	for i := 0; len(x) >= 18; i++ {
		d := half(x)
		qs := x[2:18]
		for j := 0; j < 16; j++ {
			x0 := int32(qs[j]&0x0f) - 8
			x1 := int32(qs[j]>>4) - 8
			y[i*32+j] = float32(x0) * d
			y[i*32+j+16] = float32(x1) * d
		}
		x = x[18:]
	}
}

// Q4_1: d, m (f16), 16 bytes; x = nibble * d + m.
func Q4_1(y []float32, x []byte) {
	for i := 0; len(x) >= 20; i++ {
		d, m := half(x), half(x[2:])
		qs := x[4:20]
		for j := 0; j < 16; j++ {
			y[i*32+j] = float32(float32(int32(qs[j]&0x0f))*d) + m
			y[i*32+j+16] = float32(float32(int32(qs[j]>>4))*d) + m
		}
		x = x[20:]
	}
}

// Q5_0: d (f16), qh (u32: the fifth bits), 16 bytes; x = (q - 16) * d.
func Q5_0(y []float32, x []byte) {
	for i := 0; len(x) >= 22; i++ {
		d := half(x)
		qh := binary.LittleEndian.Uint32(x[2:])
		qs := x[6:22]
		for j := 0; j < 16; j++ {
			xh0 := uint8(((qh >> j) << 4) & 0x10)
			xh1 := uint8((qh >> (j + 12)) & 0x10)
			x0 := int32(qs[j]&0x0f|xh0) - 16
			x1 := int32(qs[j]>>4|xh1) - 16
			y[i*32+j] = float32(x0) * d
			y[i*32+j+16] = float32(x1) * d
		}
		x = x[22:]
	}
}

// Q5_1: d, m (f16), qh, 16 bytes; x = q * d + m.
func Q5_1(y []float32, x []byte) {
	for i := 0; len(x) >= 24; i++ {
		d, m := half(x), half(x[2:])
		qh := binary.LittleEndian.Uint32(x[4:])
		qs := x[8:24]
		for j := 0; j < 16; j++ {
			xh0 := uint8(((qh >> j) << 4) & 0x10)
			xh1 := uint8((qh >> (j + 12)) & 0x10)
			x0 := int32(qs[j]&0x0f | xh0)
			x1 := int32(qs[j]>>4 | xh1)
			y[i*32+j] = float32(float32(x0)*d) + m
			y[i*32+j+16] = float32(float32(x1)*d) + m
		}
		x = x[24:]
	}
}

// Q8_0: d (f16), 32 int8; x = q * d.
func Q8_0(y []float32, x []byte) {
	for i := 0; len(x) >= 34; i++ {
		d := half(x)
		for j := 0; j < 32; j++ {
			y[i*32+j] = float32(int8(x[2+j])) * d
		}
		x = x[34:]
	}
}

// getScaleMinK4 is get_scale_min_k4: the 6-bit scale and min of
// sub-block j from the 12 packed bytes.
func getScaleMinK4(j int, q []byte) (d, m uint8) {
	if j < 4 {
		return q[j] & 63, q[j+4] & 63
	}
	return q[j+4]&0xf | (q[j-4]>>6)<<4, q[j+4]>>4 | (q[j]>>6)<<4
}

// Q2K: scales[16], qs[64], d, dmin (f16).
func Q2K(y []float32, x []byte) {
	for len(x) >= 84 {
		scales, q := x[:16], x[16:80]
		d, min := half(x[80:]), half(x[82:])
		is := 0
		for n := 0; n < 256; n += 128 {
			shift := uint(0)
			for j := 0; j < 4; j++ {
				sc := scales[is]
				is++
				dl, ml := d*float32(sc&0xf), min*float32(sc>>4)
				for l := 0; l < 16; l++ {
					y[0] = float32(dl*float32(int8((q[l]>>shift)&3))) - ml
					y = y[1:]
				}
				sc = scales[is]
				is++
				dl, ml = d*float32(sc&0xf), min*float32(sc>>4)
				for l := 0; l < 16; l++ {
					y[0] = float32(dl*float32(int8((q[l+16]>>shift)&3))) - ml
					y = y[1:]
				}
				shift += 2
			}
			q = q[32:]
		}
		x = x[84:]
	}
}

// Q3K: hmask[32], qs[64], scales[12], d (f16).
func Q3K(y []float32, x []byte) {
	const kmask1, kmask2 = 0x03030303, 0x0f0f0f0f
	for len(x) >= 110 {
		hm, q := x[:32], x[32:96]
		dAll := half(x[108:])
		var aux [4]uint32
		for k := 0; k < 3; k++ {
			aux[k] = binary.LittleEndian.Uint32(x[96+4*k:])
		}
		tmp := aux[2]
		aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4)
		aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4)
		aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4)
		aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4)
		var scales [16]int8
		for k := 0; k < 16; k++ {
			scales[k] = int8(aux[k/4] >> (8 * (k % 4)))
		}
		is := 0
		m := uint8(1)
		for n := 0; n < 256; n += 128 {
			shift := uint(0)
			for j := 0; j < 4; j++ {
				dl := dAll * float32(int32(scales[is])-32)
				is++
				for l := 0; l < 16; l++ {
					sub := int8(0)
					if hm[l]&m == 0 {
						sub = 4
					}
					y[0] = dl * float32(int8((q[l]>>shift)&3)-sub)
					y = y[1:]
				}
				dl = dAll * float32(int32(scales[is])-32)
				is++
				for l := 0; l < 16; l++ {
					sub := int8(0)
					if hm[l+16]&m == 0 {
						sub = 4
					}
					y[0] = dl * float32(int8((q[l+16]>>shift)&3)-sub)
					y = y[1:]
				}
				shift += 2
				m <<= 1
			}
			q = q[32:]
		}
		x = x[110:]
	}
}

// Q4K: d, dmin (f16), scales[12], qs[128].
func Q4K(y []float32, x []byte) {
	for len(x) >= 144 {
		d, min := half(x), half(x[2:])
		scales, q := x[4:16], x[16:144]
		is := 0
		for j := 0; j < 256; j += 64 {
			sc, m := getScaleMinK4(is, scales)
			d1, m1 := d*float32(sc), min*float32(m)
			sc, m = getScaleMinK4(is+1, scales)
			d2, m2 := d*float32(sc), min*float32(m)
			for l := 0; l < 32; l++ {
				y[l] = float32(d1*float32(q[l]&0xf)) - m1
			}
			for l := 0; l < 32; l++ {
				y[32+l] = float32(d2*float32(q[l]>>4)) - m2
			}
			y = y[64:]
			q = q[32:]
			is += 2
		}
		x = x[144:]
	}
}

// Q5K: d, dmin (f16), scales[12], qh[32], qs[128].
func Q5K(y []float32, x []byte) {
	for len(x) >= 176 {
		d, min := half(x), half(x[2:])
		scales, qh, ql := x[4:16], x[16:48], x[48:176]
		is := 0
		u1, u2 := uint8(1), uint8(2)
		for j := 0; j < 256; j += 64 {
			sc, m := getScaleMinK4(is, scales)
			d1, m1 := d*float32(sc), min*float32(m)
			sc, m = getScaleMinK4(is+1, scales)
			d2, m2 := d*float32(sc), min*float32(m)
			for l := 0; l < 32; l++ {
				h := int32(0)
				if qh[l]&u1 != 0 {
					h = 16
				}
				y[l] = float32(d1*float32(int32(ql[l]&0xf)+h)) - m1
			}
			for l := 0; l < 32; l++ {
				h := int32(0)
				if qh[l]&u2 != 0 {
					h = 16
				}
				y[32+l] = float32(d2*float32(int32(ql[l]>>4)+h)) - m2
			}
			y = y[64:]
			ql = ql[32:]
			is += 2
			u1 <<= 2
			u2 <<= 2
		}
		x = x[176:]
	}
}

// Q6K: ql[128], qh[64], scales[16] (int8), d (f16).
func Q6K(y []float32, x []byte) {
	for len(x) >= 210 {
		ql, qh, sc := x[:128], x[128:192], x[192:208]
		d := half(x[208:])
		for n := 0; n < 256; n += 128 {
			for l := 0; l < 32; l++ {
				is := l / 16
				q1 := int8(ql[l]&0xf|((qh[l]>>0)&3)<<4) - 32
				q2 := int8(ql[l+32]&0xf|((qh[l]>>2)&3)<<4) - 32
				q3 := int8(ql[l]>>4|((qh[l]>>4)&3)<<4) - 32
				q4 := int8(ql[l+32]>>4|((qh[l]>>6)&3)<<4) - 32
				y[l] = float32(d*float32(int8(sc[is+0]))) * float32(q1)
				y[l+32] = float32(d*float32(int8(sc[is+2]))) * float32(q2)
				y[l+64] = float32(d*float32(int8(sc[is+4]))) * float32(q3)
				y[l+96] = float32(d*float32(int8(sc[is+6]))) * float32(q4)
			}
			y = y[128:]
			ql = ql[64:]
			qh = qh[32:]
			sc = sc[8:]
		}
		x = x[210:]
	}
}
