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
// Same-layout edits (bytes changed inside tensors, nothing else) are written
// in place behind a write-ahead journal, costing what changed; anything else
// rewrites the file through the canonical writer into a temp file that is
// renamed over the checkpoint. Either way a crash at any moment leaves a
// valid checkpoint holding the state before or after this Sync.
//
// If someone else changed the checkpoint while it was mounted, Sync does not
// touch it: the edited checkpoint goes to a recovery file named in the error.
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
	if s.inPlace {
		return c.persistInPlace(s)
	}
	return c.persistRewrite(s)
}

// snapshot is the state a persist writes: taken under the lock, written
// without it, so writes and reads continue meanwhile.
type snapshot struct {
	tensors   []snapTensor
	meta      map[string]string
	edits     uint64
	layoutGen uint64
	dirty     bool
	inPlace   bool
	refs      []*mapping
}

type snapTensor struct {
	id    ID
	gen   uint64
	key   string
	dtype safetensors.DType
	shape []uint64
	data  *content
}

func (c *Checkpoint) snapshot() *snapshot {
	c.mu.RLock()
	defer c.mu.RUnlock()
	s := &snapshot{meta: c.meta, edits: c.edits, layoutGen: c.layoutGen}
	s.dirty = c.layoutGen != c.persistedLayout
	s.inPlace = !s.dirty
	for i, t := range c.tensors {
		if t == nil {
			continue
		}
		d := t.cur.clone()
		if d.ref != nil {
			d.ref.acquire()
			s.refs = append(s.refs, d.ref)
		}
		s.tensors = append(s.tensors, snapTensor{ID(i), t.gen, t.key, t.dtype, t.shape, d})
		if !d.clean() {
			s.dirty = true
		}
		// In place only when every tensor still sits at its own offsets in
		// the current file (the header stays byte for byte what it is).
		if d.ref != c.cur || d.src < 0 || c.cur.file.Tensors[d.src].Key != t.key {
			s.inPlace = false
		}
	}
	return s
}

// check refuses to write a tensor whose bytes do not fill its dtype and
// shape exactly. The edit operations never allow it; this is the last line
// of defence against a bug writing a checkpoint that lies about its data.
func (s *snapshot) check() error {
	for _, st := range s.tensors {
		n, err := safetensors.ByteSize(st.dtype, st.shape)
		if err != nil || int64(n) != st.data.size {
			return fmt.Errorf("tensor %q: %d bytes for %s %s (internal error, nothing written): %w",
				st.key, st.data.size, st.dtype, shapeString(st.shape), ErrSize)
		}
	}
	return nil
}

func (s *snapshot) release() {
	for _, m := range s.refs {
		m.release()
	}
}

// unchangedOnDisk reports whether the checkpoint is still the file we last
// wrote: same inode, size and mtime.
func (c *Checkpoint) unchangedOnDisk() bool {
	id, err := statIdentity(c.path)
	return err == nil && id.same(c.ident)
}

func (c *Checkpoint) persistInPlace(s *snapshot) error {
	f := c.cur.file
	var patches []patch
	for _, st := range s.tensors {
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
	if err := commitInPlace(c.rw, c.path, f.DataOffset(), patches, c.hooks); errors.Is(err, ErrChanged) {
		return c.recover(s)
	} else if err != nil {
		// Past the commit point the failed commit may have written into
		// the file, changing its mtime: that was us. Remember the file as
		// it is now, or the next Sync would take our own write for someone
		// else's and divert every edit to a recovery file instead of
		// finishing the journal.
		if now, serr := statIdentity(c.path); serr == nil && now.dev == c.ident.dev && now.ino == c.ident.ino && now.size == c.ident.size {
			c.mu.Lock()
			c.ident = now
			c.mu.Unlock()
		}
		return fmt.Errorf("writing edits into %s: %w", c.path, err)
	}
	ident, err := statIdentity(c.path)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ident = ident
	// The file now holds these bytes, and the mapping shows them: tensors
	// not edited since the snapshot read straight from it again.
	for _, st := range s.tensors {
		if t := c.tensors[st.id]; t != nil && t.gen == st.gen && !st.data.clean() {
			t.cur = fileContent(c.cur, st.data.src)
		}
	}
	c.persistedEdits = s.edits
	c.releaseRetired()
	return nil
}

func (c *Checkpoint) sources(s *snapshot) []safetensors.Source {
	src := make([]safetensors.Source, len(s.tensors))
	for i, st := range s.tensors {
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

func (c *Checkpoint) persistRewrite(s *snapshot) error {
	if _, pending := PendingJournal(c.path); pending {
		// rewriteAtomic first replays it into the mapped file.
		c.waitReads()
	}
	if err := rewriteAtomic(c.path, c.sources(s), s.meta, c.hooks); errors.Is(err, ErrChanged) {
		// Someone saved over the checkpoint while we copied.
		return c.recover(s)
	} else if err != nil {
		return fmt.Errorf("rewriting %s: %w", c.path, err)
	}
	f, err := safetensors.Open(c.path)
	if err != nil {
		return fmt.Errorf("reopening %s after rewrite: %w", c.path, err)
	}
	m := newMapping(f)
	if err := c.openForWrite(); err != nil {
		m.release()
		return fmt.Errorf("relocking %s after rewrite: %w", c.path, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.cur
	c.cur = m
	for _, st := range s.tensors {
		t := c.tensors[st.id]
		if t == nil || t.gen != st.gen {
			// Edited during the rewrite: keeps its bytes where they are
			// (the old mapping stays alive through the reference) and goes
			// out with the next persist.
			continue
		}
		if i, ok := f.Index(t.key); ok {
			t.cur = fileContent(m, i)
		}
	}
	c.persistedLayout = s.layoutGen
	c.persistedEdits = s.edits
	c.retired = append(c.retired, old)
	c.releaseRetired()
	return nil
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
	p, err := writeRecovery(c.path, c.sources(s), s.meta)
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
	n, err := r.c.readAt(p, off)
	if err != nil {
		return n, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
