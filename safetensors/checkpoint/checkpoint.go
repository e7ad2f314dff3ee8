// Package checkpoint owns the state of one mounted checkpoint: the validated,
// mapped file, the tensors as the mount currently sees them, edits not yet
// persisted, and their persistence. The FUSE layer talks only to this type,
// so every rule about what a checkpoint may become is enforced in one place,
// testable without mounting anything.
//
// Lock order (a lock may be taken while holding only those above it):
//
//  1. Checkpoint.persistMu: one persistence at a time (commit, compaction,
//     a durable edit); held across their I/O.
//  2. Staged.mu: a rewrite in progress (a durable commit of it takes it
//     under persistMu; moveReaders takes it with nothing else held but
//     persistMu).
//  3. Checkpoint.mu: the state (tensors, keys, shards, the log's
//     mappings); never held across I/O except the fdatasync of a durable
//     edit or a compaction's last commit, so that no one sees the state
//     between the edit and its log record.
//  4. FileSet.mu, then sibling.mu: the /.files/ views (fileview.go).
//  5. readTracker.mu and the process-wide held (lock.go): leaves, taken
//     for a moment with anything above held.
//
// Mapping and log-mapping reference counts are atomics, not locks: a read
// takes its references under mu and releases them without it.
package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/remote"
)

// ID names a tensor for the life of the Checkpoint. IDs are never reused, so a
// stale ID held by a file handle can only miss, never reach another tensor.
type ID int

// Info describes a tensor as the mount currently sees it.
type Info struct {
	Key   string
	DType safetensors.DType
	Shape []uint64
	Size  int64  // bytes: dtype x shape, except for a plain file being written
	Shard string // the file holding it: its name in the index, or the checkpoint's base name
	// MTime moves when the bytes change, CTime when anything about the
	// tensor does (bytes, key, dtype, shape). They live as long as the
	// mount: a checkpoint stores no times.
	MTime, CTime time.Time
	// Removed: the tensor was deleted (or renamed over) and is kept only
	// for files that still have it open (see Attr).
	Removed bool
}

// Options control how a checkpoint is opened.
type Options struct {
	ReadOnly bool
	// Located and Index, when set, are what safetensors.Locate returned for
	// the path (the caller read them already): Open does not read the
	// index again.
	Located *safetensors.Location
	Index   *safetensors.Index
	// Remote configures the reads of a remote checkpoint (a URL: see
	// remote.go); unused for a local one.
	Remote remote.Options
	// Logger receives what the checkpoint notices but cannot return to a
	// caller (a persist going on despite reads in flight, a leftover file
	// it could not remove). nil: discarded.
	Logger *slog.Logger
	// hooks simulate crashes inside persistence (tests only).
	hooks *crashHooks
}

// Checkpoint is safe for concurrent use.
type Checkpoint struct {
	path     string // as given to Open: a file, an index or a directory
	readOnly bool
	hooks    *crashHooks
	log      *slog.Logger
	// root is the checkpoint's directory, through which every file it
	// writes is reached (dirfs.go); nil for a remote checkpoint.
	root *cdir

	// persistMu serializes persists; mu guards everything below and is not
	// held during persistence I/O, so reads go on while a rewrite runs.
	persistMu sync.Mutex
	// persists counts the persistence steps ended (Persists).
	persists atomic.Uint64
	// compacting is set while a compaction runs, so that
	// WriteBackProgress, asked four times a second, looks for its temp
	// files only then: an idle daemon reads no directory.
	compacting atomic.Bool
	// reads tracks Reads until their release, for in-place persists to
	// wait on (see readTracker).
	reads readTracker
	mu    sync.RWMutex
	// shards are the checkpoint's files: one for a plain checkpoint, the
	// index's shards (sorted by name) for a sharded one.
	shards []*shard
	index  *indexState // nil unless sharded
	// retired are earlier mappings that tensors edited during a rewrite
	// still read their unedited bytes from; released once none does.
	retired []*mapping
	tensors []*tensor // indexed by ID; nil once deleted
	// removed are deleted tensors a file may still have open: they keep
	// their bytes (and take writes that go nowhere) until Drop.
	removed map[ID]*tensor
	// pins are each removed tensor's hold on the logs its bytes may be in.
	pins  map[ID][]*walMap
	byKey map[string]ID
	// edits counts every change; persistedEdits is its value at the last
	// successful persist, recoveredEdits at the last recovery file.
	edits, persistedEdits, recoveredEdits uint64
	// recovery is where edits go once the checkpoint was changed by someone
	// else: we never overwrite their file. recoveryNote says what it could
	// not hold (lostEdits).
	recovery, recoveryNote string

	// The log (persist.go): nil until the first commit after an open or a
	// compaction. walMaps are the mappings tensors may serve bytes from.
	wal      *wal
	walMaps  []*walMap
	walLimit int64
	// dirty are the tensors changed since the last commit (deleted ones
	// included until then); gone the keys, as logged, of logged tensors
	// removed since.
	dirty map[*tensor]struct{}
	gone  []string
	// pending is a compaction past its commit point, not finished yet
	// (compact.go); stuck a failure that stops all persistence in this
	// mount (a simulated crash in tests).
	pending *pending
	stuck   error
	// staged are the rewrites in progress (Stage), which an in-place
	// install must move off the file's old bytes.
	staged map[*Staged]struct{}
	// closed: the files are released (Close, or a test's simulated crash).
	closed bool
	// src is where the bytes and files come from, set once by Open:
	// localSource, or a remote or foreign checkpoint's (source.go).
	src source
	// rescued is the last file SaveRecovery wrote, holding the state at
	// edits == rescuedEdits.
	rescued      string
	rescuedEdits uint64
	// files is the checkpoint shown as files, if asked for (fileview.go).
	files *FileSet
}

// tensor is one tensor's record, one per tensor of the checkpoint (94,553
// of DeepSeek-V3's), so its fields are ordered to leave no padding but at
// the end: 136 bytes, 224 when its times were time.Time.
type tensor struct {
	key   string
	shape []uint64
	cur   *content // committed bytes: always dtype x shape long
	gen   uint64   // bumped by every change, to notice edits during a persist
	// logged is the tensor as the log (or the file) has it; replaced says
	// its bytes were replaced whole since (logged whole again); deleted
	// that it was removed.
	logged logState
	// mtime and ctime as stat shows them (see Info), in nanoseconds since
	// the epoch (nanos).
	mtime, ctime int64
	shard        int // index in Checkpoint.shards; a tensor never changes shard
	dtype        safetensors.DType
	// growable tensors were created as plain files: a 1-D U8 tensor whose
	// shape follows the bytes written.
	growable bool
	replaced bool
	deleted  bool
	inFlight bool // in a batch being written to the log
}

// nanos is t as a tensor record keeps it: nanoseconds since the epoch, 8
// bytes where a time.Time takes 24 (with a location and a monotonic
// reading, which stat needs neither of). A time outside the years 1678 to
// 2262 is kept as the nearest of them (ext4 keeps 1901 to 2446).
func nanos(t time.Time) int64 {
	switch {
	case t.Before(minNanos):
		return math.MinInt64
	case t.After(maxNanos):
		return math.MaxInt64
	}
	return t.UnixNano()
}

var minNanos, maxNanos = time.Unix(0, math.MinInt64), time.Unix(0, math.MaxInt64)

func (t *tensor) want() int64 {
	n, _ := safetensors.ByteSize(t.dtype, t.shape)
	return int64(n)
}

// touch records a change of the tensor's bytes.
func (t *tensor) touch() {
	t.gen++
	t.mtime = time.Now().UnixNano()
	t.ctime = t.mtime
}

// changed records a change of anything else about the tensor.
func (t *tensor) changed() {
	t.gen++
	t.ctime = time.Now().UnixNano()
}

func (c *Checkpoint) info(t *tensor) Info {
	// The shape is copied: callers may not write through to ours.
	return Info{Key: t.key, DType: t.dtype, Shape: slices.Clone(t.shape), Size: t.cur.size, Shard: c.shards[t.shard].name, MTime: time.Unix(0, t.mtime), CTime: time.Unix(0, t.ctime)}
}

// Open validates the checkpoint strictly and maps it. path is a
// .safetensors file, an index ("*.safetensors.index.json") or a directory
// holding one of them (safetensors.Locate), or a URL (https://, hf://,
// s3://: opened read-only, see remote.go). A read-write open first
// finishes what a crash interrupted (a multi-file commit, journal replays),
// then takes the advisory locks that make this the checkpoint's only
// writer. Nothing is kept open when it fails.
func Open(path string, opt Options) (*Checkpoint, error) {
	if IsRemote(path) {
		return openRemote(path, opt)
	}
	if c, handled, err := openForeign(path, opt); handled {
		return c, err
	}
	c := &Checkpoint{path: path, readOnly: opt.ReadOnly, hooks: opt.hooks, log: loggerOr(opt.Logger), staged: map[*Staged]struct{}{}, src: localSource{}}
	loc, idx, scan, err := c.settle(opt.Located, opt.Index)
	if err != nil {
		c.root.close()
		return nil, err
	}
	files, err := openShards(loc, idx)
	if err != nil {
		c.closeIndex()
		c.root.close()
		return nil, err
	}
	if loc.Sharded() && c.index == nil {
		c.index = newIndexState(c.root, c.mainOf(loc), idx) // read-only: no lock
	}
	// One allocation for all the tensors and one for their contents, and a
	// key map of the right size, not 2 allocations per tensor and a map
	// grown step by step (a few percent of a 94k-tensor mount; most of the
	// rest is the first touch of that memory).
	n := 0
	for _, f := range files {
		n += len(f.Tensors)
	}
	c.byKey = make(map[string]ID, n)
	c.tensors = make([]*tensor, 0, n)
	slab, contents := make([]tensor, n), make([]content, n)
	c.dirty = map[*tensor]struct{}{}
	var data int64
	for si, f := range files {
		m := newMapping(f)
		sh := &shard{name: loc.Names[si], path: c.root.join(loc.Names[si]), cur: m, meta: f.Metadata}
		c.shards = append(c.shards, sh)
		data += int64(f.DataSize())
		// Until something changes, every tensor carries its file's times.
		mtime := time.Now().UnixNano()
		if st, err := os.Stat(sh.path); err == nil {
			mtime = nanos(st.ModTime())
		}
		for i := range f.Tensors {
			t := &f.Tensors[i]
			id := len(c.tensors)
			c.byKey[t.Key] = ID(id)
			cur := &contents[id]
			setFileContent(cur, m, i)
			slab[id] = tensor{key: t.Key, dtype: t.DType, shape: t.Shape, shard: si, cur: cur,
				logged: logState{key: t.Key, shape: t.Shape, dtype: t.DType, exists: true}, mtime: mtime, ctime: mtime}
			c.tensors = append(c.tensors, &slab[id])
		}
	}
	c.walLimit = max(walLimitMin, data/4)
	if !opt.ReadOnly {
		for _, sh := range c.shards {
			if err := sh.openForWrite(c.root, sh.cur.file.Fd()); err != nil {
				c.releaseAll()
				return nil, err
			}
		}
		if scan != nil {
			// A crash left edits in the log: replay them and write them
			// back before anything is served.
			if err := c.recoverLog(scan); err != nil {
				c.releaseAll()
				return nil, err
			}
		}
	}
	return c, nil
}

// recoverLog replays the log a crash left and compacts it into the files.
func (c *Checkpoint) recoverLog(scan *walScan) error {
	w, err := openWAL(c.root, walNameOf(c.mainName()), scan, scan.recs[0].files, c.owner(), c.hooks)
	if err != nil {
		return err
	}
	c.wal = w
	c.walMaps = append(c.walMaps, w.m)
	if err := c.replay(scan); err != nil {
		return err
	}
	c.persistMu.Lock()
	defer c.unlockPersist()
	if err := c.compact(); err != nil {
		return fmt.Errorf("%s: writing back the edits a crash left in %s: %w", c.path, w.path, err)
	}
	return nil
}

// settle resolves the checkpoint's files and its directory (rootOf) and,
// for a read-write open, puts them in a state with nothing half done: a
// compaction a crash interrupted finished, stale temp files removed. A log
// of edits not yet compacted is returned, for Open to replay and compact
// once the files are open. A read-only open refuses a checkpoint with a
// log pending, and writes nothing.
func (c *Checkpoint) settle(loc *safetensors.Location, idx *safetensors.Index) (*safetensors.Location, *safetensors.Index, *walScan, error) {
	var err error
	if loc == nil {
		if loc, idx, err = safetensors.Locate(c.path); err != nil {
			return nil, nil, nil, err
		}
	}
	var main string
	if c.root, main, loc, err = rootOf(c.path, loc); err != nil {
		return nil, nil, nil, err
	}
	if c.readOnly {
		if p, ok := pendingLog(c.path, loc); ok {
			return nil, nil, nil, fmt.Errorf("%s: edits are waiting in the log %s to be written back; mount it read-write once (or run safejaxfs recover) to finish: %w", c.path, p, ErrPending)
		}
		return loc, idx, nil, nil
	}
	var scan *walScan
	if !loc.Sharded() {
		// The file's own lock, for the time of the recovery; Open takes
		// it for good once the file is open.
		f, err := c.root.open(main, os.O_RDONLY, 0)
		if err != nil {
			return nil, nil, nil, err
		}
		defer f.Close()
		owner, err := fstat(f)
		if err != nil {
			return nil, nil, nil, err
		}
		err = withWriteLock(c.root, main, f, func() error {
			var err error
			if scan, _, _, err = settleLog(c.root, loc, c.path, main, &owner, c.hooks); err != nil {
				return err
			}
			return removeTemps(c.root, []string{main})
		})
		if err != nil {
			return nil, nil, nil, err
		}
		return loc, idx, scan, nil
	}
	// The index's lock stands for the set: held from before recovery to
	// the end of the mount, so no other writer can interleave.
	if c.index, err = openIndex(c.root, main, idx); err != nil {
		return nil, nil, nil, err
	}
	fail := func(err error) (*safetensors.Location, *safetensors.Index, *walScan, error) {
		c.closeIndex()
		return nil, nil, nil, err
	}
	owner := c.owner()
	finished := false
	if scan, loc, finished, err = settleLog(c.root, loc, c.path, main, owner, c.hooks); err != nil {
		return fail(err)
	}
	if finished {
		// A finished compaction may have replaced the index: read the
		// one there is now, and move the set's lock to it if it is a new
		// file (taken before the old one is let go).
		// (Below c.root already: Locate gives the paths rootOf would.)
		if loc, idx, err = safetensors.Locate(c.root.join(main)); err != nil {
			return fail(err)
		}
		held := c.index
		c.index = newIndexState(c.root, main, idx)
		c.index.unlock, c.index.ident = held.unlock, held.ident
		if err := c.index.lock(c.root); err != nil {
			held.unlock()
			c.index = nil
			return nil, nil, nil, err
		}
	}
	if err := removeTemps(c.root, append([]string{main}, loc.Names...)); err != nil {
		return fail(err)
	}
	return loc, idx, scan, nil
}

// mainOf is the name of loc's main file below the checkpoint's directory.
func (c *Checkpoint) mainOf(loc *safetensors.Location) string {
	if loc.Sharded() {
		_, base := splitName(filepathToSlash(loc.Index))
		return base
	}
	return loc.Names[0]
}

// openShards opens and validates every shard (concurrently) and, for a
// sharded checkpoint, the rules tying them to the index.
func openShards(loc *safetensors.Location, idx *safetensors.Index) ([]*safetensors.File, error) {
	set, err := safetensors.OpenLocated(loc, idx)
	if err != nil {
		return nil, err
	}
	return set.Files, nil
}

// Path is the checkpoint's path as given to Open.
func (c *Checkpoint) Path() string { return c.path }

// ReadOnly reports whether edits are refused.
func (c *Checkpoint) ReadOnly() bool { return c.readOnly }

// Sharded reports whether the checkpoint is an index over shards.
func (c *Checkpoint) Sharded() bool { return c.index != nil }

// Keys returns the tensors' keys indexed by ID; removed IDs hold "". At
// mount, before any edit, every ID is live, so a caller can build its
// namespace with tensor index == ID.
func (c *Checkpoint) Keys() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	keys := make([]string, len(c.tensors))
	for i, t := range c.tensors {
		if t != nil {
			keys[i] = t.key
		}
	}
	return keys
}

// TensorTime is a live tensor's file and modification time: what a
// mount keeps of its times (fs.SaveTimes), without the rest of its Info.
type TensorTime struct {
	ID    ID
	Shard string
	MTime time.Time
}

// TensorTimes lists every live tensor's TensorTime in ID order, copying
// no shape (an Info for each did: for DeepSeek-V3's 94k tensors, a third
// of the CPU time an unmount took).
func (c *Checkpoint) TensorTimes() []TensorTime {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]TensorTime, 0, len(c.tensors))
	for i, t := range c.tensors {
		if t != nil {
			out = append(out, TensorTime{ID(i), c.shards[t.shard].name, time.Unix(0, t.mtime)})
		}
	}
	return out
}

// Info returns what tensor id looks like now.
func (c *Checkpoint) Info(id ID) (Info, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	t := c.get(id)
	if t == nil {
		return Info{}, false
	}
	return c.info(t), true
}

func (c *Checkpoint) get(id ID) *tensor {
	if id < 0 || int(id) >= len(c.tensors) {
		return nil
	}
	return c.tensors[id]
}

// Metadata returns a copy of the header's metadata; nil when the checkpoint
// has none. For a sharded checkpoint it is the entries every shard's header
// has with the same value (what SetMetadata sets in all of them).
func (c *Checkpoint) Metadata() map[string]string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return maps.Clone(c.commonMeta())
}

// commonMeta is the metadata all shards share. Caller holds mu.
func (c *Checkpoint) commonMeta() map[string]string {
	if len(c.shards) == 1 {
		return c.shards[0].meta
	}
	var common map[string]string
	for i, sh := range c.shards {
		if i == 0 {
			common = maps.Clone(sh.meta)
			continue
		}
		for k, v := range common {
			if w, ok := sh.meta[k]; !ok || w != v {
				delete(common, k)
			}
		}
	}
	return common
}

// Read returns up to n bytes of tensor id starting at off, as slices of the
// mapping or of edits in memory (no copy). The slices stay valid and
// unchanged until release is called (once), even if the checkpoint is
// rewritten or written in place meanwhile.
func (c *Checkpoint) Read(id ID, off int64, n int) (segs [][]byte, release func(), err error) {
	return c.src.read(context.Background(), c, id, off, n)
}

// readLocal serves Read from the checkpoint's own files and edits.
func (c *Checkpoint) readLocal(id ID, off int64, n int) (segs [][]byte, release func(), err error) {
	done := c.reads.enter()
	c.mu.RLock()
	defer c.mu.RUnlock()
	t := c.get(id)
	if t == nil {
		// A file open on a tensor removed since reads on, as on any
		// POSIX file system.
		if t = c.removed[id]; t == nil {
			done()
			return nil, nop, fmt.Errorf("tensor %d: %w", id, ErrNotFound)
		}
	}
	v := t.cur
	if off >= v.size || n <= 0 {
		done()
		return nil, nop, nil
	}
	m := v.ref
	if off < int64(len(v.base)) && !m.intact() {
		done()
		return nil, nop, fmt.Errorf("tensor %q: %w", t.key, ErrFault)
	}
	m.acquire()
	segs = v.segments(off, int64(n))
	// Slices of a log's mapping keep it mapped until this read is done.
	var logs []*walMap
	for _, lm := range c.walMaps {
		for _, s := range segs {
			if lm.holds(s) {
				lm.acquire()
				logs = append(logs, lm)
				break
			}
		}
	}
	return segs, func() {
		m.release()
		for _, lm := range logs {
			lm.release()
		}
		done()
	}, nil
}

func nop() {}

// Close writes everything back into the checkpoint files (a last commit
// and a compaction) and releases the files. If the files cannot take the
// edits, they stay in the log (named in the error) for the next read-write
// open to finish; if even the log cannot take them, they are written to a
// recovery file next to the checkpoint, named in the error: nothing the
// user wrote is lost silently.
func (c *Checkpoint) Close() error {
	if c.closed {
		return nil
	}
	var err error
	if !c.readOnly {
		c.persistMu.Lock()
		err = c.compact()
		c.unlockPersist()
		switch {
		case errors.Is(err, ErrChanged):
			if aside := c.logAside(); aside != "" {
				err = fmt.Errorf("%w; the log of this mount's edits was set aside as %s (the recovery file holds them all), so the checkpoint mounts again as it is now", err, aside)
			}
		case err == nil, c.stuck != nil:
		case c.pending != nil && !c.hasUnlogged():
			// The log holds the committed write-back and every edit:
			// the next open finishes it (the error already says so).
		case c.wal != nil && !c.hasUnlogged():
			err = fmt.Errorf("%w; every edit is in the log %s, and the next read-write mount (or safejaxfs recover) writes it back", err, c.wal.path)
		default:
			s := c.snapshot()
			if p, lost, rerr := c.writeRecovery(s); rerr == nil {
				err = fmt.Errorf("%w; your edits are in %s%s", err, p, lost)
			}
			s.release()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.releaseAll()
	return err
}

// logAside moves the log of a diverted checkpoint (another program
// changed it; every edit went to a recovery file) out of the way, as
// safejaxfs recover --discard would: it applies only to the files as they
// were, so left beside the checkpoint it would make the next mount refuse
// to open it. Nothing is deleted, and only this mount's own log is moved
// (the file at its name must still be the one it wrote). It returns the
// log's new path, or "" when nothing was moved.
func (c *Checkpoint) logAside() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.wal
	if w == nil || c.recovery == "" || c.recoveredEdits != c.edits {
		return ""
	}
	mine, err := fstat(w.f)
	if err != nil {
		return ""
	}
	there, err := w.d.lstat(w.name)
	if err != nil || there.Dev != mine.Dev || there.Ino != mine.Ino {
		return ""
	}
	n, err := setAside(w.d, w.name)
	if err != nil {
		c.log.Warn("setting the log of a diverted checkpoint aside", "log", w.path, "err", err)
		return ""
	}
	return w.d.join(n)
}

// hasUnlogged reports whether some change is not in the log yet.
func (c *Checkpoint) hasUnlogged() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.dirty) > 0 || len(c.gone) > 0 || c.metaUnlogged()
}

// releaseAll closes the files and drops the mappings (slices handed out to
// reads still in flight stay valid until their release). Caller holds mu.
func (c *Checkpoint) releaseAll() {
	for _, sh := range c.shards {
		sh.closeFiles()
		if sh.cur != nil {
			sh.cur.release()
			sh.cur = nil
		}
	}
	for _, m := range c.retired {
		m.release()
	}
	c.retired = nil
	for id := range c.removed {
		c.drop(id)
	}
	if c.wal != nil {
		c.wal.close()
		c.wal = nil
	}
	for _, m := range c.walMaps {
		m.release()
	}
	c.walMaps = nil
	c.closed = true
	c.closeIndex()
	if c.files != nil {
		c.files.close()
	}
	if c.src != nil {
		c.src.close()
	}
	if c.pending != nil {
		for _, r := range c.pending.reps {
			if r.tmp != nil {
				r.tmp.Close()
				r.tmp = nil
			}
		}
		c.pending.s.release()
		c.pending = nil
	}
	c.root.close()
}

// Pending reports what a crash left for the checkpoint at path (a file, an
// index or a directory): a log of edits (or of a compaction) not yet
// written back. verify and read-only mounts refuse such a checkpoint until
// a read-write open finishes it.
func Pending(path string) (string, bool) {
	loc, _, err := safetensors.Locate(path)
	if err != nil {
		return "", false
	}
	return pendingLog(path, loc)
}

// Discard moves the log of the checkpoint at path aside, unapplied (its
// name gets ".stale-<time>"; nothing is deleted), and removes the temp
// files a write-back left, so the checkpoint opens as the files are now:
// safejaxfs recover --discard, for a log that does not belong to them. It
// returns the log's new path ("" if there was none). It takes the write
// lock: a live mount's log is never moved.
func Discard(path string) (string, error) {
	loc, _, err := safetensors.Locate(path)
	if err != nil {
		return "", err
	}
	d, main, loc, err := rootOf(path, loc)
	if err != nil {
		return "", err
	}
	defer d.close()
	f, err := d.open(main, os.O_RDONLY, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var moved string
	err = withWriteLock(d, main, f, func() error {
		lname := walNameOf(main)
		if d.exists(lname) {
			n, err := setAside(d, lname)
			if err != nil {
				return err
			}
			moved = d.join(n)
		}
		return removeTemps(d, append([]string{main}, loc.Names...))
	})
	return moved, err
}

// loggerOr is l, or a logger that discards everything.
func loggerOr(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
