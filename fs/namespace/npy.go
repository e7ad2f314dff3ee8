package namespace

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/floats"
	"github.com/safejaxfs/safejaxfs/safetensors/npy"
)

// What a .npy written into the mount becomes: the tensor of name.npy (an
// np.save, or a temp file renamed to that name), or new values for the
// tensor of name.f32.npy. Decided here, from the file's bytes and the
// tensor it replaces, never from how the bytes arrived.

// NPYFile is a .npy file's bytes, parsed once (outside the namespace's
// lock: only the header is read).
type NPYFile struct {
	b    []byte
	info *npy.Info
	err  error // the parse's; npy.ErrAmbiguousVoid is decided by Tensor
}

// ParseNPY parses the whole .npy file b.
func ParseNPY(b []byte) *NPYFile {
	info, err := npy.ParseAnyOrder(b)
	return &NPYFile{b: b, info: info, err: err}
}

// IsNPY reports whether the file is a .npy at all: a file renamed to a
// .npy name that is not one is renamed as any file is.
func (p *NPYFile) IsNPY() bool { return p.err == nil || errors.Is(p.err, npy.ErrAmbiguousVoid) }

// Tensor is what the file becomes as the tensor at key, replacing old
// (zero Info: a new tensor): its dtype, shape and bytes in C order (a
// Fortran-ordered array, np.save of k.T, is stored as the C-order tensor
// of the same values, since safetensors has no other order). name is the
// file's name, for errors.
func (p *NPYFile) Tensor(old checkpoint.Info, key, name string) (safetensors.DType, []uint64, []byte, error) {
	var d safetensors.DType
	switch {
	case errors.Is(p.err, npy.ErrAmbiguousVoid) && isFloat8(old.DType):
		// |V1 is how numpy writes every float8 type: keep the one the
		// tensor had.
		d = old.DType
	case p.err != nil:
		return 0, nil, nil, fmt.Errorf("tensor %q: %s: %w", key, name, p.err)
	default:
		var ok bool
		if d, ok = safetensors.ParseDType(p.info.DType); !ok {
			return 0, nil, nil, fmt.Errorf("tensor %q: %s: dtype %s has no safetensors form", key, name, p.info.DType)
		}
	}
	data, err := p.data(d)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("tensor %q: %s: %w", key, name, err)
	}
	n, err := safetensors.ByteSize(d, p.info.Shape)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("tensor %q: %s: %w", key, name, err)
	}
	if uint64(len(data)) != n {
		return 0, nil, nil, fmt.Errorf("tensor %q: %s: %d bytes of data, %s %s needs %d", key, name, len(data), d, safetensors.ShapeString(p.info.Shape), n)
	}
	return d, p.info.Shape, data, nil
}

func isFloat8(d safetensors.DType) bool {
	return d.Bits() == 8 && d != safetensors.U8 && d != safetensors.I8 && d != safetensors.BOOL
}

// data is the array's bytes in C order, elements of d.
func (p *NPYFile) data(d safetensors.DType) ([]byte, error) {
	data := p.b[p.info.DataOffset:]
	if !p.info.NeedsReorder() {
		return data, nil
	}
	return npy.ToCOrder(data, p.info.Shape, max(d.Bits()/8, 1))
}

// F32Values is what the file, written to name (a tensor's .f32.npy),
// makes of tensor cur: the tensor's new bytes, its float32 values encoded
// in its own dtype. Anything but float32 of the tensor's shape is
// refused: the view changes values, never the dtype or the shape.
func (p *NPYFile) F32Values(cur checkpoint.Info, name string) ([]byte, error) {
	if !floats.Has(cur.DType) {
		return nil, fmt.Errorf("tensor %q: %s: the tensor is %s now, which has no float32 view", cur.Key, name, cur.DType)
	}
	switch {
	case p.err != nil:
		return nil, fmt.Errorf("tensor %q: %s: %w", cur.Key, name, p.err)
	case p.info.DType != "F32":
		return nil, fmt.Errorf("tensor %q: %s holds %s, not float32: a float32 view takes float32 (np.save(path, a.astype(np.float32)))", cur.Key, name, dtypeName(p.info.DType))
	case !slices.Equal(p.info.Shape, cur.Shape):
		return nil, fmt.Errorf("tensor %q: %s has shape %s, the tensor %s: a float32 view replaces values, not the shape (write %s.npy to replace the tensor)",
			cur.Key, name, safetensors.ShapeString(p.info.Shape), safetensors.ShapeString(cur.Shape), strings.TrimSuffix(name, F32Ext))
	}
	data, err := p.data(safetensors.F32)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %s: %w", cur.Key, name, err)
	}
	elems := cur.Size * 8 / int64(cur.DType.Bits())
	if int64(len(data)) != 4*elems {
		return nil, fmt.Errorf("tensor %q: %s has %d bytes of data, %d float32 need %d", cur.Key, name, len(data), elems, 4*elems)
	}
	size, err := safetensors.ByteSize(cur.DType, cur.Shape)
	if err != nil {
		return nil, err
	}
	out := make([]byte, size)
	floats.EncodeLE(cur.DType, out, data)
	return out, nil
}

func dtypeName(d string) string {
	if d == "" {
		return "a 1-byte void dtype"
	}
	return d
}

// NPYPrecheck refuses, from its first bytes, an upload of size bytes that
// cannot be a .npy: no .npy header, or one whose array does not take the
// rest of the file. The commit checks everything again; this only spares
// reading a large file whole to find that out.
func NPYPrecheck(prefix []byte, size int64) error {
	info, err := npy.ParseAnyOrder(prefix)
	switch {
	case errors.Is(err, npy.ErrShort):
		return nil // a header longer than the prefix: the commit decides
	case errors.Is(err, npy.ErrAmbiguousVoid):
		info.DType = "U8" // one byte per element, as the commit takes it
	case err != nil:
		return fmt.Errorf("%d bytes that are no .npy: %w", size, err)
	}
	d, ok := safetensors.ParseDType(info.DType)
	if !ok {
		return nil // the commit explains
	}
	n, err := safetensors.ByteSize(d, info.Shape)
	if err != nil {
		return nil
	}
	if want := int64(info.DataOffset) + int64(n); want != size {
		return fmt.Errorf("a .npy of %s %v holds %d bytes, the file %d", info.DType, info.Shape, want, size)
	}
	return nil
}
