package upload

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Error is a refused write, truncate or read-back: why, and the errno the
// writer gets.
type Error struct {
	Errno syscall.Errno
	Err   error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Buffer collects one file written whole. It becomes a tensor (or
// metadata) only when Flush hands it over and the taker accepts it; until
// then nothing outside it changes.
type Buffer struct {
	pool  *Pool
	name  string // for messages
	limit int64  // the most this one may hold (EFBIG beyond)
	// check, if set, refuses from its first bytes a spilled upload that
	// can never be accepted, before the whole of it is read into memory
	// for its commit (a 1 GiB file of anything but a .npy).
	check func(prefix []byte, size int64) error

	mu     sync.Mutex
	length int64    // of the content
	buf    []byte   // the content while in memory (len(buf) == length)
	file   *os.File // the content once spilled
	held   int64    // memory accounted to the pool for buf
	wrote  bool     // since the last flush
	err    error    // of the last flush, repeated until the next write
	// shared: a commit kept buf as the tensor's bytes, so the next write
	// must copy it first (a spilled upload's commit gets a copy).
	shared bool
}

// checkPrefix is the size of the prefix check sees: any .npy header numpy
// writes, far below what reading a large upload whole costs.
const checkPrefix = 64 << 10

// New starts an upload of the file name holding content (nil for a new or
// truncated file); written says it already counts as written (a new or
// truncated file: its close commits even if nothing else is written).
// content exists already: it is accounted whatever the budgets, and
// spilled at once if it is too large to keep. check, if not nil, may
// refuse a spilled upload from its first bytes and its size before Flush
// reads it whole.
func (p *Pool) New(name string, content []byte, written bool, limit int64, check func(prefix []byte, size int64) error) *Buffer {
	b := &Buffer{pool: p, name: name, limit: limit, check: check, wrote: written, buf: content, length: int64(len(content))}
	b.mu.Lock()
	defer b.mu.Unlock()
	p.add(b.length, 0)
	if !b.inMemory(b.length) && b.spill() != nil {
		b.held = int64(cap(content))
		p.add(0, b.held)
	}
	return b
}

// refused reports why a write or truncate was refused and returns it with
// the errno the writer gets.
func (b *Buffer) refused(errno syscall.Errno, err error) error {
	return b.pool.report(&Error{Errno: errno, Err: err})
}

// resize accounts for the upload growing (or shrinking) to n bytes,
// within its own limit and the pool's. Caller holds mu.
func (b *Buffer) resize(n int64) error {
	if n > b.limit {
		return b.refused(syscall.EFBIG, fmt.Errorf("%s: %w: it would hold %d bytes, above its limit of %d", b.name, ErrLimit, n, b.limit))
	}
	if err := b.pool.reserve(b.name, b.length, n); err != nil {
		return b.refused(syscall.EFBIG, err)
	}
	b.length = n
	return nil
}

// inMemory reports whether the upload may stay in memory at n bytes,
// accounting for it; false means it must spill. Caller holds mu.
func (b *Buffer) inMemory(n int64) bool {
	if b.file != nil {
		return false
	}
	want := max(int64(cap(b.buf)), n)
	if n > b.pool.SpillAt || !b.pool.holdMemory(b.held, want) {
		return false
	}
	b.held = want
	return true
}

// spill moves the content (buf) to a temp file. Caller holds mu.
func (b *Buffer) spill() error {
	f, err := b.pool.tempFile()
	if err == nil {
		if _, err = f.WriteAt(b.buf, 0); err != nil {
			f.Close()
		}
	}
	if err != nil {
		return b.refused(errnoOf(err, syscall.ENOSPC), fmt.Errorf("%s: the upload is too large to hold in memory, and it could not be moved to a temp file: %w", b.name, err))
	}
	b.file, b.buf, b.shared = f, nil, false
	b.pool.add(0, -b.held)
	b.held = 0
	return nil
}

// own makes buf private before a change. Caller holds mu.
func (b *Buffer) own() {
	if b.shared {
		b.buf = slices.Clone(b.buf)
		b.shared = false
	}
}

// grow extends buf with zeros to n bytes. Caller holds mu.
func (b *Buffer) grow(n int64) {
	if n > int64(len(b.buf)) {
		b.buf = append(b.buf, make([]byte, n-int64(len(b.buf)))...)
		if c := int64(cap(b.buf)); c > b.held {
			b.pool.add(0, c-b.held)
			b.held = c
		}
	}
}

// Flush hands what was written since the last flush to commit, once: a
// file's Flush runs for every close of a duplicated descriptor. A refusal
// (commit's error, the check's, or a failed read-back of the temp file) is
// returned again at each later flush until the next write, so the final
// close reports it even when an earlier close of a dup went unchecked
// (numpy's tofile). commit may keep the slice it is given: the next write
// copies it first.
func (b *Buffer) Flush(commit func([]byte) error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.wrote {
		return b.err
	}
	b.wrote = false
	if b.file == nil {
		b.err = commit(b.buf)
		b.shared = true
		return b.err
	}
	if b.check != nil {
		prefix := make([]byte, min(b.length, checkPrefix))
		if _, err := b.file.ReadAt(prefix, 0); err != nil && err != io.EOF {
			b.err = b.refused(syscall.EIO, fmt.Errorf("%s: reading the upload back from its temp file: %w", b.name, err))
			return b.err
		}
		if err := b.check(prefix, b.length); err != nil {
			b.err = b.pool.report(fmt.Errorf("%s: %w", b.name, err))
			return b.err
		}
	}
	content, err := b.contents()
	if err != nil {
		b.err = b.refused(syscall.EIO, fmt.Errorf("%s: reading the upload back from its temp file: %w", b.name, err))
		return b.err
	}
	b.err = commit(content)
	return b.err
}

// contents reads a spilled upload into memory for its commit. Only the
// file's data is read: the holes of a sparse upload stay untouched zero
// pages of the new buffer. Caller holds mu.
func (b *Buffer) contents() ([]byte, error) {
	out := make([]byte, b.length)
	fd := int(b.file.Fd())
	for off := int64(0); off < b.length; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // a hole to the end
		}
		if err != nil {
			data = off // no SEEK_DATA: read it all
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil || hole > b.length {
			hole = b.length
		}
		if data >= hole {
			break
		}
		if _, err := b.file.ReadAt(out[data:hole], data); err != nil && err != io.EOF {
			return nil, err
		}
		off = hole
	}
	return out, nil
}

// WriteAt stores p at off, growing the upload if it ends past its size.
// A refusal (*Error) leaves the upload as it was.
func (b *Buffer) WriteAt(p []byte, off int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	end := off + int64(len(p))
	old := b.length
	if err := b.resize(max(old, end)); err != nil {
		return err
	}
	if b.inMemory(b.length) {
		b.own()
		b.grow(end)
		copy(b.buf[off:], p)
	} else {
		if b.file == nil {
			if err := b.spill(); err != nil {
				b.resize(old)
				return err
			}
		}
		if _, err := b.file.WriteAt(p, off); err != nil {
			return b.refused(errnoOf(err, syscall.EIO), fmt.Errorf("%s: writing %d bytes at %d into the upload's temp file: %w", b.name, len(p), off, err))
		}
	}
	b.wrote, b.err = true, nil
	return nil
}

// Truncate sets the size; a grow reads as zeros. A refusal (*Error)
// leaves the upload as it was.
func (b *Buffer) Truncate(n int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.length
	if err := b.resize(n); err != nil {
		return err
	}
	if b.inMemory(n) {
		b.own()
		b.buf = b.buf[:min(n, int64(len(b.buf)))]
		b.grow(n)
	} else {
		if b.file == nil {
			if err := b.spill(); err != nil {
				b.resize(old)
				return err
			}
		}
		if err := b.file.Truncate(n); err != nil {
			return b.refused(errnoOf(err, syscall.EIO), fmt.Errorf("%s: truncating the upload's temp file to %d bytes: %w", b.name, n, err))
		}
	}
	b.wrote, b.err = true, nil
	return nil
}

// ReadAt copies the bytes at off into dest and returns the part of dest
// filled (short at the end of the upload).
func (b *Buffer) ReadAt(dest []byte, off int64) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if off >= b.length {
		return dest[:0]
	}
	n := min(b.length-off, int64(len(dest)))
	if b.file != nil {
		k, _ := b.file.ReadAt(dest[:n], off)
		return dest[:k]
	}
	return dest[:copy(dest[:n], b.buf[off:off+n])]
}

// Size is the upload's length.
func (b *Buffer) Size() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.length
}

// Spilled reports whether the upload is in a temp file.
func (b *Buffer) Spilled() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.file != nil
}

// Close frees what the upload holds (its file was released).
func (b *Buffer) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.file != nil {
		b.file.Close()
		b.file = nil
	}
	b.pool.add(-b.length, -b.held)
	b.buf, b.length, b.held = nil, 0, 0
}

// errnoOf is err's errno, or def.
func errnoOf(err error, def syscall.Errno) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return def
}
