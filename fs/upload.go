package fs

import (
	"context"
	"slices"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

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

// release forgets a closed upload.
func (s *uploadSet) release(u *upload) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.open, u)
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
	return u.flush(func(b []byte) syscall.Errno {
		if err := commit(b); err != nil {
			f.fail(err)
			return closeErrno(err)
		}
		f.syncAfterCommit(ctx)
		return 0
	})
}

// upload collects a .npy written into the mount. It becomes a tensor only
// when the file is closed and parses as a C-order array of a dtype
// safetensors has; until then nothing in the checkpoint changes.
type upload struct {
	mu    sync.Mutex
	limit int64 // the most it may hold (EFBIG beyond): it is all in memory
	buf   []byte
	wrote bool          // since the last flush
	errno syscall.Errno // the last commit's refusal, repeated until the next write
	// shared: a commit kept buf as the tensor's bytes, so the next write
	// must copy it first.
	shared bool
}

// own makes buf private before a change. Caller holds mu.
func (u *upload) own() {
	if u.shared {
		u.buf = slices.Clone(u.buf)
		u.shared = false
	}
}

func newUpload(buf []byte, wrote bool, limit int64) *upload {
	return &upload{buf: buf, wrote: wrote, limit: limit}
}

// flush commits what was written since the last flush, once: Flush runs
// for every close of a duplicated descriptor. A refusal is repeated at each
// later flush until the next write, so the final close reports it even when
// an earlier close of a dup went unchecked (numpy's tofile).
func (u *upload) flush(commit func([]byte) syscall.Errno) syscall.Errno {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.wrote {
		u.wrote = false
		u.errno = commit(u.buf)
		// The tensor may now hold these bytes; they also stay what the
		// file holds, for a later write and close.
		u.shared = true
	}
	return u.errno
}

func (u *upload) size() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.buf)
}

func (u *upload) write(p []byte, off int64) syscall.Errno {
	u.mu.Lock()
	defer u.mu.Unlock()
	end := off + int64(len(p))
	if end > u.limit {
		return syscall.EFBIG
	}
	u.own()
	if int(end) > len(u.buf) {
		u.buf = append(u.buf, make([]byte, int(end)-len(u.buf))...)
	}
	copy(u.buf[off:], p)
	u.wrote, u.errno = true, 0
	return 0
}

func (u *upload) truncate(size int64) syscall.Errno {
	u.mu.Lock()
	defer u.mu.Unlock()
	if size > u.limit {
		return syscall.EFBIG
	}
	u.own()
	if int(size) <= len(u.buf) {
		u.buf = u.buf[:size]
	} else {
		u.buf = append(u.buf, make([]byte, int(size)-len(u.buf))...)
	}
	u.wrote, u.errno = true, 0
	return 0
}

func (u *upload) read(dest []byte, off int64) fuse.ReadResult {
	u.mu.Lock()
	defer u.mu.Unlock()
	if off >= int64(len(u.buf)) {
		return fuse.ReadResultData(nil)
	}
	return fuse.ReadResultData(append([]byte(nil), u.buf[off:min(int64(len(u.buf)), off+int64(len(dest)))]...))
}
