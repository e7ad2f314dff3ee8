package checkpoint

import (
	"fmt"
	"io"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Persistence in two steps.
//
// Sync (fsync, close of a written file) makes every change so far durable
// by appending one batch to the log (wal.go): the bytes written, tensors
// created or replaced, keys removed or renamed, new dtypes, shapes and
// metadata. It costs what changed, one fdatasync, whatever the size of the
// checkpoint; the batch's bytes are then served from the log's mapping and
// leave memory.
//
// compact (compact.go) folds the log into the checkpoint files once: at
// unmount, on `safejaxfs sync`, and when the log passes walLimit. Until
// then the files on disk lag the mount; the log is what makes the edits
// durable, and the next read-write open finishes a compaction a crash
// interrupted, or runs one (recover.go).

// logState is a tensor as the log (or, before the log names it, the
// checkpoint file) has it.
type logState struct {
	key    string
	shape  []uint64
	dtype  safetensors.DType
	exists bool
}

// Sync makes every edit so far durable before it returns (in the log;
// the checkpoint files follow at the next compaction).
func (c *Checkpoint) Sync() error {
	if c.readOnly {
		return nil
	}
	c.persistMu.Lock()
	defer c.unlockPersist()
	if err := c.commit(); err != nil {
		return err
	}
	if c.wal != nil && c.wal.end > c.walLimit {
		return c.compact()
	}
	return nil
}

// batch is what one commit writes, and what it took from the state, so
// the state can be updated once the batch is durable.
type batch struct {
	recs    []walRecord
	entries []batchEntry
	gone    int // how many of c.gone it logs
	metas   []int
	metaGen []uint64
	imeta   bool
	imGen   uint64
}

type batchEntry struct {
	t     *tensor
	gen   uint64
	state logState
	put   int       // index in recs of its put record, or -1
	size  int64     // of a put
	data  []dataRun // its data records
}

// dataRun is a data record: chunks [first, first+len(chunks)) of a tensor.
type dataRun struct {
	rec    int
	first  int64
	chunks [][]byte
}

// commit appends what changed since the last commit to the log. The caller
// holds persistMu; the batch is written without mu, so reads and edits go
// on meanwhile.
func (c *Checkpoint) commit() error {
	if err := c.resume(); err != nil {
		// A batch after a pending compact record would be ignored by
		// recovery: nothing more is logged until it is finished.
		return err
	}
	if c.stuck != nil {
		return c.stuck
	}
	c.mu.Lock()
	b := c.collect()
	c.mu.Unlock()
	if len(b.recs) == 0 {
		return nil
	}
	if c.recovery != "" || !c.unchangedOnDisk() {
		s := c.snapshot()
		defer s.release()
		return c.recover(s)
	}
	at, err := c.writeBatch(b, false)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.abort(b)
		return err
	}
	c.apply(b, at)
	return nil
}

// abort puts the state back as it was for a batch that did not reach the
// log: what it held stays to be logged. Caller holds mu.
func (c *Checkpoint) abort(b *batch) {
	for _, e := range b.entries {
		e.t.inFlight = false
		if e.t.deleted && e.t.logged.exists {
			c.gone = append(c.gone, e.t.logged.key)
		}
	}
}

// commitLocked is commit with mu held throughout (a compaction's last
// commit, so that nothing changes between it and the snapshot).
func (c *Checkpoint) commitLocked() error {
	if c.pending != nil {
		return fmt.Errorf("a write-back of %s is still pending", c.path)
	}
	if c.stuck != nil {
		return c.stuck
	}
	b := c.collect()
	if len(b.recs) == 0 {
		return nil
	}
	at, err := c.writeBatch(b, true)
	if err != nil {
		c.abort(b)
		return err
	}
	c.apply(b, at)
	return nil
}

// writeBatch appends b to the log, starting one if there is none; locked
// says whether the caller holds mu (which guards walMaps). A log removed
// or replaced from outside is written again first (wal.relog), so what it
// held stays durable.
func (c *Checkpoint) writeBatch(b *batch, locked bool) ([]int64, error) {
	lock := func() {
		if !locked {
			c.mu.Lock()
		}
	}
	unlock := func() {
		if !locked {
			c.mu.Unlock()
		}
	}
	if c.wal == nil {
		w, err := c.newLog()
		if err != nil {
			return nil, fmt.Errorf("starting the log of %s: %w", c.path, err)
		}
		lock()
		c.wal = w
		c.walMaps = append(c.walMaps, w.m)
		unlock()
	} else if !c.wal.intact() {
		c.wal.hooks = c.hooks
		m, err := c.wal.relog()
		if err != nil {
			return nil, err
		}
		c.log.Warn("the log was removed or replaced by another program; wrote it again", "log", c.wal.path)
		lock()
		c.walMaps = append(c.walMaps, m)
		unlock()
	}
	at, err := c.wal.commit(b.recs, c.hooks)
	if err != nil {
		return nil, fmt.Errorf("writing the log %s: %w", c.wal.path, err)
	}
	return at, nil
}

// collect builds the batch for the changes since the last commit, in the
// order replay applies them: removals, renames (all at once), tensors
// written whole, reshapes, bytes written, metadata. Caller holds mu.
func (c *Checkpoint) collect() *batch {
	b := &batch{gone: len(c.gone)}
	for _, k := range c.gone {
		b.recs = append(b.recs, walRecord{typ: recDelete, head: deleteBody(k)})
	}
	var renames [][2]string
	for t := range c.dirty {
		if t.deleted {
			continue
		}
		t.inFlight = true
		e := batchEntry{t: t, gen: t.gen, state: logState{key: t.key, shape: t.shape, dtype: t.dtype, exists: true}, put: -1}
		if t.logged.exists && t.logged.key != t.key {
			renames = append(renames, [2]string{t.logged.key, t.key})
		}
		b.entries = append(b.entries, e)
	}
	if len(renames) > 0 {
		b.recs = append(b.recs, walRecord{typ: recRename, head: renameBody(renames)})
	}
	for i := range b.entries {
		e := &b.entries[i]
		t := e.t
		if !t.logged.exists || t.replaced || t.growable {
			e.put, e.size = len(b.recs), t.cur.size
			b.recs = append(b.recs, walRecord{typ: recPut, head: putHead(t.key, t.shard, t.dtype, t.shape), data: t.cur.segments(0, t.cur.size)})
		}
	}
	for i := range b.entries {
		e := &b.entries[i]
		t := e.t
		if e.put >= 0 || t.logged.dtype == t.dtype && slices.Equal(t.logged.shape, t.shape) {
			continue
		}
		b.recs = append(b.recs, walRecord{typ: recReshape, head: reshapeBody(t.key, t.dtype, t.shape)})
	}
	for i := range b.entries {
		e := &b.entries[i]
		if e.put >= 0 {
			continue
		}
		if int64(len(e.t.cur.base)) < e.t.cur.size {
			// A truncate and rewrite: its zeros are data too. A fault
			// copying from the mapping (the file truncated under us)
			// leaves the tensor to be logged whole.
			if e.t.cur.cover() != nil {
				e.t.replaced = true
			}
		}
		for _, run := range c.uncommittedRuns(e.t.cur) {
			run.rec = len(b.recs)
			segs := make([][]byte, len(run.chunks))
			for j, ch := range run.chunks {
				lo := (run.first + int64(j)) * chunkSize
				segs[j] = ch[:min(chunkSize, e.t.cur.size-lo)]
			}
			b.recs = append(b.recs, walRecord{typ: recData, head: dataHead(e.t.key, run.first*chunkSize), data: segs})
			e.data = append(e.data, run)
		}
	}
	for i, sh := range c.shards {
		if sh.metaGen != sh.loggedMetaGen {
			b.metas = append(b.metas, i)
			b.metaGen = append(b.metaGen, sh.metaGen)
			b.recs = append(b.recs, walRecord{typ: recMeta, head: metaBody(i, sh.meta)})
		}
	}
	if x := c.index; x != nil && x.metaGen != x.loggedMetaGen {
		b.imeta, b.imGen = true, x.metaGen
		m := map[string][]byte{}
		for k, v := range x.meta {
			m[k] = v
		}
		b.recs = append(b.recs, walRecord{typ: recIndexMeta, head: indexMetaBody(m)})
	}
	return b
}

// uncommittedRuns lists the chunks of content that no log holds yet, as
// runs of consecutive chunk indices.
func (c *Checkpoint) uncommittedRuns(ct *content) []dataRun {
	var idx []int64
	for i, ch := range ct.chunks {
		if !c.inLog(ch) {
			idx = append(idx, i)
		}
	}
	slices.Sort(idx)
	var runs []dataRun
	for _, i := range idx {
		if l := len(runs) - 1; l >= 0 && runs[l].first+int64(len(runs[l].chunks)) == i {
			runs[l].chunks = append(runs[l].chunks, ct.chunks[i])
			continue
		}
		runs = append(runs, dataRun{first: i, chunks: [][]byte{ct.chunks[i]}})
	}
	return runs
}

// inLog reports whether b is a slice of a log's mapping (committed bytes).
func (c *Checkpoint) inLog(b []byte) bool {
	for _, m := range c.walMaps {
		if m.holds(b) {
			return true
		}
	}
	return false
}

func (m *walMap) holds(b []byte) bool {
	if len(b) == 0 || len(m.b) == 0 {
		return false
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	lo := uintptr(unsafe.Pointer(unsafe.SliceData(m.b)))
	return p >= lo && p < lo+uintptr(len(m.b))
}

// apply updates the state once batch b is durable (at: where each
// record's bytes are in the log): what the log now holds is served from
// it, and what did not change since b was taken is no longer dirty.
// Caller holds mu.
func (c *Checkpoint) apply(b *batch, at []int64) {
	w := c.wal
	for _, e := range b.entries {
		t := e.t
		t.inFlight = false
		t.logged = e.state
		if e.put >= 0 && t.gen == e.gen {
			t.cur = logContent(w.bytesAt(at[e.put], e.size))
			t.replaced = false
		}
		for _, run := range e.data {
			off := at[run.rec]
			for j, ch := range run.chunks {
				idx := run.first + int64(j)
				n := int64(len(ch))
				if lo := idx * chunkSize; lo+n > t.cur.size {
					n = max(0, t.cur.size-lo)
				}
				if cur, ok := t.cur.chunks[idx]; ok && sameSlice(cur, ch) {
					t.cur.chunks[idx] = w.bytesAt(off, min(n, chunkSize))
				}
				off += min(int64(len(ch)), chunkSize)
			}
		}
		if t.deleted {
			// Removed after the batch was taken: the log now names it, so
			// the next batch must remove it.
			c.gone = append(c.gone, e.state.key)
			continue
		}
		if t.gen == e.gen {
			delete(c.dirty, t)
		}
	}
	c.gone = c.gone[b.gone:]
	for i, s := range b.metas {
		c.shards[s].loggedMetaGen = b.metaGen[i]
	}
	if b.imeta {
		c.index.loggedMetaGen = b.imGen
	}
}

// logContent is content whose bytes are a slice of a log's mapping.
func logContent(b []byte) *content { return &content{size: int64(len(b)), base: b, src: -1} }

func sameSlice(a, b []byte) bool {
	return len(a) > 0 && len(b) > 0 && unsafe.SliceData(a) == unsafe.SliceData(b)
}

// newLog creates the log for the checkpoint files as they are now.
func (c *Checkpoint) newLog() (*wal, error) {
	var base []walFile
	for _, sh := range c.shards {
		f, err := walFileOf(c.root, sh.name, sh.cur.file.DataOffset())
		if err != nil {
			return nil, err
		}
		base = append(base, f)
	}
	if c.index != nil {
		f, err := walFileOf(c.root, c.index.name, -1)
		if err != nil {
			return nil, err
		}
		f.name = "" // the index: see walFile
		base = append(base, f)
	}
	return createWAL(c.root, walNameOf(c.mainName()), base, c.owner(), c.hooks)
}

// openLog starts a log and registers its mapping.
func (c *Checkpoint) openLog() error {
	w, err := c.newLog()
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.wal = w
	c.walMaps = append(c.walMaps, w.m)
	c.mu.Unlock()
	return nil
}

// mainName is the checkpoint's main file below its directory: the index
// of a sharded one, else its only file.
func (c *Checkpoint) mainName() string {
	if c.index != nil {
		return c.index.name
	}
	return c.shards[0].name
}

// walPath is where the checkpoint's log goes: next to the file, or to the
// index of a sharded checkpoint.
func (c *Checkpoint) walPath() string { return c.root.join(walNameOf(c.mainName())) }

// owner is the checkpoint main file's stat, whose owner the files we put
// next to it get when we run as root; nil if it cannot be read.
func (c *Checkpoint) owner() *unix.Stat_t {
	st, err := c.root.lstat(c.mainName())
	if err != nil {
		return nil
	}
	return &st
}

// snapshot is the whole state, for a compaction or a recovery file: taken
// under the lock, written without it, so writes and reads continue
// meanwhile.
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
	// dirty tensors are patched in place.
	rewrite bool
	dirty   bool
}

type snapTensor struct {
	id    ID
	t     *tensor
	gen   uint64
	key   string
	dtype safetensors.DType
	shape []uint64
	data  *content
}

func (c *Checkpoint) snapshot() *snapshot {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.snapshotLocked()
}

func (c *Checkpoint) snapshotLocked() *snapshot {
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
		ss.tensors = append(ss.tensors, snapTensor{ID(i), t, t.gen, t.key, t.dtype, t.shape, d})
		if !d.clean() {
			ss.dirty = true
		}
		if !inPlace(t, d, sh) {
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

// inPlace reports whether tensor t, of content d, still sits whole at its
// own offsets in its shard's current file: a shard whose tensors all do
// keeps its header byte for byte, and is patched in place.
func inPlace(t *tensor, d *content, sh *shard) bool {
	return d.ref == sh.cur && d.src >= 0 && (int64(len(d.base)) >= d.size || d.covered()) && sh.cur.file.Tensors[d.src].Key == t.key
}

// wouldWrite reports whether a snapshot taken now would be dirty (see
// wouldWriteLocked).
func (c *Checkpoint) wouldWrite() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.wouldWriteLocked()
}

// wouldWriteLocked reports whether a snapshot taken now would be dirty,
// by the tests snapshotLocked makes, without copying anything: a
// compaction with nothing to write (the unmount of a mount that was only
// read) then costs a pass over the tensors instead of a copy of each
// one's record, which for DeepSeek-V3's 94k tensors was most of a
// half-second unmount. Caller holds mu.
func (c *Checkpoint) wouldWriteLocked() bool {
	if x := c.index; x != nil && x.layoutGen != x.persistedLayout {
		return true
	}
	for _, sh := range c.shards {
		if sh.layoutGen != sh.persistedLayout {
			return true
		}
	}
	for _, t := range c.tensors {
		if t != nil && (!t.cur.clean() || !inPlace(t, t.cur, c.shards[t.shard])) {
			return true
		}
	}
	return false
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
					st.key, st.data.size, st.dtype, safetensors.ShapeString(st.shape), ErrSize)
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
		if !sh.unchangedOnDisk(c.root) {
			return false
		}
	}
	if x := c.index; x != nil {
		id, err := identityAt(c.root, x.name)
		if err != nil || !id.same(x.ident) {
			return false
		}
	}
	return true
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
// readTracker), before bytes they may be copying from are written in place
// or unmapped.
func (c *Checkpoint) waitReads() {
	if !c.reads.wait() {
		// Never seen: go-fuse releases every reply it sends. Going on
		// risks one torn read; waiting forever would stop all writes.
		c.log.Warn("reads still in flight; going on anyway", "checkpoint", c.path, "waited", maxReadWait)
	}
}

// recover writes the edited checkpoint next to the original, which someone
// else changed: theirs is not overwritten, ours is not lost.
func (c *Checkpoint) recover(s *snapshot) error {
	if s.edits == c.recoveredEdits && c.recovery != "" {
		return fmt.Errorf("%s: %w; your edits are in %s%s%s", c.path, ErrChanged, c.recovery, c.recoveryNote, noMoreEdits)
	}
	p, lost, err := c.writeRecovery(s)
	if err != nil {
		return fmt.Errorf("%s: %w, and saving your edits elsewhere failed: %v", c.path, ErrChanged, err)
	}
	c.mu.Lock()
	c.recovery, c.recoveredEdits, c.recoveryNote = p, s.edits, lost.String()
	c.mu.Unlock()
	return fmt.Errorf("%s: %w; your edits are in %s%s%s", c.path, ErrChanged, p, lost, noMoreEdits)
}

// noMoreEdits ends the error of a diverted checkpoint: from then on the
// mount refuses every edit (see editable).
const noMoreEdits = "; this mount takes no more edits (unmount it, and mount the checkpoint again)"

// contentReader lets the writer stream edited content: what is still the
// mapped file's bytes as runs of that file (copied kernel-side), edits and
// new bytes from memory or the log.
type contentReader struct{ c *content }

var _ safetensors.PiecesSource = contentReader{}

func (r contentReader) Pieces(off, n int64) []safetensors.Piece {
	c := r.c
	var fileOff int64 = -1
	if c.ref != nil && c.src >= 0 {
		f := c.ref.file
		fileOff = f.DataOffset() + int64(f.Tensors[c.src].Begin)
	}
	var out []safetensors.Piece
	base := int64(len(c.base))
	for _, seg := range c.segments(off, n) {
		if fileOff >= 0 && off < base && len(seg) > 0 && sameSlice(seg, c.base[off:]) {
			// A run of the file's own bytes.
			out = append(out, safetensors.Piece{File: c.ref.file.Fd(), Off: fileOff + off, N: int64(len(seg))})
		} else {
			out = append(out, safetensors.Piece{Bytes: seg, N: int64(len(seg))})
		}
		off += int64(len(seg))
	}
	return out
}

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

// metaUnlogged reports metadata changed since the log last recorded it.
// Caller holds mu.
func (c *Checkpoint) metaUnlogged() bool {
	for _, sh := range c.shards {
		if sh.metaGen != sh.loggedMetaGen {
			return true
		}
	}
	return c.index != nil && c.index.metaGen != c.index.loggedMetaGen
}
