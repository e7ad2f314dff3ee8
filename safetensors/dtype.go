package safetensors

import (
	"math/bits"
	"strconv"
)

// DType is an element type. The numeric values follow the reference enum
// order because the canonical writer sorts tensors by it (descending), so the
// order is part of the on-disk format and must never be rearranged.
type DType uint8

const (
	BOOL DType = iota
	F4
	F6_E2M3
	F6_E3M2
	U8
	I8
	F8_E5M2
	F8_E4M3
	F8_E8M0
	F8_E4M3FNUZ
	F8_E5M2FNUZ
	I16
	U16
	F16
	BF16
	I32
	U32
	F32
	C64
	F64
	I64
	U64

	numDTypes
)

var dtypeNames = [numDTypes]string{
	"BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3",
	"F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16",
	"I32", "U32", "F32", "C64", "F64", "I64", "U64",
}

var dtypeBits = [numDTypes]uint8{
	8, 4, 6, 6, 8, 8, 8, 8,
	8, 8, 8, 16, 16, 16, 16,
	32, 32, 32, 64, 64, 64, 64,
}

// String returns the name used in the header JSON, or "DType(n)" for a value
// outside the enum.
func (d DType) String() string {
	if d < numDTypes {
		return dtypeNames[d]
	}
	return "DType(" + strconv.Itoa(int(d)) + ")"
}

// Bits is the width of one element; 0 for a value outside the enum.
func (d DType) Bits() int {
	if d < numDTypes {
		return int(dtypeBits[d])
	}
	return 0
}

// Valid reports whether d is one of the defined dtypes.
func (d DType) Valid() bool { return d < numDTypes }

// ParseDType maps a header dtype name to its DType. Names are case-sensitive,
// as serde's derived enum deserializer is.
func ParseDType(s string) (DType, bool) { return lookupDType(s) }

func parseDTypeBytes(b []byte) (DType, bool) { return lookupDType(b) }

// lookupDType is generic so the parser can look up a name straight from the
// header bytes: a switch on string(b) does not allocate.
func lookupDType[T string | []byte](s T) (DType, bool) {
	switch string(s) {
	case "BOOL":
		return BOOL, true
	case "F4":
		return F4, true
	case "F6_E2M3":
		return F6_E2M3, true
	case "F6_E3M2":
		return F6_E3M2, true
	case "U8":
		return U8, true
	case "I8":
		return I8, true
	case "F8_E5M2":
		return F8_E5M2, true
	case "F8_E4M3":
		return F8_E4M3, true
	case "F8_E8M0":
		return F8_E8M0, true
	case "F8_E4M3FNUZ":
		return F8_E4M3FNUZ, true
	case "F8_E5M2FNUZ":
		return F8_E5M2FNUZ, true
	case "I16":
		return I16, true
	case "U16":
		return U16, true
	case "F16":
		return F16, true
	case "BF16":
		return BF16, true
	case "I32":
		return I32, true
	case "U32":
		return U32, true
	case "F32":
		return F32, true
	case "C64":
		return C64, true
	case "F64":
		return F64, true
	case "I64":
		return I64, true
	case "U64":
		return U64, true
	}
	return 0, false
}

// ByteSize is the number of data bytes a tensor of this dtype and shape
// occupies. It follows the reference validation step by step: the element
// count is folded left to right with overflow checks (so [2^63, 2^63, 0]
// overflows even though it holds no elements), then multiplied by the bit
// width (overflow again), and sub-byte totals must be whole bytes.
func ByteSize(d DType, shape []uint64) (uint64, error) {
	if !d.Valid() {
		return 0, ErrUnknownDType
	}
	n := uint64(1)
	for _, dim := range shape {
		hi, lo := bits.Mul64(n, dim)
		if hi != 0 {
			return 0, ErrShapeOverflow
		}
		n = lo
	}
	hi, nbits := bits.Mul64(n, uint64(dtypeBits[d]))
	if hi != 0 {
		return 0, ErrShapeOverflow
	}
	if nbits%8 != 0 {
		return 0, ErrSubByte
	}
	return nbits / 8, nil
}

// AppendShape appends shape as the header writes it: [3,16], [] for a
// scalar.
func AppendShape(b []byte, shape []uint64) []byte {
	b = append(b, '[')
	for i, d := range shape {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, d, 10)
	}
	return append(b, ']')
}

// ShapeString is shape as the header writes it (AppendShape), for messages.
func ShapeString(shape []uint64) string { return string(AppendShape(nil, shape)) }
