package formats

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// File is an opened foreign checkpoint: its tensors and metadata, and the
// read-only mapping of the file their bytes come from. Tensors whose bytes
// are not a span of the file (a deflated member, a strided or big-endian
// view, a chunked array) are materialized once, on first use, into a
// private temporary file (unlinked at once) and served from its mapping:
// never held in memory.
type File struct {
	Path     string
	Format   Format
	Tensors  []Tensor
	Metadata map[string]string // nil when the file has none

	f    *os.File
	m    []byte // the whole file, read-only; nil when empty
	size int64
	// ra reads the file without the mapping: parsers read the scattered
	// bytes that structure a file (member headers, msgpack keys) through
	// it, because a touch of the mapping maps a whole large folio of the
	// page cache, and RSS would grow with the file for nothing.
	ra io.ReaderAt

	mu     sync.Mutex
	closed bool
	tmp    *tempStore
	made   map[*base][]byte  // materialized bases (for strided views of them)
	mades  map[int]*madeOnce // materialized tensors, by index
}

type madeOnce struct {
	once sync.Once
	b    []byte
	err  error
}

// Open opens and validates a foreign checkpoint: its format is sniffed
// from its bytes, whatever its name. Files of a format this package does
// not read get a *NotCheckpointError (or, for a safetensors file, an error
// saying to open it as one).
func Open(path string) (*File, error) {
	format, err := Detect(path)
	if err != nil {
		return nil, err
	}
	if !format.Mountable() {
		if e := NotCheckpoint(path, format); e != nil {
			return nil, e
		}
		if format == Safetensors {
			return nil, fmt.Errorf("%s is a safetensors file: open it with the safetensors package", path)
		}
		return nil, fmt.Errorf("%s: not a checkpoint of a known format (safetensors, Flax msgpack, PyTorch, numpy .npy/.npz, GGUF)", path)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	file := &File{Path: path, Format: format, f: f, ra: f, size: st.Size(), made: map[*base][]byte{}, mades: map[int]*madeOnce{}}
	if file.size > 0 {
		if file.m, err = unix.Mmap(int(f.Fd()), 0, int(file.size), unix.PROT_READ, unix.MAP_SHARED); err != nil {
			f.Close()
			return nil, &os.PathError{Op: "mmap", Path: path, Err: err}
		}
	}
	if err := file.parse(); err != nil {
		file.Close()
		return nil, fmt.Errorf("%s: %s: %w", path, format, err)
	}
	if err := checkKeys(file.Tensors); err != nil {
		file.Close()
		return nil, fmt.Errorf("%s: %s: %w", path, format, err)
	}
	return file, nil
}

func (f *File) parse() error {
	var err error
	switch f.Format {
	case Msgpack:
		err = f.parseMsgpack()
	case TorchZip:
		err = f.parseTorchZip()
	case TorchLegacy:
		err = f.parseTorchLegacy()
	case NPZ:
		err = f.parseNPZ()
	case NPY:
		err = f.parseNPY()
	case GGUF:
		err = f.parseGGUF()
	default:
		err = fmt.Errorf("no reader for %s", f.Format)
	}
	return err
}

// ErrDuplicateKey: two tensors of a checkpoint have the same key once its
// nested names are joined with ".".
var ErrDuplicateKey = errors.New("duplicate key")

func checkKeys(ts []Tensor) error {
	seen := make(map[string]struct{}, len(ts))
	for i := range ts {
		k := ts[i].Key
		if _, dup := seen[k]; dup {
			return fmt.Errorf("key %q: %w (two entries join to the same key)", k, ErrDuplicateKey)
		}
		if k == "__metadata__" {
			return fmt.Errorf("key %q is reserved for safetensors' metadata", k)
		}
		seen[k] = struct{}{}
	}
	return nil
}

// Fd is the open file (read-only), for copy_file_range of contiguous
// tensors. Do not close it.
func (f *File) Fd() *os.File { return f.f }

// Size is the file's size at open.
func (f *File) Size() int64 { return f.size }

// Contiguous returns where tensor i's bytes are in the file when they are
// a span of it as they are (no copy, no conversion needed).
func (f *File) Contiguous(i int) (off int64, ok bool) {
	l := &f.Tensors[i].data
	if !l.contiguous() || !l.base.inFile() {
		return 0, false
	}
	return l.base.off + l.start, true
}

// Intact reports whether the file still holds every byte of the mapping:
// another program may truncate it, and touching a lost page faults.
func (f *File) Intact() bool {
	st, err := f.f.Stat()
	return err == nil && st.Size() >= f.size
}

// Bytes returns tensor i's bytes: a slice of the file's mapping, or of the
// temporary file's once materialized (the first call does it). Read-only;
// valid until Close.
func (f *File) Bytes(i int) ([]byte, error) {
	t := &f.Tensors[i]
	f.mu.Lock()
	closed := f.closed
	f.mu.Unlock()
	if closed {
		return nil, os.ErrClosed
	}
	if off, ok := f.Contiguous(i); ok {
		return f.m[off : off+t.Size : off+t.Size], nil
	}
	if l := &t.data; l.contiguous() && l.base.mem != nil {
		return l.base.mem[l.start : l.start+t.Size : l.start+t.Size], nil
	}
	f.mu.Lock()
	mo := f.mades[i]
	if mo == nil {
		mo = &madeOnce{}
		f.mades[i] = mo
	}
	f.mu.Unlock()
	mo.once.Do(func() {
		mo.b, mo.err = f.materialize(t.Size, func(w io.Writer) error { return f.write(t, w) })
		if mo.err != nil {
			mo.err = fmt.Errorf("tensor %q: %w", t.Key, mo.err)
		}
	})
	return mo.b, mo.err
}

// WriteTo writes tensor i's bytes to w, in bounded memory: from the
// mapping, a decompressor, or (for a strided view of a deflated storage
// only) a materialized copy of the storage.
func (f *File) WriteTo(i int, w io.Writer) error {
	t := &f.Tensors[i]
	if err := f.write(t, w); err != nil {
		return fmt.Errorf("tensor %q: %w", t.Key, err)
	}
	return nil
}

// Close releases the mappings and the files.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	var err error
	if f.m != nil {
		err = unix.Munmap(f.m)
		f.m = nil
	}
	if f.tmp != nil {
		f.tmp.close()
		f.tmp = nil
	}
	if f.f != nil {
		if cerr := f.f.Close(); err == nil {
			err = cerr
		}
		f.f = nil
	}
	return err
}

// span returns the file's bytes [off, off+n), checked against its size.
func (f *File) span(off, n int64) ([]byte, error) {
	if off < 0 || n < 0 || off > f.size || n > f.size-off {
		return nil, fmt.Errorf("bytes [%d, +%d) run past the end of the %d-byte file", off, n, f.size)
	}
	return f.m[off : off+n : off+n], nil
}

// read returns a copy of the file's bytes [off, off+n), read through ra.
func (f *File) read(off, n int64) ([]byte, error) {
	if off < 0 || n < 0 || off > f.size || n > f.size-off {
		return nil, fmt.Errorf("bytes [%d, +%d) run past the end of the %d-byte file", off, n, f.size)
	}
	b := make([]byte, n)
	if k, err := f.ra.ReadAt(b, off); int64(k) < n {
		return nil, fmt.Errorf("reading bytes [%d, +%d): %w", off, n, err)
	}
	return b, nil
}
