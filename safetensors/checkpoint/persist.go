package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Sync makes every edit so far durable in the checkpoint before it returns.
//
// Each file is handled on its own. A shard whose header stays the same
// (bytes changed inside tensors, nothing else) is written in place behind
// its write-ahead journal, costing what changed; a shard whose header
// changes is rewritten through the canonical writer into a temp file that
// replaces it. When more than one file is replaced (shards and the index of
// a sharded checkpoint) they are replaced together behind a commit record,
// so a crash at any moment leaves every file in the state before or after
// this Sync, never a mix that breaks the index (see replaceFiles).
//
// If someone else changed any of the files while mounted, Sync does not
// touch them: the edited checkpoint goes to a recovery file named in the
// error.
func (c *Checkpoint) Sync() error {
	if c.readOnly {
		return nil
	}
	c.persistMu.Lock()
	defer c.persistMu.Unlock()

	s := c.snapshot()
	defer s.release()
	if !s.dirty {
		return nil
	}
	if err := s.check(); err != nil {
		return err
	}
	if c.recovery != "" || !c.unchangedOnDisk() {
		return c.recover(s)
	}
	if s.rewrites() {
		if err := c.persistRewrite(s); err != nil {
			return err
		}
	}
	for i := range s.shards {
		if ss := &s.shards[i]; ss.dirty && !ss.rewrite {
			if err := c.persistInPlace(s, i); err != nil {
				return err
			}
		}
	}
	c.mu.Lock()
	c.persistedEdits = s.edits
	c.mu.Unlock()
	return nil
}

// snapshot is the state a persist writes: taken under the lock, written
// without it, so writes and reads continue meanwhile.
type snapshot struct {
	shards []snapShard
	// index: the index must be written (its weight_map, total_size or
	// metadata changed); indexGen and indexMeta are its state.
	index     bool
	indexGen  uint64
	indexMeta *indexState
	edits     uint64
	dirty     bool
	refs      []*mapping
}

// snapShard is one file's part of a snapshot.
type snapShard struct {
	tensors   []snapTensor
	meta      map[string]string
	layoutGen uint64
	// rewrite: the header changes, so the file is rewritten whole; else
	// dirty tensors are written in place.
	rewrite bool
	dirty   bool
}

type snapTensor struct {
	id    ID
	gen   uint64
	key   string
	dtype safetensors.DType
	shape []uint64
	data  *content
}

func (s *snapshot) rewrites() bool {
	if s.index {
		return true
	}
	for i := range s.shards {
		if s.shards[i].rewrite {
			return true
		}
	}
	return false
}

func (c *Checkpoint) snapshot() *snapshot {
	c.mu.RLock()
	defer c.mu.RUnlock()
	s := &snapshot{edits: c.edits, shards: make([]snapShard, len(c.shards))}
	for i, sh := range c.shards {
		ss := &s.shards[i]
		ss.meta, ss.layoutGen = sh.meta, sh.layoutGen
		ss.rewrite = sh.layoutGen != sh.persistedLayout
	}
	if x := c.index; x != nil {
		s.index = x.layoutGen != x.persistedLayout
		s.indexGen = x.layoutGen
		// meta and extra are replaced, never changed in place: a shallow
		// copy keeps them as they are now.
		cp := *x
		s.indexMeta = &cp
	}
	for i, t := range c.tensors {
		if t == nil {
			continue
		}
		ss, sh := &s.shards[t.shard], c.shards[t.shard]
		d := t.cur.clone()
		if d.ref != nil {
			d.ref.acquire()
			s.refs = append(s.refs, d.ref)
		}
		ss.tensors = append(ss.tensors, snapTensor{ID(i), t.gen, t.key, t.dtype, t.shape, d})
		if !d.clean() {
			ss.dirty = true
		}
		// In place only when every tensor still sits at its own offsets in
		// the shard's current file (the header stays byte for byte what it is).
		if d.ref != sh.cur || d.src < 0 || sh.cur.file.Tensors[d.src].Key != t.key {
			ss.rewrite = true
		}
	}
	s.dirty = s.index
	for i := range s.shards {
		ss := &s.shards[i]
		ss.dirty = ss.dirty || ss.rewrite
		s.dirty = s.dirty || ss.dirty
	}
	return s
}

// check refuses to write a tensor whose bytes do not fill its dtype and
// shape exactly. The edit operations never allow it; this is the last line
// of defence against a bug writing a checkpoint that lies about its data.
func (s *snapshot) check() error {
	for i := range s.shards {
		for _, st := range s.shards[i].tensors {
			n, err := safetensors.ByteSize(st.dtype, st.shape)
			if err != nil || int64(n) != st.data.size {
				return fmt.Errorf("tensor %q: %d bytes for %s %s (internal error, nothing written): %w",
					st.key, st.data.size, st.dtype, shapeString(st.shape), ErrSize)
			}
		}
	}
	return nil
}

func (s *snapshot) release() {
	for _, m := range s.refs {
		m.release()
	}
}

// unchangedOnDisk reports whether every file is still the one we last
// wrote: same inode, size and mtime.
func (c *Checkpoint) unchangedOnDisk() bool {
	for _, sh := range c.shards {
		if !sh.unchangedOnDisk() {
			return false
		}
	}
	if x := c.index; x != nil {
		id, err := statIdentity(x.path)
		if err != nil || !id.same(x.ident) {
			return false
		}
	}
	return true
}

func (c *Checkpoint) persistInPlace(s *snapshot, si int) error {
	sh := c.shards[si]
	f := sh.cur.file
	var patches []patch
	for _, st := range s.shards[si].tensors {
		d := st.data
		if d.clean() {
			continue
		}
		start := f.DataOffset() + int64(f.Tensors[d.src].Begin)
		for idx, ch := range d.chunks {
			lo := idx * chunkSize
			patches = append(patches, patch{off: start + lo, data: ch[:min(chunkSize, d.size-lo)]})
		}
		// Bytes past a truncated base that no chunk covers read as zeros;
		// the file must say so too.
		for lo := int64(len(d.base)); lo < d.size; {
			idx := lo / chunkSize
			hi := min((idx+1)*chunkSize, d.size)
			if _, ok := d.chunks[idx]; !ok {
				patches = append(patches, patch{off: start + lo, data: zeros[:hi-lo]})
			}
			lo = hi
		}
	}
	sort.Slice(patches, func(i, j int) bool { return patches[i].off < patches[j].off })
	c.waitReads()
	if err := commitInPlace(sh.rw, sh.path, f.DataOffset(), patches, c.hooks); errors.Is(err, ErrChanged) {
		return c.recover(s)
	} else if err != nil {
		// Past the commit point the failed commit may have written into
		// the file, changing its mtime: that was us. Remember the file as
		// it is now, or the next Sync would take our own write for someone
		// else's and divert every edit to a recovery file instead of
		// finishing the journal.
		if now, serr := statIdentity(sh.path); serr == nil && now.dev == sh.ident.dev && now.ino == sh.ident.ino && now.size == sh.ident.size {
			c.mu.Lock()
			sh.ident = now
			c.mu.Unlock()
		}
		return fmt.Errorf("writing edits into %s: %w", sh.path, err)
	}
	ident, err := statIdentity(sh.path)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	sh.ident = ident
	// The file now holds these bytes, and the mapping shows them: tensors
	// not edited since the snapshot read straight from it again.
	for _, st := range s.shards[si].tensors {
		if t := c.tensors[st.id]; t != nil && t.gen == st.gen && !st.data.clean() {
			t.cur = fileContent(sh.cur, st.data.src)
		}
	}
	c.releaseRetired()
	return nil
}

// sources are a shard's tensors as writer sources.
func sources(ts []snapTensor) []safetensors.Source {
	src := make([]safetensors.Source, len(ts))
	for i, st := range ts {
		src[i] = safetensors.Source{Key: st.key, DType: st.dtype, Shape: st.shape}
		if d := st.data; d.clean() {
			// Unchanged bytes are copied kernel-side (copy_file_range).
			f := d.ref.file
			src[i].Data = f.Fd()
			src[i].Off = f.DataOffset() + int64(f.Tensors[d.src].Begin)
		} else {
			src[i].Data = contentReader{d}
		}
	}
	return src
}

// waitReads returns once the reads in flight have been released (see
// readTracker), before bytes they may be copying from are written in place.
func (c *Checkpoint) waitReads() {
	if !c.reads.wait() {
		// Never seen: go-fuse releases every reply it sends. Going on
		// risks one torn read; waiting forever would stop all writes.
		fmt.Fprintf(os.Stderr, "safejaxfs: %s: reads still in flight after %v; writing in place anyway\n", c.path, maxReadWait)
	}
}

// persistRewrite replaces every shard whose header changes, and the index
// when it changes, by their canonical files, together (replaceFiles), then
// maps the new files.
func (c *Checkpoint) persistRewrite(s *snapshot) error {
	var reps []*replacement
	var rewritten []int
	for i := range s.shards {
		ss := &s.shards[i]
		if !ss.rewrite {
			continue
		}
		sh := c.shards[i]
		if _, pending := PendingJournal(sh.path); pending {
			// replaceFiles first replays it into the mapped file.
			c.waitReads()
		}
		reps = append(reps, shardReplacement(sh.path, sources(ss.tensors), ss.meta))
		rewritten = append(rewritten, i)
	}
	if s.index {
		b, err := c.renderIndex(s)
		if err != nil {
			return err
		}
		reps = append(reps, indexReplacement(c.index.path, b))
	}
	err := replaceFiles(reps, c.commitPath(), c.hooks)
	var late *lateError
	switch {
	case errors.Is(err, ErrChanged):
		// Someone saved over a file while we copied.
		return c.recover(s)
	case errors.As(err, &late):
		// The files were replaced; only making that durable failed. They
		// are ours: map them, and report the failure.
	case err != nil:
		return fmt.Errorf("rewriting %s: %w", c.path, err)
	}
	if oerr := c.adopt(s, rewritten); oerr != nil {
		return oerr
	}
	if err != nil {
		return fmt.Errorf("rewriting %s: %w", c.path, err)
	}
	return nil
}

// adopt maps and locks the files a rewrite put in place and points the
// tensors it wrote at them.
func (c *Checkpoint) adopt(s *snapshot, rewritten []int) error {
	files := make([]*safetensors.File, len(rewritten))
	for j, i := range rewritten {
		sh := c.shards[i]
		f, err := safetensors.Open(sh.path)
		if err == nil {
			err = sh.openForWrite()
			if err != nil {
				f.Close()
			}
		}
		if err != nil {
			for _, f := range files[:j] {
				f.Close()
			}
			return fmt.Errorf("reopening %s after rewrite: %w", sh.path, err)
		}
		files[j] = f
	}
	if s.index {
		if err := c.index.lock(); err != nil {
			return fmt.Errorf("relocking %s after rewrite: %w", c.index.path, err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for j, i := range rewritten {
		sh, f := c.shards[i], files[j]
		m := newMapping(f)
		c.retired = append(c.retired, sh.cur)
		sh.cur = m
		sh.persistedLayout = s.shards[i].layoutGen
		for _, st := range s.shards[i].tensors {
			t := c.tensors[st.id]
			if t == nil || t.gen != st.gen {
				// Edited during the rewrite: keeps its bytes where they are
				// (the old mapping stays alive through the reference) and
				// goes out with the next persist.
				continue
			}
			if k, ok := f.Index(t.key); ok {
				t.cur = fileContent(m, k)
			}
		}
	}
	if s.index {
		c.index.persistedLayout = s.indexGen
	}
	c.releaseRetired()
	return nil
}

// renderIndex is the index for the snapshot's tensors.
func (c *Checkpoint) renderIndex(s *snapshot) ([]byte, error) {
	var keys, shards []string
	var sizes []uint64
	for i := range s.shards {
		for _, st := range s.shards[i].tensors {
			keys = append(keys, st.key)
			shards = append(shards, c.shards[i].name)
			sizes = append(sizes, uint64(st.data.size))
		}
	}
	return s.indexMeta.render(keys, shards, sizes)
}

// releaseRetired releases the old mappings no tensor reads from any more.
// Caller holds mu.
func (c *Checkpoint) releaseRetired() {
	if len(c.retired) == 0 {
		return
	}
	used := map[*mapping]bool{}
	for _, t := range c.tensors {
		if t != nil {
			used[t.cur.ref] = true
			if t.staged != nil {
				used[t.staged.ref] = true
			}
		}
	}
	kept := c.retired[:0]
	for _, m := range c.retired {
		if used[m] {
			kept = append(kept, m)
		} else {
			m.release()
		}
	}
	clear(c.retired[len(kept):])
	c.retired = kept
}

// recover writes the edited checkpoint next to the original, which someone
// else changed: theirs is not overwritten, ours is not lost.
func (c *Checkpoint) recover(s *snapshot) error {
	if s.edits == c.recoveredEdits && c.recovery != "" {
		return fmt.Errorf("%s: %w; your edits are in %s", c.path, ErrChanged, c.recovery)
	}
	p, err := c.writeRecovery(s)
	if err != nil {
		return fmt.Errorf("%s: %w, and saving your edits elsewhere failed: %v", c.path, ErrChanged, err)
	}
	c.mu.Lock()
	c.recovery, c.recoveredEdits = p, s.edits
	c.mu.Unlock()
	return fmt.Errorf("%s: %w; your edits are in %s", c.path, ErrChanged, p)
}

// contentReader lets the writer stream edited content.
type contentReader struct{ c *content }

func (r contentReader) ReadAt(p []byte, off int64) (int, error) {
	n := r.c.readAt(p, off)
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
