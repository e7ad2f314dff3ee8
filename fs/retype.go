package fs

import (
	"errors"
	"fmt"
	"sync"
	"syscall"

	"github.com/safejaxfs/safejaxfs/fs/namespace"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// Giving bytes a dtype and shape is decided in package namespace (its
// types.go: setfattr, backup tools restoring user.safetensors.*, a file
// replacing a tensor of its size, cp -r inside the mount); this file
// translates the attributes and the outcomes, and keeps what only the
// file handles know: whether a file's bytes may still come.

// typeAttrs are the attributes a tensor's type is set through.
var typeAttrs = map[string]namespace.TypeAttr{
	xattrDType: namespace.AttrDType,
	xattrShape: namespace.AttrShape,
	xattrKey:   namespace.AttrKey,
	xattrShard: namespace.AttrShard,
}

// setxattr sets one of typeAttrs on tensor id.
func (f *FS) setxattr(id checkpoint.ID, attr string, data []byte) syscall.Errno {
	a, ok := typeAttrs[attr]
	if !ok {
		return syscall.ENOTSUP
	}
	res, err := f.ns.SetType(id, a, data, f.writers.writing(id))
	switch {
	case errors.Is(err, checkpoint.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, checkpoint.ErrNotFound):
		return syscall.ENOENT
	case errors.Is(err, namespace.ErrFixed):
		return f.refuse(syscall.ENOTSUP, "%s: %v", attr, err)
	case err != nil:
		return f.refuse(syscall.EINVAL, "%s: %v", attr, err)
	case res.Applied && (a == namespace.AttrDType || a == namespace.AttrShape):
		f.changed(id, 0) // (a key or shard restored as it is changes nothing)
	case res.Waiting != "":
		f.logf("%s", res.Waiting)
	}
	return 0
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
// bytes are written (at close), as the namespace's hints say.
func (f *FS) settle(id checkpoint.ID) {
	applied, err := f.ns.Settle(id)
	if err != nil {
		f.logf("%v", err)
	}
	if applied {
		f.changed(id, 0)
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
