package safetensors

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"unicode/utf8"
)

// Source is one tensor to write: its bytes are Data[Off : Off+size), where
// size is ByteSize(DType, Shape).
type Source struct {
	Key   string
	DType DType
	Shape []uint64
	Data  io.ReaderAt
	Off   int64
}

// BytesSource is a Source.Data whose bytes are already in memory; the writer
// writes its slices directly instead of copying them through a buffer.
type BytesSource interface {
	io.ReaderAt
	// Slice returns the n bytes at off, or fewer if the source is shorter.
	// The writer only reads the result.
	Slice(off, n int64) []byte
}

// Bytes is an in-memory BytesSource.
type Bytes []byte

func (b Bytes) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("safetensors: negative offset %d", off)
	}
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (b Bytes) Slice(off, n int64) []byte {
	if off < 0 || n < 0 || off > int64(len(b)) {
		return nil
	}
	end := min(off+n, int64(len(b)))
	if end < off { // off+n overflowed
		end = int64(len(b))
	}
	return b[off:end:end]
}

// Layout is the canonical arrangement of a checkpoint, computed without
// touching tensor data.
type Layout struct {
	Header  []byte   // 8-byte length + padded JSON: the file's first bytes
	Order   []int    // indices into the sources, in data order
	Tensors []Tensor // in data order, with their offsets
}

// DataSize is the length of the data buffer that follows Header.
func (l *Layout) DataSize() uint64 {
	if len(l.Tensors) == 0 {
		return 0
	}
	return l.Tensors[len(l.Tensors)-1].End
}

// Plan computes the layout the reference writer would produce for these
// tensors and metadata, byte for byte: tensors sorted by dtype descending in
// enum order, then by key bytewise; compact JSON with "__metadata__" first
// (only when metadata is non-nil), entries in data order with fields dtype,
// shape, data_offsets; strings escaped as serde_json does; spaces padding the
// JSON to a multiple of 8.
//
// One thing the reference leaves unspecified: it keeps metadata in a Rust
// HashMap, so its metadata order varies from run to run. Plan sorts metadata
// keys bytewise, which is one of the orders the reference can produce and
// makes the output deterministic. A file with two or more metadata entries
// may therefore not round-trip byte for byte, though it does round-trip in
// content.
//
// Plan rejects what would make an invalid or ambiguous file: duplicate keys,
// a tensor named "__metadata__", strings that are not UTF-8, unknown dtypes,
// shapes whose size overflows or is not whole bytes, and headers above
// MaxHeaderSize. Errors are *FormatError.
func Plan(sources []Source, metadata map[string]string) (*Layout, error) {
	order := make([]int, len(sources))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		sa, sb := &sources[a], &sources[b]
		if c := cmp.Compare(sb.DType, sa.DType); c != 0 {
			return c
		}
		return cmp.Compare(sa.Key, sb.Key)
	})

	seen := make(map[string]struct{}, len(sources))
	tensors := make([]Tensor, len(sources))
	jsonLen := 2 // {}
	var off uint64
	for j, i := range order {
		s := &sources[i]
		if !s.DType.Valid() {
			return nil, formatErr(s.Key, ErrUnknownDType, fmt.Sprintf("unknown dtype %s", s.DType))
		}
		if s.Key == "__metadata__" {
			return nil, formatErr(s.Key, ErrMetadata, `"__metadata__" is reserved for the metadata object and cannot name a tensor`)
		}
		if !utf8.ValidString(s.Key) {
			return nil, formatErr(s.Key, ErrHeaderUTF8, "key is not valid UTF-8")
		}
		if _, dup := seen[s.Key]; dup {
			return nil, formatErr(s.Key, ErrDuplicateKey, "two sources have this key")
		}
		seen[s.Key] = struct{}{}
		size, err := sizeOf(s.Key, s.DType, s.Shape)
		if err != nil {
			return nil, err
		}
		if off+size < off {
			return nil, formatErr(s.Key, ErrShapeOverflow, "total data size overflows 64 bits")
		}
		shape := s.Shape
		if shape == nil {
			shape = emptyShape
		}
		tensors[j] = Tensor{Key: s.Key, DType: s.DType, Shape: shape, Begin: off, End: off + size}
		off += size
		jsonLen += len(s.Key) + 60 + 21*len(shape)
	}

	mkeys := make([]string, 0, len(metadata))
	for k, v := range metadata {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, formatErr("", ErrHeaderUTF8, fmt.Sprintf("__metadata__ entry %q is not valid UTF-8", k))
		}
		mkeys = append(mkeys, k)
		jsonLen += len(k) + len(v) + 6
	}
	slices.Sort(mkeys)

	// Capacity is a guess (escapes can only grow it); it saves the regrowth
	// copies for headers of many tensors.
	b := make([]byte, 8, 8+jsonLen+24)
	b = append(b, '{')
	if metadata != nil {
		b = append(b, `"__metadata__":{`...)
		for i, k := range mkeys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, metadata[k])
		}
		b = append(b, '}')
		if len(tensors) > 0 {
			b = append(b, ',')
		}
	}
	for i := range tensors {
		t := &tensors[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, t.Key)
		b = append(b, `:{"dtype":"`...)
		b = append(b, t.DType.String()...)
		b = append(b, `","shape":`...)
		b = AppendShape(b, t.Shape)
		b = append(b, `,"data_offsets":[`...)
		b = strconv.AppendUint(b, t.Begin, 10)
		b = append(b, ',')
		b = strconv.AppendUint(b, t.End, 10)
		b = append(b, "]}"...)
	}
	b = append(b, '}')
	for (len(b)-8)%8 != 0 {
		b = append(b, ' ')
	}
	n := uint64(len(b) - 8)
	if n > MaxHeaderSize {
		return nil, formatErr("", ErrHeaderTooLarge, fmt.Sprintf("header would be %d bytes, above the limit of %d", n, MaxHeaderSize))
	}
	binary.LittleEndian.PutUint64(b[:8], n)
	return &Layout{Header: b, Order: order, Tensors: tensors}, nil
}

// appendJSONString appends s as serde_json writes it: only '"', '\\' and the
// C0 controls are escaped (the usual two-letter forms where JSON has them,
// \u00xx with lowercase hex otherwise); '<', '>', '&', '/', DEL, U+2028/2029
// and all non-ASCII stay as they are. encoding/json would differ on several
// of these, so the writer cannot use it.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"':
			b = append(b, '\\', '"')
		case '\\':
			b = append(b, '\\', '\\')
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// Write writes the canonical file for sources and metadata to dst (see Plan)
// and returns the number of bytes written. It streams: the header, then each
// tensor's bytes from its source, never holding the checkpoint in memory.
//
// Where it can, it avoids copying through user space: BytesSource data
// (Bytes, *File) is written straight from its slice, and when both dst and a
// source are *os.File it uses copy_file_range, which lets the kernel copy
// (or reflink) without the data ever reaching this process.
func Write(dst io.Writer, sources []Source, metadata map[string]string) (int64, error) {
	l, err := Plan(sources, metadata)
	if err != nil {
		return 0, err
	}
	return l.Write(dst, sources)
}

// Write writes the file this layout describes, taking tensor bytes from
// sources, which must be the ones the layout was planned from.
func (l *Layout) Write(dst io.Writer, sources []Source) (int64, error) {
	// A small checkpoint gets a buffer its own size, not 1 MiB.
	total := uint64(len(l.Header)) + l.DataSize()
	if len(sources) != len(l.Order) {
		return 0, fmt.Errorf("safetensors: layout planned for %d sources, given %d", len(l.Order), len(sources))
	}
	w := &stream{dst: dst, bufSize: int(min(total, streamBuf))}
	w.dstFile, _ = dst.(*os.File)
	w.write(l.Header)
	for j, i := range l.Order {
		if w.err != nil {
			break
		}
		s := &sources[i]
		size := l.Tensors[j].Size()
		if size == 0 {
			continue
		}
		if s.Data == nil {
			return w.n, fmt.Errorf("safetensors: tensor %q has no Data to read its %d bytes from", s.Key, size)
		}
		if s.Off < 0 || size > uint64(math.MaxInt64-s.Off) {
			return w.n, fmt.Errorf("safetensors: writing tensor %q: source range [%d, +%d) is out of bounds", s.Key, s.Off, size)
		}
		if err := w.copyTensor(s, int64(size)); err != nil {
			if w.err == nil {
				w.err = err
			}
			break
		}
	}
	w.flush()
	return w.n, w.err
}

// stream batches small writes: a checkpoint can have 100k tensors of a few
// bytes each, and a write(2) per tensor would dominate. Large tensors bypass
// the buffer so their bytes are copied once at most.
type stream struct {
	dst     io.Writer
	dstFile *os.File
	noCFR   bool // copy_file_range failed in a way that will not get better
	buf     []byte
	bufSize int
	n       int64
	err     error
}

const (
	streamBuf = 1 << 20
	directMin = 64 << 10 // writes at least this big skip the buffer
)

func (w *stream) write(p []byte) {
	if w.err != nil {
		return
	}
	if len(p) >= directMin {
		w.flush()
		if w.err != nil {
			return
		}
		n, err := w.dst.Write(p)
		w.n += int64(n)
		w.err = err
		return
	}
	if w.buf == nil {
		w.buf = make([]byte, 0, w.bufSize)
	}
	if len(w.buf)+len(p) > cap(w.buf) {
		w.flush()
	}
	w.buf = append(w.buf, p...)
}

func (w *stream) flush() {
	if w.err != nil || len(w.buf) == 0 {
		return
	}
	n, err := w.dst.Write(w.buf)
	w.n += int64(n)
	w.err = err
	w.buf = w.buf[:0]
}

// PiecesSource is a Source.Data whose bytes are pieces: runs of an open
// file, which the writer copies kernel-side (copy_file_range) like an
// *os.File source, and bytes in memory, written as they are. An edited
// tensor of a mapped checkpoint is mostly the former.
type PiecesSource interface {
	io.ReaderAt
	// Pieces returns the n bytes at off, in order.
	Pieces(off, n int64) []Piece
}

// Piece is File[Off, Off+N) when File is set, else Bytes.
type Piece struct {
	File  *os.File
	Off   int64
	N     int64
	Bytes []byte
}

func (w *stream) copyTensor(s *Source, size int64) error {
	switch d := s.Data.(type) {
	case PiecesSource:
		var got int64
		for _, p := range d.Pieces(s.Off, size) {
			if p.File == nil {
				w.write(p.Bytes)
				got += int64(len(p.Bytes))
				continue
			}
			ps := Source{Key: s.Key, Data: p.File, Off: p.Off}
			if err := w.copyTensor(&ps, p.N); err != nil {
				return err
			}
			got += p.N
		}
		if got != size {
			return shortSource(s, got, size)
		}
		return nil
	case BytesSource:
		p := d.Slice(s.Off, size)
		if int64(len(p)) != size {
			return shortSource(s, int64(len(p)), size)
		}
		w.write(p)
		return nil
	case *os.File:
		if w.dstFile != nil && !w.noCFR && size >= directMin {
			w.flush()
			if w.err != nil {
				return nil
			}
			done, err := copyFileRange(w.dstFile, d, s.Off, size)
			w.n += done
			switch {
			case err == errCFRUnsupported:
				w.noCFR = true
				s2 := *s
				s2.Off += done
				return w.copyReaderAt(&s2, size-done, done)
			case err == io.ErrUnexpectedEOF:
				return shortSource(s, done, size)
			case err != nil:
				return fmt.Errorf("safetensors: writing tensor %q: %w", s.Key, err)
			}
			return nil
		}
	}
	return w.copyReaderAt(s, size, 0)
}

// copyReaderAt reads the source straight into the stream's buffer, so small
// tensors cost one copy and large ones go out in 1 MiB writes.
func (w *stream) copyReaderAt(s *Source, size, already int64) error {
	if w.buf == nil {
		w.buf = make([]byte, 0, w.bufSize)
	}
	off := s.Off
	for size > 0 && w.err == nil {
		if len(w.buf) == cap(w.buf) {
			w.flush()
			continue
		}
		chunk := w.buf[len(w.buf):cap(w.buf)]
		if int64(len(chunk)) > size {
			chunk = chunk[:size]
		}
		n, err := s.Data.ReadAt(chunk, off)
		w.buf = w.buf[:len(w.buf)+n]
		off += int64(n)
		size -= int64(n)
		if size > 0 && err != nil {
			if err == io.EOF {
				return shortSource(s, off-s.Off+already, off-s.Off+already+size)
			}
			return fmt.Errorf("safetensors: reading tensor %q: %w", s.Key, err)
		}
		if n == 0 && err == nil && size > 0 {
			return fmt.Errorf("safetensors: reading tensor %q: %w", s.Key, io.ErrNoProgress)
		}
	}
	return nil
}

func shortSource(s *Source, got, want int64) error {
	return fmt.Errorf("safetensors: tensor %q: source holds %d of the %d bytes %s %s needs: %w", s.Key, got, want, s.DType, fmtShape(s.Shape), io.ErrUnexpectedEOF)
}
