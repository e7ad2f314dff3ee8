package checkpoint

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"sync/atomic"
	"unsafe"

	"github.com/safejaxfs/safejaxfs/safetensors/remote"
)

// FileView is one version of one file, open: its bytes never change until
// Close. Safe for concurrent use.
type FileView struct {
	name string
	size int64

	// The bytes: parts (in memory or mapped), or a remote object, or a
	// local file read with pread (a sibling).
	parts []part
	obj   *remote.Object
	file  *os.File
	// backing is the one local file whose bytes at their own offsets are
	// the view's (a clean shard, a local sibling); nil otherwise.
	backing *os.File

	refs atomic.Int64 // the opener's, and one per read in flight
	maps []*mapping   // referenced while the view lives
	logs []*walMap    // pinned while the view lives
	own  bool         // file is the view's to close

	// For compaction (fileview_compact.go): the shard, its mapping when
	// the view was made, whether the view is that file whole, and the
	// tensors' contents as the view has them.
	set      *FileSet
	shard    int
	cur      *mapping
	clean    bool
	contents map[ID]*content
}

// part is bytes [off, off+len(b)) of the view; m is the mapping b lies in
// (checked intact before it is sent), nil for memory and logs.
type part struct {
	off int64
	b   []byte
	m   *mapping
}

// Name is the file's name.
func (v *FileView) Name() string { return v.name }

// Size is the file's length.
func (v *FileView) Size() int64 { return v.size }

// Backing is the local file whose bytes, at their own offsets, are the
// view's (FUSE passthrough can serve it without the daemon); nil when the
// view is assembled. It stays open until Close.
func (v *FileView) Backing() *os.File { return v.backing }

// add appends b, merging it into the previous part when both are adjacent
// bytes of the same mapping (one read can then be one slice).
func (v *FileView) add(b []byte, m *mapping) {
	if len(b) == 0 {
		return
	}
	if n := len(v.parts); n > 0 && m != nil {
		// Addresses compared as integers: both lie in one mmap'd file,
		// never in the Go heap.
		p := &v.parts[n-1]
		end := uintptr(unsafe.Pointer(unsafe.SliceData(p.b))) + uintptr(len(p.b))
		if p.m == m && end == uintptr(unsafe.Pointer(unsafe.SliceData(b))) {
			p.b = unsafe.Slice(unsafe.SliceData(p.b), len(p.b)+len(b))
			v.size += int64(len(b))
			return
		}
	}
	v.parts = append(v.parts, part{off: v.size, b: b, m: m})
	v.size += int64(len(b))
}

// addContent appends a tensor's bytes: runs of its mapping, chunks.
func (v *FileView) addContent(d *content) {
	for _, seg := range d.segments(0, d.size) {
		var m *mapping
		if d.ref != nil && within(seg, d.base) {
			m = d.ref
		}
		v.add(seg, m)
	}
}

// within reports whether seg is a slice of b.
func within(seg, b []byte) bool {
	if len(seg) == 0 || len(b) == 0 {
		return false
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(seg)))
	lo := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return p >= lo && p+uintptr(len(seg)) <= lo+uintptr(len(b))
}

// Read returns up to n bytes at off as slices (no copy of mapped or edited
// bytes; a remote file's or a sibling's are copied into a pooled buffer).
// The slices stay valid until release is called (once).
func (v *FileView) Read(off int64, n int) (segs [][]byte, release func(), err error) {
	return v.ReadContext(context.Background(), off, n)
}

// ReadContext is Read for a reader that may give up: a remote file's read
// returns at once with ctx's cause when ctx ends, as
// Checkpoint.ReadContext's does.
func (v *FileView) ReadContext(ctx context.Context, off int64, n int) (segs [][]byte, release func(), err error) {
	if off < 0 || off >= v.size || n <= 0 {
		return nil, nop, nil
	}
	n = int(min(int64(n), v.size-off))
	if v.refs.Add(1) <= 1 {
		v.refs.Add(-1)
		return nil, nop, fmt.Errorf("%s: %w", v.name, os.ErrClosed)
	}
	done := func() { v.unref() }
	if v.obj != nil || v.file != nil {
		b, put, err := v.copyOut(ctx, off, n)
		if err != nil {
			done()
			return nil, nop, err
		}
		return [][]byte{b}, func() { put(); done() }, nil
	}
	end := off + int64(n)
	i := sort.Search(len(v.parts), func(i int) bool { return v.parts[i].off+int64(len(v.parts[i].b)) > off })
	var checked *mapping
	for pos := off; pos < end && i < len(v.parts); i++ {
		p := v.parts[i]
		if p.m != nil && p.m != checked {
			// Another program truncating the file would make these
			// bytes fault: refused here, with a reason for the log,
			// rather than left to fail as the kernel copies the reply
			// (see mapping.intact).
			if !p.m.intact() {
				done()
				return nil, nop, fmt.Errorf("%s: %w", v.name, ErrFault)
			}
			checked = p.m
		}
		lo, hi := pos-p.off, min(end-p.off, int64(len(p.b)))
		segs = append(segs, p.b[lo:hi])
		pos = p.off + hi
	}
	return segs, done, nil
}

// copyOut reads a remote file's or a sibling's bytes into a pooled buffer.
func (v *FileView) copyOut(ctx context.Context, off int64, n int) ([]byte, func(), error) {
	buf, put := readBuf(n)
	var k int
	var err error
	if v.obj != nil {
		k, err = v.obj.ReadAtContext(ctx, buf, off)
	} else {
		k, err = v.file.ReadAt(buf, off)
	}
	if k < n {
		put()
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if v.obj != nil {
			return nil, nop, fmt.Errorf("%s: %w: %w", v.name, ErrRemote, err)
		}
		return nil, nop, fmt.Errorf("%s: %w", v.name, err)
	}
	return buf, put, nil
}

// Close releases the view once the reads in flight are done.
func (v *FileView) Close() {
	v.unref()
}

func (v *FileView) unref() {
	if v.refs.Add(-1) == 0 {
		v.release()
	}
}

// release drops what the view holds and forgets it.
func (v *FileView) release() {
	if v.set != nil {
		v.set.mu.Lock()
		delete(v.set.views, v)
		v.set.mu.Unlock()
	}
	for _, m := range v.maps {
		m.release()
	}
	for _, m := range v.logs {
		m.release()
	}
	v.maps, v.logs, v.parts, v.contents = nil, nil, nil, nil
	if v.own && v.file != nil {
		v.file.Close()
	}
}
