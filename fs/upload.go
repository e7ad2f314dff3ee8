package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/fs/namespace"
)

// Files written whole (a .npy, a .f32.npy view, __metadata__) are collected
// until they are closed: an upload. A small one is held in memory. One past
// spillAt, or one that would take the uploads held in memory past
// memoryBudget, moves to a private temp file: O_TMPFILE in $TMPDIR (no name
// anyone else could open, gone when closed; $TMPDIR rather than the state
// directory, which is usually a tmpfs in RAM). So a sparse upload
// (truncate to 1 GiB, write a few bytes) costs a few pages, and many
// uploads at once cannot take the daemon's memory. The sizes of all open
// uploads together are capped at the mount's upload limit (half the RAM):
// a close turns an upload into a tensor held in memory until it is logged.

const (
	// spillAt is the most one upload holds in memory.
	spillAt = 64 << 20
	// memoryBudget is the most all uploads together hold in memory.
	memoryBudget = 256 << 20
)

// uploadPool is what a mount's uploads share: the budgets and where they
// spill.
type uploadPool struct {
	dir     string // "" = os.TempDir()
	limit   int64  // the most all open uploads may hold together (EFBIG beyond)
	spillAt int64  // the most one upload holds in memory
	budget  int64  // the most all uploads together hold in memory
	refuse  func(error)

	mu     sync.Mutex
	total  int64 // sizes of all open uploads
	memory int64 // bytes of upload buffers held in memory
}

// errUploadLimit: an upload, or all of them together, would pass a limit.
var errUploadLimit = errors.New("too large for an upload")

// reserve accounts for an upload growing from old to size bytes
// (shrinking always succeeds).
func (p *uploadPool) reserve(name string, old, size int64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if size > old && p.total+size-old > p.limit {
		return fmt.Errorf("%s: %w: all files being written whole in this mount would hold %d bytes, above the limit of %d (half the RAM: each becomes a tensor in memory when it is closed)", name, errUploadLimit, p.total+size-old, p.limit)
	}
	p.total += size - old
	return nil
}

// holdMemory accounts for an upload's buffer changing from old to now
// bytes of memory, and says whether the uploads held in memory stay within
// the budget.
func (p *uploadPool) holdMemory(old, now int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if now > old && p.memory+now-old > p.budget {
		return false
	}
	p.memory += now - old
	return true
}

// add accounts for what an upload holds, unchecked (a buffer that exists
// already, or one given back).
func (p *uploadPool) add(total, memory int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total += total
	p.memory += memory
}

// tempFile creates the private file an upload spills to.
func (p *uploadPool) tempFile() (*os.File, error) {
	dir := p.dir
	if dir == "" {
		dir = os.TempDir()
	}
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), dir+"/(upload)"), nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		return nil, fmt.Errorf("temp file in %s: %w", dir, err)
	}
	// A file system without O_TMPFILE: a fresh name (O_EXCL), unlinked
	// at once.
	f, err := os.CreateTemp(dir, ".safejaxfs-upload-")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	return f, nil
}

// uploadSet tracks a node's open uploads, so that a truncate by path
// (truncate(1), no file handle) reaches them.
type uploadSet struct {
	mu   sync.Mutex
	open map[*upload]struct{}
}

func (s *uploadSet) add(u *upload) *upload {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open == nil {
		s.open = map[*upload]struct{}{}
	}
	s.open[u] = struct{}{}
	return u
}

// release forgets a closed upload and frees what it held.
func (s *uploadSet) release(u *upload) {
	s.mu.Lock()
	delete(s.open, u)
	s.mu.Unlock()
	u.close()
}

// truncateAll applies a handle-less truncate to every open upload. A
// truncate of a node nobody is uploading to is refused: only whole uploads
// replace its content.
func (s *uploadSet) truncateAll(size int64) syscall.Errno {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.open) == 0 {
		return syscall.EPERM
	}
	for u := range s.open {
		if errno := u.truncate(size); errno != 0 {
			return errno
		}
	}
	return 0
}

// flushUpload commits what an upload collected (once per write session):
// commit makes the change durable before it returns, or not at all (the
// checkpoint's *Sync edits). A refused commit fails the close with EINVAL
// (EFBIG past the header limit), one that could not be made durable with
// the errno of what failed (ENOSPC, EIO...); either way the old state is
// kept, now and after unmount.
func (f *FS) flushUpload(ctx context.Context, u *upload, commit func([]byte) error) syscall.Errno {
	if !u.owner.decides(ctx) {
		// A copy of the descriptor that a forked process inherited: its
		// close decides nothing (owner.go).
		return 0
	}
	return f.commitUpload(ctx, u, commit)
}

// releaseUpload is the last close of an upload: what was written since
// the last close that decided (a process its owner handed the file to
// wrote after the owner closed it) is committed now. The kernel ignores
// Release's errors: a refusal is recorded as at any close.
func (f *FS) releaseUpload(ctx context.Context, u *upload, commit func([]byte) error) {
	f.commitUpload(ctx, u, commit)
}

// commitUpload commits what u collected since its last commit, if anything.
func (f *FS) commitUpload(ctx context.Context, u *upload, commit func([]byte) error) syscall.Errno {
	refuse := func(err error) syscall.Errno {
		f.fail(err)
		return closeErrno(err)
	}
	return u.flush(func(b []byte) syscall.Errno {
		if err := commit(b); err != nil {
			return refuse(err)
		}
		f.syncAfterCommit(ctx)
		return 0
	}, refuse)
}

// upload collects a file written whole. It becomes a tensor (or metadata)
// only when the file is closed and its content is accepted; until then
// nothing in the checkpoint changes.
type upload struct {
	// owner opened the file: only its closes decide (owner.go).
	owner opener
	pool  *uploadPool
	name  string // for messages
	limit int64  // the most this one may hold (EFBIG beyond)

	mu     sync.Mutex
	length int64    // of the content
	buf    []byte   // the content while in memory (len(buf) == length)
	file   *os.File // the content once spilled
	held   int64    // memory accounted to the pool for buf
	wrote  bool     // since the last flush
	errno  syscall.Errno
	// shared: a commit kept buf as the tensor's bytes, so the next write
	// must copy it first (a spilled upload's commit gets a copy).
	shared bool
	// check, if set, refuses from its first bytes a spilled upload that
	// can never be accepted, before the whole of it is read into memory
	// for its commit (a 1 GiB file of anything but a .npy: see
	// namespace.NPYPrecheck).
	check func(prefix []byte, size int64) error
}

// checkPrefix is the size of the prefix check sees: any .npy header numpy
// writes, far below what reading a large upload whole costs.
const checkPrefix = 64 << 10

// newUpload starts an upload of the file name holding buf (nil for a new
// or truncated file). buf exists already: it is accounted whatever the
// budgets, and spilled at once if it is too large to keep.
func (f *FS) newUpload(owner opener, name string, buf []byte, wrote bool, limit int64) *upload {
	u := &upload{owner: owner, pool: &f.upPool, name: name, limit: limit, wrote: wrote, buf: buf, length: int64(len(buf))}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.pool.add(u.length, 0)
	if !u.inMemory(u.length) && u.spill() != 0 {
		u.held = int64(cap(buf))
		u.pool.add(0, u.held)
	}
	return u
}

// newNPYUpload is newUpload of a .npy file (a view, or one that makes a
// tensor): one that cannot be a .npy of its size is refused from its
// header.
func (f *FS) newNPYUpload(owner opener, name string, buf []byte, wrote bool) *upload {
	u := f.newUpload(owner, name, buf, wrote, f.maxUpload)
	u.check = namespace.NPYPrecheck
	return u
}

// writeUpload is Write for a node whose open files are uploads (the
// special files, the float32 views).
func writeUpload(fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	u, ok := fh.(*upload)
	if !ok {
		return 0, syscall.EBADF
	}
	if errno := u.write(data, off); errno != 0 {
		return 0, errno // the upload logged why
	}
	return uint32(len(data)), 0
}

// refused reports why a write or truncate was refused (the errno is all
// the writer gets) and returns errno.
func (u *upload) refused(errno syscall.Errno, err error) syscall.Errno {
	u.pool.refuse(err)
	return errno
}

// resize accounts for the upload growing (or shrinking) to n bytes,
// within its own limit and the pool's. Caller holds mu.
func (u *upload) resize(n int64) syscall.Errno {
	if n > u.limit {
		return u.refused(syscall.EFBIG, fmt.Errorf("%s: %w: it would hold %d bytes, above its limit of %d", u.name, errUploadLimit, n, u.limit))
	}
	if err := u.pool.reserve(u.name, u.length, n); err != nil {
		return u.refused(syscall.EFBIG, err)
	}
	u.length = n
	return 0
}

// inMemory reports whether the upload may stay in memory at n bytes,
// accounting for it; false means it must spill. Caller holds mu.
func (u *upload) inMemory(n int64) bool {
	if u.file != nil {
		return false
	}
	want := max(int64(cap(u.buf)), n)
	if n > u.pool.spillAt || !u.pool.holdMemory(u.held, want) {
		return false
	}
	u.held = want
	return true
}

// spill moves the content (buf) to a temp file. Caller holds mu.
func (u *upload) spill() syscall.Errno {
	f, err := u.pool.tempFile()
	if err == nil {
		if _, err = f.WriteAt(u.buf, 0); err != nil {
			f.Close()
		}
	}
	if err != nil {
		return u.refused(errnoOf(err, syscall.ENOSPC), fmt.Errorf("%s: the upload is too large to hold in memory, and it could not be moved to a temp file: %w", u.name, err))
	}
	u.file, u.buf, u.shared = f, nil, false
	u.pool.add(0, -u.held)
	u.held = 0
	return 0
}

// own makes buf private before a change. Caller holds mu.
func (u *upload) own() {
	if u.shared {
		u.buf = slices.Clone(u.buf)
		u.shared = false
	}
}

// grow extends buf with zeros to n bytes. Caller holds mu.
func (u *upload) grow(n int64) {
	if n > int64(len(u.buf)) {
		u.buf = append(u.buf, make([]byte, n-int64(len(u.buf)))...)
		if c := int64(cap(u.buf)); c > u.held {
			u.pool.add(0, c-u.held)
			u.held = c
		}
	}
}

// flush commits what was written since the last flush, once: Flush runs
// for every close of a duplicated descriptor. A refusal is repeated at each
// later flush until the next write, so the final close reports it even when
// an earlier close of a dup went unchecked (numpy's tofile).
func (u *upload) flush(commit func([]byte) syscall.Errno, refuse func(error) syscall.Errno) syscall.Errno {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.wrote {
		return u.errno
	}
	u.wrote = false
	if u.file == nil {
		u.errno = commit(u.buf)
		// The tensor may now hold these bytes; they also stay what the
		// file holds, for a later write and close.
		u.shared = true
		return u.errno
	}
	if u.check != nil {
		prefix := make([]byte, min(u.length, checkPrefix))
		if _, err := u.file.ReadAt(prefix, 0); err != nil && err != io.EOF {
			u.errno = u.refused(syscall.EIO, fmt.Errorf("%s: reading the upload back from its temp file: %w", u.name, err))
			return u.errno
		}
		if err := u.check(prefix, u.length); err != nil {
			u.errno = refuse(fmt.Errorf("%s: %w", u.name, err))
			return u.errno
		}
	}
	b, err := u.contents()
	if err != nil {
		u.errno = u.refused(syscall.EIO, fmt.Errorf("%s: reading the upload back from its temp file: %w", u.name, err))
		return u.errno
	}
	u.errno = commit(b)
	return u.errno
}

// contents reads a spilled upload into memory for its commit. Only the
// file's data is read: the holes of a sparse upload stay untouched zero
// pages of the new buffer. Caller holds mu.
func (u *upload) contents() ([]byte, error) {
	b := make([]byte, u.length)
	fd := int(u.file.Fd())
	for off := int64(0); off < u.length; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // a hole to the end
		}
		if err != nil {
			data = off // no SEEK_DATA: read it all
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil || hole > u.length {
			hole = u.length
		}
		if data >= hole {
			break
		}
		if _, err := u.file.ReadAt(b[data:hole], data); err != nil && err != io.EOF {
			return nil, err
		}
		off = hole
	}
	return b, nil
}

func (u *upload) write(p []byte, off int64) syscall.Errno {
	u.mu.Lock()
	defer u.mu.Unlock()
	end := off + int64(len(p))
	old := u.length
	if errno := u.resize(max(old, end)); errno != 0 {
		return errno
	}
	if u.inMemory(u.length) {
		u.own()
		u.grow(end)
		copy(u.buf[off:], p)
	} else {
		if u.file == nil {
			if errno := u.spill(); errno != 0 {
				u.resize(old)
				return errno
			}
		}
		if _, err := u.file.WriteAt(p, off); err != nil {
			return u.refused(errnoOf(err, syscall.EIO), fmt.Errorf("%s: writing %d bytes at %d into the upload's temp file: %w", u.name, len(p), off, err))
		}
	}
	u.wrote, u.errno = true, 0
	return 0
}

func (u *upload) truncate(n int64) syscall.Errno {
	u.mu.Lock()
	defer u.mu.Unlock()
	old := u.length
	if errno := u.resize(n); errno != 0 {
		return errno
	}
	if u.inMemory(n) {
		u.own()
		u.buf = u.buf[:min(n, int64(len(u.buf)))]
		u.grow(n)
	} else {
		if u.file == nil {
			if errno := u.spill(); errno != 0 {
				u.resize(old)
				return errno
			}
		}
		if err := u.file.Truncate(n); err != nil {
			return u.refused(errnoOf(err, syscall.EIO), fmt.Errorf("%s: truncating the upload's temp file to %d bytes: %w", u.name, n, err))
		}
	}
	u.wrote, u.errno = true, 0
	return 0
}

func (u *upload) read(dest []byte, off int64) fuse.ReadResult {
	u.mu.Lock()
	defer u.mu.Unlock()
	if off >= u.length {
		return fuse.ReadResultData(nil)
	}
	n := min(u.length-off, int64(len(dest)))
	if u.file != nil {
		k, _ := u.file.ReadAt(dest[:n], off)
		return fuse.ReadResultData(dest[:k])
	}
	return fuse.ReadResultData(append([]byte(nil), u.buf[off:off+n]...))
}

func (u *upload) size() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return int(u.length)
}

// spilled reports whether the upload is in a temp file (tests).
func (u *upload) spilled() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.file != nil
}

// close frees what the upload holds (its handle was released).
func (u *upload) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.file != nil {
		u.file.Close()
		u.file = nil
	}
	u.pool.add(-u.length, -u.held)
	u.buf, u.length, u.held = nil, 0, 0
}

// errnoOf is err's errno, or def.
func errnoOf(err error, def syscall.Errno) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return def
}
