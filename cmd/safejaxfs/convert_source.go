package main

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	fusefs "github.com/safejaxfs/safejaxfs/fs"
	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/formats"
	"github.com/safejaxfs/safejaxfs/safetensors/remote"
	"github.com/safejaxfs/safejaxfs/tree"
)

// convertSource is what convert writes: the tensors, each with where its
// bytes are (an open file and offset wherever they are a span of one, so
// the writer copies them kernel-side), the metadata, and the groups of
// keys sharing storage.
type convertSource struct {
	sources []safetensors.Source
	meta    map[string]string
	tied    [][]string
	closers []func()
	// storage groups keys whose bytes are one storage (shards keep them
	// together, as save_pretrained does).
	storage map[string]string
}

func (s *convertSource) close() {
	for _, c := range s.closers {
		c()
	}
}

func (s *convertSource) total() int64 {
	var n int64
	for _, src := range s.sources {
		b, _ := safetensors.ByteSize(src.DType, src.Shape)
		n += int64(b)
	}
	return n
}

func openConvertSource(in, prefix string, cf convertFlags) (*convertSource, error) {
	var src *convertSource
	var err error
	switch {
	case remote.IsURL(in):
		src, err = checkpointSource(in)
	case inMount(in):
		src, err = mountSource(in)
	default:
		if err := checkCheckpoint(in); err != nil {
			return nil, err
		}
		format, derr := formats.Detect(in)
		switch {
		case derr == nil && format.Mountable():
			src, err = foreignSource(in, cf)
		case derr == nil && format != formats.Safetensors && format != formats.Unknown && !strings.HasSuffix(in, ".json"):
			return nil, fail(exitInvalid, "%v", formats.NotCheckpoint(in, format))
		default:
			src, err = safetensorsSource(in)
		}
	}
	if err != nil {
		return nil, err
	}
	if prefix != "" {
		if err := src.selectPrefix(in, prefix, cf.sep); err != nil {
			src.close()
			return nil, err
		}
	}
	return src, nil
}

// selectPrefix keeps the tensors under prefix (a path or a key prefix, as
// for ls); metadata belongs to the whole checkpoint and is kept too.
func (s *convertSource) selectPrefix(in, prefix, sep string) error {
	keys := make([]string, len(s.sources))
	for i := range s.sources {
		keys[i] = s.sources[i].Key
	}
	t, err := tree.Build(keys, tree.Options{Sep: sep, Reserved: fusefs.ReservedNames(false)})
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	top := findPrefix(t, prefix)
	if top == nil {
		return fail(exitInvalid, "no tensor or directory %q in %s", prefix, in)
	}
	keep := map[int]bool{}
	walk(top, func(n *tree.Node) {
		if !n.IsDir() {
			keep[n.Tensor] = true
		}
	})
	var out []safetensors.Source
	for i, src := range s.sources {
		if keep[i] {
			out = append(out, src)
		}
	}
	s.sources = out
	return nil
}

// safetensorsSource: every shard's file, the tensors at their offsets.
func safetensorsSource(in string) (*convertSource, error) {
	set, err := safetensors.OpenSet(in)
	if err != nil {
		return nil, fail(exitInvalid, "%v", explainOpen(in, err))
	}
	if p, ok := checkpoint.Pending(in); ok {
		set.Close()
		return nil, fail(exitInvalid, "%s: a write-back was interrupted (%s): tensors may be torn until a read-write mount finishes it", in, p)
	}
	s := &convertSource{closers: []func(){func() { set.Close() }}}
	common := map[string]string(nil)
	for i, f := range set.Files {
		for _, t := range f.Tensors {
			s.sources = append(s.sources, safetensors.Source{Key: t.Key, DType: t.DType, Shape: t.Shape, Data: f.Fd(), Off: f.DataOffset() + int64(t.Begin)})
		}
		if i == 0 {
			common = f.Metadata
			continue
		}
		common = sharedMeta(common, f.Metadata)
	}
	s.meta = common
	return s, nil
}

func sharedMeta(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		if w, ok := b[k]; ok && w == v {
			out[k] = v
		}
	}
	return out
}

// foreignSource: a Flax, PyTorch, numpy or GGUF file. Tensors that are a
// span of it are copied from it kernel-side; the others stream through
// their conversion (decompression, strides, byte order, chunks).
func foreignSource(in string, cf convertFlags) (*convertSource, error) {
	file, err := formats.Open(in)
	if err != nil {
		return nil, fail(exitInvalid, "%v", err)
	}
	s := &convertSource{meta: file.Metadata, closers: []func(){func() { file.Close() }}}
	var unsupported []string
	for i := range file.Tensors {
		t := &file.Tensors[i]
		if t.Foreign() {
			d, ok := formats.DecoderFor(t.Type)
			if !cf.dequantize || !ok {
				unsupported = append(unsupported, fmt.Sprintf("%s (%s)", t.Key, t.Type))
				continue
			}
			s.sources = append(s.sources, safetensors.Source{Key: t.Key, DType: safetensors.F32, Shape: t.TypeShape,
				Data: &streamSource{write: func(w io.Writer) error { return file.Dequantize(i, d, w) }}})
			continue
		}
		src := safetensors.Source{Key: t.Key, DType: t.DType, Shape: t.Shape}
		if off, ok := file.Contiguous(i); ok {
			src.Data, src.Off = file.Fd(), off
		} else {
			src.Data = &streamSource{write: func(w io.Writer) error { return file.WriteTo(i, w) }}
		}
		s.sources = append(s.sources, src)
	}
	if len(unsupported) > 0 {
		s.close()
		hint := ""
		if file.Format == formats.GGUF {
			hint = " (--dequantize writes them as F32 values)"
		}
		return nil, fail(exitInvalid, "%s: %d tensors are of a type safetensors has no dtype for%s: %s", in, len(unsupported), hint, listKeys(unsupported))
	}
	for _, g := range formats.SharedStorages(file.Tensors) {
		keys := make([]string, len(g))
		for k, i := range g {
			keys[k] = file.Tensors[i].Key
		}
		s.tied = append(s.tied, keys)
	}
	return s, nil
}

func listKeys(keys []string) string {
	if len(keys) > 10 {
		return strings.Join(keys[:10], ", ") + fmt.Sprintf(", and %d more", len(keys)-10)
	}
	return strings.Join(keys, ", ")
}

// checkpointSource reads through checkpoint.Open (a URL: the chunks come
// through the remote cache).
func checkpointSource(in string) (*convertSource, error) {
	src, err := openSource("convert", in, &remoteFlags{}, progressFlags{}, exitInvalid)
	if err != nil {
		return nil, err
	}
	s := &convertSource{meta: src.c.Metadata(), closers: []func(){src.Close}}
	for id, key := range src.c.Keys() {
		info, ok := src.c.Info(checkpoint.ID(id))
		if !ok || key == "" {
			continue
		}
		s.sources = append(s.sources, safetensors.Source{Key: key, DType: info.DType, Shape: info.Shape, Data: &ckReader{c: src.c, id: checkpoint.ID(id)}})
	}
	return s, nil
}

// ckReader reads a tensor through Checkpoint.Read.
type ckReader struct {
	c  *checkpoint.Checkpoint
	id checkpoint.ID
}

func (r *ckReader) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		segs, release, err := r.c.Read(r.id, off+int64(n), len(p)-n)
		if err != nil {
			return n, err
		}
		got := 0
		for _, s := range segs {
			got += copy(p[n+got:], s)
		}
		release()
		if got == 0 {
			return n, io.EOF
		}
		n += got
	}
	return n, nil
}

// streamSource is a source the writer reads once, front to back (it
// does): its bytes are produced by write, through a pipe, so nothing
// larger than a chunk is held.
type streamSource struct {
	write func(io.Writer) error
	mu    sync.Mutex
	pr    *io.PipeReader
	pos   int64
}

func (s *streamSource) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pr == nil || off != s.pos {
		if s.pr != nil {
			s.pr.Close()
		}
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(s.write(pw)) }()
		s.pr, s.pos = pr, 0
		if off > 0 {
			if _, err := io.CopyN(io.Discard, pr, off); err != nil {
				return 0, err
			}
			s.pos = off
		}
	}
	n, err := io.ReadFull(s.pr, p)
	s.pos += int64(n)
	if err == io.ErrUnexpectedEOF {
		err = io.EOF
	}
	return n, err
}

// inMount reports whether in is a directory inside a safejaxfs mount: on
// a FUSE file system, holding tensor files (with their key attribute).
func inMount(in string) bool {
	var st unix.Statfs_t
	if unix.Statfs(in, &st) != nil || st.Type != 0x65735546 { // FUSE_SUPER_MAGIC
		return false
	}
	if fi, err := os.Stat(in); err != nil || !fi.IsDir() {
		return false
	}
	found := false
	filepath.WalkDir(in, func(p string, d fs.DirEntry, err error) error {
		if err != nil || found {
			return filepath.SkipAll
		}
		if d.Type().IsRegular() && xattr(p, "user.safetensors.key") != "" {
			found = true
			return filepath.SkipAll
		}
		return nil
	})
	return found
}

func xattr(p, name string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Getxattr(p, name, buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

// mountSource reads a directory of a mount: every tensor file under it,
// by its key, dtype and shape attributes; the .npy views of the same
// tensors are skipped. The mount root's __metadata__ is the metadata.
func mountSource(in string) (*convertSource, error) {
	s := &convertSource{}
	byKey := map[string]int{}
	err := filepath.WalkDir(in, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		key := xattr(p, "user.safetensors.key")
		if key == "" {
			return nil
		}
		dtype, ok := safetensors.ParseDType(xattr(p, "user.safetensors.dtype"))
		if !ok {
			return fmt.Errorf("%s: dtype %q has no safetensors equivalent", p, xattr(p, "user.safetensors.dtype"))
		}
		var shape []uint64
		if err := json.Unmarshal([]byte(xattr(p, "user.safetensors.shape")), &shape); err != nil {
			return fmt.Errorf("%s: shape attribute: %v", p, err)
		}
		if shape == nil {
			shape = []uint64{}
		}
		size, err := safetensors.ByteSize(dtype, shape)
		if err != nil {
			return fmt.Errorf("%s: %v", p, err)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if uint64(fi.Size()) != size {
			return nil // a .npy or .f32.npy view of the tensor
		}
		if i, dup := byKey[key]; dup {
			return fmt.Errorf("%s and %v hold the same key %q", p, s.sources[i].Data, key)
		}
		byKey[key] = len(s.sources)
		s.sources = append(s.sources, safetensors.Source{Key: key, DType: dtype, Shape: shape, Data: &lazyFile{path: p, size: int64(size)}})
		return nil
	})
	if err != nil {
		return nil, fail(exitInvalid, "%v", err)
	}
	if b, err := os.ReadFile(filepath.Join(in, "__metadata__")); err == nil {
		if err := json.Unmarshal(b, &s.meta); err != nil {
			return nil, fail(exitInvalid, "%s: %v", filepath.Join(in, "__metadata__"), err)
		}
	}
	slices.SortStableFunc(s.sources, func(a, b safetensors.Source) int { return strings.Compare(a.Key, b.Key) })
	return s, nil
}

// lazyFile opens its file on the first read and closes it once read to
// the end: a subtree of 100k tensors never holds 100k descriptors.
type lazyFile struct {
	path string
	size int64
	f    *os.File
}

func (l *lazyFile) String() string { return l.path }

func (l *lazyFile) ReadAt(p []byte, off int64) (int, error) {
	if l.f == nil {
		f, err := os.Open(l.path)
		if err != nil {
			return 0, err
		}
		l.f = f
	}
	n, err := l.f.ReadAt(p, off)
	if err != nil || off+int64(n) >= l.size {
		l.f.Close()
		l.f = nil
	}
	return n, err
}
