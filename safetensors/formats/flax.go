package formats

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"strconv"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/formats/msgpack"
)

// A Flax checkpoint (flax.serialization.to_bytes / msgpack_serialize) is a
// msgpack map of maps with string keys; arrays are ext type 1 whose
// payload is msgpack [shape, dtype name, C-order bytes], numpy scalars ext
// type 3 (the same payload, shape ()), Python complex numbers ext type 2.
// Arrays over 2^30 bytes are maps {"__msgpack_chunked_array__": true,
// "shape": {"0": d0, ...}, "chunks": {"0": array, ...}}. Keys join with "."
// as safejax joins them. Python ints, floats and bools become 0-d I64, F64
// and BOOL tensors; strings, None, complex numbers and empty maps go to the
// metadata under their key, so nothing is dropped.

const (
	extNDArray = 1
	extComplex = 2
	extScalar  = 3
	chunkedKey = "__msgpack_chunked_array__"
)

// MaxTensors bounds the tensors of a foreign checkpoint (DeepSeek-V3 has
// 92k): each costs memory before a byte of data is read.
const MaxTensors = 1 << 19

// MaxMetadata bounds the leaves that are not tensors (strings, None...),
// each a metadata entry.
const MaxMetadata = 1 << 17

type flaxReader struct {
	f    *File
	meta map[string]string
	keys keyBudget
}

func (f *File) parseMsgpack() error {
	v, err := msgpack.DecodeAt(f.ra, f.size, msgpack.DefaultLimits)
	if err != nil {
		return err
	}
	if v.Kind != msgpack.Map {
		return fmt.Errorf("the top level is a msgpack %s, not a map (Flax writes a dict of arrays)", v.Kind)
	}
	r := &flaxReader{f: f, meta: map[string]string{}}
	if r.isChunked(&v) {
		return fmt.Errorf("the top level is one chunked array, not a dict of arrays")
	}
	if err := r.node(&v, ""); err != nil {
		return err
	}
	if len(r.meta) > 0 {
		f.Metadata = r.meta
	}
	return nil
}

func join(prefix, k string) string {
	if prefix == "" {
		return k
	}
	return prefix + "." + k
}

// maxKeyBytes bounds the bytes of all the keys one walk of a file makes:
// they must fit in one safetensors header anyway, and a wide tree under a
// huge key would otherwise copy that key into every child.
const maxKeyBytes = safetensors.MaxHeaderSize

// keyBudget counts the key bytes a walk made (maxKeyBytes).
type keyBudget int64

// join is join, counted.
func (b *keyBudget) join(prefix, k string) (string, error) {
	if *b += keyBudget(len(prefix) + 1 + len(k)); *b > maxKeyBytes {
		return "", fmt.Errorf("the keys take more than %d bytes in all", maxKeyBytes)
	}
	return join(prefix, k), nil
}

// str reads a string (its length was bounded by the decoder).
func (r *flaxReader) str(v *msgpack.Value) string {
	b, err := r.f.read(v.Off, v.Len)
	if err != nil {
		return ""
	}
	return string(b)
}

// key renders a map key: a string, or an int as Python's str() would.
func (r *flaxReader) key(v *msgpack.Value, prefix string) (string, error) {
	switch v.Kind {
	case msgpack.Str:
		return r.str(v), nil
	case msgpack.Int:
		return strconv.FormatInt(v.Int64(), 10), nil
	}
	return "", fmt.Errorf("key %q: a map key is a msgpack %s; Flax state dicts have string keys", prefix, v.Kind)
}

// node walks a map (or an array, which Flax's to_state_dict stores as a
// map keyed "0", "1", ...).
func (r *flaxReader) node(v *msgpack.Value, prefix string) error {
	if v.Kind == msgpack.Array {
		for i := range v.Items {
			key, err := r.keys.join(prefix, strconv.Itoa(i))
			if err != nil {
				return err
			}
			if err := r.leaf(&v.Items[i], key); err != nil {
				return err
			}
		}
		return nil
	}
	seen := make(map[string]struct{}, len(v.Items)/2)
	for i := 0; i < len(v.Items); i += 2 {
		k, err := r.key(&v.Items[i], prefix)
		if err != nil {
			return err
		}
		if _, dup := seen[k]; dup {
			return fmt.Errorf("key %q appears twice in one map", join(prefix, k))
		}
		seen[k] = struct{}{}
		key, err := r.keys.join(prefix, k)
		if err != nil {
			return err
		}
		if err := r.leaf(&v.Items[i+1], key); err != nil {
			return err
		}
	}
	return nil
}

func (r *flaxReader) leaf(v *msgpack.Value, key string) error {
	if len(r.f.Tensors) >= MaxTensors {
		return fmt.Errorf("more than %d tensors", MaxTensors)
	}
	if len(r.meta) >= MaxMetadata {
		return fmt.Errorf("more than %d values that are not arrays", MaxMetadata)
	}
	switch v.Kind {
	case msgpack.Map:
		if r.isChunked(v) {
			return r.chunked(v, key)
		}
		if len(v.Items) == 0 {
			r.meta[key] = "{}"
			return nil
		}
		return r.node(v, key)
	case msgpack.Array:
		if len(v.Items) == 0 {
			r.meta[key] = "[]"
			return nil
		}
		return r.node(v, key)
	case msgpack.Ext:
		switch v.Ext {
		case extNDArray, extScalar:
			t, _, err := r.ndarray(v, key)
			if err != nil {
				return err
			}
			if shape := t.Shape; v.Ext == extScalar {
				if t.Foreign() {
					shape = t.TypeShape
				}
				if len(shape) != 0 {
					return fmt.Errorf("key %q: a numpy scalar (ext type 3) has shape %v", key, shape)
				}
			}
			r.f.Tensors = append(r.f.Tensors, t)
			return nil
		case extComplex:
			c, err := r.complexValue(v, key)
			if err != nil {
				return err
			}
			r.meta[key] = c
			return nil
		}
		return fmt.Errorf("key %q: msgpack ext type %d is none Flax writes (1 array, 2 complex, 3 numpy scalar)", key, v.Ext)
	case msgpack.Int:
		r.number(key, safetensors.I64, binary.LittleEndian.AppendUint64(nil, v.Num))
	case msgpack.Uint:
		r.number(key, safetensors.U64, binary.LittleEndian.AppendUint64(nil, v.Num))
	case msgpack.Float:
		r.number(key, safetensors.F64, binary.LittleEndian.AppendUint64(nil, v.Num))
	case msgpack.Bool:
		r.number(key, safetensors.BOOL, []byte{byte(v.Num)})
	case msgpack.Str:
		r.meta[key] = r.str(v)
	case msgpack.Nil:
		r.meta[key] = "None"
	case msgpack.Bin:
		r.f.Tensors = append(r.f.Tensors, Tensor{Key: key, DType: safetensors.U8, Shape: []uint64{uint64(v.Len)}, Size: v.Len,
			data: fileRange(key, v.Off, v.Len)})
	}
	return nil
}

// number is a Python int, float or bool: a 0-d tensor of its value.
func (r *flaxReader) number(key string, d safetensors.DType, b []byte) {
	r.f.Tensors = append(r.f.Tensors, Tensor{Key: key, DType: d, Shape: []uint64{}, Size: int64(len(b)), data: memRange(key, b)})
}

// ndarray reads an ext-1/ext-3 payload: msgpack [shape, dtype, bytes].
// It returns the tensor and its element type.
func (r *flaxReader) ndarray(v *msgpack.Value, key string) (Tensor, elemType, error) {
	fail := func(format string, args ...any) (Tensor, elemType, error) {
		return Tensor{}, elemType{}, fmt.Errorf("key %q: array: "+format, append([]any{key}, args...)...)
	}
	p, err := msgpack.DecodeAt(io.NewSectionReader(r.f.ra, v.Off, v.Len), v.Len, msgpack.Limits{MaxDepth: 3, MaxNodes: 1 << 16})
	if err != nil {
		return fail("%v", err)
	}
	if p.Kind != msgpack.Array || len(p.Items) != 3 {
		return fail("the payload is not [shape, dtype, bytes]")
	}
	sh, dt, data := &p.Items[0], &p.Items[1], &p.Items[2]
	if sh.Kind != msgpack.Array {
		return fail("the shape is a msgpack %s, not an array", sh.Kind)
	}
	shape := make([]uint64, len(sh.Items))
	for i, d := range sh.Items {
		if d.Kind != msgpack.Int || d.Int64() < 0 {
			return fail("dimension %d is not a non-negative integer", i)
		}
		shape[i] = uint64(d.Int64())
	}
	if dt.Kind != msgpack.Str && dt.Kind != msgpack.Bin {
		return fail("the dtype is a msgpack %s, not a name", dt.Kind)
	}
	name := r.str(&msgpack.Value{Off: v.Off + dt.Off, Len: dt.Len})
	et, err := numpyType(name)
	if err != nil {
		return fail("%v", err)
	}
	if data.Kind != msgpack.Bin && data.Kind != msgpack.Str {
		return fail("the data is a msgpack %s, not bytes", data.Kind)
	}
	size, ok := byteSize(shape, et.size)
	if !ok || size != data.Len {
		return fail("shape %v of %s needs %d bytes, the data has %d", shape, name, size, data.Len)
	}
	t := Tensor{Key: key, DType: et.dtype, Shape: shape, Size: size, data: fileRange(key, v.Off+data.Off, size)}
	if et.foreign != "" {
		t.Type, t.TypeShape, t.Shape = et.foreign, shape, []uint64{uint64(size)}
	}
	return t, et, nil
}

// complexValue renders a Python complex (ext 2: msgpack [real, imag]) as
// Python prints it.
func (r *flaxReader) complexValue(v *msgpack.Value, key string) (string, error) {
	p, err := msgpack.DecodeAt(io.NewSectionReader(r.f.ra, v.Off, v.Len), v.Len, msgpack.Limits{MaxDepth: 2, MaxNodes: 8})
	if err != nil || p.Kind != msgpack.Array || len(p.Items) != 2 || p.Items[0].Kind != msgpack.Float || p.Items[1].Kind != msgpack.Float {
		return "", fmt.Errorf("key %q: a complex number (ext type 2) is not msgpack [real, imag]", key)
	}
	re, im := p.Items[0].Float64(), p.Items[1].Float64()
	sign := "+"
	if im < 0 || (im == 0 && math.Signbit(im)) {
		sign = "-"
		im = -im
	}
	return fmt.Sprintf("(%s%s%sj)", strconv.FormatFloat(re, 'g', -1, 64), sign, strconv.FormatFloat(im, 'g', -1, 64)), nil
}

// isChunked: a map with the chunked-array marker key, as Flax's
// _unchunk_array_leaves_in_place tests it.
func (r *flaxReader) isChunked(v *msgpack.Value) bool {
	if v.Kind != msgpack.Map {
		return false
	}
	for i := 0; i < len(v.Items); i += 2 {
		k := &v.Items[i]
		if k.Kind == msgpack.Str && k.Len == int64(len(chunkedKey)) && r.str(k) == chunkedKey {
			return true
		}
	}
	return false
}

// tupleMap reads a map Flax made of a tuple: keys "0".."n-1", in any order.
func (r *flaxReader) tupleMap(v *msgpack.Value, what, key string) ([]*msgpack.Value, error) {
	if v == nil || v.Kind != msgpack.Map {
		return nil, fmt.Errorf("key %q: chunked array: %s is not a map", key, what)
	}
	n := len(v.Items) / 2
	out := make([]*msgpack.Value, n)
	for i := 0; i < len(v.Items); i += 2 {
		k := &v.Items[i]
		if k.Kind != msgpack.Str {
			return nil, fmt.Errorf("key %q: chunked array: %s has a non-string key", key, what)
		}
		j, err := strconv.Atoi(r.str(k))
		if err != nil || j < 0 || j >= n || out[j] != nil || strconv.Itoa(j) != r.str(k) {
			return nil, fmt.Errorf("key %q: chunked array: %s has key %q, not one of \"0\"..\"%d\" once each", key, what, printableName(r.str(k)), n-1)
		}
		out[j] = &v.Items[i+1]
	}
	return out, nil
}

// chunked reads a chunked array: its chunks' bytes, concatenated in key
// order, are the tensor's.
func (r *flaxReader) chunked(v *msgpack.Value, key string) error {
	var shapeV, chunksV *msgpack.Value
	for i := 0; i < len(v.Items); i += 2 {
		k := &v.Items[i]
		if k.Kind != msgpack.Str {
			continue
		}
		switch r.str(k) {
		case "shape":
			shapeV = &v.Items[i+1]
		case "chunks":
			chunksV = &v.Items[i+1]
		}
	}
	dims, err := r.tupleMap(shapeV, "shape", key)
	if err != nil {
		return err
	}
	shape := make([]uint64, len(dims))
	for i, d := range dims {
		if d.Kind != msgpack.Int || d.Int64() < 0 {
			return fmt.Errorf("key %q: chunked array: dimension %d is not a non-negative integer", key, i)
		}
		shape[i] = uint64(d.Int64())
	}
	chunks, err := r.tupleMap(chunksV, "chunks", key)
	if err != nil {
		return err
	}
	if len(chunks) == 0 {
		return fmt.Errorf("key %q: chunked array has no chunks", key)
	}
	var parts []Span
	var total int64
	var et0 elemType
	for i, c := range chunks {
		if c.Kind != msgpack.Ext || c.Ext != extNDArray {
			return fmt.Errorf("key %q: chunked array: chunk %d is not an array", key, i)
		}
		t, et, err := r.ndarray(c, fmt.Sprintf("%s (chunk %d)", key, i))
		if err != nil {
			return err
		}
		if i == 0 {
			et0 = et
		} else if et != et0 {
			return fmt.Errorf("key %q: chunked array: chunk %d has another dtype than chunk 0", key, i)
		}
		parts = append(parts, Span{Off: t.data.base.off, Len: t.Size})
		total += t.Size
	}
	size, ok := byteSize(shape, et0.size)
	if !ok || size != total {
		return fmt.Errorf("key %q: chunked array: shape %v needs %d bytes, the chunks hold %d", key, shape, size, total)
	}
	t := Tensor{Key: key, DType: et0.dtype, Shape: shape, Size: size,
		data: layout{base: &base{id: key, size: size, parts: parts}, elem: 1}}
	if len(parts) == 1 {
		t.data = fileRange(key, parts[0].Off, size)
	}
	if et0.foreign != "" {
		t.Type, t.TypeShape, t.Shape = et0.foreign, shape, []uint64{uint64(size)}
	}
	r.f.Tensors = append(r.f.Tensors, t)
	return nil
}
