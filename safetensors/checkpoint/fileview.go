package checkpoint

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// The checkpoint as the files it is stored as (a mount's /.files/): the
// .safetensors file, or the index and every shard, byte for byte what the
// next write-back would leave on disk. Unedited, that is the file itself;
// edited, it is what compaction would write: a shard whose header changes
// is rendered by the canonical writer's layout (safetensors.Plan), one
// whose header stays is the file with the edited chunks over it (the
// in-place patch). Its bytes are served as pieces, never copied: runs of
// the mapped file, edited chunks from memory or the log, the rendered
// header.
//
// A file is looked up as a stamp (FileSet.Stat) and opened at that stamp
// (FileSet.Open): equal stamps mean identical bytes served the same way,
// so a caller can give every stamp a file of its own (the FUSE layer
// gives each its own inode) and a reader that opened one keeps exactly
// those bytes until it closes it, whatever is edited or written back
// meanwhile. The open view pins what it reads (mapping and log
// references, as a compaction's snapshot does), and compaction never
// patches in place bytes an open view still reads from the file
// (fileview_compact.go).

// ErrStale: the file is no longer the version the caller looked up (an
// edit came in between): look it up again.
var ErrStale = errors.New("the file changed since it was looked up")

// DefaultInclude are the files next to the checkpoint a loader needs
// (transformers' from_pretrained, tokenizers, sentencepiece): what
// save_pretrained writes besides the weights.
var DefaultInclude = []string{
	"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
	"special_tokens_map.json", "added_tokens.json", "vocab.json", "preprocessor_config.json",
	"chat_template.json", "chat_template.jinja", "*.model", "*.txt", "*.py", "*.tiktoken",
}

// FilesOptions choose what a FileSet shows besides the checkpoint's own
// files.
type FilesOptions struct {
	// Siblings: list the files next to the checkpoint whose names match
	// Include (nil: DefaultInclude), read-only.
	Siblings bool
	Include  []string
	// Logger receives what is noticed but cannot be returned (a sibling
	// listing that failed). nil: the checkpoint's.
	Logger *slog.Logger
}

// FileSet is the checkpoint as files. Safe for concurrent use.
type FileSet struct {
	c   *Checkpoint
	log *slog.Logger
	opt FilesOptions
	own []fileEntry // the index first, then the shards in Checkpoint order

	// mu guards what follows; taken after c.mu when both are held.
	mu sync.Mutex
	// byShard lists each shard's tensor IDs (deleted ones dropped when
	// seen); seen is how many of c.tensors it has looked at.
	byShard [][]ID
	seen    int
	// views are the open views of local shards, for compaction to respect.
	views map[*FileView]struct{}
	// facts caches what Stat computed per name, valid for its stamp.
	facts map[string]fileFacts
	made  time.Time // when the set was made: a remote file's time if the server sent none

	sib siblings // fileview_siblings.go
}

type fileKind int

const (
	kindIndex fileKind = iota
	kindShard
	kindSibling
)

type fileEntry struct {
	name  string
	kind  fileKind
	shard int
}

// FileStamp identifies one version of a file and the way its bytes are
// served. Comparable.
type FileStamp struct {
	mode stampMode
	gen  [4]uint64
	m    *mapping // the file served (modes clean and in-place)
}

type stampMode uint8

const (
	stampClean   stampMode = iota + 1 // the mapped file as it is
	stampInPlace                      // the mapped file with edited chunks over it
	stampRewrite                      // the canonical layout of the tensors
	stampIndex                        // the index: as on disk (gen[1] 1) or rendered
	stampRemote                       // a remote file: never changes
	stampLocal                        // a local sibling: its identity
)

// FileInfo is what Stat reports of a file.
type FileInfo struct {
	Stamp FileStamp
	Size  int64
	MTime time.Time
	// Direct: the bytes are one local file's at their own offsets (a
	// passthrough candidate).
	Direct bool
	// Own: Mode, Uid and Gid are the file's own (a local sibling, which
	// shows its own owner and permissions, so the mount gives nobody more
	// access to it than the file does); else the caller decides.
	Own      bool
	Mode     uint32
	Uid, Gid uint32
}

type fileFacts struct {
	stamp FileStamp
	size  int64
	mtime time.Time
	index []byte // the index's bytes (index only)
}

// Files returns the checkpoint as files. Call it once, before serving.
func (c *Checkpoint) Files(opt FilesOptions) *FileSet {
	if opt.Include == nil {
		opt.Include = DefaultInclude
	}
	s := &FileSet{c: c, log: opt.Logger, opt: opt, views: map[*FileView]struct{}{}, facts: map[string]fileFacts{}, made: time.Now()}
	if s.log == nil {
		s.log = c.log
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.index != nil {
		s.own = append(s.own, fileEntry{name: c.src.indexName(c), kind: kindIndex})
	}
	for i, sh := range c.shards {
		s.own = append(s.own, fileEntry{name: sh.name, kind: kindShard, shard: i})
	}
	s.byShard = make([][]ID, len(c.shards))
	c.files = s
	return s
}

// Names are the checkpoint's own files: the index first, then the shards
// (names relative to the index's directory, possibly with slashes).
func (s *FileSet) Names() []string {
	out := make([]string, len(s.own))
	for i, e := range s.own {
		out[i] = e.name
	}
	return out
}

func (s *FileSet) entry(name string) (fileEntry, bool) {
	for _, e := range s.own {
		if e.name == name {
			return e, true
		}
	}
	if s.sibling(name) != nil {
		return fileEntry{name: name, kind: kindSibling}, true
	}
	return fileEntry{}, false
}

// Stat reports the current version of file name.
func (s *FileSet) Stat(name string) (FileInfo, error) {
	e, ok := s.entry(name)
	if !ok {
		return FileInfo{}, fmt.Errorf("%s: %w", name, os.ErrNotExist)
	}
	switch e.kind {
	case kindSibling:
		return s.statSibling(name)
	case kindIndex:
		f, err := s.indexFacts()
		if err != nil {
			return FileInfo{}, err
		}
		return FileInfo{Stamp: f.stamp, Size: f.size, MTime: f.mtime}, nil
	}
	return s.c.src.statFile(s, e)
}

// statShard is Stat of a local checkpoint's shard e.
func (s *FileSet) statShard(e fileEntry) (FileInfo, error) {
	c := s.c
	c.mu.RLock()
	defer c.mu.RUnlock()
	st := s.shardState(e.shard)
	f, err := s.shardFacts(e, st)
	if err != nil {
		return FileInfo{}, err
	}
	return FileInfo{Stamp: f.stamp, Size: f.size, MTime: f.mtime, Direct: st.stamp.mode == stampClean}, nil
}

// Open opens file name at the version Stat reported as want; ErrStale if
// it is another version now. The view's bytes never change; Close it.
func (s *FileSet) Open(name string, want FileStamp) (*FileView, error) {
	e, ok := s.entry(name)
	if !ok {
		return nil, fmt.Errorf("%s: %w", name, os.ErrNotExist)
	}
	var v *FileView
	var err error
	switch {
	case e.kind == kindSibling:
		v, err = s.openSibling(name, want)
	case e.kind == kindIndex:
		v, err = s.openIndex(want)
	default:
		v, err = s.c.src.openFile(s, e, want)
	}
	if err != nil {
		return nil, err
	}
	v.refs.Store(1)
	return v, nil
}

// remoteTime is a remote file's time: the server's, else the set's.
func (s *FileSet) remoteTime() time.Time {
	if r := s.c.Remote(); r != nil && !r.ModTime.IsZero() {
		return r.ModTime
	}
	return s.made
}

// shardState is how shard i stands now: its live tensors and the stamp
// of the file the next write-back would make of them.
type shardState struct {
	stamp FileStamp
	ids   []ID
}

// shardState decides as snapshotLocked does (a test holds them to the
// same answers): the file is rewritten when its header changes or a
// tensor no longer sits whole at its own offsets in the current file,
// patched in place when only bytes changed, left as it is when nothing
// did. Caller holds c.mu (read).
func (s *FileSet) shardState(i int) shardState {
	c := s.c
	sh := c.shards[i]
	ids := s.shardIDs(i)
	var sum uint64
	rewrite := sh.layoutGen != sh.persistedLayout
	dirty := false
	for _, id := range ids {
		t := c.tensors[id]
		sum += t.gen
		d := t.cur
		if !d.clean() {
			dirty = true
		}
		if d.ref != sh.cur || d.src < 0 || int64(len(d.base)) < d.size && !d.covered() || sh.cur.file.Tensors[d.src].Key != t.key {
			rewrite = true
		}
	}
	st := FileStamp{gen: [4]uint64{sh.layoutGen, sum, sh.metaGen, uint64(len(ids))}, m: sh.cur}
	switch {
	case rewrite:
		st.mode, st.m = stampRewrite, nil
	case dirty:
		st.mode = stampInPlace
	default:
		st.mode = stampClean
	}
	return shardState{stamp: st, ids: ids}
}

// shardIDs are shard i's live tensors, in ID order. Caller holds c.mu.
func (s *FileSet) shardIDs(i int) []ID {
	c := s.c
	s.mu.Lock()
	defer s.mu.Unlock()
	for ; s.seen < len(c.tensors); s.seen++ {
		if t := c.tensors[s.seen]; t != nil {
			s.byShard[t.shard] = append(s.byShard[t.shard], ID(s.seen))
		}
	}
	// IDs are never reused: a deleted one is gone for good.
	live := slices.DeleteFunc(s.byShard[i], func(id ID) bool { return c.tensors[id] == nil })
	s.byShard[i] = live
	return slices.Clone(live)
}

// shardFacts are the size and time of shard e at state st, cached by
// stamp. Caller holds c.mu (read).
func (s *FileSet) shardFacts(e fileEntry, st shardState) (fileFacts, error) {
	s.mu.Lock()
	f, ok := s.facts[e.name]
	s.mu.Unlock()
	if ok && f.stamp == st.stamp {
		return f, nil
	}
	f = fileFacts{stamp: st.stamp, mtime: time.Now()}
	switch st.stamp.mode {
	case stampRewrite:
		l, err := s.plan(e.shard, st.ids)
		if err != nil {
			return fileFacts{}, err
		}
		f.size = int64(len(l.Header)) + int64(l.DataSize())
	default:
		file := s.c.shards[e.shard].cur.file
		f.size = file.Size
		if fi, err := file.Fd().Stat(); err == nil && st.stamp.mode == stampClean {
			f.mtime = fi.ModTime()
		}
	}
	s.mu.Lock()
	s.facts[e.name] = f
	s.mu.Unlock()
	return f, nil
}

// plan is the canonical layout of shard i's tensors (ids), as compaction
// would write them. Caller holds c.mu (read).
func (s *FileSet) plan(i int, ids []ID) (*safetensors.Layout, error) {
	c := s.c
	src := make([]safetensors.Source, len(ids))
	for j, id := range ids {
		t := c.tensors[id]
		src[j] = safetensors.Source{Key: t.key, DType: t.dtype, Shape: t.shape}
	}
	l, err := safetensors.Plan(src, c.shards[i].meta)
	if err != nil {
		return nil, fmt.Errorf("%s: the next write-back cannot lay it out: %w", c.shards[i].name, err)
	}
	return l, nil
}

// openShard opens a local shard at stamp want.
func (s *FileSet) openShard(e fileEntry, want FileStamp) (*FileView, error) {
	c := s.c
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, fmt.Errorf("%s: %w", e.name, os.ErrClosed)
	}
	st := s.shardState(e.shard)
	if st.stamp != want {
		return nil, fmt.Errorf("%s: %w", e.name, ErrStale)
	}
	sh := c.shards[e.shard]
	v := &FileView{name: e.name, set: s, shard: e.shard, cur: sh.cur}
	if st.stamp.mode == stampClean {
		// The file itself, whole: the kernel may read it directly.
		m := sh.cur
		m.acquire()
		v.maps = []*mapping{m}
		v.clean = true
		v.backing = m.file.Fd()
		v.add(m.file.Mapped(), m)
		v.size = m.file.Size
		s.register(v)
		return v, nil
	}
	// Contents are cloned (published chunks never change) and what they
	// point into pinned, as a compaction's snapshot does.
	v.contents = make(map[ID]*content, len(st.ids))
	held := map[*mapping]bool{}
	for _, id := range st.ids {
		d := c.tensors[id].cur.clone()
		v.contents[id] = d
		if d.ref != nil && !held[d.ref] {
			held[d.ref] = true
			d.ref.acquire()
			v.maps = append(v.maps, d.ref)
		}
	}
	v.logs = c.pinLogs()
	var err error
	if st.stamp.mode == stampInPlace {
		err = v.layInPlace(sh.cur.file, st.ids, c)
	} else {
		err = s.layRewrite(v, e.shard, st.ids)
	}
	if err != nil {
		v.release()
		return nil, err
	}
	s.register(v)
	return v, nil
}

// layInPlace lays out the current file's header and each tensor at its
// own offsets, edited chunks over the file's bytes: what patchInPlace
// leaves. Caller holds c.mu.
func (v *FileView) layInPlace(f *safetensors.File, ids []ID, c *Checkpoint) error {
	v.add(f.Mapped()[:f.DataOffset()], v.cur)
	order := slices.Clone(ids)
	slices.SortFunc(order, func(a, b ID) int {
		return cmp.Compare(f.Tensors[v.contents[a].src].Begin, f.Tensors[v.contents[b].src].Begin)
	})
	for _, id := range order {
		v.addContent(v.contents[id])
	}
	if v.size != f.Size {
		return fmt.Errorf("%s: edited in place it would be %d bytes, the file is %d (internal error)", v.name, v.size, f.Size)
	}
	return nil
}

// layRewrite lays out the canonical file for shard i's tensors. Caller
// holds c.mu.
func (s *FileSet) layRewrite(v *FileView, i int, ids []ID) error {
	l, err := s.plan(i, ids)
	if err != nil {
		return err
	}
	v.add(l.Header, nil)
	for k, j := range l.Order {
		d := v.contents[ids[j]]
		if want := int64(l.Tensors[k].Size()); d.size != want {
			return fmt.Errorf("tensor %q: %d bytes for %d (internal error): %w", s.c.tensors[ids[j]].key, d.size, want, ErrSize)
		}
		v.addContent(d)
	}
	if want := int64(len(l.Header)) + int64(l.DataSize()); v.size != want {
		return fmt.Errorf("%s: laid out %d bytes of %d (internal error)", v.name, v.size, want)
	}
	return nil
}

// indexFacts are the index's bytes, size and time now, cached by stamp.
// The index on disk is what the next write-back leaves unless its
// weight_map, total_size or metadata changed since it was written; then
// it is rendered as compaction renders it.
func (s *FileSet) indexFacts() (fileFacts, error) { return s.c.src.indexFacts(s) }

// localIndexFacts is indexFacts for a local checkpoint.
func (s *FileSet) localIndexFacts() (fileFacts, error) {
	c := s.c
	name := s.own[0].name
	c.mu.RLock()
	defer c.mu.RUnlock()
	x := c.index
	st := FileStamp{mode: stampIndex, gen: [4]uint64{x.layoutGen}}
	onDisk := x.layoutGen == x.persistedLayout
	if onDisk {
		st.gen[1] = 1
	}
	s.mu.Lock()
	f, ok := s.facts[name]
	s.mu.Unlock()
	if ok && f.stamp == st {
		return f, nil
	}
	f = fileFacts{stamp: st, mtime: time.Now()}
	if onDisk {
		b, mtime, err := readIndexFile(x.path)
		if err != nil {
			return fileFacts{}, err
		}
		f.index, f.mtime = b, mtime
	} else {
		var keys, shards []string
		var sizes []uint64
		for _, t := range c.tensors {
			if t != nil {
				keys = append(keys, t.key)
				shards = append(shards, c.shards[t.shard].name)
				sizes = append(sizes, uint64(t.cur.size))
			}
		}
		b, err := x.render(keys, shards, sizes)
		if err != nil {
			return fileFacts{}, fmt.Errorf("%s: rendering the index: %w", name, err)
		}
		f.index = b
	}
	f.size = int64(len(f.index))
	s.mu.Lock()
	s.facts[name] = f
	s.mu.Unlock()
	return f, nil
}

// readIndexFile reads a local index whole (bounded like any index read).
func readIndexFile(p string) ([]byte, time.Time, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, time.Time{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, time.Time{}, err
	}
	if !st.Mode().IsRegular() || st.Size() > safetensors.MaxIndexSize {
		return nil, time.Time{}, fmt.Errorf("%s: not a regular file of at most %d bytes", p, int64(safetensors.MaxIndexSize))
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, time.Time{}, err
	}
	return b, st.ModTime(), nil
}

func (s *FileSet) openIndex(want FileStamp) (*FileView, error) {
	f, err := s.indexFacts()
	if err != nil {
		return nil, err
	}
	if f.stamp != want {
		return nil, fmt.Errorf("%s: %w", s.own[0].name, ErrStale)
	}
	v := &FileView{name: s.own[0].name}
	v.add(f.index, nil)
	return v, nil
}

// register records an open view of a local shard.
func (s *FileSet) register(v *FileView) {
	s.mu.Lock()
	s.views[v] = struct{}{}
	s.mu.Unlock()
}
