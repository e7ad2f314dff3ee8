package checkpoint

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/formats"
)

// A foreign checkpoint (Flax msgpack, PyTorch, numpy .npy/.npz, GGUF) is
// always read-only, like a remote one: its tensors are the ones the formats
// package describes, read from a mapping of the file (or of the private
// temporary file a deflated, strided or chunked tensor is materialized
// into, once), and none of the edit or persistence code ever sees it (every
// edit is refused with ErrReadOnly before it touches a tensor). Its tensors
// never change after Open, so Read serves them without taking mu.

// foreignSet is the foreign half of a Checkpoint.
type foreignSet struct {
	file *formats.File
	path string // the file, as given to Open
	// hdr describes it as a safetensors header (header), made once.
	headerOnce sync.Once
	hdr        *safetensors.Header
	// refs: the Checkpoint's own reference plus one per Read not yet
	// released; the last release closes the file, so Close never unmaps
	// bytes a reply is still being written from.
	refs atomic.Int64
}

// openForeign opens path when it is a file in a format other than
// safetensors (handled true), read-only whatever opt says. A file that is
// recognisably something unreadable (a Git LFS pointer, an HTML page, ...)
// is refused with what to do. Anything else (a safetensors file, an index,
// a directory, a file of no known format) is left to the safetensors path.
func openForeign(path string, opt Options) (c *Checkpoint, handled bool, err error) {
	st, err := os.Stat(path)
	if err != nil || !st.Mode().IsRegular() || strings.HasSuffix(path, ".json") {
		return nil, false, nil
	}
	format, err := formats.Detect(path)
	if err != nil || format == formats.Safetensors || format == formats.Unknown {
		return nil, false, nil
	}
	if !format.Mountable() {
		return nil, true, formats.NotCheckpoint(path, format)
	}
	file, err := formats.Open(path)
	if err != nil {
		return nil, true, err
	}
	fs := &foreignSet{file: file, path: path}
	fs.refs.Store(1)
	c = &Checkpoint{path: path, readOnly: true, src: fs, byKey: make(map[string]ID, len(file.Tensors)), log: loggerOr(opt.Logger)}
	c.shards = []*shard{{name: filepath.Base(path), path: path, meta: file.Metadata}}
	mt := st.ModTime()
	if mt.IsZero() {
		mt = time.Now()
	}
	mtime := nanos(mt)
	for i := range file.Tensors {
		t := &file.Tensors[i]
		c.byKey[t.Key] = ID(len(c.tensors))
		// The content is only a size: Info reads it, and nothing else
		// looks at a read-only tensor's content.
		c.tensors = append(c.tensors, &tensor{key: t.Key, dtype: t.DType, shape: t.Shape, cur: &content{size: t.Size, src: -1}, mtime: mtime, ctime: mtime})
	}
	return c, true, nil
}

// Format names a foreign checkpoint's format ("Flax msgpack", "GGUF",
// ...); "" for a safetensors checkpoint.
func (c *Checkpoint) Format() string {
	if f := c.foreignFile(); f != nil {
		return f.Format.String()
	}
	return ""
}

// Foreign returns what a foreign checkpoint knows of tensor id beyond
// Info: its own element type when safetensors has none (then Info shows
// its raw bytes as U8), and the storage it shares with other tensors.
// false for a safetensors checkpoint.
func (c *Checkpoint) Foreign(id ID) (*formats.Tensor, bool) {
	f := c.foreignFile()
	if f == nil || id < 0 || int(id) >= len(f.Tensors) {
		return nil, false
	}
	return &f.Tensors[id], true
}

// ForeignFile is the opened foreign file (nil for safetensors), for
// convert, which streams from it.
func (c *Checkpoint) ForeignFile() *formats.File { return c.foreignFile() }

func (c *Checkpoint) foreignFile() *formats.File {
	if s, ok := c.src.(*foreignSet); ok {
		return s.file
	}
	return nil
}

// read serves Read for a foreign checkpoint: a slice of the file's mapping
// (or of the materialized copy), valid until release.
func (s *foreignSet) read(_ context.Context, c *Checkpoint, id ID, off int64, n int) ([][]byte, func(), error) {
	if id < 0 || int(id) >= len(s.file.Tensors) {
		return nil, nop, fmt.Errorf("tensor %d: %w", id, ErrNotFound)
	}
	t := &s.file.Tensors[id]
	if off >= t.Size || n <= 0 || off < 0 {
		return nil, nop, nil
	}
	if !s.file.Intact() {
		return nil, nop, fmt.Errorf("tensor %q: %w", t.Key, ErrFault)
	}
	s.refs.Add(1)
	b, err := s.file.Bytes(int(id))
	if err != nil {
		s.release()
		return nil, nop, err
	}
	end := min(off+int64(n), t.Size)
	return [][]byte{b[off:end]}, s.release, nil
}

func (s *foreignSet) release() {
	if s.refs.Add(-1) == 0 {
		s.file.Close()
	}
}

// close drops the Checkpoint's reference.
func (s *foreignSet) close() { s.release() }

// The files view of a foreign checkpoint: the file itself, as it is (what
// a loader of its format reads: torch.load of /.files/pytorch_model.bin),
// and the files beside it. It is never sharded: it has no index.

func (s *foreignSet) indexName(*Checkpoint) string { return "" }

func (s *foreignSet) indexFacts(*FileSet) (fileFacts, error) {
	return fileFacts{}, fmt.Errorf("%s: %w", s.path, os.ErrNotExist)
}

func (s *foreignSet) statFile(_ *FileSet, e fileEntry) (FileInfo, error) {
	return statLocalFile(s.path)
}

func (s *foreignSet) openFile(_ *FileSet, e fileEntry, want FileStamp) (*FileView, error) {
	return openLocalFile(e.name, s.path, want)
}

func (s *foreignSet) findSiblings(fs *FileSet, own []string) { fs.findLocalSiblings(own) }

// header describes the file as one safetensors header would: its tensors
// in its order, at the offsets a canonical write would give them, and its
// metadata. Made once: the file never changes.
func (s *foreignSet) header(*Checkpoint, int) *safetensors.Header {
	s.headerOnce.Do(func() {
		h := &safetensors.Header{Metadata: s.file.Metadata}
		var off uint64
		for i := range s.file.Tensors {
			t := &s.file.Tensors[i]
			h.Tensors = append(h.Tensors, safetensors.Tensor{Key: t.Key, DType: t.DType, Shape: t.Shape, Begin: off, End: off + uint64(t.Size)})
			off += uint64(t.Size)
		}
		s.hdr = h
	})
	return s.hdr
}
