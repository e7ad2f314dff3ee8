package checkpoint

import (
	"maps"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// chunkSize is the granularity of edits kept in memory until they are
// persisted: a write costs at most one chunk copy per chunk it touches, and
// an in-place persist writes only the chunks that changed.
const chunkSize = 64 << 10

// zeros backs reads of bytes that were never written (a grown tensor).
var zeros = make([]byte, chunkSize)

// mapping is one mapped checkpoint file. Readers hold a reference while
// go-fuse writes their slices to the kernel, so a rewrite can swap in a new
// file without unmapping bytes still in flight; the last release closes it.
type mapping struct {
	file *safetensors.File
	refs atomic.Int64
}

func newMapping(f *safetensors.File) *mapping {
	m := &mapping{file: f}
	m.refs.Store(1) // the Checkpoint's own reference while it is current
	return m
}

func (m *mapping) acquire() {
	if m != nil {
		m.refs.Add(1)
	}
}

// intact reports whether the mapped file still covers the whole mapping.
// Another program may truncate the checkpoint in place; bytes of the
// mapping past its new end fault when touched. A FUSE reply written from
// them fails in the kernel (which ends the request with EIO), but this
// process reads such slices too (the float32 views' conversion, the CLI's
// stats and diff), where the fault is a SIGBUS that kills it: Read checks
// first and fails with ErrFault (TestReadOfTruncatedFile,
// TestCheckpointTruncatedUnderneath).
func (m *mapping) intact() bool {
	if m == nil {
		return true
	}
	// unix.Fstat into a local: every read asks, and os.File.Stat
	// allocates its answer.
	var st unix.Stat_t
	err := unix.Fstat(int(m.file.Fd().Fd()), &st)
	return err == nil && st.Size >= m.file.Size
}

func (m *mapping) release() {
	if m != nil && m.refs.Add(-1) == 0 {
		m.file.Close()
	}
}

// content is a tensor's bytes as the mount shows them: a base (a slice of a
// mapped file, or of memory for a tensor uploaded as .npy) overlaid with
// chunks written since the last persist. Published chunks are never modified
// (a write copies the chunk), so a reader holding a slice of one is never
// torn by a later write, and a clone is a cheap map copy.
//
// Invariant: bytes at or beyond size are zero in every chunk, and base never
// extends past size, so growing a tensor exposes zeros.
type content struct {
	size   int64
	base   []byte
	ref    *mapping // the mapping base points into; nil for memory
	src    int      // index of the tensor in ref.file whose bytes base is a prefix of
	chunks map[int64][]byte
}

// fileContent is a tensor's bytes as they are in the mapped file.
func fileContent(m *mapping, i int) *content {
	c := new(content)
	setFileContent(c, m, i)
	return c
}

// setFileContent makes c the content of tensor i of m's file.
func setFileContent(c *content, m *mapping, i int) {
	b := m.file.Bytes(i)
	*c = content{size: int64(len(b)), base: b, ref: m, src: i}
}

func memoryContent(b []byte) *content {
	return &content{size: int64(len(b)), base: b, src: -1}
}

func (c *content) clone() *content {
	n := *c
	n.chunks = maps.Clone(c.chunks)
	return &n
}

// clean reports whether the content is exactly a tensor of its mapping.
func (c *content) clean() bool {
	return len(c.chunks) == 0 && c.ref != nil && int64(len(c.base)) == c.size
}

// segments returns the bytes [off, off+n) as slices, merging runs that come
// from the base so an unedited read is a single slice of the mapping.
func (c *content) segments(off, n int64) [][]byte {
	end := min(off+n, c.size)
	var segs [][]byte
	for off < end {
		idx := off / chunkSize
		chunkEnd := min((idx+1)*chunkSize, end)
		if ch, ok := c.chunks[idx]; ok {
			segs = append(segs, ch[off-idx*chunkSize:chunkEnd-idx*chunkSize])
			off = chunkEnd
			continue
		}
		// Extend over following chunks that are not overlaid.
		runEnd := chunkEnd
		for runEnd < end {
			if _, ok := c.chunks[runEnd/chunkSize]; ok {
				break
			}
			runEnd = min(runEnd+chunkSize, end)
		}
		if bl := int64(len(c.base)); off < bl {
			stop := min(runEnd, bl)
			segs = append(segs, c.base[off:stop])
			off = stop
		}
		for off < runEnd {
			z := min(runEnd-off, chunkSize)
			segs = append(segs, zeros[:z])
			off += z
		}
	}
	return segs
}

// chunkFor returns a private, writable copy of chunk idx with its current
// bytes (from an older chunk or the base), unless the write will cover it
// whole. Copying from the base can fault (see copyMapped).
func (c *content) chunkFor(idx int64, whole bool) ([]byte, error) {
	nc := make([]byte, chunkSize)
	if whole {
		return nc, nil
	}
	if old, ok := c.chunks[idx]; ok {
		copy(nc, old)
		return nc, nil
	}
	lo := idx * chunkSize
	if bl := int64(len(c.base)); lo < bl {
		if _, err := copyMapped(nc, c.base[lo:min(lo+chunkSize, bl)]); err != nil {
			return nil, err
		}
	}
	return nc, nil
}

// write stores p at off, growing the content if it ends past size. On an
// error nothing is changed.
func (c *content) write(p []byte, off int64) error {
	end := off + int64(len(p))
	// Copy every chunk the write touches first, so a fault leaves the
	// content as it was.
	type touched struct {
		idx int64
		ch  []byte
	}
	var chs []touched
	for pos := off; pos < end; {
		idx := pos / chunkSize
		lo := idx * chunkSize
		hi := min(lo+chunkSize, end)
		ch, err := c.chunkFor(idx, pos == lo && hi == lo+chunkSize)
		if err != nil {
			return err
		}
		copy(ch[pos-lo:], p[pos-off:hi-off])
		chs = append(chs, touched{idx, ch})
		pos = hi
	}
	if c.chunks == nil {
		c.chunks = map[int64][]byte{}
	}
	for _, t := range chs {
		c.chunks[t.idx] = t.ch
	}
	c.size = max(c.size, end)
	return nil
}

// truncate sets the size; bytes past a shrink are forgotten, so a later
// grow reads zeros (as with ftruncate on a file).
func (c *content) truncate(size int64) {
	if size >= c.size {
		c.size = size
		return
	}
	if int64(len(c.base)) > size {
		c.base = c.base[:size]
	}
	for idx := range c.chunks {
		lo := idx * chunkSize
		switch {
		case lo >= size:
			delete(c.chunks, idx)
		case lo+chunkSize > size:
			ch := make([]byte, chunkSize)
			copy(ch, c.chunks[idx][:size-lo])
			c.chunks[idx] = ch
		}
	}
	c.size = size
}

// readAt copies [off, off+len(p)) into p (for the writer's io.ReaderAt).
// Copying from the mapping can fault (see copyMapped).
func (c *content) readAt(p []byte, off int64) (int, error) {
	n := 0
	for _, s := range c.segments(off, int64(len(p))) {
		m, err := copyMapped(p[n:], s)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// cover gives every chunk past the end of a truncated base a chunk of its
// own (the base's bytes up to its end, zeros after), so the content is the
// base's untouched prefix plus chunks: what the log records, and what a
// compaction writes in place.
func (c *content) cover() error {
	for lo := int64(len(c.base)) / chunkSize * chunkSize; lo < c.size; lo += chunkSize {
		idx := lo / chunkSize
		if _, ok := c.chunks[idx]; !ok {
			if c.chunks == nil {
				c.chunks = map[int64][]byte{}
			}
			ch, err := c.chunkFor(idx, false)
			if err != nil {
				return err
			}
			c.chunks[idx] = ch
		}
	}
	return nil
}

// covered reports whether every byte past a truncated base is in a chunk.
func (c *content) covered() bool {
	for lo := int64(len(c.base)) / chunkSize * chunkSize; lo < c.size; lo += chunkSize {
		if _, ok := c.chunks[lo/chunkSize]; !ok {
			return false
		}
	}
	return true
}
