package checkpoint

import (
	"cmp"
	"errors"
	"fmt"
	"hash/crc32"
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
//  3. A compact record naming each temp file (with its inode, size and a
//     hash of its header) and each byte range to patch (with page
//     checksums of its bytes before and after) is committed to the log:
//     the commit point.
//  4. The temp files are installed (install.go: renamed, or copied in
//     place where the file cannot be renamed over), the directories
//     fsynced.
//  5. The patches (the log's bytes of the edited chunks) are written into
//     the shards in place, each shard fdatasynced.
//  6. The log is removed, durably; then temp files copied in place.
//
// A crash before 3 leaves the files as they were and the log whole: the
// next read-write open replays the log and compacts again. A crash after
// 3 is finished by that open from the record (recover.go), once every file
// is found to be as the log began, as the record says it will be, or half
// way between by our own hand. Every crash point has one answer.
//
// A failure after the commit point (EIO, a full directory, a rename the
// file system refuses) leaves the compaction pending, never abandoned:
// every later sync, commit and unmount tries to finish it first, and the
// commits wait for it (a batch appended after a compact record would be
// ignored by recovery), failing with its error meanwhile. Nothing
// acknowledged is lost, and the next read-write open or `safejaxfs
// recover` finishes it from the log if this mount cannot.

// walLimitMin is the least the log may grow to before a Sync compacts; the
// limit is a quarter of the checkpoint's tensor data when that is more.
const walLimitMin = 64 << 20

// maxPatchRecord bounds the page checksums of one compact record: past it
// a shard is rewritten whole instead of patched in place (well within
// maxStructRecord, so the record can always be read back).
const maxPatchRecord = 64 << 20

// pending is a compaction past its commit point, not finished yet.
type pending struct {
	s         *snapshot
	reps      []*replacement
	shardOf   []int // per rep: its shard, or -1 for the index
	inPlace   []int // shards patched in place
	installed bool
	adopted   bool
	patched   bool
}

// Compact folds the log into the checkpoint files now (safejaxfs sync).
func (c *Checkpoint) Compact() error {
	if c.readOnly {
		return nil
	}
	c.persistMu.Lock()
	defer c.unlockPersist()
	return c.compact()
}

// compact runs a compaction; the caller holds persistMu.
func (c *Checkpoint) compact() error {
	c.compacting.Store(true)
	defer c.compacting.Store(false)
	if err := c.resume(); err != nil {
		return err
	}
	if c.stuck != nil {
		return c.stuck
	}
	if c.recovery != "" || !c.unchangedOnDisk() {
		// Never log for, or write over, another program's file: the
		// edits, if any, go to a recovery file.
		if !c.wouldWrite() {
			return nil
		}
		s := c.snapshot()
		defer s.release()
		if !s.dirty {
			return nil
		}
		return c.recover(s)
	}
	c.mu.Lock()
	err := c.commitLocked()
	if err == nil && !c.wouldWriteLocked() {
		c.mu.Unlock()
		if c.wal != nil {
			return c.dropLog()
		}
		return nil
	}
	s := c.snapshotLocked()
	c.mu.Unlock()
	if err != nil {
		s.release()
		return err
	}
	if !s.dirty {
		s.release()
		if c.wal != nil {
			return c.dropLog()
		}
		return nil
	}
	if err := s.check(); err != nil {
		s.release()
		return err
	}
	p := &pending{s: s}
	patches, err := c.planPatches(s)
	if err != nil {
		s.release()
		return err
	}
	for i := range s.shards {
		ss := &s.shards[i]
		switch {
		case ss.rewrite:
			r := shardReplacement(c.shards[i].name, sources(ss.tensors), ss.meta)
			r.file = i
			p.reps = append(p.reps, r)
			p.shardOf = append(p.shardOf, i)
		case ss.dirty:
			p.inPlace = append(p.inPlace, i)
		}
	}
	// Open file views must not see their bytes patched (fileview_compact.go).
	c.keepViews(s, p)
	if s.index {
		b, err := c.renderIndex(s)
		if err != nil {
			s.release()
			return err
		}
		r := indexReplacement(c.index.name, b)
		r.file = len(c.shards) // the index follows the shards in the base record
		p.reps = append(p.reps, r)
		p.shardOf = append(p.shardOf, -1)
	}
	err = prepare(c.root, p.reps, c.hooks)
	if errors.Is(err, unix.ENOSPC) && c.wal != nil && c.wal.trim() {
		// The zeros the log wrote ahead gave their room back: once more.
		err = prepare(c.root, p.reps, c.hooks)
	}
	if err != nil {
		s.release()
		return fmt.Errorf("writing back %s: %w", c.path, err)
	}
	if err := unchanged(c.root, p.reps); err != nil {
		discard(c.root, p.reps)
		s.release()
		if errors.Is(err, ErrChanged) {
			s := c.snapshot()
			defer s.release()
			return c.recover(s)
		}
		return err
	}
	if c.wal == nil {
		// Nothing was logged (the changes came from the log a crash
		// left, already replayed): a log to hold the compact record.
		if err := c.openLog(); err != nil {
			discard(c.root, p.reps)
			s.release()
			return err
		}
	}
	rec := &compactRec{renames: commitRenames(p.reps)}
	for _, i := range p.inPlace {
		rec.patches = append(rec.patches, patchedFile{File: i, Runs: patches[i]})
	}
	if _, err := c.wal.commit([]walRecord{{typ: recCompact, head: compactBody(rec)}}, c.hooks); err != nil {
		if isCrash(err, c.hooks) {
			closeTemps(p.reps) // as the kernel closes them at exit
		} else {
			discard(c.root, p.reps)
		}
		s.release()
		return fmt.Errorf("writing back %s: %w", c.path, err)
	}
	// Past the commit point: from here on, what is left is finished, by
	// this mount or by the next open, never given up.
	c.pending = p
	return c.resume()
}

// resume finishes a compaction past its commit point (see pending). On a
// failure it stays pending, for the next call to try again.
func (c *Checkpoint) resume() error {
	p := c.pending
	if p == nil {
		return nil
	}
	fail := func(err error) error {
		return fmt.Errorf("writing back %s: %w; the write-back is committed in the log %s: it is tried again at the next sync or unmount, and the next read-write mount (or safejaxfs recover) finishes it", c.path, err, c.walPath())
	}
	if !p.installed {
		if err := c.installAll(p); err != nil {
			return fail(err)
		}
		p.installed = true
	}
	if !p.adopted {
		if err := c.adopt(p); err != nil {
			return fail(err)
		}
		p.adopted = true
	}
	if !p.patched {
		if err := c.patchInPlace(p.s, p.inPlace); err != nil {
			return fail(err)
		}
		if herr := c.hooks.hit("patched"); herr != nil {
			return herr
		}
		p.patched = true
	}
	if err := c.dropLog(); err != nil {
		return fail(err)
	}
	// The temp files copied in place are needed until the log is gone.
	for _, r := range p.reps {
		if !r.renamed {
			c.root.remove(r.tmpName)
		}
		if r.tmp != nil {
			r.tmp.Close()
			r.tmp = nil
		}
	}
	p.s.release()
	c.pending = nil
	return nil
}

// isCrash tells a simulated crash (tests) from a real failure.
func isCrash(err error, h *crashHooks) bool {
	return h != nil && h.last != nil && errors.Is(err, h.last)
}

// installAll puts every temp file of a pending compaction in place and
// fsyncs their directories; what is done stays done across retries.
func (c *Checkpoint) installAll(p *pending) error {
	for i, r := range p.reps {
		if r.done {
			continue
		}
		err := c.hooks.sys(opRename, r.name)
		if err == nil {
			err = c.root.rename(r.tmpName, r.name)
		}
		if err == nil {
			r.done, r.renamed = true, true
			if herr := c.hooks.hit("renamed"); herr != nil {
				return herr
			}
			continue
		}
		if !renameRefused(err) {
			return fmt.Errorf("installing %s: %w", c.root.join(r.name), err)
		}
		if ierr := c.installInPlace(r, p.shardOf[i]); ierr != nil {
			return fmt.Errorf("installing %s in place (renaming over it was refused: %v): %w", c.root.join(r.name), err, ierr)
		}
		r.done = true
	}
	for _, r := range p.reps {
		if err := syncDirOf(c.root, r.name, c.hooks); err != nil {
			return fmt.Errorf("the files were replaced, but syncing their directory failed: %w", err)
		}
	}
	return nil
}

// installInPlace copies r's temp file into the file it replaces (shard
// si, or the index when si < 0), which cannot be renamed over. The log
// says so first. Nothing may read the file's old bytes while they are
// overwritten: every tensor reading them is pointed at the temp file (the
// same bytes in the new layout) or given a copy of its own, and the reads
// in flight are waited for.
func (c *Checkpoint) installInPlace(r *replacement, si int) error {
	if _, err := c.wal.commit([]walRecord{{typ: recInstall, head: installBody(r.file)}}, c.hooks); err != nil {
		return err
	}
	if si < 0 {
		f, err := c.root.open(r.name, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		return copyInPlace(r.tmp, f, r.tst.Size, r.name, c.hooks)
	}
	dup, err := dupFile(r.tmp)
	if err != nil {
		return err
	}
	tf, err := safetensors.OpenFile(dup)
	if err != nil {
		return fmt.Errorf("mapping the new %s: %w", c.root.join(r.name), err)
	}
	tm := newMapping(tf)
	if err := c.moveReaders(si, tm); err != nil {
		tm.release()
		return err
	}
	c.waitReads()
	return copyInPlace(r.tmp, c.shards[si].rw, r.tst.Size, r.name, c.hooks)
}

// moveReaders points everything that reads shard si's current mapping
// elsewhere, before its file is overwritten in place: tensors unchanged
// since the pending snapshot to the same tensor in tm (the new file, not
// yet in place), everything else (tensors changed since, removed tensors
// still open, rewrites in progress) to copies in memory. All or nothing:
// the copies are made first, and a fault making one changes nothing.
func (c *Checkpoint) moveReaders(si int, tm *mapping) error {
	snap := c.pending.s
	c.mu.Lock()
	old := c.shards[si].cur
	type move struct {
		t  *tensor
		to *content
	}
	var moves []move
	gens := map[*tensor]uint64{}
	for _, st := range snap.shards[si].tensors {
		gens[st.t] = st.gen
	}
	for _, t := range c.tensors {
		if t == nil || t.cur.ref != old {
			continue
		}
		if g, ok := gens[t]; ok && g == t.gen {
			if k, ok := tm.file.Index(t.key); ok {
				moves = append(moves, move{t, fileContent(tm, k)})
				continue
			}
		}
		m, err := materialized(t.cur)
		if err != nil {
			c.mu.Unlock()
			return fmt.Errorf("tensor %q: %w", t.key, err)
		}
		moves = append(moves, move{t, m})
	}
	var removed []move
	for _, t := range c.removed {
		if t.cur.ref != old {
			continue
		}
		m, err := materialized(t.cur)
		if err != nil {
			c.mu.Unlock()
			return fmt.Errorf("tensor %q: %w", t.key, err)
		}
		removed = append(removed, move{t, m})
	}
	staged := slices.Collect(func(yield func(*Staged) bool) {
		for s := range c.staged {
			if !yield(s) {
				return
			}
		}
	})
	for _, mv := range moves {
		if mv.to.ref == nil {
			mv.t.replaced = true
			c.dirty[mv.t] = struct{}{}
		}
		mv.t.cur = mv.to
	}
	for _, mv := range removed {
		mv.t.cur = mv.to
		old.release() // the reference keepRemoved took
	}
	c.retired = append(c.retired, old)
	c.shards[si].cur = tm
	c.mu.Unlock()
	// Rewrites in progress hold their own reference on old (Staged.mu
	// before mu: see the lock order in checkpoint.go).
	for _, s := range staged {
		if err := s.leave(old); err != nil {
			return err
		}
	}
	return nil
}

// planPatches computes, for every shard the snapshot patches in place, the
// byte ranges it writes with page checksums of their bytes now and after.
// A shard whose checksums would not fit one record is rewritten instead.
func (c *Checkpoint) planPatches(s *snapshot) (map[int][]patchRun, error) {
	out := map[int][]patchRun{}
	var total int64
	for i := range s.shards {
		ss := &s.shards[i]
		if ss.rewrite || !ss.dirty {
			continue
		}
		ps := shardPatches(c.shards[i], ss)
		var n int64
		for _, p := range ps {
			n += int64(pieceCount(p.off, int64(len(p.data))))*8 + 16
		}
		if total+n > maxPatchRecord {
			ss.rewrite = true
			continue
		}
		total += n
		runs, err := patchRuns(c.shards[i].rw, ps)
		if err != nil {
			return nil, fmt.Errorf("reading %s before patching it: %w", c.shards[i].path, err)
		}
		out[i] = runs
	}
	return out, nil
}

// shardPatches lists the edited chunks of a shard's snapshot as patches
// at absolute offsets of its current file.
func shardPatches(sh *shard, ss *snapShard) []patch {
	f := sh.cur.file
	var ps []patch
	for _, st := range ss.tensors {
		start := f.DataOffset() + int64(f.Tensors[st.data.src].Begin)
		for idx, ch := range st.data.chunks {
			lo := idx * chunkSize
			ps = append(ps, patch{start + lo, ch[:min(int64(len(ch)), st.data.size-lo)]})
		}
	}
	slices.SortFunc(ps, func(a, b patch) int { return cmp.Compare(a.off, b.off) })
	return ps
}

// patchRuns merges adjacent patches into runs and checksums each page
// piece of a run as the file f holds it now and as the patch writes it.
// The file's bytes are read a block of up to runBlock at a time (a pread
// per page cost a system call per 4 KiB: most of a 4 MiB edit's
// write-back), so memory stays one block, whatever the run's size.
func patchRuns(f *os.File, ps []patch) ([]patchRun, error) {
	var runs []patchRun
	buf := make([]byte, runBlock)
	for i := 0; i < len(ps); {
		j := i + 1
		end := ps[i].off + int64(len(ps[i].data))
		for j < len(ps) && ps[j].off == end {
			end += int64(len(ps[j].data))
			j++
		}
		run := patchRun{Off: ps[i].off, N: end - ps[i].off}
		k, within := i, 0 // where the new bytes of the next piece begin
		var rerr error
		var win []byte // the file's bytes [winOff, winOff+len(win))
		winOff := int64(0)
		pieces(run.Off, run.N, func(off, n int64) {
			if rerr != nil {
				return
			}
			if off < winOff || off+n > winOff+int64(len(win)) {
				// The next block: from this piece to a page boundary
				// at most runBlock on (or the run's end), so no piece
				// straddles its end.
				winOff, win = off, buf[:min(end, off/pageSize*pageSize+runBlock)-off]
				if _, err := f.ReadAt(win, off); err != nil {
					rerr = err
					return
				}
			}
			old := win[off-winOff : off-winOff+n]
			run.Old = append(run.Old, crc32.Checksum(old, castagnoliWAL))
			var c uint32
			for left := int(n); left > 0; {
				seg := ps[k].data[within:]
				take := min(left, len(seg))
				c = crc32.Update(c, castagnoliWAL, seg[:take])
				left -= take
				if within += take; within == len(ps[k].data) {
					k, within = k+1, 0
				}
			}
			run.New = append(run.New, c)
		})
		if rerr != nil {
			return nil, rerr
		}
		runs = append(runs, run)
		i = j
	}
	return runs, nil
}

// runBlock is how much of a file patchRuns reads at once: a multiple of
// pageSize.
const runBlock = 16 * pageSize

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
		if err := c.hooks.sys(opWrite, sh.name); err != nil {
			return err
		}
		if err := writePatches(sh.rw, shardPatches(sh, &s.shards[i])); err != nil {
			return fmt.Errorf("writing edits into %s: %w", sh.path, err)
		}
		if herr := c.hooks.hit("patch-written"); herr != nil {
			return herr
		}
		if err := syncData(sh.rw, sh.name, c.hooks); err != nil {
			return err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, i := range shards {
		sh := c.shards[i]
		sh.refreshIdentity()
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

// writePatches writes patches (sorted by offset), adjacent ones in one
// pwritev.
func writePatches(f *os.File, ps []patch) error {
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

// adopt maps and locks the files a pending compaction put in place and
// points the tensors it wrote at them. A tensor edited since the snapshot
// keeps its bytes, copied out of the log (which is about to go) into
// memory, to be logged again. The files are opened first, all of them, so
// a failure changes nothing and a retry starts over.
func (c *Checkpoint) adopt(p *pending) error {
	s := p.s
	type opened struct {
		i int
		f *safetensors.File
	}
	var files []opened
	closeAll := func() {
		for _, o := range files {
			o.f.Close()
		}
	}
	for _, r := range p.reps {
		if r.renamed {
			handOff(c.root, r) // the new file's lock, for openForWrite (or lock) below
		}
	}
	for j := range p.reps {
		i := p.shardOf[j]
		if i < 0 {
			continue
		}
		sh := c.shards[i]
		rf, err := c.root.open(sh.name, os.O_RDONLY, 0)
		if err != nil {
			closeAll()
			return fmt.Errorf("reopening %s after writing it back: %w", sh.path, err)
		}
		f, err := safetensors.OpenFile(rf)
		if err != nil {
			closeAll()
			return fmt.Errorf("reopening %s after writing it back: %w", sh.path, err)
		}
		files = append(files, opened{i, f})
	}
	for _, o := range files {
		sh := c.shards[o.i]
		st, err := fstat(o.f.Fd())
		if err != nil {
			closeAll()
			return err
		}
		if rst, err := fstat(sh.rw); err == nil && keyOf(&rst) == keyOf(&st) {
			sh.refreshIdentity() // installed in place: the same inode, lock and descriptor
			continue
		}
		if err := sh.openForWrite(c.root, o.f.Fd()); err != nil {
			closeAll()
			return fmt.Errorf("reopening %s after writing it back: %w", sh.path, err)
		}
	}
	if s.index {
		if err := c.index.lock(c.root); err != nil {
			closeAll()
			return fmt.Errorf("relocking %s after writing it back: %w", c.index.path, err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, o := range files {
		sh, f := c.shards[o.i], o.f
		m := newMapping(f)
		c.retired = append(c.retired, sh.cur)
		sh.cur = m
		sh.persistedLayout = s.shards[o.i].layoutGen
		for _, st := range s.shards[o.i].tensors {
			t := st.t
			k, ok := f.Index(st.key)
			if t.gen == st.gen && ok {
				t.cur = fileContent(m, k)
				continue
			}
			if err := c.materialize(t); err != nil {
				// The file is in place; this tensor's bytes are not in
				// the log's way (it keeps pointing where it did).
				c.log.Error("keeping an edited tensor after a write-back", "tensor", t.key, "err", err)
			}
		}
	}
	if s.index {
		c.index.persistedLayout = s.indexGen
	}
	c.releaseRetired()
	return nil
}

// materialize copies whatever of t's bytes lives in a log into memory and
// marks t to be logged whole again. On a fault (the mapping's file was
// cut short by another program) t is left as it is. Caller holds mu.
func (c *Checkpoint) materialize(t *tensor) error {
	if c.inLog(t.cur.base) || len(t.cur.chunks) > 0 {
		m, err := materialized(t.cur)
		if err != nil {
			return err
		}
		t.cur = m
	}
	t.replaced = true
	c.dirty[t] = struct{}{}
	return nil
}

// materialized is a copy of ct wholly in memory.
func materialized(ct *content) (*content, error) {
	b := make([]byte, ct.size)
	if _, err := ct.readAt(b, 0); err != nil {
		return nil, err
	}
	return memoryContent(b), nil
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
// did, and unmaps it once no read can be using it any more. Tensors edited
// during the compaction get their own copies first: a failure (a fault
// copying, the removal refused) leaves the log and its state as they were,
// for a retry.
func (c *Checkpoint) dropLog() error {
	if herr := c.hooks.hit("compacted"); herr != nil {
		return herr
	}
	w := c.wal
	w.hooks = c.hooks
	inW := func(b []byte) bool {
		for _, m := range w.maps {
			if m.holds(b) {
				return true
			}
		}
		return false
	}
	c.mu.Lock()
	for _, t := range c.tensors {
		if t == nil {
			continue
		}
		held := inW(t.cur.base)
		for _, ch := range t.cur.chunks {
			held = held || inW(ch)
		}
		if held {
			if err := c.materialize(t); err != nil {
				c.mu.Unlock()
				return fmt.Errorf("tensor %q: %w", t.key, err)
			}
		}
	}
	c.mu.Unlock()
	if err := w.remove(); err != nil {
		return fmt.Errorf("removing the log %s: %w", w.path, err)
	}
	c.mu.Lock()
	c.wal = nil
	c.walMaps = slices.DeleteFunc(c.walMaps, func(m *walMap) bool { return slices.Contains(w.maps, m) })
	c.mu.Unlock()
	for _, m := range w.maps {
		m.release() // unmapped once the reads holding slices of it are done
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
