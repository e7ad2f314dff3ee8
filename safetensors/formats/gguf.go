package formats

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/formats/ggml"
)

// GGUF (llama.cpp, versions 2 and 3): "GGUF", u32 version, u64 tensor
// count, u64 key-value count, the key-values, the tensor infos (name,
// dims with ne[0] the fastest-varying, ggml type, offset in the data
// section), padding to general.alignment, the data. Checked as llama.cpp's
// gguf.cpp checks it: unique keys and names, names under 64 bytes, at most
// 4 dimensions, whole blocks per row, each tensor at the offset the ones
// before it lead to. Shapes are shown outermost first (ne reversed), the
// key-values as the metadata (strings as they are, the rest as JSON).

const (
	ggufMaxKV    = 1 << 20
	ggufMaxDims  = 4
	ggufMaxName  = 63
	ggufMaxArray = 1 << 28
)

type ggufReader struct {
	b   []byte
	pos int64
}

var errGGUFShort = errors.New("the file ends inside the header")

func (r *ggufReader) need(n int64) error {
	if n < 0 || n > int64(len(r.b))-r.pos {
		return errGGUFShort
	}
	return nil
}

func (r *ggufReader) u32() (uint32, error) {
	if err := r.need(4); err != nil {
		return 0, err
	}
	v := binary.LittleEndian.Uint32(r.b[r.pos:])
	r.pos += 4
	return v, nil
}

func (r *ggufReader) u64() (uint64, error) {
	if err := r.need(8); err != nil {
		return 0, err
	}
	v := binary.LittleEndian.Uint64(r.b[r.pos:])
	r.pos += 8
	return v, nil
}

func (r *ggufReader) str() (string, error) {
	n, err := r.u64()
	if err != nil {
		return "", err
	}
	if n > uint64(len(r.b))-uint64(r.pos) {
		return "", errGGUFShort
	}
	s := r.b[r.pos : r.pos+int64(n)]
	r.pos += int64(n)
	if !utf8.Valid(s) {
		return "", errors.New("a string is not valid UTF-8")
	}
	return string(s), nil
}

// scalar sizes of the GGUF value types (string and array excepted).
var ggufSizes = map[uint32]int64{0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

// value reads a value of type typ and renders it: a string as it is (top
// level), everything else as JSON.
func (r *ggufReader) value(typ uint32, top bool) (string, error) {
	switch typ {
	case 8:
		s, err := r.str()
		if err != nil || top {
			return s, err
		}
		return jsonString(s), nil
	case 9:
		if !top {
			return "", errors.New("an array of arrays (llama.cpp refuses them too)")
		}
		et, err := r.u32()
		if err != nil {
			return "", err
		}
		n, err := r.u64()
		if err != nil {
			return "", err
		}
		if et == 9 {
			return "", errors.New("an array of arrays (llama.cpp refuses them too)")
		}
		size, ok := ggufSizes[et]
		if et != 8 && !ok {
			return "", fmt.Errorf("an array of unknown type %d", et)
		}
		// Elements take at least size (or 8, a string's length) bytes
		// each: a count the file cannot hold is refused before looping.
		if min := max(size, 8*int64(boolInt(et == 8))); n > ggufMaxArray || int64(n)*min > int64(len(r.b))-r.pos {
			return "", fmt.Errorf("an array of %d elements runs past the end of the file", n)
		}
		var sb strings.Builder
		sb.WriteByte('[')
		for i := uint64(0); i < n; i++ {
			if i > 0 {
				sb.WriteByte(',')
			}
			v, err := r.value(et, false)
			if err != nil {
				return "", err
			}
			sb.WriteString(v)
		}
		sb.WriteByte(']')
		return sb.String(), nil
	}
	size, ok := ggufSizes[typ]
	if !ok {
		return "", fmt.Errorf("unknown value type %d", typ)
	}
	if err := r.need(size); err != nil {
		return "", err
	}
	p := r.b[r.pos : r.pos+size]
	r.pos += size
	switch typ {
	case 0:
		return strconv.FormatUint(uint64(p[0]), 10), nil
	case 1:
		return strconv.FormatInt(int64(int8(p[0])), 10), nil
	case 2:
		return strconv.FormatUint(uint64(binary.LittleEndian.Uint16(p)), 10), nil
	case 3:
		return strconv.FormatInt(int64(int16(binary.LittleEndian.Uint16(p))), 10), nil
	case 4:
		return strconv.FormatUint(uint64(binary.LittleEndian.Uint32(p)), 10), nil
	case 5:
		return strconv.FormatInt(int64(int32(binary.LittleEndian.Uint32(p))), 10), nil
	case 6:
		return jsonFloat(float64(math.Float32frombits(binary.LittleEndian.Uint32(p))), 32), nil
	case 7:
		switch p[0] {
		case 0:
			return "false", nil
		case 1:
			return "true", nil
		}
		return "", fmt.Errorf("a bool of value %d", p[0])
	case 10:
		return strconv.FormatUint(binary.LittleEndian.Uint64(p), 10), nil
	case 11:
		return strconv.FormatInt(int64(binary.LittleEndian.Uint64(p)), 10), nil
	}
	return jsonFloat(math.Float64frombits(binary.LittleEndian.Uint64(p)), 64), nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func jsonFloat(f float64, bits int) string {
	switch {
	case math.IsNaN(f):
		return `"NaN"`
	case math.IsInf(f, 1):
		return `"Infinity"`
	case math.IsInf(f, -1):
		return `"-Infinity"`
	}
	return strconv.FormatFloat(f, 'g', -1, bits)
}

func (f *File) parseGGUF() error {
	r := &ggufReader{b: f.m, pos: 4}
	version, err := r.u32()
	if err != nil {
		return err
	}
	switch {
	case version == 2, version == 3:
	case version == 1:
		return errors.New("GGUF version 1 (a 2023 draft) is not read: convert it with a current llama.cpp")
	case version&0xffff == 0:
		return errors.New("a big-endian GGUF file is not read")
	default:
		return fmt.Errorf("GGUF version %d is not one this reader knows (2, 3)", version)
	}
	nTensors, err := r.u64()
	if err != nil {
		return err
	}
	nKV, err := r.u64()
	if err != nil {
		return err
	}
	if nTensors > MaxTensors {
		return fmt.Errorf("%d tensors, more than %d", nTensors, MaxTensors)
	}
	if nKV > ggufMaxKV {
		return fmt.Errorf("%d key-values, more than %d", nKV, ggufMaxKV)
	}
	meta := map[string]string{}
	alignment := int64(32)
	for i := uint64(0); i < nKV; i++ {
		key, err := r.str()
		if err != nil {
			return fmt.Errorf("key-value %d: %w", i, err)
		}
		if _, dup := meta[key]; dup {
			return fmt.Errorf("key %q appears twice", printableName(key))
		}
		typ, err := r.u32()
		if err != nil {
			return err
		}
		start := r.pos
		v, err := r.value(typ, true)
		if err != nil {
			return fmt.Errorf("key %q: %w", printableName(key), err)
		}
		if key == "general.alignment" {
			if typ != 4 {
				return errors.New("general.alignment is not a u32")
			}
			a := int64(binary.LittleEndian.Uint32(f.m[start:]))
			if a == 0 || a&(a-1) != 0 {
				return fmt.Errorf("general.alignment %d is not a power of 2", a)
			}
			alignment = a
		}
		meta[key] = v
	}
	type info struct {
		name  string
		ne    []uint64
		typ   ggml.TypeInfo
		off   uint64
		bytes int64
	}
	infos := make([]info, 0, nTensors)
	names := map[string]bool{}
	for i := uint64(0); i < nTensors; i++ {
		name, err := r.str()
		if err != nil {
			return fmt.Errorf("tensor info %d: %w", i, err)
		}
		if len(name) > ggufMaxName {
			return fmt.Errorf("tensor %q: a name of %d bytes, llama.cpp's limit is %d", printableName(name), len(name), ggufMaxName)
		}
		if names[name] {
			return fmt.Errorf("tensor %q appears twice", printableName(name))
		}
		names[name] = true
		nd, err := r.u32()
		if err != nil {
			return err
		}
		if nd > ggufMaxDims {
			return fmt.Errorf("tensor %q: %d dimensions, more than %d", printableName(name), nd, ggufMaxDims)
		}
		ne := make([]uint64, nd)
		for j := range ne {
			if ne[j], err = r.u64(); err != nil {
				return err
			}
			if ne[j] > math.MaxInt64 {
				return fmt.Errorf("tensor %q: dimension %d is %d", printableName(name), j, ne[j])
			}
		}
		typ, err := r.u32()
		if err != nil {
			return err
		}
		ti, ok := ggml.Types[ggml.Type(typ)]
		if !ok {
			return fmt.Errorf("tensor %q: unknown ggml type %d", printableName(name), typ)
		}
		off, err := r.u64()
		if err != nil {
			return err
		}
		if len(ne) > 0 && ne[0]%uint64(ti.Elems) != 0 {
			return fmt.Errorf("tensor %q: a row of %d elements is not whole %s blocks of %d", printableName(name), ne[0], ti.Name, ti.Elems)
		}
		n, ok := numel(ne)
		if !ok {
			return fmt.Errorf("tensor %q: shape %v overflows", printableName(name), ne)
		}
		size, ok := byteSize([]uint64{n / uint64(ti.Elems)}, ti.Bytes)
		if !ok || (len(ne) == 0 && ti.Elems > 1) {
			return fmt.Errorf("tensor %q: shape %v overflows", printableName(name), ne)
		}
		infos = append(infos, info{name, ne, ti, off, size})
	}
	dataStart := (r.pos + alignment - 1) / alignment * alignment
	var expect int64
	for _, in := range infos {
		if in.off != uint64(expect) {
			return fmt.Errorf("tensor %q: at offset %d of the data, where the tensors before it end at %d (llama.cpp requires them back to back, each aligned to %d)", printableName(in.name), in.off, expect, alignment)
		}
		if in.bytes > f.size-dataStart-expect {
			return fmt.Errorf("tensor %q: its %d bytes run past the end of the file", printableName(in.name), in.bytes)
		}
		shape := slices.Clone(in.ne)
		slices.Reverse(shape)
		t := Tensor{Key: in.name, Shape: shape, Size: in.bytes, data: fileRange(in.name, dataStart+expect, in.bytes)}
		if d, ok := safetensors.ParseDType(in.typ.Name); ok && in.typ.Elems == 1 {
			t.DType = d
		} else {
			t.DType, t.Type, t.TypeShape, t.Shape = safetensors.U8, in.typ.Name, shape, []uint64{uint64(in.bytes)}
		}
		f.Tensors = append(f.Tensors, t)
		expect += (in.bytes + alignment - 1) / alignment * alignment
	}
	if len(meta) > 0 {
		f.Metadata = meta
	}
	return nil
}

// jsonString quotes s as JSON, leaving <, > and & as they are.
func jsonString(s string) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(s)
	return strings.TrimSuffix(b.String(), "\n")
}
