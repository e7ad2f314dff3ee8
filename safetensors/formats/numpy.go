package formats

import (
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/safejaxfs/safejaxfs/safetensors/npy"
)

// numpy .npy: "\x93NUMPY", version, header length, a Python dict literal
// {'descr': ..., 'fortran_order': ..., 'shape': (...)}, the data. .npz: a
// zip of such files, stored (np.savez) or deflated (np.savez_compressed).
// Fortran-ordered arrays and big-endian ones are shown as their logical
// C-order little-endian values (converted once, like any strided view).

// maxNPYDims bounds an array's dimensions (numpy's own limit is 64):
// strides and index arithmetic are sized by it.
const maxNPYDims = 64

type npyHeader struct {
	et      elemType
	swap    bool
	fortran bool
	shape   []uint64
	dataOff int64 // bytes of magic, version, length and dict
}

// parseNPYHeader reads a .npy prefix from b, which must hold all of it;
// short reports how many bytes it needs when b is too short. The prefix
// and its dict literal are package npy's to read (ParseFields, bounded by
// npy.MaxHeaderLen); the descr is judged here, since a foreign file may
// hold what safetensors does not (big-endian, raw void types).
func parseNPYHeader(b []byte) (h npyHeader, short int, err error) {
	fl, err := npy.ParseFields(b)
	var se *npy.ShortError
	if errors.As(err, &se) {
		return h, se.Need, nil
	}
	if err != nil {
		return h, 0, fmt.Errorf("header: %w", err)
	}
	if len(fl.Shape) > maxNPYDims {
		return h, 0, fmt.Errorf("shape has %d dimensions, more than %d", len(fl.Shape), maxNPYDims)
	}
	for _, d := range fl.Shape {
		// Dimensions become int64 strides: one above that is refused even
		// when another dimension is 0 and the array is empty.
		if d > math.MaxInt64 {
			return h, 0, fmt.Errorf("shape %v: dimension %d is too large", fl.Shape, d)
		}
	}
	h.et, h.swap, err = npyDescr(fl.Descr)
	if err != nil {
		return h, 0, err
	}
	h.fortran, h.shape, h.dataOff = fl.Fortran, fl.Shape, int64(fl.DataOffset)
	if _, ok := byteSize(h.shape, h.et.size); !ok {
		return h, 0, fmt.Errorf("shape %v overflows", h.shape)
	}
	return h, 0, nil
}

// npyDescr maps a descr to an element type and whether it is big-endian.
func npyDescr(descr string) (elemType, bool, error) {
	s := descr
	order := byte('|')
	if s != "" && strings.IndexByte("<>|=", s[0]) >= 0 {
		order, s = s[0], s[1:]
	}
	if len(s) < 2 {
		return elemType{}, false, fmt.Errorf("descr %q is not a numpy type", printableName(descr))
	}
	kind, size := s[0], s[1:]
	n, err := strconv.Atoi(size)
	if err != nil || n <= 0 || n > 64 {
		return elemType{}, false, fmt.Errorf("descr %q is not a numpy type", printableName(descr))
	}
	var name string
	switch kind {
	case 'b':
		name = "bool"
	case 'i':
		name = "int" + strconv.Itoa(8*n)
	case 'u':
		name = "uint" + strconv.Itoa(8*n)
	case 'f':
		name = "float" + strconv.Itoa(8*n)
	case 'c':
		name = "complex" + strconv.Itoa(8*n)
	case 'V':
		// ml_dtypes arrays save as void: 2 bytes is bfloat16 (as
		// jax.numpy.load reads it), 1 byte one of the float8s.
		if n == 2 {
			name = "bfloat16"
			break
		}
		return raw("V"+size, n), false, nil
	default:
		return elemType{}, false, fmt.Errorf("descr %q: %s arrays cannot be read (numbers and bools can)", printableName(descr), kindName(kind))
	}
	et, err := numpyType(name)
	if err != nil || et.size != n {
		return elemType{}, false, fmt.Errorf("descr %q has no safetensors equivalent", printableName(descr))
	}
	return et, order == '>' && n > 1, nil
}

func kindName(k byte) string {
	switch k {
	case 'O':
		return "object"
	case 'U', 'S', 'a':
		return "string"
	case 'M', 'm':
		return "date and time"
	}
	return "this kind of"
}

// npyLayout places an array of header h whose data starts at byte start
// of base.
func npyLayout(b *base, h npyHeader, start int64) layout {
	l := layout{base: b, start: start, elem: h.et.size, shape: h.shape, swap: h.swap}
	if h.fortran && !isCContiguous(h.shape, fortranStrides(h.shape)) {
		l.strides = fortranStrides(h.shape)
	}
	return l
}

func fortranStrides(shape []uint64) []int64 {
	s := make([]int64, len(shape))
	acc := int64(1)
	for i, d := range shape {
		s[i] = acc
		acc *= int64(max(d, 1))
	}
	return s
}

func npyTensor(key string, h npyHeader, l layout) Tensor {
	size, _ := byteSize(h.shape, h.et.size)
	t := Tensor{Key: key, DType: h.et.dtype, Shape: h.shape, Size: size, data: l}
	if h.et.foreign != "" {
		t.Type, t.TypeShape, t.Shape = h.et.foreign, h.shape, []uint64{uint64(size)}
	}
	return t
}

// parseNPY reads a single .npy: one tensor, named after the file.
func (f *File) parseNPY() error {
	h, short, err := parseNPYHeader(f.m)
	if err == nil && short > 0 {
		err = fmt.Errorf("the file ends inside the header (%d bytes)", f.size)
	}
	if err != nil {
		return err
	}
	size, _ := byteSize(h.shape, h.et.size)
	if rest := f.size - h.dataOff; rest != size {
		return fmt.Errorf("shape %v needs %d bytes of data, the file has %d", h.shape, size, rest)
	}
	key := strings.TrimSuffix(filepath.Base(f.Path), ".npy")
	if key == "" || key == "__metadata__" {
		key = "array"
	}
	f.Tensors = append(f.Tensors, npyTensor(key, h, npyLayout(&base{id: key, size: size, off: h.dataOff}, h, 0)))
	return nil
}

// parseNPZ reads an .npz: each <name>.npy member is the tensor <name>.
func (f *File) parseNPZ() error {
	order, _, err := f.openZip()
	if err != nil {
		return err
	}
	for _, m := range order {
		name := m.Name
		if len(f.Tensors) >= MaxTensors {
			return fmt.Errorf("more than %d arrays", MaxTensors)
		}
		key, ok := strings.CutSuffix(name, ".npy")
		if !ok {
			return fmt.Errorf("member %q is not a .npy", printableName(name))
		}
		b, err := f.memberBase(m)
		if err != nil {
			return err
		}
		h, err := f.memberNPYHeader(b)
		if err != nil {
			return fmt.Errorf("member %q: %w", printableName(name), err)
		}
		size, _ := byteSize(h.shape, h.et.size)
		if b.size-h.dataOff != size {
			return fmt.Errorf("member %q: shape %v needs %d bytes of data, the member has %d", printableName(name), h.shape, size, b.size-h.dataOff)
		}
		f.Tensors = append(f.Tensors, npyTensor(key, h, npyLayout(b, h, h.dataOff)))
	}
	return nil
}

// memberNPYHeader reads a member's .npy header, in place when stored,
// else from the start of its decompressed stream.
func (f *File) memberNPYHeader(b *base) (npyHeader, error) {
	var r io.Reader
	if b.inFile() {
		r = io.NewSectionReader(f.ra, b.off, b.size)
	} else {
		rc, err := b.open()
		if err != nil {
			return npyHeader{}, err
		}
		defer rc.Close()
		r = rc
	}
	buf := make([]byte, 0, 256)
	need := 10
	for {
		if need > len(buf) {
			if int64(need) > b.size || need > npy.MaxHeaderLen+12 {
				return npyHeader{}, errors.New("the member ends inside the .npy header")
			}
			old := len(buf)
			buf = append(buf, make([]byte, need-old)...)
			if _, err := io.ReadFull(r, buf[old:]); err != nil {
				return npyHeader{}, err
			}
		}
		h, short, err := parseNPYHeader(buf)
		if err != nil || short == 0 {
			return h, err
		}
		need = short
	}
}
