// Package npy writes and reads the prefix of numpy .npy files: the magic,
// the version, the header length and the Python dict literal that describes
// the array. The data that follows is the tensor's raw little-endian C-order
// bytes, which is exactly how safetensors stores it, so a .npy view of a
// tensor is Header(...) followed by the tensor bytes, unchanged.
//
// The package knows dtypes only by their safetensors names ("F32", "BF16",
// "F8_E4M3", ...) so that it stays independent of the safetensors package.
//
// The format is numpy's lib/format.py (NEP 1). Header reproduces np.save
// byte for byte, including the growth padding numpy >= 1.24 adds; Parse is a
// strict reader of the one dict literal numpy writes and never evaluates it.
package npy

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"strconv"
)

const (
	// magic is numpy's MAGIC_PREFIX; the version bytes follow it.
	magic = "\x93NUMPY"
	// magicLen is MAGIC_LEN in format.py: the magic plus the two version bytes.
	magicLen = len(magic) + 2
	// arrayAlign is ARRAY_ALIGN: numpy pads so that the data starts at a
	// multiple of 64, which keeps mmap of the data aligned for every dtype.
	arrayAlign = 64
	// growthAxisMaxDigits is GROWTH_AXIS_MAX_DIGITS (len(str(8*2**64-1))):
	// numpy leaves room for the first axis to grow to that many digits so a
	// header can be rewritten in place when appending.
	growthAxisMaxDigits = 21
)

// MaxHeaderLen bounds the header length field (dict, padding and newline)
// that Parse accepts and Header produces. numpy's own reader refuses more
// than 10000 characters without allow_pickle; np.save of a 64-dimension
// array needs under 2 KiB. The bound is far above both so every real file
// parses, yet a hostile length field cannot make a caller buffer gigabytes
// while it waits for the rest of the header. Header enforces the same bound
// so that everything Header writes, Parse reads back.
const MaxHeaderLen = 1 << 20

// dtypeInfo ties a safetensors dtype name to the descr np.save writes.
type dtypeInfo struct {
	name  string
	descr string
	size  uint64 // bytes per element
}

// dtypes lists every safetensors dtype that has a numpy form. The 8-bit
// floats and bfloat16 are not numpy types: ml_dtypes arrays report a void
// dtype to np.save, so their files say '|V1' / '|V2'.
var dtypes = []dtypeInfo{
	{"BOOL", "|b1", 1},
	{"U8", "|u1", 1},
	{"I8", "|i1", 1},
	{"F8_E5M2", "|V1", 1},
	{"F8_E4M3", "|V1", 1},
	{"F8_E8M0", "|V1", 1},
	{"F8_E4M3FNUZ", "|V1", 1},
	{"F8_E5M2FNUZ", "|V1", 1},
	{"I16", "<i2", 2},
	{"U16", "<u2", 2},
	{"F16", "<f2", 2},
	{"BF16", "|V2", 2},
	{"I32", "<i4", 4},
	{"U32", "<u4", 4},
	{"F32", "<f4", 4},
	{"C64", "<c8", 8},
	{"F64", "<f8", 8},
	{"I64", "<i8", 8},
	{"U64", "<u8", 8},
}

func lookup(dtype string) (dtypeInfo, bool) {
	for _, d := range dtypes {
		if d.name == dtype {
			return d, true
		}
	}
	return dtypeInfo{}, false
}

// Descr returns the numpy descr that np.save writes for an array of the
// given safetensors dtype, as it appears (quoted) in the header. BF16 gives
// "|V2" and the 8-bit floats give "|V1", because that is what ml_dtypes
// arrays save as. The sub-byte floats (F4, F6_E2M3, F6_E3M2) have no numpy
// form, and unknown names have none either: ok is false for both.
func Descr(dtype string) (descr string, ok bool) {
	d, ok := lookup(dtype)
	return d.descr, ok
}

// Header returns the complete .npy prefix that np.save writes for a C-order
// array of the given safetensors dtype and shape: magic, version, header
// length, dict literal, padding and '\n'. The data starts at len(result),
// a multiple of 64. The version is 1.0 unless the header length does not fit
// in 16 bits, then 2.0, the same choice numpy makes (it would pick 3.0 only
// for headers that are not latin-1, which no descr here is).
//
// Header fails for dtypes without a numpy form, for shapes whose byte size
// overflows uint64 (Parse rejects those too), and for headers longer than
// MaxHeaderLen. Headers for 8-bit floats carry '|V1', which Parse reports as
// ErrAmbiguousVoid.
func Header(dtype string, shape []uint64) ([]byte, error) {
	d, ok := lookup(dtype)
	if !ok {
		return nil, fmt.Errorf("npy: dtype %q has no numpy form", dtype)
	}
	if _, ok := byteSize(shape, d.size); !ok {
		return nil, fmt.Errorf("npy: shape %v of %s overflows the addressable size", shape, dtype)
	}

	// The dict as _write_array_header builds it: keys sorted, each entry
	// "'key': repr(value), ", then "}". repr of a Python tuple of ints is
	// "()", "(5,)" or "(2, 3)".
	dict := make([]byte, 0, 96+22*len(shape))
	dict = append(dict, "{'descr': '"...)
	dict = append(dict, d.descr...)
	dict = append(dict, "', 'fortran_order': False, 'shape': ("...)
	for i, n := range shape {
		if i > 0 {
			dict = append(dict, ", "...)
		}
		dict = strconv.AppendUint(dict, n, 10)
	}
	if len(shape) == 1 {
		dict = append(dict, ',')
	}
	dict = append(dict, "), }"...)
	// numpy reserves room for the growth axis (axis 0 in C order) to reach
	// GROWTH_AXIS_MAX_DIGITS digits. A uint64 has at most 20 digits, so this
	// is always at least one space; scalars get none.
	if len(shape) > 0 {
		for range growthAxisMaxDigits - len(strconv.FormatUint(shape[0], 10)) {
			dict = append(dict, ' ')
		}
	}

	// _wrap_header: hlen counts the final '\n'; padlen is in 1..64, never 0,
	// because numpy computes ARRAY_ALIGN - (x % ARRAY_ALIGN). Version 1.0 is
	// kept when hlen+padlen fits its u16 length field (struct.pack raises
	// otherwise and numpy retries with 2.0's u32).
	hlen := len(dict) + 1
	version, lenSize := byte(1), 2
	padlen := arrayAlign - (magicLen+lenSize+hlen)%arrayAlign
	if hlen+padlen > 0xffff {
		version, lenSize = 2, 4
		padlen = arrayAlign - (magicLen+lenSize+hlen)%arrayAlign
	}
	total := hlen + padlen
	if total > MaxHeaderLen {
		return nil, fmt.Errorf("npy: header for a %d-dimension shape needs %d bytes, more than MaxHeaderLen (%d)", len(shape), total, MaxHeaderLen)
	}

	out := make([]byte, 0, magicLen+lenSize+total)
	out = append(out, magic...)
	out = append(out, version, 0)
	if lenSize == 2 {
		out = binary.LittleEndian.AppendUint16(out, uint16(total))
	} else {
		out = binary.LittleEndian.AppendUint32(out, uint32(total))
	}
	out = append(out, dict...)
	for range padlen {
		out = append(out, ' ')
	}
	out = append(out, '\n')
	return out, nil
}

// byteSize is the data size in bytes of a C-order array, and whether it fits
// in a uint64. A zero dimension makes the array empty whatever follows it.
func byteSize(shape []uint64, elemSize uint64) (uint64, bool) {
	n := elemSize
	overflow := false
	for _, d := range shape {
		if d == 0 {
			return 0, true
		}
		hi, lo := bits.Mul64(n, d)
		if hi != 0 {
			overflow = true
		}
		n = lo
	}
	return n, !overflow
}
