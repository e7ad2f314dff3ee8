package namespace

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// Giving bytes a dtype and shape. A file written into the mount starts as
// a 1-D U8 tensor; it becomes something else when the user says so
// (setfattr), when a backup tool restores the user.safetensors.* attributes
// (cp -a, rsync -X, tar --xattrs: before or after the bytes are written),
// when it replaces a tensor at the same path with the same number of bytes
// (rsync renames a temp file over it, tar unlinks and creates it again),
// or when it is a copy of a tensor made inside the mount (cp -r). What
// cannot apply yet waits, as a hint, for bytes that fit.

// TypeAttr is an attribute of a tensor's type or place that a backup tool
// restores (user.safetensors.*).
type TypeAttr int

const (
	AttrDType TypeAttr = iota // user.safetensors.dtype
	AttrShape                 // user.safetensors.shape
	AttrKey                   // user.safetensors.key
	AttrShard                 // user.safetensors.shard
)

var (
	// ErrType: the value cannot be this tensor's dtype or shape (EINVAL).
	ErrType = errors.New("refused")
	// ErrFixed: the attribute follows the path or the shard and cannot be
	// set to another value (ENOTSUP).
	ErrFixed = errors.New("cannot be set")
)

// typeHint is a dtype and shape waiting for bytes that fit them.
type typeHint struct {
	dtype    safetensors.DType
	hasDType bool
	shape    []uint64 // nil: not given
}

// typeHints are the hints of one mount. Lock order: after Namespace.mu
// (the name changes tell it under that lock), before the checkpoint's.
type typeHints struct {
	mu    sync.Mutex
	hints map[checkpoint.ID]typeHint
	// removed remembers, by key, the dtype and shape of tensors removed in
	// this mount, for a file created again at that key (tar x).
	removed map[string]typeHint
	// created are the files created in this mount.
	created map[checkpoint.ID]bool
}

// IsNew reports whether id is a file created in this mount.
func (ns *Namespace) IsNew(id checkpoint.ID) bool {
	r := &ns.types
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.created[id]
}

// Untyped is the keys of the files created in this mount that are still
// plain bytes (nothing gave them a dtype: they are saved as 1-D U8),
// sorted.
func (ns *Namespace) Untyped() []string {
	r := &ns.types
	r.mu.Lock()
	ids := make([]checkpoint.ID, 0, len(r.created))
	for id := range r.created {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	var keys []string
	for _, id := range ids {
		if !ns.st.Growable(id) {
			continue
		}
		if info, ok := ns.st.Info(id); ok {
			keys = append(keys, info.Key)
		}
	}
	slices.Sort(keys)
	return keys
}

// newFile records a file created in the mount.
func (r *typeHints) newFile(id checkpoint.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.created == nil {
		r.created = map[checkpoint.ID]bool{}
	}
	r.created[id] = true
}

// forget records that the tensor at key, as info describes it, was
// removed (unlinked or renamed over).
func (r *typeHints) forget(id checkpoint.ID, info checkpoint.Info) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.hints, id)
	delete(r.created, id)
	if r.removed == nil {
		r.removed = map[string]typeHint{}
	}
	r.removed[info.Key] = typeHint{dtype: info.DType, hasDType: true, shape: slices.Clone(info.Shape)}
}

func (r *typeHints) set(id checkpoint.ID, h typeHint) {
	if r.hints == nil {
		r.hints = map[checkpoint.ID]typeHint{}
	}
	r.hints[id] = h
}

// TypeResult is what a SetType did when it did not fail: applied now, or
// waiting (Waiting says for what).
type TypeResult struct {
	Applied bool
	Waiting string
}

// SetType sets attribute attr of tensor id to value, as setfattr or a
// backup tool restoring it does. writing says the file's bytes may still
// come (open for writing, written since its last flush): a type that does
// not fit them yet waits for them instead of being refused. Success means
// applied or waiting for bytes that will make it apply; a type that can
// never fit is refused (ErrType), and so is another key or shard (ErrFixed:
// those follow the path and the shard).
func (ns *Namespace) SetType(id checkpoint.ID, attr TypeAttr, value []byte, writing bool) (TypeResult, error) {
	if ns.st.ReadOnly() {
		return TypeResult{}, checkpoint.ErrReadOnly
	}
	info, ok := ns.st.Info(id)
	if !ok {
		return TypeResult{}, fmt.Errorf("tensor %d: %w", id, checkpoint.ErrNotFound)
	}
	r := &ns.types
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.hints[id]
	switch attr {
	case AttrDType:
		d, ok := parseDType(value)
		if !ok {
			return TypeResult{}, fmt.Errorf("tensor %q: setting the dtype: %q is not a dtype (as getfattr shows one, F32, BF16, ..., or as numpy or PyTorch print one, float32, <f4, torch.bfloat16): %w", info.Key, value, ErrType)
		}
		h.dtype, h.hasDType = d, true
		if h.shape != nil && !h.fits(info.Size) {
			// A new dtype with the shape asked for earlier does not fit:
			// the dtype decides, the shape follows it.
			h.shape = nil
		}
	case AttrShape:
		shape, ok := parseShape(value)
		if !ok {
			return TypeResult{}, fmt.Errorf("tensor %q: setting the shape: %q is not a shape (non-negative integers, as [2, 2], (2, 2) or 2,2): %w", info.Key, value, ErrType)
		}
		h.shape = shape
	case AttrKey:
		// The key follows the path (mv renames). Restoring the key a
		// file already has is fine, and so is any key on a file created
		// in the mount: a backup restored or copied elsewhere (rsync -X,
		// cp -a) carries the key of where it came from.
		if string(value) == info.Key || r.created[id] {
			return TypeResult{Applied: true}, nil
		}
		return TypeResult{}, fmt.Errorf("tensor %q: the key cannot be set to %q: it follows the path (use mv): %w", info.Key, value, ErrFixed)
	case AttrShard:
		// A tensor stays in its shard; restoring the same value (cp -a
		// within the mount, rsync -X) is fine, and so is any on a new file
		// (it goes where new tensors go).
		if string(value) == info.Shard || r.created[id] {
			return TypeResult{Applied: true}, nil
		}
		return TypeResult{}, fmt.Errorf("tensor %q: the shard cannot be set to %q: a tensor stays in the shard %s: %w", info.Key, value, info.Shard, ErrFixed)
	default:
		return TypeResult{}, fmt.Errorf("attribute %d: %w", attr, ErrFixed)
	}
	// A new file whose bytes may still come: empty (tar --xattrs sets the
	// attributes of a file it has just made), or open for writing.
	growable := ns.st.Growable(id) && (info.Size == 0 || writing)
	if !growable || info.Size > 0 {
		// (An empty new file fits every dtype as [0]: its bytes are yet
		// to come.)
		applied, err := ns.applyHint(id, info, h)
		if err != nil {
			return TypeResult{}, fmt.Errorf("tensor %q: setting %s: %w: %w", info.Key, value, err, ErrType)
		}
		if applied {
			return TypeResult{Applied: true}, nil
		}
	}
	var res TypeResult
	switch {
	case growable:
		// Its bytes are still being written: applied when they fit, at
		// close.
		res.Waiting = fmt.Sprintf("tensor %q: %s waits until the file's bytes fit it (%d bytes now)", info.Key, value, info.Size)
	case attr == AttrShape && !h.hasDType && someDTypeFits(h.shape, info.Size):
		// A shape for another dtype: wait for the dtype (either order).
		res.Waiting = fmt.Sprintf("tensor %q: shape %s needs another dtype for its %d bytes; it applies when user.safetensors.dtype is set", info.Key, value, info.Size)
	case attr == AttrShape:
		return TypeResult{}, fmt.Errorf("tensor %q: shape %s cannot hold its %d bytes as %s (nor as any dtype); the byte size of a tensor cannot change: %w",
			info.Key, value, info.Size, h.dtypeOr(info.DType), ErrType)
	default:
		return TypeResult{}, fmt.Errorf("tensor %q: its %d bytes cannot be %s: not a whole number of %d-bit elements along the last dimension of %s: %w",
			info.Key, info.Size, h.dtype, h.dtype.Bits(), safetensors.ShapeString(info.Shape), ErrType)
	}
	r.set(id, h)
	return res, nil
}

// Settle gives a file created in the mount its dtype and shape once its
// bytes are written (at close): an explicit hint first, else those of the
// tensor that was removed from its key earlier in this mount, if the byte
// size matches. It reports whether the type changed.
func (ns *Namespace) Settle(id checkpoint.ID) (bool, error) {
	if !ns.st.Growable(id) {
		return false, nil
	}
	info, ok := ns.st.Info(id)
	if !ok {
		return false, nil
	}
	r := &ns.types
	r.mu.Lock()
	defer r.mu.Unlock()
	h, ok := r.hints[id]
	if !ok {
		if h, ok = r.removed[info.Key]; !ok {
			return false, nil
		}
	}
	applied, err := ns.applyHint(id, info, h)
	if err != nil {
		return false, fmt.Errorf("tensor %q: %w", info.Key, err)
	}
	return applied, nil
}

// adoption is the dtype and shape src, a file created in the mount that
// is renamed over the tensor old, takes in the same step (rsync writes a
// temp file and renames it over the tensor): old's, if the byte sizes
// match and src was not told otherwise; nil if none.
func (ns *Namespace) adoption(src checkpoint.ID, old checkpoint.Info) *checkpoint.Retype {
	if !ns.st.Growable(src) {
		return nil
	}
	if info, ok := ns.st.Info(src); !ok || info.Size != old.Size {
		return nil
	}
	r := &ns.types
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, hinted := r.hints[src]; hinted {
		return nil
	}
	return &checkpoint.Retype{ID: src, DType: old.DType, Shape: old.Shape}
}

// HintCopy makes dst, a file created in the mount that became a whole copy
// of src, take src's dtype and shape when it is closed (cp -r inside the
// mount), unless it was told otherwise.
func (ns *Namespace) HintCopy(dst checkpoint.ID, src checkpoint.Info) {
	r := &ns.types
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, hinted := r.hints[dst]; !hinted {
		r.set(dst, typeHint{dtype: src.DType, hasDType: true, shape: slices.Clone(src.Shape)})
	}
}

// applyHint gives tensor id the dtype and shape of h if its bytes fit
// them. Caller holds types.mu.
func (ns *Namespace) applyHint(id checkpoint.ID, info checkpoint.Info, h typeHint) (bool, error) {
	d := info.DType
	if h.hasDType {
		d = h.dtype
	}
	shape := h.shape
	if shape == nil {
		if !h.hasDType {
			return false, nil
		}
		s, ok := fitShape(info.Shape, info.Size, d)
		if !ok {
			return false, nil
		}
		shape = s
	}
	if n, err := safetensors.ByteSize(d, shape); err != nil || int64(n) != info.Size {
		return false, nil
	}
	if err := ns.st.Reshape(id, d, shape); err != nil {
		return false, err
	}
	delete(ns.types.hints, id)
	return true, nil
}

// fitShape is the shape that keeps size bytes when the dtype becomes d:
// the same rank, with the last dimension recomputed (a 1-D or scalar
// tensor becomes 1-D). ok is false when the bytes do not divide evenly.
func fitShape(shape []uint64, size int64, d safetensors.DType) ([]uint64, bool) {
	bits := uint64(size) * 8
	lead := uint64(1)
	var out []uint64
	if len(shape) >= 2 {
		out = slices.Clone(shape[:len(shape)-1])
		for _, n := range out {
			lead *= n
		}
	}
	per := lead * uint64(d.Bits())
	if per == 0 || bits%per != 0 {
		return nil, false
	}
	out = append(out, bits/per)
	if n, err := safetensors.ByteSize(d, out); err != nil || int64(n) != size {
		return nil, false
	}
	return out, true
}

// someDTypeFits reports whether shape could hold size bytes with some
// dtype (so a shape set before its dtype is worth waiting for).
func someDTypeFits(shape []uint64, size int64) bool {
	for d := safetensors.DType(0); d.Valid(); d++ {
		if n, err := safetensors.ByteSize(d, shape); err == nil && int64(n) == size {
			return true
		}
	}
	return false
}

func (h typeHint) fits(size int64) bool {
	n, err := safetensors.ByteSize(h.dtype, h.shape)
	return err == nil && int64(n) == size
}

func (h typeHint) dtypeOr(d safetensors.DType) safetensors.DType {
	if h.hasDType {
		return h.dtype
	}
	return d
}
