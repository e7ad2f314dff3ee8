package formats

import (
	"archive/zip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/safejaxfs/safejaxfs/safetensors/formats/pickle"
)

// MaxPickle bounds a data.pkl that must be decompressed into memory (a
// stored one is read in place). Real state dicts pickle to a few MB.
const MaxPickle = 256 << 20

// maxMembers bounds a zip's central directory (one member per storage).
const maxMembers = 1 << 20

// openZip reads the file's central directory, refusing duplicate names.
func (f *File) openZip() ([]*zip.File, map[string]*zip.File, error) {
	zr, err := zip.NewReader(f.ra, f.size)
	if err != nil {
		return nil, nil, fmt.Errorf("zip: %w", err)
	}
	if len(zr.File) > maxMembers {
		return nil, nil, fmt.Errorf("zip: %d members, more than %d", len(zr.File), maxMembers)
	}
	members := make(map[string]*zip.File, len(zr.File))
	for _, m := range zr.File {
		if _, dup := members[m.Name]; dup {
			return nil, nil, fmt.Errorf("zip: member %q appears twice", printableName(m.Name))
		}
		members[m.Name] = m
	}
	return zr.File, members, nil
}

// memberBase is where a member's bytes are: a span of the file when
// stored, else its decompressor.
func (f *File) memberBase(m *zip.File) (*base, error) {
	size := int64(m.UncompressedSize64)
	if size < 0 {
		return nil, fmt.Errorf("zip member %q: size overflows", printableName(m.Name))
	}
	switch m.Method {
	case zip.Store:
		if m.CompressedSize64 != m.UncompressedSize64 {
			return nil, fmt.Errorf("zip member %q: stored, yet %d bytes compressed and %d uncompressed", printableName(m.Name), m.CompressedSize64, m.UncompressedSize64)
		}
		off, err := m.DataOffset()
		if err != nil {
			return nil, fmt.Errorf("zip member %q: %w", printableName(m.Name), err)
		}
		if off < 0 || off > f.size || size > f.size-off {
			return nil, fmt.Errorf("zip member %q runs past the end of the file", printableName(m.Name))
		}
		return &base{id: m.Name, size: size, off: off}, nil
	case zip.Deflate:
		// Deflate expands at most 1032 times: a member whose header says
		// more is no deflate stream (or a bomb), refused before anything
		// is decompressed.
		if m.UncompressedSize64 > 1032*m.CompressedSize64+1024 {
			return nil, fmt.Errorf("zip member %q: %d bytes from %d compressed, more than deflate can expand to", printableName(m.Name), m.UncompressedSize64, m.CompressedSize64)
		}
		return &base{id: m.Name, size: size, open: func() (readCloser, error) { return m.Open() }}, nil
	}
	return nil, fmt.Errorf("zip member %q: compression method %d is not read (stored and deflated are)", printableName(m.Name), m.Method)
}

// memberBytes reads a small member whole (data.pkl, byteorder).
func (f *File) memberBytes(m *zip.File, limit int64) ([]byte, error) {
	b, err := f.memberBase(m)
	if err != nil {
		return nil, err
	}
	if b.size > limit {
		return nil, fmt.Errorf("zip member %q is %d bytes, above the limit of %d", printableName(m.Name), b.size, limit)
	}
	if b.inFile() {
		return f.read(b.off, b.size)
	}
	r, err := b.open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	out, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("zip member %q: %w", printableName(m.Name), err)
	}
	if int64(len(out)) != b.size {
		return nil, fmt.Errorf("zip member %q holds %d bytes, its header says %d", printableName(m.Name), len(out), b.size)
	}
	return out, nil
}

// parseTorchZip reads torch.save's zip (torch >= 1.6): <name>/data.pkl,
// <name>/data/<key> per storage, <name>/byteorder (absent: little).
func (f *File) parseTorchZip() error {
	_, members, err := f.openZip()
	if err != nil {
		return err
	}
	prefix := ""
	found := false
	for name := range members {
		if dir, ok := strings.CutSuffix(name, "data.pkl"); ok && (dir == "" || strings.Count(dir, "/") == 1 && strings.HasSuffix(dir, "/")) {
			if found {
				return errors.New("zip holds more than one data.pkl")
			}
			prefix, found = dir, true
		}
	}
	if !found {
		return errors.New("zip holds no <name>/data.pkl")
	}
	bigEndian := false
	if m := members[prefix+"byteorder"]; m != nil {
		b, err := f.memberBytes(m, 16)
		if err != nil {
			return err
		}
		switch string(b) {
		case "little":
		case "big":
			bigEndian = true
		default:
			return fmt.Errorf("byteorder is %q, not little or big", printableName(string(b)))
		}
	}
	pkl, err := f.memberBytes(members[prefix+"data.pkl"], MaxPickle)
	if err != nil {
		return err
	}
	h := &torchHooks{storages: map[string]*storage{}}
	h.persistent = func(t pickle.Tuple) (*storage, error) {
		st, err := h.storageID(t)
		if err != nil || st.base != nil {
			return st, err
		}
		m := members[prefix+"data/"+st.key]
		if m == nil {
			return nil, fmt.Errorf("storage %q: no member %sdata/%s", printableName(st.key), prefix, printableName(st.key))
		}
		b, err := f.memberBase(m)
		if err != nil {
			return nil, err
		}
		if want := st.numel * int64(st.et.size); b.size != want {
			return nil, fmt.Errorf("storage %q: %d elements of %d bytes, the member holds %d bytes", printableName(st.key), st.numel, st.et.size, b.size)
		}
		st.base = b
		return st, nil
	}
	obj, n, err := pickle.Load(pkl, h, pickle.DefaultLimits)
	if err != nil {
		return fmt.Errorf("data.pkl: %w", err)
	}
	if n != len(pkl) {
		return fmt.Errorf("data.pkl: %d bytes after the pickle's STOP", len(pkl)-n)
	}
	w := &torchWalker{meta: map[string]string{}, onPath: map[any]bool{}}
	if err := w.walk(obj, "", f); err != nil {
		return err
	}
	return w.finish(f, bigEndian)
}

// parseTorchLegacy reads torch.save(..., _use_new_zipfile_serialization=
// False): pickled magic number, protocol version, sys info, the object
// (storages as ("storage", type, key, location, numel, view)), the list of
// storage keys, then for each key in that order an 8-byte element count
// and the storage's raw bytes.
func (f *File) parseTorchLegacy() error {
	b := f.m
	lim := pickle.Limits{MaxItems: 1 << 10, MaxMarks: 16}
	plain := &plainHooks{}
	// The magic number is an 80-bit int (beyond the machine's ints):
	// matched as the bytes protocol 2 (or 4, framed) pickles it as.
	if !isTorchLegacy(b) {
		return errors.New("the first pickle is not torch's magic number")
	}
	n := 2 + len(legacyMagic) // up to its STOP
	if b[1] >= 4 && b[2] == 0x95 {
		n += 9
	}
	pos := n
	proto, n, err := pickle.Load(b[pos:], plain, lim)
	if err != nil {
		return fmt.Errorf("protocol version: %w", err)
	}
	if v, ok := proto.(int64); !ok || v != 1001 {
		return fmt.Errorf("protocol version %v, not 1001", proto)
	}
	pos += n
	info, n, err := pickle.Load(b[pos:], plain, lim)
	if err != nil {
		return fmt.Errorf("sys info: %w", err)
	}
	pos += n
	if _, ok := info.(*pickle.Dict); !ok {
		return fmt.Errorf("sys info is a %s, not a dict", pickle.TypeName(info))
	}
	// torch writes the storages little-endian whatever the machine (it
	// swaps on a big-endian one), so little_endian in sys info does not
	// change how they are read.
	h := &torchHooks{storages: map[string]*storage{}}
	views := map[string]*storage{}
	h.persistent = func(t pickle.Tuple) (*storage, error) {
		if len(t) != 6 {
			return nil, fmt.Errorf("a legacy storage id of %d fields, not 6", len(t))
		}
		st, err := h.storageID(t[:5])
		if err != nil || t[5] == nil {
			return st, err
		}
		v, ok := t[5].(pickle.Tuple)
		if !ok || len(v) != 3 {
			return nil, fmt.Errorf("storage %q: a view that is not (key, offset, size)", printableName(st.key))
		}
		vkey, ok1 := v[0].(string)
		voff, ok2 := v[1].(int64)
		vsize, ok3 := v[2].(int64)
		if !ok1 || !ok2 || !ok3 || voff < 0 || vsize < 0 || voff > st.numel || vsize > st.numel-voff {
			return nil, fmt.Errorf("storage %q: view %v is not within it", printableName(st.key), v)
		}
		if prev, ok := views[vkey]; ok {
			return prev, nil
		}
		vs := &storage{key: vkey, et: st.et, numel: vsize, root: st, viewOff: voff}
		views[vkey] = vs
		return vs, nil
	}
	obj, n, err := pickle.Load(b[pos:], h, pickle.DefaultLimits)
	if err != nil {
		return fmt.Errorf("the object: %w", err)
	}
	pos += n
	keysV, n, err := pickle.Load(b[pos:], plain, pickle.DefaultLimits)
	if err != nil {
		return fmt.Errorf("the storage keys: %w", err)
	}
	pos += n
	keys, ok := keysV.(*pickle.List)
	if !ok {
		return fmt.Errorf("the storage keys are a %s, not a list", pickle.TypeName(keysV))
	}
	off := int64(pos)
	for _, kv := range keys.Items {
		k, ok := kv.(string)
		if !ok {
			return fmt.Errorf("a storage key of type %s", pickle.TypeName(kv))
		}
		st := h.storages[k]
		if st == nil {
			return fmt.Errorf("storage %q is listed but no tensor uses it", printableName(k))
		}
		if st.base != nil {
			return fmt.Errorf("storage %q is listed twice", printableName(k))
		}
		if off+8 > f.size {
			return fmt.Errorf("storage %q: the file ends before its size", printableName(k))
		}
		nb, err := f.read(off, 8)
		if err != nil {
			return err
		}
		numel := int64(binary.LittleEndian.Uint64(nb))
		if numel != st.numel {
			return fmt.Errorf("storage %q holds %d elements, its id says %d", printableName(k), numel, st.numel)
		}
		size := numel * int64(st.et.size)
		off += 8
		if size < 0 || size > f.size-off {
			return fmt.Errorf("storage %q: %d bytes run past the end of the file", printableName(k), size)
		}
		st.base = &base{id: k, size: size, off: off}
		off += size
	}
	if off != f.size {
		return fmt.Errorf("%d bytes after the last storage", f.size-off)
	}
	w := &torchWalker{meta: map[string]string{}, onPath: map[any]bool{}}
	if err := w.walk(obj, "", f); err != nil {
		return err
	}
	return w.finish(f, false)
}

// plainHooks allow no global at all: the legacy format's small pickles
// (magic, version, sys info, key list) are plain data.
type plainHooks struct{}

func (plainHooks) Global(module, name string) (pickle.Value, error) {
	return nil, fmt.Errorf("%w %q in a pickle that holds plain data", ErrRefusedGlobal, printableName(module+"."+name))
}
func (plainHooks) Call(pickle.Value, pickle.Tuple) (pickle.Value, error) {
	return nil, errors.New("a call in a pickle that holds plain data")
}
func (plainHooks) New(pickle.Value, pickle.Tuple) (pickle.Value, error) {
	return nil, errors.New("an object in a pickle that holds plain data")
}
func (plainHooks) Build(pickle.Value, pickle.Value) (pickle.Value, error) {
	return nil, errors.New("BUILD in a pickle that holds plain data")
}
func (plainHooks) Persistent(pickle.Value) (pickle.Value, error) {
	return nil, errors.New("a persistent id in a pickle that holds plain data")
}
