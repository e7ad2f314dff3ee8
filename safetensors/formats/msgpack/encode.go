package msgpack

import "encoding/binary"

// The encoders below choose the smallest form, as msgpack-python's Packer
// does (use_bin_type=True), so that what they write is byte for byte what
// flax.serialization writes.

// AppendMapHeader appends the header of a map of n entries.
func AppendMapHeader(b []byte, n uint32) []byte {
	switch {
	case n <= 15:
		return append(b, 0x80|byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, 0xde), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xdf), n)
}

// AppendArrayHeader appends the header of an array of n elements.
func AppendArrayHeader(b []byte, n uint32) []byte {
	switch {
	case n <= 15:
		return append(b, 0x90|byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, 0xdc), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xdd), n)
}

// AppendStr appends a str (the caller ensures it is UTF-8).
func AppendStr(b []byte, s string) []byte {
	n := len(s)
	switch {
	case n <= 31:
		b = append(b, 0xa0|byte(n))
	case n <= 0xff:
		b = append(b, 0xd9, byte(n))
	case n <= 0xffff:
		b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
	}
	return append(b, s...)
}

// AppendBinHeader appends the header of a bin of n bytes (n < 2^32).
func AppendBinHeader(b []byte, n uint64) []byte {
	switch {
	case n <= 0xff:
		return append(b, 0xc4, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, 0xc5), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xc6), uint32(n))
}

// AppendExtHeader appends the header of an ext of type typ and n payload
// bytes (n < 2^32): fixext for 1, 2, 4, 8 and 16 bytes.
func AppendExtHeader(b []byte, typ int8, n uint64) []byte {
	switch n {
	case 1:
		return append(b, 0xd4, byte(typ))
	case 2:
		return append(b, 0xd5, byte(typ))
	case 4:
		return append(b, 0xd6, byte(typ))
	case 8:
		return append(b, 0xd7, byte(typ))
	case 16:
		return append(b, 0xd8, byte(typ))
	}
	switch {
	case n <= 0xff:
		return append(b, 0xc7, byte(n), byte(typ))
	case n <= 0xffff:
		return append(binary.BigEndian.AppendUint16(append(b, 0xc8), uint16(n)), byte(typ))
	}
	return append(binary.BigEndian.AppendUint32(append(b, 0xc9), uint32(n)), byte(typ))
}

// AppendUint appends a non-negative integer.
func AppendUint(b []byte, v uint64) []byte {
	switch {
	case v < 128:
		return append(b, byte(v))
	case v <= 0xff:
		return append(b, 0xcc, byte(v))
	case v <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(v))
	case v <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
}

// AppendBool appends true or false.
func AppendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 0xc3)
	}
	return append(b, 0xc2)
}
