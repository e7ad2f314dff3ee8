package floats

import (
	"encoding/binary"
	"math"
	"strconv"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// class groups dtypes by how their elements are read as numbers.
type class uint8

const (
	classFloat    class = iota // F32, F64 and every converted dtype
	classSigned                // I8..I64
	classUnsigned              // U8..U64, BOOL (0 or 1)
	classComplex               // C64: two float32 per element
)

func classOf(d safetensors.DType) class {
	switch d {
	case safetensors.I8, safetensors.I16, safetensors.I32, safetensors.I64:
		return classSigned
	case safetensors.U8, safetensors.U16, safetensors.U32, safetensors.U64, safetensors.BOOL:
		return classUnsigned
	case safetensors.C64:
		return classComplex
	}
	return classFloat
}

// elemBytes is the bytes of one whole group of elements (Group of them).
func elemBytes(d safetensors.DType) int { return Group(d) * d.Bits() / 8 }

// block is the elements summarized or compared per pass: small enough that
// its scratch stays in L1 between the two passes of the moments.
const block = 1024

// toFloats reads n = len(dst) elements of a float dtype (F32, F64 or a
// converted one) from src as float64; tmp holds block float32s.
func toFloats(d safetensors.DType, dst []float64, src []byte, tmp []float32) {
	switch d {
	case safetensors.F32:
		src = src[:4*len(dst)]
		for i := range dst {
			dst[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:])))
		}
	case safetensors.F64:
		src = src[:8*len(dst)]
		for i := range dst {
			dst[i] = math.Float64frombits(binary.LittleEndian.Uint64(src[8*i:]))
		}
	default:
		tmp = tmp[:len(dst)]
		Decode(d, tmp, src)
		for i, v := range tmp {
			dst[i] = float64(v)
		}
	}
}

// toSigned and toUnsigned read n = len(dst) integer elements exactly.
func toSigned(d safetensors.DType, dst []int64, src []byte) {
	switch d {
	case safetensors.I8:
		for i := range dst {
			dst[i] = int64(int8(src[i]))
		}
	case safetensors.I16:
		for i := range dst {
			dst[i] = int64(int16(binary.LittleEndian.Uint16(src[2*i:])))
		}
	case safetensors.I32:
		for i := range dst {
			dst[i] = int64(int32(binary.LittleEndian.Uint32(src[4*i:])))
		}
	case safetensors.I64:
		for i := range dst {
			dst[i] = int64(binary.LittleEndian.Uint64(src[8*i:]))
		}
	}
}

func toUnsigned(d safetensors.DType, dst []uint64, src []byte) {
	switch d {
	case safetensors.BOOL:
		// numpy and torch read any non-zero byte as True.
		for i := range dst {
			if src[i] != 0 {
				dst[i] = 1
			} else {
				dst[i] = 0
			}
		}
	case safetensors.U8:
		for i := range dst {
			dst[i] = uint64(src[i])
		}
	case safetensors.U16:
		for i := range dst {
			dst[i] = uint64(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case safetensors.U32:
		for i := range dst {
			dst[i] = uint64(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case safetensors.U64:
		for i := range dst {
			dst[i] = binary.LittleEndian.Uint64(src[8*i:])
		}
	}
}

// toComplex reads C64 elements as (re, im) pairs.
func toComplex(dst []complex128, src []byte) {
	for i := range dst {
		re := math.Float32frombits(binary.LittleEndian.Uint32(src[8*i:]))
		im := math.Float32frombits(binary.LittleEndian.Uint32(src[8*i+4:]))
		dst[i] = complex(float64(re), float64(im))
	}
}

// Number is an element value for display: exact for integer dtypes,
// float64 otherwise; Valid is false when there is none (no finite
// element).
type Number struct {
	Valid bool
	kind  class
	bits  int // of the float: 32 for an element of F32 or narrower, which prints as float32
	f     float64
	i     int64
	u     uint64
}

func floatNumber(f float64, bits int) Number {
	return Number{Valid: true, kind: classFloat, f: f, bits: bits}
}
func signedNumber(i int64) Number    { return Number{Valid: true, kind: classSigned, i: i} }
func unsignedNumber(u uint64) Number { return Number{Valid: true, kind: classUnsigned, u: u} }

// Float64 is the value as a float64 (rounded for integers beyond 2^53).
func (n Number) Float64() float64 {
	switch n.kind {
	case classSigned:
		return float64(n.i)
	case classUnsigned:
		return float64(n.u)
	}
	return n.f
}

// Format writes the number with prec significant digits for floats (-1:
// the fewest that read back as the same float64), exactly for integers;
// "-" when there is none.
func (n Number) Format(prec int) string {
	if !n.Valid {
		return "-"
	}
	switch n.kind {
	case classSigned:
		return strconv.FormatInt(n.i, 10)
	case classUnsigned:
		return strconv.FormatUint(n.u, 10)
	}
	return strconv.FormatFloat(n.f, 'g', prec, n.bits)
}

func (n Number) String() string { return n.Format(6) }

// MarshalJSON writes a JSON number or null. Floats are written as the
// shortest text that reads back as the same float64, so a float32 element
// reads back exactly as numpy's float(np.float32(x)) (0.1f is
// 0.10000000149011612, not 0.1); integers exactly.
func (n Number) MarshalJSON() ([]byte, error) {
	if !n.Valid || math.IsNaN(n.f) || math.IsInf(n.f, 0) {
		return []byte("null"), nil
	}
	if n.kind == classFloat {
		return strconv.AppendFloat(nil, n.f, 'g', -1, 64), nil
	}
	return []byte(n.Format(-1)), nil
}
