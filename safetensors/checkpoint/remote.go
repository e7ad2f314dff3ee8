package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/remote"
)

// A remote checkpoint (https://, hf://, s3://) is always read-only: its
// tensors are byte ranges of remote objects, read through the remote
// package's chunk cache, and none of the edit or persistence code ever sees
// it (every edit is refused with ErrReadOnly before it touches a tensor).
// Its tensors and shards never change after Open, so Read serves them
// without taking mu: a slow or retried request holds no lock that a refused
// write, or Close, would wait behind.

// ErrRemote: reading a remote checkpoint's bytes failed (after the remote
// package's retries), or its file changed on the server since the mount.
var ErrRemote = errors.New("reading the remote checkpoint failed")

// IsRemote reports whether path is a URL Open reads remotely rather than a
// local path.
func IsRemote(path string) bool { return remote.IsURL(path) }

// remoteSet is the remote half of a Checkpoint: the files and, by tensor
// ID, where each tensor's bytes are.
type remoteSet struct {
	set *remote.Set
	at  []remoteTensor // indexed by ID
}

type remoteTensor struct {
	obj  *remote.Object
	off  int64 // of the tensor's first byte in obj
	size int64
}

// Remote describes where a remote checkpoint is, for a mount's attributes.
type Remote struct {
	URL     string    // display form: no credentials
	Size    int64     // bytes of all its files
	ModTime time.Time // latest Last-Modified of its files; zero if unknown
}

// Remote returns what the checkpoint is stored as remotely; nil for a
// local checkpoint.
func (c *Checkpoint) Remote() *Remote {
	r, ok := c.src.(*remoteSet)
	if !ok {
		return nil
	}
	s := r.set
	return &Remote{URL: s.URL, Size: s.Size(), ModTime: s.ModTime}
}

// openRemote opens the checkpoint a URL names, read-only whatever opt
// says, after fetching and validating every header (remote.OpenSet).
func openRemote(url string, opt Options) (*Checkpoint, error) {
	set, err := remote.OpenSet(context.Background(), url, opt.Remote)
	if err != nil {
		return nil, err
	}
	r := &remoteSet{set: set}
	c := &Checkpoint{path: set.URL, readOnly: true, src: r, byKey: map[string]ID{}, log: loggerOr(opt.Logger)}
	if set.Sharded() {
		c.index = newIndexState(nil, set.URL, set.Index)
	}
	// Tensors carry the server's Last-Modified (the mount's time if it
	// sent none), as local ones carry their file's mtime.
	mt := set.ModTime
	if mt.IsZero() {
		mt = time.Now()
	}
	mtime := nanos(mt)
	for si, h := range set.Headers {
		obj := set.Objects[si]
		c.shards = append(c.shards, &shard{name: set.Names[si], path: obj.String(), meta: h.Metadata})
		for i := range h.Tensors {
			t := &h.Tensors[i]
			size := int64(t.Size())
			c.byKey[t.Key] = ID(len(c.tensors))
			// The content is only a size: Info reads it, and nothing
			// else looks at a read-only tensor's content.
			c.tensors = append(c.tensors, &tensor{key: t.Key, dtype: t.DType, shape: t.Shape, shard: si, cur: &content{size: size, src: -1}, mtime: mtime, ctime: mtime})
			r.at = append(r.at, remoteTensor{obj: obj, off: h.DataOffset() + int64(t.Begin), size: size})
		}
	}
	return c, nil
}

// readBufs hold the bytes of one FUSE read (at most 1 MiB, the largest
// request the kernel sends) until go-fuse has written them out.
var readBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// readBuf is a buffer of n bytes, from readBufs when it fits, and the func
// that gives it back.
func readBuf(n int) (buf []byte, put func()) {
	if n > 1<<20 {
		return make([]byte, n), nop
	}
	bp := readBufs.Get().(*[]byte)
	return (*bp)[:n], func() { readBufs.Put(bp) }
}

// ReadContext is Read for a reader that may give up. For a remote
// checkpoint, when ctx ends (a FUSE request interrupted by Ctrl-C) the
// read returns at once with ctx's cause and the fetches no other reader
// waits for are cancelled; a local read waits on nothing ctx could end
// and is Read.
func (c *Checkpoint) ReadContext(ctx context.Context, id ID, off int64, n int) (segs [][]byte, release func(), err error) {
	return c.src.read(ctx, c, id, off, n)
}

// read serves ReadContext for a remote checkpoint: the bytes are copied
// out of the chunk cache (fetched first if missing) into a pooled buffer,
// released with the reply.
func (r *remoteSet) read(ctx context.Context, c *Checkpoint, id ID, off int64, n int) ([][]byte, func(), error) {
	if id < 0 || int(id) >= len(r.at) {
		return nil, nop, fmt.Errorf("tensor %d: %w", id, ErrNotFound)
	}
	t := r.at[id]
	if off >= t.size || n <= 0 || off < 0 {
		return nil, nop, nil
	}
	n = int(min(int64(n), t.size-off))
	buf, put := readBuf(n)
	if k, err := t.obj.ReadAtContext(ctx, buf, t.off+off); k < n {
		put()
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, nop, fmt.Errorf("tensor %q: %w: %w", c.tensors[id].key, ErrRemote, err)
	}
	return [][]byte{buf}, put, nil
}

// The files view of a remote checkpoint: its objects as the server has
// them, never changing (the mount is pinned to one version of each).

func (r *remoteSet) indexName(*Checkpoint) string { return r.set.IndexName }

func (r *remoteSet) indexFacts(s *FileSet) (fileFacts, error) {
	b := r.set.IndexBytes
	return fileFacts{stamp: FileStamp{mode: stampRemote}, size: int64(len(b)), mtime: s.remoteTime(), index: b}, nil
}

func (r *remoteSet) statFile(s *FileSet, e fileEntry) (FileInfo, error) {
	o := r.set.Objects[e.shard]
	return FileInfo{Stamp: FileStamp{mode: stampRemote}, Size: o.Size(), MTime: s.remoteTime()}, nil
}

func (r *remoteSet) openFile(s *FileSet, e fileEntry, want FileStamp) (*FileView, error) {
	if want.mode != stampRemote {
		return nil, fmt.Errorf("%s: %w", e.name, ErrStale)
	}
	o := r.set.Objects[e.shard]
	return &FileView{name: e.name, size: o.Size(), obj: o}, nil
}

func (r *remoteSet) header(_ *Checkpoint, i int) *safetensors.Header { return r.set.Headers[i] }

// close closes the remote files.
func (r *remoteSet) close() { r.set.Close() }
