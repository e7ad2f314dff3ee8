package formats

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// chunk bounds the memory a copy or a gather holds at once.
const chunk = 1 << 20

// write streams tensor t's logical little-endian C-order bytes to w.
func (f *File) write(t *Tensor, w io.Writer) error {
	l := &t.data
	if l.strides == nil {
		return f.copyBase(l, t.Size, w)
	}
	src, err := f.baseBytes(l.base)
	if err != nil {
		return err
	}
	return gather(w, src, l)
}

// copyBase writes base bytes [start, start+size), byte-swapping elements
// when the layout says so.
func (f *File) copyBase(l *layout, size int64, w io.Writer) error {
	out := w
	if l.swap && l.elem > 1 {
		out = &swapWriter{w: w, elem: l.elem}
	}
	b := l.base
	var err error
	switch {
	case b.inFile():
		var p []byte
		if p, err = f.span(b.off+l.start, size); err == nil {
			err = writeChunks(out, p)
		}
	case b.mem != nil:
		err = writeChunks(out, b.mem[l.start:l.start+size])
	case b.parts != nil:
		err = copyParts(f, b.parts, l.start, size, out)
	default:
		var r readCloser
		if r, err = b.open(); err != nil {
			return err
		}
		defer r.Close()
		if _, err = io.CopyN(io.Discard, r, l.start); err == nil {
			var n int64
			n, err = io.CopyN(out, r, size)
			if err == io.EOF {
				err = fmt.Errorf("%s: the stream ends after %d of %d bytes: %w", b.id, l.start+n, l.start+size, io.ErrUnexpectedEOF)
			}
		}
	}
	if err != nil {
		return err
	}
	if sw, ok := out.(*swapWriter); ok {
		return sw.flush()
	}
	return nil
}

func writeChunks(w io.Writer, p []byte) error {
	for len(p) > 0 {
		n := min(len(p), chunk)
		if _, err := w.Write(p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

func copyParts(f *File, parts []Span, start, size int64, w io.Writer) error {
	for _, s := range parts {
		if size == 0 {
			return nil
		}
		if start >= s.Len {
			start -= s.Len
			continue
		}
		n := min(s.Len-start, size)
		p, err := f.span(s.Off+start, n)
		if err != nil {
			return err
		}
		if err := writeChunks(w, p); err != nil {
			return err
		}
		size -= n
		start = 0
	}
	if size > 0 {
		return fmt.Errorf("the chunks end %d bytes short", size)
	}
	return nil
}

// swapWriter reverses the bytes of each elem-byte element passing through.
type swapWriter struct {
	w    io.Writer
	elem int
	buf  []byte
}

func (s *swapWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if s.buf == nil {
			s.buf = make([]byte, 0, chunk/s.elem*s.elem)
		}
		k := copy(s.buf[len(s.buf):cap(s.buf)], p)
		s.buf = s.buf[:len(s.buf)+k]
		p = p[k:]
		if len(s.buf) == cap(s.buf) {
			if err := s.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

// flush writes the whole elements buffered (a partial one stays).
func (s *swapWriter) flush() error {
	whole := len(s.buf) / s.elem * s.elem
	swapElems(s.buf[:whole], s.elem)
	if _, err := s.w.Write(s.buf[:whole]); err != nil {
		return err
	}
	s.buf = s.buf[:copy(s.buf, s.buf[whole:])]
	return nil
}

func swapElems(b []byte, elem int) {
	for i := 0; i+elem <= len(b); i += elem {
		e := b[i : i+elem]
		for a, z := 0, elem-1; a < z; a, z = a+1, z-1 {
			e[a], e[z] = e[z], e[a]
		}
	}
}

// gather writes a strided view of src in C order, in chunks: runs along
// a unit-stride last dimension are copied whole, other elements one by
// one.
func gather(w io.Writer, src []byte, l *layout) error {
	n, _ := numel(l.shape)
	if n == 0 {
		return nil
	}
	elem := int64(l.elem)
	buf := make([]byte, 0, max(chunk/l.elem, 1)*l.elem)
	flush := func() error {
		if l.swap {
			swapElems(buf, l.elem)
		}
		_, err := w.Write(buf)
		buf = buf[:0]
		return err
	}
	nd := len(l.shape)
	if nd == 0 {
		buf = append(buf, src[l.start:l.start+elem]...)
		return flush()
	}
	inner := int64(l.shape[nd-1])
	innerStride := l.strides[nd-1]
	idx := make([]uint64, nd-1)
	for {
		off := l.start
		for i, v := range idx {
			off += int64(v) * l.strides[i] * elem
		}
		if innerStride == 1 {
			run := src[off : off+inner*elem]
			for len(run) > 0 {
				k := min(len(run), cap(buf)-len(buf))
				buf = append(buf, run[:k]...)
				run = run[k:]
				if len(buf) == cap(buf) {
					if err := flush(); err != nil {
						return err
					}
				}
			}
		} else {
			step := innerStride * elem
			for j := int64(0); j < inner; j++ {
				if len(buf) == cap(buf) {
					if err := flush(); err != nil {
						return err
					}
				}
				buf = append(buf, src[off:off+elem]...)
				off += step
			}
		}
		// Next index of the outer dimensions (odometer).
		d := nd - 2
		for ; d >= 0; d-- {
			idx[d]++
			if idx[d] < l.shape[d] {
				break
			}
			idx[d] = 0
		}
		if d < 0 {
			break
		}
	}
	if len(buf) > 0 {
		return flush()
	}
	return nil
}

// baseBytes returns a base's bytes for random access: a span of the file,
// or its materialized copy (made once).
func (f *File) baseBytes(b *base) ([]byte, error) {
	if b.inFile() {
		return f.span(b.off, b.size)
	}
	if b.mem != nil {
		return b.mem, nil
	}
	f.mu.Lock()
	if m, ok := f.made[b]; ok {
		f.mu.Unlock()
		return m, nil
	}
	f.mu.Unlock()
	l := &layout{base: b, elem: 1}
	m, err := f.materialize(b.size, func(w io.Writer) error { return f.copyBase(l, b.size, w) })
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if prev, ok := f.made[b]; ok {
		return prev, nil // made twice concurrently: either will do
	}
	f.made[b] = m
	return m, nil
}

// tempStore is the private temporary file materialized bytes live in:
// unlinked as soon as it is created, so nothing is left behind whatever
// happens to the process, and mapped region by region.
type tempStore struct {
	f    *os.File
	end  int64
	maps [][]byte
}

func (t *tempStore) close() {
	for _, m := range t.maps {
		unix.Munmap(m)
	}
	t.f.Close()
}

// materialize writes size bytes through fill into a new region of the
// temporary file and returns the region's read-only mapping.
func (f *File) materialize(size int64, fill func(io.Writer) error) ([]byte, error) {
	if size == 0 {
		return []byte{}, fill(io.Discard)
	}
	f.mu.Lock()
	if f.f == nil {
		f.mu.Unlock()
		return nil, os.ErrClosed
	}
	if f.tmp == nil {
		tf, err := os.CreateTemp("", ".safejaxfs-materialized-*")
		if err != nil {
			f.mu.Unlock()
			return nil, fmt.Errorf("a temporary file for converted tensors: %w", err)
		}
		os.Remove(tf.Name())
		f.tmp = &tempStore{f: tf}
	}
	tmp := f.tmp
	page := int64(os.Getpagesize())
	off := tmp.end
	tmp.end += (size + page - 1) / page * page
	f.mu.Unlock()

	cw := &countWriter{w: io.NewOffsetWriter(tmp.f, off)}
	if err := fill(cw); err != nil {
		return nil, err
	}
	if cw.n != size {
		return nil, fmt.Errorf("converted %d bytes, expected %d", cw.n, size)
	}
	m, err := unix.Mmap(int(tmp.f.Fd()), off, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping converted bytes: %w", err)
	}
	f.mu.Lock()
	tmp.maps = append(tmp.maps, m)
	f.mu.Unlock()
	return m[:size:size], nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil && errors.Is(err, unix.ENOSPC) {
		err = fmt.Errorf("%w (converted tensors go to $TMPDIR, %s: point TMPDIR at a larger file system)", err, os.TempDir())
	}
	return n, err
}
