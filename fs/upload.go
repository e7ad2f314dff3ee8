package fs

import (
	"context"
	"slices"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// uploadSet tracks a node's open uploads. Without atomic O_TRUNC the kernel
// truncates after OPEN with a SETATTR that carries no file handle, so the
// truncate must reach the uploads through the node.
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

// release forgets a closed handle.
func (s *uploadSet) release(fh fs.FileHandle) {
	u, ok := fh.(*upload)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.open, u)
}

// setattr applies a size change: through the handle when the kernel sends
// one, else to every open upload of the node. A truncate of a node nobody
// is uploading to is refused: only whole uploads replace its content.
func (s *uploadSet) setattr(fh fs.FileHandle, in *fuse.SetAttrIn) syscall.Errno {
	size, ok := in.GetSize()
	if !ok {
		return 0
	}
	if u, ok := fh.(*upload); ok {
		u.truncate(int64(size))
		return 0
	}
	if !s.truncate(int64(size)) {
		return syscall.EPERM
	}
	return 0
}

// truncate applies a handle-less truncate to every open upload; false if
// there is none (a truncate by path of something that is not being written).
func (s *uploadSet) truncate(size int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for u := range s.open {
		u.truncate(size)
	}
	return len(s.open) > 0
}

// writeUpload is the Write of a node whose writes go to an upload.
func writeUpload(fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	u, ok := fh.(*upload)
	if !ok {
		return 0, syscall.EBADF
	}
	u.write(data, off)
	return uint32(len(data)), 0
}

// flushUpload commits what an upload collected (once per write session) and
// persists; a refused commit fails the close with EINVAL and keeps the old
// state.
func (f *FS) flushUpload(ctx context.Context, fh fs.FileHandle, commit func([]byte) error) syscall.Errno {
	u, ok := fh.(*upload)
	if !ok {
		return 0
	}
	return u.flush(func(b []byte) syscall.Errno {
		if err := commit(b); err != nil {
			f.fail(err)
			return syscall.EINVAL
		}
		return f.sync(ctx)
	})
}

// upload collects a .npy written into the mount. It becomes a tensor only
// when the file is closed and parses as a C-order array of a dtype
// safetensors has; until then nothing in the checkpoint changes.
type upload struct {
	mu    sync.Mutex
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

func newUpload(buf []byte, wrote bool) *upload { return &upload{buf: buf, wrote: wrote} }

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

func (u *upload) write(p []byte, off int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.own()
	if end := int(off) + len(p); end > len(u.buf) {
		u.buf = append(u.buf, make([]byte, end-len(u.buf))...)
	}
	copy(u.buf[off:], p)
	u.wrote, u.errno = true, 0
}

func (u *upload) truncate(size int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.own()
	if int(size) <= len(u.buf) {
		u.buf = u.buf[:size]
	} else {
		u.buf = append(u.buf, make([]byte, int(size)-len(u.buf))...)
	}
	u.wrote, u.errno = true, 0
}

func (u *upload) read(dest []byte, off int64) fuse.ReadResult {
	u.mu.Lock()
	defer u.mu.Unlock()
	if off >= int64(len(u.buf)) {
		return fuse.ReadResultData(nil)
	}
	return fuse.ReadResultData(append([]byte(nil), u.buf[off:min(int64(len(u.buf)), off+int64(len(dest)))]...))
}
