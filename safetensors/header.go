package safetensors

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"strconv"
)

// MaxHeaderSize is the reference reader's limit on the JSON header length N.
const MaxHeaderSize = 100_000_000

// Tensor describes one tensor of a header.
type Tensor struct {
	Key   string
	DType DType
	Shape []uint64 // never nil; [] for scalars
	// Begin and End are the data_offsets, relative to the start of the data
	// buffer (Header.DataOffset in the file); End is exclusive.
	Begin, End uint64
}

// Size is the tensor's length in bytes.
func (t *Tensor) Size() uint64 { return t.End - t.Begin }

// Header is a parsed and validated safetensors header.
type Header struct {
	// Metadata is nil when the header has no "__metadata__" entry and non-nil
	// (maybe empty) when it has one, so a rewrite keeps that distinction.
	Metadata map[string]string
	// Tensors are in file order: sorted by (Begin, End, Key). Key breaks ties
	// between zero-size tensors, which the reference leaves in hash order.
	Tensors []Tensor
	// HeaderSize is N, the JSON length including padding.
	HeaderSize uint64
}

// DataOffset is where the data buffer starts in the file.
func (h *Header) DataOffset() int64 { return 8 + int64(h.HeaderSize) }

// DataSize is the length of the data buffer.
func (h *Header) DataSize() uint64 {
	if len(h.Tensors) == 0 {
		return 0
	}
	return h.Tensors[len(h.Tensors)-1].End
}

// ReadHeader reads and validates the header of a safetensors file of the
// given total size. It reads only the 8+N header bytes, never the data, and
// checks every rule the reference reader checks plus duplicate keys, so a
// header it accepts describes a data buffer that exactly fills the rest of
// the file. Errors about the file's content are *FormatError; errors from r
// are returned wrapped as they are.
func ReadHeader(r io.ReaderAt, fileSize int64) (*Header, error) {
	return readHeader(r, fileSize)
}

func readHeader(r io.ReaderAt, fileSize int64) (*Header, error) {
	if fileSize < 8 {
		return nil, formatErr("", ErrTooSmall, fmt.Sprintf("file is %d bytes, shorter than the 8-byte header length", fileSize))
	}
	var nb [8]byte
	if err := readFull(r, nb[:], 0); err != nil {
		return nil, fmt.Errorf("safetensors: reading header length: %w", err)
	}
	n := binary.LittleEndian.Uint64(nb[:])
	if n > MaxHeaderSize {
		return nil, formatErr("", ErrHeaderTooLarge, fmt.Sprintf("header length %d is above the limit of %d bytes", n, MaxHeaderSize))
	}
	if n > uint64(fileSize-8) {
		return nil, formatErr("", ErrHeaderTruncated, fmt.Sprintf("header length %d runs past the end of the %d-byte file", n, fileSize))
	}
	buf := make([]byte, n)
	if err := readFull(r, buf, 8); err != nil {
		return nil, fmt.Errorf("safetensors: reading header: %w", err)
	}
	return parseAndValidate(buf, uint64(fileSize))
}

// readFull is io.ReadFull for an io.ReaderAt: ReadAt may return io.EOF along
// with a complete read at the end of the file, which is not an error.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// parseAndValidate checks the header bytes buf of a file of fileSize bytes.
func parseAndValidate(buf []byte, fileSize uint64) (*Header, error) {
	p, err := parseHeader(buf)
	if err != nil {
		return nil, err
	}
	h := &Header{Metadata: p.meta, Tensors: p.tensors, HeaderSize: uint64(len(buf))}
	ts := h.Tensors
	// Files from the reference writer are already in offset order; checking
	// first skips an O(n log n) sort for the common case.
	if !slices.IsSortedFunc(ts, compareTensors) {
		slices.SortFunc(ts, compareTensors)
	}
	seen := make(map[string]struct{}, len(ts))
	for i := range ts {
		if _, dup := seen[ts[i].Key]; dup {
			return nil, formatErr(ts[i].Key, ErrDuplicateKey, "key appears more than once in the header")
		}
		seen[ts[i].Key] = struct{}{}
	}
	// The same checks, in the same order, as the reference's validate(): the
	// offsets first, then the size the dtype and shape call for.
	var end uint64
	for i := range ts {
		t := &ts[i]
		switch {
		case t.End < t.Begin:
			return nil, formatErr(t.Key, ErrOffsets, fmt.Sprintf("data_offsets [%d,%d] end before they begin", t.Begin, t.End))
		case t.Begin > end:
			return nil, formatErr(t.Key, ErrOffsets, fmt.Sprintf("data_offsets [%d,%d] leave a gap: the data before ends at %d", t.Begin, t.End, end))
		case t.Begin < end:
			return nil, formatErr(t.Key, ErrOffsets, fmt.Sprintf("data_offsets [%d,%d] overlap the data before, which ends at %d", t.Begin, t.End, end))
		}
		end = t.End
		want, err := sizeOf(t.Key, t.DType, t.Shape)
		if err != nil {
			return nil, err
		}
		if t.Size() != want {
			return nil, formatErr(t.Key, ErrSizeMismatch, fmt.Sprintf("data_offsets [%d,%d] hold %d bytes but %s %s needs %d", t.Begin, t.End, t.Size(), t.DType, fmtShape(t.Shape), want))
		}
	}
	avail := fileSize - 8 - uint64(len(buf))
	switch {
	case end > avail:
		for i := range ts {
			if ts[i].End > avail {
				return nil, formatErr(ts[i].Key, ErrTruncatedData, fmt.Sprintf("data_offsets [%d,%d] run past the end of the file, whose data buffer holds %d bytes", ts[i].Begin, ts[i].End, avail))
			}
		}
	case end < avail:
		key := ""
		if len(ts) > 0 {
			key = ts[len(ts)-1].Key
		}
		return nil, formatErr(key, ErrTrailingData, fmt.Sprintf("the data ends at %d but the file holds %d more bytes after it", end, avail-end))
	}
	return h, nil
}

func compareTensors(a, b Tensor) int {
	if c := cmp.Compare(a.Begin, b.Begin); c != 0 {
		return c
	}
	if c := cmp.Compare(a.End, b.End); c != 0 {
		return c
	}
	return cmp.Compare(a.Key, b.Key)
}

// sizeOf is ByteSize with an error that names the tensor.
func sizeOf(key string, d DType, shape []uint64) (uint64, error) {
	n, err := ByteSize(d, shape)
	switch err {
	case nil:
		return n, nil
	case ErrShapeOverflow:
		return 0, formatErr(key, err, fmt.Sprintf("%s %s has a size that overflows 64 bits", d, fmtShape(shape)))
	case ErrSubByte:
		return 0, formatErr(key, err, fmt.Sprintf("%s %s is not a whole number of bytes", d, fmtShape(shape)))
	default:
		return 0, formatErr(key, err, fmt.Sprintf("invalid dtype %s", d))
	}
}

func fmtShape(shape []uint64) string {
	b := []byte{'['}
	for i, d := range shape {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, d, 10)
	}
	return string(append(b, ']'))
}
