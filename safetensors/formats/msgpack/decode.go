// Package msgpack is a strict, bounded MessagePack decoder that keeps
// strings, binaries and extension payloads where they are in the input
// (offsets, never copies), and the few encoders Flax's serialization needs.
// It knows only the spec; what a Flax checkpoint means is the caller's.
package msgpack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"unicode/utf8"
)

// Kind is a decoded value's type.
type Kind uint8

const (
	Nil Kind = iota
	Bool
	Int   // fits int64 (Num holds its bits)
	Uint  // above math.MaxInt64
	Float // Num holds float64 bits (a float32 is widened)
	Str
	Bin
	Array
	Map
	Ext
)

var kindNames = [...]string{"nil", "bool", "int", "uint", "float", "str", "bin", "array", "map", "ext"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "?"
}

// Value is one decoded value. Str, Bin and Ext payloads are the input's
// bytes [Off, Off+Len); Items are an array's elements, or a map's keys and
// values alternating.
type Value struct {
	Kind  Kind
	Ext   int8
	Num   uint64
	Off   int64
	Len   int64
	Items []Value
}

// Int64 is an Int's value.
func (v *Value) Int64() int64 { return int64(v.Num) }

// Float64 is a Float's value.
func (v *Value) Float64() float64 { return math.Float64frombits(v.Num) }

// BoolValue is a Bool's value.
func (v *Value) BoolValue() bool { return v.Num != 0 }

// Limits bound what Decode accepts, so hostile input costs bounded time and
// memory.
type Limits struct {
	MaxDepth int // nesting of arrays and maps
	MaxNodes int // values in all
}

// DefaultLimits fit every real Flax checkpoint (a few hundred thousand
// values, nested a dozen deep) with a wide margin.
var DefaultLimits = Limits{MaxDepth: 256, MaxNodes: 1 << 21}

// Rules input can break (wrapped by *Error).
var (
	ErrTruncated = errors.New("input ends inside a value")
	ErrInvalid   = errors.New("byte 0xc1 is never used")
	ErrTrailing  = errors.New("bytes after the value")
	ErrDepth     = errors.New("nested too deep")
	ErrTooMany   = errors.New("too many values")
	ErrUTF8      = errors.New("string is not valid UTF-8")
)

// Error is a decoding failure at byte Off of the input.
type Error struct {
	Off  int64
	Rule error
	What string
}

func (e *Error) Error() string {
	if e.What != "" {
		return fmt.Sprintf("msgpack: at byte %d: %s: %v", e.Off, e.What, e.Rule)
	}
	return fmt.Sprintf("msgpack: at byte %d: %v", e.Off, e.Rule)
}

func (e *Error) Unwrap() error { return e.Rule }

type decoder struct {
	in    *window
	size  int64
	pos   int64
	nodes int
	lim   Limits
}

// MaxStr bounds a string the decoder reads (to check it is UTF-8): keys
// and dtype names are short, a metadata string a few MB at most.
const MaxStr = 64 << 20

// Decode decodes the one value b holds; bytes after it are refused.
func Decode(b []byte, lim Limits) (Value, error) {
	return DecodeAt(bytes.NewReader(b), int64(len(b)), lim)
}

// DecodeAt decodes the one value of the size bytes r holds, reading only
// the bytes that structure it (never the contents of bins and exts, which
// stay where they are): a checkpoint's arrays are not read to list them.
func DecodeAt(r io.ReaderAt, size int64, lim Limits) (Value, error) {
	d := &decoder{in: &window{r: r, size: size}, size: size, lim: lim}
	v, err := d.value(0)
	if err != nil {
		return Value{}, err
	}
	if d.pos != size {
		return Value{}, &Error{Off: d.pos, Rule: ErrTrailing, What: fmt.Sprintf("%d bytes", size-d.pos)}
	}
	return v, nil
}

// window reads the input through a small buffer, so a decoder walking a
// large file by offsets reads what it looks at and little more.
type window struct {
	r    io.ReaderAt
	size int64
	buf  []byte
	off  int64
	err  error
}

const windowSize = 64 << 10

// at returns the input's bytes [off, off+n); the caller checked they are
// within the input. The slice is valid until the next call.
func (w *window) at(off, n int64) []byte {
	if off >= w.off && off+n <= w.off+int64(len(w.buf)) {
		return w.buf[off-w.off : off-w.off+n]
	}
	size := max(n, windowSize)
	size = min(size, w.size-off)
	if int64(cap(w.buf)) < size {
		w.buf = make([]byte, size)
	}
	w.buf = w.buf[:size]
	k, err := w.r.ReadAt(w.buf, off)
	if int64(k) < size && err != nil {
		w.err = err
		w.buf = w.buf[:k]
		return nil
	}
	w.off = off
	return w.buf[:n]
}

func (d *decoder) fail(rule error, what string) error {
	return &Error{Off: d.pos, Rule: rule, What: what}
}

func (d *decoder) need(n int64) error {
	if n < 0 || n > d.size-d.pos {
		return d.fail(ErrTruncated, "")
	}
	return nil
}

func (d *decoder) uint(n int) (uint64, error) {
	if err := d.need(int64(n)); err != nil {
		return 0, err
	}
	p := d.in.at(d.pos, int64(n))
	if p == nil {
		return 0, d.fail(d.in.err, "reading")
	}
	d.pos += int64(n)
	switch n {
	case 1:
		return uint64(p[0]), nil
	case 2:
		return uint64(binary.BigEndian.Uint16(p)), nil
	case 4:
		return uint64(binary.BigEndian.Uint32(p)), nil
	}
	return binary.BigEndian.Uint64(p), nil
}

func (d *decoder) value(depth int) (Value, error) {
	if d.nodes++; d.nodes > d.lim.MaxNodes {
		return Value{}, d.fail(ErrTooMany, fmt.Sprintf("more than %d", d.lim.MaxNodes))
	}
	if err := d.need(1); err != nil {
		return Value{}, err
	}
	p := d.in.at(d.pos, 1)
	if p == nil {
		return Value{}, d.fail(d.in.err, "reading")
	}
	c := p[0]
	d.pos++
	switch {
	case c <= 0x7f:
		return Value{Kind: Int, Num: uint64(c)}, nil
	case c >= 0xe0:
		return Value{Kind: Int, Num: uint64(int64(int8(c)))}, nil
	case c >= 0x80 && c <= 0x8f:
		return d.container(Map, int64(c&0x0f), depth)
	case c >= 0x90 && c <= 0x9f:
		return d.container(Array, int64(c&0x0f), depth)
	case c >= 0xa0 && c <= 0xbf:
		return d.str(int64(c & 0x1f))
	}
	switch c {
	case 0xc0:
		return Value{Kind: Nil}, nil
	case 0xc1:
		d.pos--
		return Value{}, d.fail(ErrInvalid, "")
	case 0xc2, 0xc3:
		return Value{Kind: Bool, Num: uint64(c - 0xc2)}, nil
	case 0xc4, 0xc5, 0xc6:
		n, err := d.uint(1 << (c - 0xc4))
		if err != nil {
			return Value{}, err
		}
		return d.payload(Bin, 0, int64(n))
	case 0xc7, 0xc8, 0xc9:
		n, err := d.uint(1 << (c - 0xc7))
		if err != nil {
			return Value{}, err
		}
		return d.ext(int64(n))
	case 0xca:
		u, err := d.uint(4)
		if err != nil {
			return Value{}, err
		}
		return Value{Kind: Float, Num: math.Float64bits(float64(math.Float32frombits(uint32(u))))}, nil
	case 0xcb:
		u, err := d.uint(8)
		if err != nil {
			return Value{}, err
		}
		return Value{Kind: Float, Num: u}, nil
	case 0xcc, 0xcd, 0xce, 0xcf:
		u, err := d.uint(1 << (c - 0xcc))
		if err != nil {
			return Value{}, err
		}
		if u > math.MaxInt64 {
			return Value{Kind: Uint, Num: u}, nil
		}
		return Value{Kind: Int, Num: u}, nil
	case 0xd0, 0xd1, 0xd2, 0xd3:
		n := 1 << (c - 0xd0)
		u, err := d.uint(n)
		if err != nil {
			return Value{}, err
		}
		shift := 64 - 8*n // sign-extend
		return Value{Kind: Int, Num: uint64(int64(u<<shift) >> shift)}, nil
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8:
		return d.ext(1 << (c - 0xd4))
	case 0xd9, 0xda, 0xdb:
		n, err := d.uint(1 << (c - 0xd9))
		if err != nil {
			return Value{}, err
		}
		return d.str(int64(n))
	case 0xdc, 0xdd:
		n, err := d.uint(2 << (c - 0xdc))
		if err != nil {
			return Value{}, err
		}
		return d.container(Array, int64(n), depth)
	case 0xde, 0xdf:
		n, err := d.uint(2 << (c - 0xde))
		if err != nil {
			return Value{}, err
		}
		return d.container(Map, int64(n), depth)
	}
	panic("unreachable")
}

func (d *decoder) payload(k Kind, ext int8, n int64) (Value, error) {
	if err := d.need(n); err != nil {
		return Value{}, err
	}
	v := Value{Kind: k, Ext: ext, Off: d.pos, Len: n}
	d.pos += n
	return v, nil
}

func (d *decoder) str(n int64) (Value, error) {
	v, err := d.payload(Str, 0, n)
	if err != nil {
		return v, err
	}
	if n > MaxStr {
		d.pos = v.Off
		return Value{}, d.fail(ErrTooMany, fmt.Sprintf("a string of %d bytes, above %d", n, MaxStr))
	}
	p := d.in.at(v.Off, v.Len)
	if p == nil {
		return Value{}, d.fail(d.in.err, "reading")
	}
	if !utf8.Valid(p) {
		d.pos = v.Off
		return Value{}, d.fail(ErrUTF8, "")
	}
	return v, nil
}

func (d *decoder) ext(n int64) (Value, error) {
	if err := d.need(1); err != nil {
		return Value{}, err
	}
	p := d.in.at(d.pos, 1)
	if p == nil {
		return Value{}, d.fail(d.in.err, "reading")
	}
	t := int8(p[0])
	d.pos++
	return d.payload(Ext, t, n)
}

func (d *decoder) container(k Kind, n int64, depth int) (Value, error) {
	if depth >= d.lim.MaxDepth {
		return Value{}, d.fail(ErrDepth, fmt.Sprintf("more than %d levels", d.lim.MaxDepth))
	}
	items := n
	if k == Map {
		items = 2 * n
	}
	// Every item takes at least a byte: a count the rest of the input
	// cannot hold is refused before anything is allocated for it.
	if items > d.size-d.pos {
		return Value{}, d.fail(ErrTruncated, fmt.Sprintf("%s of %d entries", k, n))
	}
	if items > int64(d.lim.MaxNodes-d.nodes) {
		return Value{}, d.fail(ErrTooMany, fmt.Sprintf("%s of %d entries: more than %d values", k, n, d.lim.MaxNodes))
	}
	v := Value{Kind: k, Items: make([]Value, 0, items)}
	for i := int64(0); i < items; i++ {
		it, err := d.value(depth + 1)
		if err != nil {
			return Value{}, err
		}
		v.Items = append(v.Items, it)
	}
	return v, nil
}
