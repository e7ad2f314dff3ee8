package safetensors

import (
	"errors"
	"io"
	"os"
	"sync"
	"syscall"

	"github.com/edsrzf/mmap-go"
)

// File is an open, validated checkpoint whose bytes are mmap'd read-only.
// Its methods are safe for concurrent use; slices it hands out stay valid
// until Close.
//
// The mapping shares the page cache with the file: if another process
// truncates the file while it is mapped, touching the lost pages raises
// SIGBUS. Writers are expected to replace checkpoints by rename, never in
// place.
type File struct {
	Header
	Path string
	Size int64 // file size at open

	f *os.File
	m mmap.MMap // the whole file; a file that validates is never empty
	// index is built at the first Index, not kept from validation: a
	// checkpoint keeps its own key map, and 94k tensors' index is 4.6 MB
	// of a mount's live heap that only a write-back asks for.
	indexOnce sync.Once
	index     map[string]int
}

// Open opens and validates the checkpoint at path. A malformed file yields
// an *os.PathError wrapping a *FormatError, and nothing is left open.
func Open(path string) (*File, error) {
	// O_NONBLOCK so that a FIFO given as a checkpoint is refused below
	// instead of blocking the open; it changes nothing for a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	sf, err := newFile(path, f)
	if err != nil {
		f.Close()
		var fe *FormatError
		if errors.As(err, &fe) {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return nil, err
	}
	return sf, nil
}

// OpenFile validates and maps the checkpoint open as f, which it takes
// over (closed on error, and by Close). It is Open for a file reached by a
// descriptor (a directory-relative open that refuses symlinks).
func OpenFile(f *os.File) (*File, error) {
	sf, err := newFile(f.Name(), f)
	if err != nil {
		f.Close()
		var fe *FormatError
		if errors.As(err, &fe) {
			return nil, &os.PathError{Op: "open", Path: f.Name(), Err: err}
		}
		return nil, err
	}
	return sf, nil
}

func newFile(path string, f *os.File) (*File, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, &os.PathError{Op: "open", Path: path, Err: errors.New("safetensors: not a regular file")}
	}
	size := st.Size()
	h, err := readHeader(f, size)
	if err != nil {
		return nil, err
	}
	// Mapping the whole file rather than the data region keeps offsets
	// simple and means the length is never 0 (a valid file has at least the
	// 8-byte length and "{}"), which mmap refuses.
	m, err := mmap.MapRegion(f, int(size), mmap.RDONLY, 0, 0)
	if err != nil {
		return nil, &os.PathError{Op: "mmap", Path: path, Err: err}
	}
	return &File{Header: *h, Path: path, Size: size, f: f, m: m}, nil
}

// Bytes returns tensor i's bytes, a slice of the mapping (no copy). Its
// capacity is clipped to its length so an append can never write into the
// read-only mapping (which would fault) but copies instead.
func (f *File) Bytes(i int) []byte {
	t := &f.Tensors[i]
	off := uint64(f.DataOffset())
	lo, hi := off+t.Begin, off+t.End
	return f.m[lo:hi:hi]
}

// Mapped returns the whole mapped file, header included; offsets in it are
// file offsets. Read-only, valid until Close.
func (f *File) Mapped() []byte { return f.m[:len(f.m):len(f.m)] }

// ReadAt reads from the mapping, so a File can be a writer Source without a
// system call per read.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("safetensors: negative offset")
	}
	if off >= int64(len(f.m)) {
		return 0, io.EOF
	}
	n := copy(p, f.m[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Slice implements BytesSource: the writer writes straight from the mapping.
func (f *File) Slice(off, n int64) []byte { return Bytes(f.m).Slice(off, n) }

// Fd returns the open file (read-only), e.g. as a Source for the writer,
// which then copies with copy_file_range. Do not close it; Close does.
func (f *File) Fd() *os.File { return f.f }

// Index returns the position in Tensors of the tensor named key.
func (f *File) Index(key string) (int, bool) {
	f.indexOnce.Do(func() {
		f.index = make(map[string]int, len(f.Tensors))
		for i := range f.Tensors {
			f.index[f.Tensors[i].Key] = i
		}
	})
	i, ok := f.index[key]
	return i, ok
}

// Close unmaps and closes the file. Slices from Bytes and Mapped must not be
// used afterwards.
func (f *File) Close() error {
	if f.f == nil {
		return os.ErrClosed
	}
	err := f.m.Unmap()
	if cerr := f.f.Close(); err == nil {
		err = cerr
	}
	f.f, f.m = nil, nil
	return err
}
