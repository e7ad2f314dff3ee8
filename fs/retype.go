package fs

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"syscall"

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

// typeHint is a dtype and shape waiting for bytes that fit them.
type typeHint struct {
	dtype    safetensors.DType
	hasDType bool
	shape    []uint64 // nil: not given
}

// retyper holds the hints of one mount.
type retyper struct {
	mu    sync.Mutex
	hints map[checkpoint.ID]typeHint
	// removed remembers, by key, the dtype and shape of tensors removed in
	// this mount, for a file created again at that key (tar x).
	removed map[string]typeHint
	// created are the files created in this mount.
	created map[checkpoint.ID]bool
}

// typeRules is what the namespace tells of names changing (see
// namespace.Types): the hints follow the tensors.
type typeRules struct{ f *FS }

func (r typeRules) Created(id checkpoint.ID) { r.f.retype.newFile(id) }

func (r typeRules) Removed(id checkpoint.ID, info checkpoint.Info) { r.f.forgetTensor(id, info) }

func (r typeRules) Adopt(src checkpoint.ID, old checkpoint.Info) *checkpoint.Retype {
	return r.f.adoption(src, old)
}

// isNew reports whether id is a file created in this mount.
func (r *retyper) isNew(id checkpoint.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.created[id]
}

// newFile records a file created in the mount.
func (r *retyper) newFile(id checkpoint.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.created == nil {
		r.created = map[checkpoint.ID]bool{}
	}
	r.created[id] = true
}

// forgetTensor records that the tensor at key, as info describes it, was
// removed (unlinked or renamed over).
func (f *FS) forgetTensor(id checkpoint.ID, info checkpoint.Info) {
	r := &f.retype
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.hints, id)
	delete(r.created, id)
	if r.removed == nil {
		r.removed = map[string]typeHint{}
	}
	r.removed[info.Key] = typeHint{dtype: info.DType, hasDType: true, shape: slices.Clone(info.Shape)}
}

// hint sets a hint for id, merging with one it has.
func (r *retyper) set(id checkpoint.ID, h typeHint) {
	if r.hints == nil {
		r.hints = map[checkpoint.ID]typeHint{}
	}
	r.hints[id] = h
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

// apply gives tensor id the dtype and shape of h if its bytes fit them.
// Caller holds r.mu.
func (f *FS) applyHint(id checkpoint.ID, info checkpoint.Info, h typeHint) (bool, error) {
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
	if err := f.ck.Reshape(id, d, shape); err != nil {
		return false, err
	}
	delete(f.retype.hints, id)
	return true, nil
}

func (f *FS) setxattr(id checkpoint.ID, attr string, data []byte) syscall.Errno {
	if f.ck.ReadOnly() {
		return syscall.EROFS
	}
	info, ok := f.ck.Info(id)
	if !ok {
		return syscall.ENOENT
	}
	r := &f.retype
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.hints[id]
	switch attr {
	case xattrDType:
		d, ok := safetensors.ParseDType(string(data))
		if !ok {
			return f.refuse(syscall.EINVAL, "tensor %q: setting %s: %q is not a safetensors dtype", info.Key, attr, data)
		}
		h.dtype, h.hasDType = d, true
		if h.shape != nil && !h.fits(info.Size) {
			// A new dtype with the shape asked for earlier does not fit:
			// the dtype decides, the shape follows it.
			h.shape = nil
		}
	case xattrShape:
		var shape []uint64
		if err := json.Unmarshal(data, &shape); err != nil || shape == nil {
			return f.refuse(syscall.EINVAL, "tensor %q: setting %s: %q is not a JSON array of non-negative integers", info.Key, attr, data)
		}
		h.shape = shape
	case xattrKey:
		// The key follows the path (mv renames). Restoring the key a
		// file already has is fine, and so is any key on a file created
		// in the mount: a backup restored or copied elsewhere (rsync -X,
		// cp -a) carries the key of where it came from.
		if string(data) == info.Key || r.created[id] {
			return 0
		}
		return f.refuse(syscall.ENOTSUP, "tensor %q: %s cannot be set to %q: the key follows the path (use mv)", info.Key, attr, data)
	case xattrShard:
		// A tensor stays in its shard; restoring the same value (cp -a
		// within the mount, rsync -X) is fine, and so is any on a new file
		// (it goes where new tensors go).
		if string(data) == info.Shard || r.created[id] {
			return 0
		}
		return f.refuse(syscall.ENOTSUP, "tensor %q: %s cannot be set to %q: a tensor stays in the shard %s", info.Key, attr, data, info.Shard)
	default:
		return syscall.ENOTSUP
	}
	// A new file whose bytes may still come: empty (tar --xattrs sets the
	// attributes of a file it has just made), or open for writing.
	growable := f.ck.Growable(id) && (info.Size == 0 || f.writers.writing(id))
	if !growable || info.Size > 0 {
		// (An empty new file fits every dtype as [0]: its bytes are yet
		// to come.)
		applied, err := f.applyHint(id, info, h)
		if err != nil {
			return f.refuse(syscall.EINVAL, "setting %s=%s: %v", attr, data, err)
		}
		if applied {
			f.changed(id, 0)
			return 0
		}
	}
	switch {
	case growable:
		// Its bytes are still being written: applied when they fit, at
		// close.
		f.logf("tensor %q: %s=%s waits until the file's bytes fit it (%d bytes now)", info.Key, attr, data, info.Size)
	case attr == xattrShape && !h.hasDType && someDTypeFits(h.shape, info.Size):
		// A shape for another dtype: wait for the dtype (either order).
		f.logf("tensor %q: shape %s needs another dtype for its %d bytes; it applies when user.safetensors.dtype is set", info.Key, data, info.Size)
	case attr == xattrShape:
		return f.refuse(syscall.EINVAL, "tensor %q: shape %s cannot hold its %d bytes as %s (nor as any dtype); the byte size of a tensor cannot change",
			info.Key, data, info.Size, h.dtypeOr(info.DType))
	default:
		return f.refuse(syscall.EINVAL, "tensor %q: its %d bytes cannot be %s: not a whole number of %d-bit elements along the last dimension of %s",
			info.Key, info.Size, h.dtype, h.dtype.Bits(), shapeJSON(info.Shape))
	}
	r.set(id, h)
	return 0
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

// refuse logs why a request was refused and keeps the reason for
// `getfattr -n user.safejaxfs.error` on the mount root: the errno alone
// cannot say it.
func (f *FS) refuse(errno syscall.Errno, format string, args ...any) syscall.Errno {
	err := fmt.Errorf(format, args...)
	f.logf("refused: %v", err)
	msg := err.Error()
	f.lastErr.Store(&msg)
	return errno
}

// settle gives a file created in the mount its dtype and shape once its
// bytes are written (at close): an explicit hint first, else those of the
// tensor that was removed from its key earlier in this mount, if the byte
// size matches.
func (f *FS) settle(id checkpoint.ID) {
	if !f.ck.Growable(id) {
		return
	}
	info, ok := f.ck.Info(id)
	if !ok {
		return
	}
	r := &f.retype
	r.mu.Lock()
	defer r.mu.Unlock()
	h, ok := r.hints[id]
	if !ok {
		if h, ok = r.removed[info.Key]; !ok {
			return
		}
	}
	applied, err := f.applyHint(id, info, h)
	if err != nil {
		f.logf("tensor %q: %v", info.Key, err)
	}
	if applied {
		f.changed(id, 0)
	}
}

// adoption is the dtype and shape src, a file created in the mount that
// is renamed over the tensor old, takes in the same step (rsync writes a
// temp file and renames it over the tensor): old's, if the byte sizes
// match and src was not told otherwise; nil if none.
func (f *FS) adoption(src checkpoint.ID, old checkpoint.Info) *checkpoint.Retype {
	if !f.ck.Growable(src) {
		return nil
	}
	if info, ok := f.ck.Info(src); !ok || info.Size != old.Size {
		return nil
	}
	r := &f.retype
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, hinted := r.hints[src]; hinted {
		return nil
	}
	return &checkpoint.Retype{ID: src, DType: old.DType, Shape: old.Shape}
}

// hintCopy makes dst, a file created in the mount that became a whole copy
// of src, take src's dtype and shape when it is closed (cp -r inside the
// mount), unless it was told otherwise.
func (f *FS) hintCopy(dst checkpoint.ID, src checkpoint.Info) {
	r := &f.retype
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, hinted := r.hints[dst]; !hinted {
		r.set(dst, typeHint{dtype: src.DType, hasDType: true, shape: slices.Clone(src.Shape)})
	}
}

// writerCount counts the descriptors open for writing on each tensor.
// writerCount counts the write handles open per tensor, and which of them
// were written since their last flush. close(2) returns after FLUSH but
// the kernel sends RELEASE in the background, so "open" alone would still
// count a file whose writer has closed it: a setfattr right after the
// close would then be taken as arriving mid-write, deferred, and answered
// with success although its bytes never come (success must mean applied).
// A file counts as being written only while some write came after the
// last flush.
type writerCount struct {
	mu    sync.Mutex
	n     map[checkpoint.ID]int
	dirty map[checkpoint.ID]bool
}

// wrote records a write or truncate through a write handle.
func (w *writerCount) wrote(id checkpoint.ID) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dirty == nil {
		w.dirty = map[checkpoint.ID]bool{}
	}
	w.dirty[id] = true
}

// flushed records a close (FLUSH) of a descriptor of id.
func (w *writerCount) flushed(id checkpoint.ID) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.dirty, id)
}

// writing reports whether id is open for writing and was written since
// its last flush: its bytes may still come.
func (w *writerCount) writing(id checkpoint.ID) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n[id] > 0 && w.dirty[id]
}

func (w *writerCount) add(id checkpoint.ID, d int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n == nil {
		w.n = map[checkpoint.ID]int{}
	}
	if w.n[id] += d; w.n[id] <= 0 {
		delete(w.n, id)
		delete(w.dirty, id)
	}
}
