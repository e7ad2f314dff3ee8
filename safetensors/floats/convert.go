package floats

import (
	"encoding/binary"
	"math"
	"unsafe"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// codec is one convertible dtype: its format and, for the formats of 8
// bits or fewer, the float32 bits of every code (decoding is one lookup).
type codec struct {
	f     *format
	table []uint32
	group int // elements per whole number of bytes
}

var codecs [32]*codec // by DType

func init() {
	for d, f := range formatOfDType {
		c := &codec{f: f, group: 1}
		switch f.bits {
		case 4:
			c.group = 2
		case 6:
			c.group = 4
		}
		if f.bits <= 8 {
			c.table = make([]uint32, 1<<f.bits)
			for code := range c.table {
				c.table[code] = f.decode(uint32(code))
			}
		}
		codecs[d] = c
	}
}

func codecOf(d safetensors.DType) *codec {
	if int(d) < len(codecs) {
		return codecs[d]
	}
	return nil
}

// Has reports whether d is one of the dtypes this package converts: every
// floating dtype but F32 and F64, which need no conversion.
func Has(d safetensors.DType) bool { return codecOf(d) != nil }

// Group is the number of elements of d that fill a whole number of bytes:
// 2 for F4, 4 for F6_*, 1 otherwise. A conversion of part of a tensor must
// start at an element index that is a multiple of it.
func Group(d safetensors.DType) int {
	if c := codecOf(d); c != nil {
		return c.group
	}
	return 1
}

// ToFloat32 converts one element (its code in the low bits) to float32.
func ToFloat32(d safetensors.DType, code uint32) float32 {
	c := mustCodec(d)
	return math.Float32frombits(c.decode(code))
}

// FromFloat32 converts a float32 to d's code, rounding to nearest even.
func FromFloat32(d safetensors.DType, v float32) uint32 {
	c := mustCodec(d)
	return c.encode(math.Float32bits(v))
}

func mustCodec(d safetensors.DType) *codec {
	c := codecOf(d)
	if c == nil {
		panic("floats: " + d.String() + " is not a converted dtype")
	}
	return c
}

func (c *codec) decode(code uint32) uint32 {
	switch {
	case c.table != nil:
		return c.table[code&c.f.codeMask()]
	case c.f == &fmtBF16:
		return uint32(uint16(code)) << 16
	}
	return f16Bits(uint16(code))
}

func (c *codec) encode(x uint32) uint32 {
	if c.f == &fmtBF16 {
		return uint32(bf16FromBits(x))
	}
	return c.f.encode(x)
}

// count is how many elements a conversion between n elements on one side
// and b bytes on the other can do: the smaller, in whole groups.
func (c *codec) count(n, b int) int {
	k := min(n, b*8/c.f.bits)
	return k - k%c.group
}

// Decode converts the elements packed in src to float32 in dst and returns
// how many it converted: as many as both hold, in whole groups (Group).
// It panics if d is not a converted dtype (Has).
func Decode(d safetensors.DType, dst []float32, src []byte) int {
	return decodeBits(mustCodec(d), f32AsBits(dst), src)
}

// DecodeLE is Decode writing little-endian float32 bytes (4 per element,
// as a .npy of '<f4' holds them) into dst.
func DecodeLE(d safetensors.DType, dst, src []byte) int {
	c := mustCodec(d)
	n := c.count(len(dst)/4, len(src))
	if c.f.bits >= 8 {
		decodeLE(c, dst[:4*n], src[:n*c.f.bits/8])
		return n
	}
	var buf [chunk]uint32
	for done := 0; done < n; {
		k := min(chunk, n-done)
		in := src[done*c.f.bits/8:]
		decodeBits(c, buf[:k], in)
		out := dst[done*4 : (done+k)*4]
		for i, v := range buf[:k] {
			binary.LittleEndian.PutUint32(out[4*i:], v)
		}
		done += k
	}
	return n
}

// Encode converts float32 values to d's codes packed into dst, rounding to
// nearest even, and returns how many it converted (as Decode counts).
func Encode(d safetensors.DType, dst []byte, src []float32) int {
	return encodeBits(mustCodec(d), dst, f32AsBits(src))
}

// EncodeLE is Encode reading little-endian float32 bytes from src.
func EncodeLE(d safetensors.DType, dst, src []byte) int {
	c := mustCodec(d)
	n := c.count(len(src)/4, len(dst))
	var buf [chunk]uint32
	for done := 0; done < n; {
		k := min(chunk, n-done)
		in := src[done*4 : (done+k)*4]
		for i := range buf[:k] {
			buf[i] = binary.LittleEndian.Uint32(in[4*i:])
		}
		encodeBits(c, dst[done*c.f.bits/8:], buf[:k])
		done += k
	}
	return n
}

// chunk is the elements converted per pass through a stack buffer; a
// multiple of every group.
const chunk = 512

func f32AsBits(s []float32) []uint32 {
	return unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(s))), len(s))
}

func decodeBits(c *codec, dst []uint32, src []byte) int {
	n := c.count(len(dst), len(src))
	dst = dst[:n]
	t := c.table
	switch c.f.bits {
	case 16:
		src = src[:2*n]
		if c.f == &fmtBF16 {
			for i := range dst {
				dst[i] = uint32(binary.LittleEndian.Uint16(src[2*i:])) << 16
			}
		} else {
			for i := range dst {
				dst[i] = f16Bits(binary.LittleEndian.Uint16(src[2*i:]))
			}
		}
	case 8:
		t = t[:256]
		src = src[:n]
		for i, b := range src {
			dst[i] = t[b]
		}
	case 4:
		t = t[:16]
		src = src[:n/2]
		for i, b := range src {
			dst[2*i] = t[b&15]
			dst[2*i+1] = t[b>>4]
		}
	case 6:
		t = t[:64]
		for g := range n / 4 {
			s := src[3*g : 3*g+3]
			w := uint32(s[0]) | uint32(s[1])<<8 | uint32(s[2])<<16
			o := dst[4*g : 4*g+4]
			o[0] = t[w&63]
			o[1] = t[w>>6&63]
			o[2] = t[w>>12&63]
			o[3] = t[w>>18]
		}
	}
	return n
}

func encodeBits(c *codec, dst []byte, src []uint32) int {
	n := c.count(len(src), len(dst))
	src = src[:n]
	f := c.f
	switch f.bits {
	case 16:
		dst = dst[:2*n]
		for i, x := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], uint16(c.encode(x)))
		}
	case 8:
		dst = dst[:n]
		for i, x := range src {
			dst[i] = byte(f.encode(x))
		}
	case 4:
		dst = dst[:n/2]
		for i := range dst {
			dst[i] = byte(f.encode(src[2*i]) | f.encode(src[2*i+1])<<4)
		}
	case 6:
		for g := range n / 4 {
			s := src[4*g : 4*g+4]
			w := f.encode(s[0]) | f.encode(s[1])<<6 | f.encode(s[2])<<12 | f.encode(s[3])<<18
			o := dst[3*g : 3*g+3]
			o[0], o[1], o[2] = byte(w), byte(w>>8), byte(w>>16)
		}
	}
	return n
}

// decodeLE is DecodeLE for the formats of whole bytes, written straight
// into dst (len(dst) = 4 × elements): the float32 views' read path.
func decodeLE(c *codec, dst, src []byte) {
	switch {
	case c.f == &fmtBF16:
		// Four elements per 64-bit load: each BF16 is the top half of
		// its float32.
		i := 0
		for ; i+8 <= len(src); i += 8 {
			x := binary.LittleEndian.Uint64(src[i:])
			o := dst[2*i : 2*i+16]
			binary.LittleEndian.PutUint64(o, (x&0xFFFF)<<16|(x&0xFFFF0000)<<32)
			binary.LittleEndian.PutUint64(o[8:], (x>>16)&0xFFFF0000|x&0xFFFF000000000000)
		}
		for ; i < len(src); i += 2 {
			binary.LittleEndian.PutUint32(dst[2*i:], uint32(binary.LittleEndian.Uint16(src[i:]))<<16)
		}
	case c.f.bits == 16:
		for i := 0; i+1 < len(src); i += 2 {
			binary.LittleEndian.PutUint32(dst[2*i:], f16Bits(binary.LittleEndian.Uint16(src[i:])))
		}
	default:
		t := c.table[:256]
		dst = dst[:4*len(src)]
		for i, b := range src {
			binary.LittleEndian.PutUint32(dst[4*i:], t[b])
		}
	}
}
