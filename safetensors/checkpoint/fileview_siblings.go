package checkpoint

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors/remote"
)

// Siblings: the files next to the checkpoint a loader needs besides the
// weights (config.json, the tokenizer's), shown read-only beside the
// checkpoint's own files. They are found once, when first asked for, so a
// mount that never looks at them costs nothing more; a remote one's bytes
// are fetched only when read, through the same chunk cache as the
// tensors.
//
// A local sibling may be a symlink (the Hugging Face cache links snapshot
// files to blobs): it is followed for reading, and shown with the owner
// and permission bits of the file it reaches (write bits cleared), so the
// mount never lets anyone read a file they could not read directly.

type siblings struct {
	once sync.Once
	list []*sibling
}

type sibling struct {
	name string
	path string // local: where it is

	// remote: the listing's entry, the object it is read through (opened
	// at the first open, kept until the set is closed) and the one it is
	// found next to.
	rf     *remote.SiblingFile
	parent *remote.Object
	mu     sync.Mutex
	obj    *remote.Object
}

// siblingListTimeout bounds the discovery of remote siblings (a listing
// request, or a probe per name, with their retries).
const siblingListTimeout = 2 * time.Minute

// Siblings finds (once) and returns the names of the files next to the
// checkpoint that FilesOptions asked for; none unless Siblings was set. A
// remote checkpoint's are found over the network, which takes a request
// or a few.
func (s *FileSet) Siblings() []string {
	s.sib.once.Do(s.findSiblings)
	out := make([]string, len(s.sib.list))
	for i, sb := range s.sib.list {
		out[i] = sb.name
	}
	return out
}

// sibling is the sibling called name (found first if need be), or nil.
func (s *FileSet) sibling(name string) *sibling {
	s.sib.once.Do(s.findSiblings)
	for _, sb := range s.sib.list {
		if sb.name == name {
			return sb
		}
	}
	return nil
}

// ownTopNames are the checkpoint's own files that sit in its directory.
func (s *FileSet) ownTopNames() []string {
	var out []string
	for _, e := range s.own {
		if !strings.Contains(e.name, "/") {
			out = append(out, e.name)
		}
	}
	return out
}

func (s *FileSet) findSiblings() {
	if !s.opt.Siblings {
		return
	}
	s.c.src.findSiblings(s, s.ownTopNames())
}

// findLocalSiblings lists the files next to a local checkpoint (own are
// its own files there).
func (s *FileSet) findLocalSiblings(own []string) {
	c := s.c
	dir := filepath.Dir(c.shards[0].path)
	if c.index != nil {
		dir = filepath.Dir(c.index.path)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		s.log.Warn("listing the checkpoint's directory for the files beside it", "dir", dir, "err", err)
		return
	}
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, ".") || slices.Contains(own, n) || !matchAny(s.opt.Include, n) {
			continue
		}
		p := filepath.Join(dir, n)
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			continue
		}
		s.sib.list = append(s.sib.list, &sibling{name: n, path: p})
	}
}

// findSiblings lists the files next to a remote checkpoint (own are its
// own files there).
func (r *remoteSet) findSiblings(s *FileSet, own []string) {
	set := r.set
	// Listed next to a file that sits in the checkpoint's directory
	// (the index is closed once read; a shard in it has the same
	// directory).
	var parent *remote.Object
	for i, n := range set.Names {
		if !strings.Contains(n, "/") {
			parent = set.Objects[i]
			break
		}
	}
	if parent == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), siblingListTimeout)
	defer cancel()
	found, err := parent.Siblings(ctx, s.opt.Include, own)
	if err != nil {
		s.log.Warn("listing the files beside the checkpoint failed; showing those found by name", "url", s.c.path, "err", err)
	}
	for i := range found {
		s.sib.list = append(s.sib.list, &sibling{name: found[i].Name, rf: &found[i], parent: parent})
	}
}

func matchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if ok, err := path.Match(p, name); err == nil && ok {
			return true
		}
	}
	return false
}

func (s *FileSet) statSibling(name string) (FileInfo, error) {
	sb := s.sibling(name)
	if sb.rf != nil {
		return FileInfo{Stamp: FileStamp{mode: stampRemote}, Size: sb.rf.Size, MTime: s.remoteTime()}, nil
	}
	return statLocalFile(sb.path)
}

// statLocalFile is the version of a local file served as it is (a
// sibling, a foreign checkpoint's file), shown with its own owner and
// read bits: the mount gives nobody more access to it than the file does.
func statLocalFile(p string) (FileInfo, error) {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return FileInfo{}, &os.PathError{Op: "stat", Path: p, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return FileInfo{}, fmt.Errorf("%s: no longer a regular file: %w", p, os.ErrNotExist)
	}
	return FileInfo{Stamp: localStamp(&st), Size: st.Size, MTime: time.Unix(st.Mtim.Unix()), Direct: true,
		Own: true, Mode: st.Mode & 0o444, Uid: st.Uid, Gid: st.Gid}, nil
}

func localStamp(st *unix.Stat_t) FileStamp {
	return FileStamp{mode: stampLocal, gen: [4]uint64{uint64(st.Dev), st.Ino, uint64(st.Size), uint64(st.Mtim.Nano())}}
}

func (s *FileSet) openSibling(name string, want FileStamp) (*FileView, error) {
	sb := s.sibling(name)
	if sb.rf != nil {
		if want.mode != stampRemote {
			return nil, fmt.Errorf("%s: %w", name, ErrStale)
		}
		sb.mu.Lock()
		defer sb.mu.Unlock()
		if sb.obj == nil {
			ctx, cancel := context.WithTimeout(context.Background(), siblingListTimeout)
			defer cancel()
			o, err := sb.parent.OpenSibling(ctx, sb.rf)
			if err != nil {
				return nil, fmt.Errorf("%s: %w: %w", name, ErrRemote, err)
			}
			sb.obj = o
		}
		return &FileView{name: name, size: sb.obj.Size(), obj: sb.obj}, nil
	}
	return openLocalFile(name, sb.path, want)
}

// openLocalFile opens local file p, shown as name, at the version
// statLocalFile reported as want; ErrStale if it is another file now.
func openLocalFile(name, p string, want FileStamp) (*FileView, error) {
	// O_NONBLOCK: a FIFO put in its place must not hang the open.
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || localStamp(&st) != want {
		f.Close()
		return nil, fmt.Errorf("%s: %w", name, ErrStale)
	}
	return &FileView{name: name, size: st.Size, file: f, own: true, backing: f}, nil
}

// close releases the remote siblings' objects (and ends discovery: none
// starts after it).
func (s *FileSet) close() {
	s.sib.once.Do(func() {})
	for _, sb := range s.sib.list {
		sb.mu.Lock()
		if sb.obj != nil {
			sb.obj.Close()
			sb.obj = nil
		}
		if sb.rf != nil {
			sb.rf.Close()
		}
		sb.mu.Unlock()
	}
}
