package formats

import (
	"fmt"
	"math"
	"math/bits"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Tensor is one tensor of a foreign checkpoint, as safetensors would store
// it: Key, DType, Shape (outermost first) and Size bytes of little-endian
// C-order data.
type Tensor struct {
	Key   string
	DType safetensors.DType
	Shape []uint64
	Size  int64
	// Type is the format's own element type when safetensors has none for
	// it (a GGUF "Q4_K", numpy "complex128"): the tensor is then its raw
	// bytes, DType U8 and Shape [Size], and TypeShape is its logical
	// shape, outermost first.
	Type      string
	TypeShape []uint64
	// Storage names the memory the tensor is a view of (a torch storage);
	// tensors with the same Storage share it (tied weights, views). "" for
	// a tensor with bytes of its own.
	Storage string

	data layout
}

// Foreign reports whether the tensor's type has no safetensors dtype.
func (t *Tensor) Foreign() bool { return t.Type != "" }

// Span is a byte range of the file.
type Span struct{ Off, Len int64 }

// base is memory a tensor's bytes are read from: contiguous bytes of the
// file, the concatenation of several spans of it (a chunked msgpack
// array), or the output of a decompressor (a deflated zip member).
type base struct {
	id    string // for messages and to materialize it once
	size  int64
	off   int64  // the bytes are file[off:off+size] (mem, parts and open unset)
	mem   []byte // else these bytes (a Python number, never in the file as such)
	parts []Span // else the concatenation of these spans
	// open, else, yields a stream whose first size bytes are the base.
	open func() (readCloser, error)
}

type readCloser interface {
	Read([]byte) (int, error)
	Close() error
}

func (b *base) inFile() bool { return b.mem == nil && b.parts == nil && b.open == nil }

// layout places a tensor in its base: elements of elem bytes starting at
// byte start, in C order unless strides (in elements) say otherwise,
// big-endian when swap.
type layout struct {
	base    *base
	start   int64
	elem    int
	shape   []uint64
	strides []int64 // nil: C-contiguous
	swap    bool
}

// contiguous reports whether the tensor's bytes are base[start:start+size]
// as they are.
func (l *layout) contiguous() bool { return l.strides == nil && !l.swap }

// fileRange: a tensor whose bytes are a span of the file as they are.
func fileRange(id string, off, size int64) layout {
	return layout{base: &base{id: id, size: size, off: off}, elem: 1}
}

// memRange: a tensor whose bytes are held in memory.
func memRange(id string, b []byte) layout {
	return layout{base: &base{id: id, size: int64(len(b)), mem: b}, elem: 1}
}

// numel multiplies out a shape, refusing overflow past 2^63.
func numel(shape []uint64) (uint64, bool) {
	n := uint64(1)
	for _, d := range shape {
		hi, lo := bits.Mul64(n, d)
		if hi != 0 || lo > math.MaxInt64 {
			return 0, false
		}
		n = lo
	}
	return n, true
}

// byteSize is numel * elem, refusing overflow.
func byteSize(shape []uint64, elem int) (int64, bool) {
	n, ok := numel(shape)
	if !ok {
		return 0, false
	}
	hi, lo := bits.Mul64(n, uint64(elem))
	if hi != 0 || lo > math.MaxInt64 {
		return 0, false
	}
	return int64(lo), true
}

// checkView checks that a strided view (offset and strides in elements)
// stays inside a base of baseSize bytes, and returns its start in bytes.
func checkView(shape []uint64, strides []int64, offset int64, elem int, baseSize int64) (int64, error) {
	if offset < 0 {
		return 0, fmt.Errorf("storage offset %d is negative", offset)
	}
	if len(strides) != len(shape) {
		return 0, fmt.Errorf("%d strides for %d dimensions", len(strides), len(shape))
	}
	n, ok := numel(shape)
	if !ok {
		return 0, fmt.Errorf("shape %v overflows", shape)
	}
	last := uint64(offset) // the last element the view reaches
	if n > 0 {
		for i, d := range shape {
			s := strides[i]
			if s < 0 {
				return 0, fmt.Errorf("stride %d is negative", s)
			}
			hi, lo := bits.Mul64(d-1, uint64(s))
			if hi != 0 {
				return 0, fmt.Errorf("strides %v overflow", strides)
			}
			var c uint64
			last, c = bits.Add64(last, lo, 0)
			if c != 0 || last > math.MaxInt64/uint64(elem) {
				return 0, fmt.Errorf("strides %v overflow", strides)
			}
		}
		if end := (last + 1) * uint64(elem); end > uint64(baseSize) {
			return 0, fmt.Errorf("view (offset %d, shape %v, strides %v) reaches byte %d of a storage of %d bytes", offset, shape, strides, end, baseSize)
		}
	} else if uint64(offset)*uint64(elem) > uint64(baseSize) {
		return 0, fmt.Errorf("storage offset %d is past the storage's %d bytes", offset, baseSize)
	}
	return offset * int64(elem), nil
}

// cStrides are the strides of a C-contiguous array of shape.
func cStrides(shape []uint64) []int64 {
	s := make([]int64, len(shape))
	acc := int64(1)
	for i := len(shape) - 1; i >= 0; i-- {
		s[i] = acc
		acc *= int64(max(shape[i], 1))
	}
	return s
}

// isCContiguous reports whether strides walk shape in C order (dimensions
// of size 1 may have any stride, as torch leaves them).
func isCContiguous(shape []uint64, strides []int64) bool {
	acc := int64(1)
	for i := len(shape) - 1; i >= 0; i-- {
		if shape[i] == 0 {
			return true
		}
		if shape[i] != 1 && strides[i] != acc {
			return false
		}
		acc *= int64(shape[i])
	}
	return true
}
