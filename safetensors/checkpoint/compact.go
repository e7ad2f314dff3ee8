package checkpoint

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Compaction folds the log into the checkpoint files, once for many edits:
//
//  1. Everything is committed to the log and the state snapshotted, under
//     the lock, so the snapshot is exactly what the log holds.
//  2. Each shard whose header changes is written anew through the
//     canonical writer into a temp file (prepare: written, fsynced,
//     validated), and so is the index when keys, sizes or its metadata
//     changed. Shards whose header stays are patched in place later.
//  3. A compact record listing the renames (with each temp file's inode)
//     and the shards to patch is committed to the log: the commit point.
//  4. The temp files are renamed into place, the directories fsynced.
//  5. The patches (the log's bytes of the edited chunks) are written into
//     the shards in place, each shard fdatasynced.
//  6. The log is removed, durably.
//
// A crash before 3 leaves the files as they were and the log whole: the
// next read-write open replays the log and compacts again. A crash after
// 3 is finished by that open from the record: renames rolled forward
// (recognised by inode), patches applied again from the log's bytes
// (idempotent), the log removed. Every crash point has one answer.
//
// A failure after the commit point in a live mount (an I/O error) leaves
// the mount stuck: later persists fail with that error, and the next
// read-write open finishes the compaction. Nothing acknowledged is lost.

// walLimitMin is the least the log may grow to before a Sync compacts; the
// limit is a quarter of the checkpoint's tensor data when that is more.
const walLimitMin = 64 << 20

// Compact folds the log into the checkpoint files now (safejaxfs sync).
func (c *Checkpoint) Compact() error {
	if c.readOnly {
		return nil
	}
	c.persistMu.Lock()
	defer c.persistMu.Unlock()
	return c.compact()
}

// compact runs a compaction; the caller holds persistMu.
func (c *Checkpoint) compact() error {
	if c.stuck != nil {
		return c.stuck
	}
	if c.recovery != "" || !c.unchangedOnDisk() {
		// Never log for, or write over, another program's file: the
		// edits, if any, go to a recovery file.
		s := c.snapshot()
		defer s.release()
		if !s.dirty {
			return nil
		}
		return c.recover(s)
	}
	c.mu.Lock()
	err := c.commitLocked()
	s := c.snapshotLocked()
	c.mu.Unlock()
	defer s.release()
	if err != nil {
		return err
	}
	if !s.dirty {
		if c.wal != nil {
			return c.dropLog()
		}
		return nil
	}
	if err := s.check(); err != nil {
		return err
	}
	var reps []*replacement
	var rewritten, inPlace []int
	for i := range s.shards {
		ss := &s.shards[i]
		switch {
		case ss.rewrite:
			reps = append(reps, shardReplacement(c.shards[i].path, sources(ss.tensors), ss.meta))
			rewritten = append(rewritten, i)
		case ss.dirty:
			inPlace = append(inPlace, i)
		}
	}
	// Open file views must not see their bytes patched (fileview_compact.go).
	reps, rewritten, inPlace = c.keepViews(s, reps, rewritten, inPlace)
	if s.index {
		b, err := c.renderIndex(s)
		if err != nil {
			return err
		}
		reps = append(reps, indexReplacement(c.index.path, b))
	}
	err = prepare(reps, c.hooks)
	if errors.Is(err, unix.ENOSPC) && c.wal != nil && c.wal.trim() {
		// The zeros the log wrote ahead gave their room back: once more.
		err = prepare(reps, c.hooks)
	}
	if err != nil {
		return fmt.Errorf("writing back %s: %w", c.path, err)
	}
	if err := unchanged(reps); err != nil {
		discard(reps)
		if errors.Is(err, ErrChanged) {
			return c.recover(s)
		}
		return err
	}
	if c.wal == nil {
		// Nothing was logged (the changes came from the log a crash
		// left, already replayed): a log to hold the compact record.
		w, err := c.startWAL()
		if err != nil {
			discard(reps)
			return err
		}
		c.mu.Lock()
		c.wal = w
		c.walMaps = append(c.walMaps, w.m)
		c.mu.Unlock()
	}
	if _, err := c.wal.commit([]walRecord{{typ: recCompact, head: compactBody(&compactRec{renames: renames(reps), inPlace: inPlace})}}, c.hooks); err != nil {
		if !isCrash(err, c.hooks) {
			discard(reps)
		}
		return fmt.Errorf("writing back %s: %w", c.path, err)
	}
	// Past the commit point: every failure now leaves what only the log
	// can finish.
	ierr := install(reps, c.hooks)
	var late *lateError
	if ierr != nil && !errors.As(ierr, &late) {
		return c.stick(fmt.Errorf("writing back %s: %w", c.path, ierr))
	}
	if err := c.adopt(s, rewritten); err != nil {
		return c.stick(err)
	}
	if ierr != nil {
		return c.stick(fmt.Errorf("writing back %s: %w", c.path, ierr))
	}
	if err := c.patchInPlace(s, inPlace); err != nil {
		return c.stick(err)
	}
	if herr := c.hooks.hit("patched"); herr != nil {
		return c.stick(herr)
	}
	return c.dropLog()
}

// isCrash tells a simulated crash (tests) from a real failure.
func isCrash(err error, h *crashHooks) bool {
	return h != nil && h.last != nil && errors.Is(err, h.last)
}

// stick records a failure after a compaction's commit point: the files are
// between states only the log can finish, so nothing more is persisted in
// this mount.
func (c *Checkpoint) stick(err error) error {
	c.stuck = fmt.Errorf("%w; the write-back is recorded in %s and the next read-write mount finishes it", err, c.walPath())
	return c.stuck
}

// patchInPlace writes the edited chunks of the shards into the files they
// belong to and fdatasyncs each; then those tensors read from the file
// again.
func (c *Checkpoint) patchInPlace(s *snapshot, shards []int) error {
	if len(shards) == 0 {
		return nil
	}
	c.waitReads()
	for _, i := range shards {
		sh := c.shards[i]
		f := sh.cur.file
		var ps []patch
		for _, st := range s.shards[i].tensors {
			start := f.DataOffset() + int64(f.Tensors[st.data.src].Begin)
			for idx, ch := range st.data.chunks {
				lo := idx * chunkSize
				ps = append(ps, patch{start + lo, ch[:min(int64(len(ch)), st.data.size-lo)]})
			}
		}
		if err := writePatches(sh.rw, ps); err != nil {
			return fmt.Errorf("writing edits into %s: %w", sh.path, err)
		}
		if herr := c.hooks.hit("patch-written"); herr != nil {
			return herr
		}
		if err := control(sh.rw, unix.Fdatasync); err != nil {
			return fmt.Errorf("syncing %s: %w", sh.path, err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, i := range shards {
		sh := c.shards[i]
		if id, err := statIdentity(sh.path); err == nil {
			sh.ident = id
		}
		for _, st := range s.shards[i].tensors {
			t := st.t
			if t.gen == st.gen {
				t.cur = fileContent(sh.cur, st.data.src)
				continue
			}
			// Changed since: the chunks the log held are in the file now.
			for idx, ch := range t.cur.chunks {
				if c.inLog(ch) {
					delete(t.cur.chunks, idx)
				}
			}
		}
	}
	return nil
}

// patch is bytes to write at an absolute offset in a file.
type patch struct {
	off  int64
	data []byte
}

// writePatches writes patches in offset order, adjacent ones in one
// pwritev.
func writePatches(f *os.File, ps []patch) error {
	slices.SortFunc(ps, func(a, b patch) int { return cmp.Compare(a.off, b.off) })
	for i := 0; i < len(ps); {
		j := i + 1
		segs := [][]byte{ps[i].data}
		end := ps[i].off + int64(len(ps[i].data))
		for j < len(ps) && ps[j].off == end {
			segs = append(segs, ps[j].data)
			end += int64(len(ps[j].data))
			j++
		}
		if err := pwritev(f, segs, ps[i].off); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// adopt maps and locks the files a compaction put in place and points the
// tensors it wrote at them. A tensor edited since the snapshot keeps its
// bytes, copied out of the log (which is about to go) into memory, to be
// logged again.
func (c *Checkpoint) adopt(s *snapshot, rewritten []int) error {
	files := make([]*safetensors.File, len(rewritten))
	for j, i := range rewritten {
		sh := c.shards[i]
		f, err := safetensors.Open(sh.path)
		if err == nil {
			if err = sh.openForWrite(); err != nil {
				f.Close()
			}
		}
		if err != nil {
			for _, f := range files[:j] {
				f.Close()
			}
			return fmt.Errorf("reopening %s after writing it back: %w", sh.path, err)
		}
		files[j] = f
	}
	if s.index {
		if err := c.index.lock(); err != nil {
			return fmt.Errorf("relocking %s after writing it back: %w", c.index.path, err)
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
			t := st.t
			k, ok := f.Index(st.key)
			if t.gen == st.gen && ok {
				t.cur = fileContent(m, k)
				continue
			}
			c.materialize(t)
		}
	}
	if s.index {
		c.index.persistedLayout = s.indexGen
	}
	c.releaseRetired()
	return nil
}

// materialize copies whatever of t's bytes lives in a log into memory and
// marks t to be logged whole again. Caller holds mu.
func (c *Checkpoint) materialize(t *tensor) {
	if c.inLog(t.cur.base) || len(t.cur.chunks) > 0 {
		t.cur = materialized(t.cur)
	}
	t.replaced = true
	c.dirty[t] = struct{}{}
}

// materialized is a copy of ct wholly in memory.
func materialized(ct *content) *content {
	b := make([]byte, ct.size)
	ct.readAt(b, 0)
	return memoryContent(b)
}

// pinLogs takes a reference on every log mapping, for bytes that may
// outlive a write-back (a rewrite in progress, a removed tensor still
// open). Caller holds mu.
func (c *Checkpoint) pinLogs() []*walMap {
	for _, m := range c.walMaps {
		m.acquire()
	}
	return slices.Clone(c.walMaps)
}

// heldByDroppedLog reports whether ct holds bytes of one of the pinned
// logs that was folded and dropped since (no longer in walMaps). Caller
// holds mu.
func (c *Checkpoint) heldByDroppedLog(ct *content, pinned []*walMap) bool {
	for _, m := range pinned {
		if !slices.Contains(c.walMaps, m) && (m.holds(ct.base) || chunksIn(m, ct)) {
			return true
		}
	}
	return false
}

// dropLog removes the log once the checkpoint files hold everything it
// did, and unmaps it once no read can be using it any more.
func (c *Checkpoint) dropLog() error {
	if herr := c.hooks.hit("compacted"); herr != nil {
		return c.stick(herr)
	}
	w := c.wal
	c.wal = nil
	err := w.remove()
	c.mu.Lock()
	// Nothing may point into the log after this: tensors edited during the
	// compaction get their own copies.
	for _, t := range c.tensors {
		if t != nil && (w.m.holds(t.cur.base) || chunksIn(w.m, t.cur)) {
			c.materialize(t)
		}
	}
	c.walMaps = slices.DeleteFunc(c.walMaps, func(m *walMap) bool { return m == w.m })
	c.mu.Unlock()
	w.m.release() // unmapped once the reads holding slices of it are done
	if err != nil {
		return fmt.Errorf("removing the log %s: %w", w.path, err)
	}
	return nil
}

func chunksIn(m *walMap, ct *content) bool {
	for _, ch := range ct.chunks {
		if m.holds(ch) {
			return true
		}
	}
	return false
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
