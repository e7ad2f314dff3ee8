package formats

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/formats/msgpack"
)

// MaxChunkSize is flax.serialization's MAX_CHUNK_SIZE: arrays of more
// bytes are written as chunked-array maps.
const MaxChunkSize = 1 << 30

// flaxNode is one level of the nested dict: children by key segment, or a
// tensor (src >= 0).
type flaxNode struct {
	src      int
	children map[string]*flaxNode
}

// FlaxTree nests tensor keys into the dict Flax would restore (keys split
// on "."), refusing a key that would be both an array and a dict.
func flaxTree(srcs []safetensors.Source) (*flaxNode, error) {
	root := &flaxNode{src: -1, children: map[string]*flaxNode{}}
	for i, s := range srcs {
		n := root
		segs := strings.Split(s.Key, ".")
		for j, seg := range segs {
			if n.src >= 0 {
				return nil, fmt.Errorf("keys %q and %q: %q would be both an array and a dict in the Flax tree", srcs[n.src].Key, s.Key, strings.Join(segs[:j], "."))
			}
			c := n.children[seg]
			if c == nil {
				c = &flaxNode{src: -1, children: map[string]*flaxNode{}}
				n.children[seg] = c
			}
			n = c
		}
		if n.src >= 0 {
			return nil, fmt.Errorf("key %q appears twice", s.Key)
		}
		if len(n.children) > 0 {
			return nil, fmt.Errorf("key %q: it would be both an array and a dict in the Flax tree (another key continues it)", s.Key)
		}
		n.src = i
	}
	return root, nil
}

// WriteFlax writes tensors as flax.serialization.msgpack_serialize writes
// the nested dict of numpy arrays their keys make (split on "."): each map
// in key order, every array as ext type 1 (a 0-d one as ext type 3, a
// numpy scalar), arrays over maxChunk bytes (MaxChunkSize) chunked as Flax
// chunks them. The bytes stream from each source: memory stays bounded
// whatever the sizes. flax.serialization.msgpack_restore gives back the
// nested dict.
func WriteFlax(dst io.Writer, srcs []safetensors.Source, maxChunk int64) (int64, error) {
	for _, s := range srcs {
		if MsgpackName(s.DType) == "" {
			return 0, fmt.Errorf("tensor %q: dtype %s has no numpy/ml_dtypes form Flax msgpack can store (ml_dtypes keeps a byte per sub-byte float)", s.Key, s.DType)
		}
	}
	root, err := flaxTree(srcs)
	if err != nil {
		return 0, err
	}
	cw := &byteCounter{w: dst}
	w := &flaxWriter{srcs: srcs, maxChunk: maxChunk, bw: bufio.NewWriterSize(cw, 1<<20), out: cw}
	w.file, _ = dst.(*os.File)
	w.node(root)
	if w.err == nil {
		w.err = w.bw.Flush()
	}
	return cw.n, w.err
}

type flaxWriter struct {
	srcs     []safetensors.Source
	maxChunk int64
	bw       *bufio.Writer
	file     *os.File // dst, when a file: tensor bytes go by copy_file_range
	noCFR    bool
	out      *byteCounter // counts what reaches dst
	buf      []byte
	hdr      []byte
	err      error
}

func (w *flaxWriter) put(b []byte) {
	if w.err == nil {
		_, w.err = w.bw.Write(b)
	}
}

func (w *flaxWriter) node(n *flaxNode) {
	keys := slices.Sorted(mapKeys(n.children))
	w.put(msgpack.AppendMapHeader(w.hdr[:0], uint32(len(keys))))
	for _, k := range keys {
		w.put(msgpack.AppendStr(w.hdr[:0], k))
		c := n.children[k]
		if c.src < 0 {
			w.node(c)
			continue
		}
		w.tensor(&w.srcs[c.src])
	}
}

func mapKeys(m map[string]*flaxNode) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func (w *flaxWriter) tensor(s *safetensors.Source) {
	size, err := safetensors.ByteSize(s.DType, s.Shape)
	if err != nil {
		w.err = err
		return
	}
	elem := uint64(s.DType.Bits() / 8)
	if int64(size) <= w.maxChunk {
		ext := int8(extNDArray)
		if len(s.Shape) == 0 {
			ext = extScalar
		}
		w.array(s, ext, s.Shape, s.Off, size)
		return
	}
	// Flax's _chunk: {"__msgpack_chunked_array__": True, "shape": {...},
	// "chunks": {"0": flat[0:n], ...}} with n = MAX_CHUNK_SIZE / itemsize.
	per := max(1, uint64(w.maxChunk)/elem)
	numel := size / elem
	nchunks := (numel + per - 1) / per
	b := msgpack.AppendMapHeader(w.hdr[:0], 3)
	b = msgpack.AppendStr(b, chunkedKey)
	b = msgpack.AppendBool(b, true)
	b = msgpack.AppendStr(b, "shape")
	b = msgpack.AppendMapHeader(b, uint32(len(s.Shape)))
	for i, d := range s.Shape {
		b = msgpack.AppendStr(b, strconv.Itoa(i))
		b = msgpack.AppendUint(b, d)
	}
	b = msgpack.AppendStr(b, "chunks")
	b = msgpack.AppendMapHeader(b, uint32(nchunks))
	w.put(b)
	for c := uint64(0); c < nchunks; c++ {
		n := min(per, numel-c*per)
		w.put(msgpack.AppendStr(w.hdr[:0], strconv.FormatUint(c, 10)))
		w.array(s, extNDArray, []uint64{n}, s.Off+int64(c*per*elem), n*elem)
	}
}

// array writes one ext holding msgpack [shape, dtype name, bytes], the
// bytes being the source's [off, off+size).
func (w *flaxWriter) array(s *safetensors.Source, ext int8, shape []uint64, off int64, size uint64) {
	p := msgpack.AppendArrayHeader(nil, 3)
	p = msgpack.AppendArrayHeader(p, uint32(len(shape)))
	for _, d := range shape {
		p = msgpack.AppendUint(p, d)
	}
	p = msgpack.AppendStr(p, MsgpackName(s.DType))
	p = msgpack.AppendBinHeader(p, size)
	w.put(msgpack.AppendExtHeader(w.hdr[:0], ext, uint64(len(p))+size))
	w.put(p)
	if w.err != nil || size == 0 {
		return
	}
	w.copyData(s, off, int64(size))
}

// copyData copies source bytes after what is buffered: kernel-side when
// both ends are files, else through a buffer.
func (w *flaxWriter) copyData(s *safetensors.Source, off, n int64) {
	if src, ok := s.Data.(*os.File); ok && w.file != nil && !w.noCFR {
		if w.err = w.bw.Flush(); w.err != nil {
			return
		}
		for n > 0 {
			k, err := unix.CopyFileRange(int(src.Fd()), &off, int(w.file.Fd()), nil, int(min(n, 1<<30)), 0)
			if err != nil || k == 0 {
				if k == 0 && err == nil {
					w.err = fmt.Errorf("tensor %q: the source ends early: %w", s.Key, io.ErrUnexpectedEOF)
					return
				}
				w.noCFR = true // EXDEV, EINVAL, ENOSYS...: copy through memory
				break
			}
			n -= int64(k)
			w.out.n += int64(k)
		}
		if n == 0 {
			return
		}
	}
	if w.buf == nil {
		w.buf = make([]byte, 1<<20)
	}
	k, err := io.CopyBuffer(struct{ io.Writer }{w.bw}, io.NewSectionReader(s.Data, off, n), w.buf)
	if err == nil && k < n {
		err = fmt.Errorf("tensor %q: the source ends after %d of %d bytes: %w", s.Key, k, n, io.ErrUnexpectedEOF)
	}
	if err != nil {
		w.err = err
	}
}

// byteCounter counts the bytes written through it.
type byteCounter struct {
	w io.Writer
	n int64
}

func (c *byteCounter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
