// Package checkpoint owns the state of one mounted checkpoint: the validated,
// mapped file, the tensors as the mount currently sees them, edits not yet
// persisted, and their persistence. The FUSE layer talks only to this type,
// so every rule about what a checkpoint may become is enforced in one place,
// testable without mounting anything.
package checkpoint

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// ID names a tensor for the life of the Checkpoint. IDs are never reused, so a
// stale ID held by a file handle can only miss, never reach another tensor.
type ID int

// Info describes a tensor as the mount currently sees it.
type Info struct {
	Key   string
	DType safetensors.DType
	Shape []uint64
	Size  int64 // bytes: dtype x shape, except for a plain file being written
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
	// hooks simulate crashes inside persistence (tests only).
	hooks *crashHooks
}

// Checkpoint is safe for concurrent use.
type Checkpoint struct {
	path     string
	readOnly bool
	hooks    *crashHooks

	// persistMu serializes persists; mu guards everything below and is not
	// held during persistence I/O, so reads go on while a rewrite runs.
	persistMu sync.Mutex
	// reads tracks Reads until their release, for in-place persists to
	// wait on (see readTracker).
	reads readTracker
	mu    sync.RWMutex
	cur   *mapping
	// retired are earlier mappings that tensors edited during a rewrite
	// still read their unedited bytes from; released once none does.
	retired []*mapping
	rw      *os.File     // the checkpoint opened for writing (read-write mounts)
	unlock  func() error // drops the advisory lock
	ident   identity     // the file as we last left it
	tensors []*tensor    // indexed by ID; nil once deleted
	// removed are deleted tensors a file may still have open: they keep
	// their bytes (and take writes that go nowhere) until Drop.
	removed map[ID]*tensor
	byKey   map[string]ID
	meta    map[string]string
	// layoutGen counts changes that need a rewrite (keys, dtypes, shapes,
	// metadata, tensors added or removed); persistedLayout is its value at
	// the last successful persist.
	layoutGen, persistedLayout uint64
	// edits counts every change; persistedEdits is its value at the last
	// successful persist, recoveredEdits at the last recovery file.
	edits, persistedEdits, recoveredEdits uint64
	// recovery is where edits go once the checkpoint was changed by someone
	// else: we never overwrite their file.
	recovery string
	// rescued is the last file SaveRecovery wrote, holding the state at
	// edits == rescuedEdits.
	rescued      string
	rescuedEdits uint64
}

type tensor struct {
	key   string
	dtype safetensors.DType
	shape []uint64
	cur   *content // committed bytes: always dtype x shape long
	// growable tensors were created as plain files: a 1-D U8 tensor whose
	// shape follows the bytes written.
	growable bool
	gen      uint64 // bumped by every change, to notice edits during a persist
	// mtime and ctime as stat shows them (see Info).
	mtime, ctime time.Time
}

func (t *tensor) want() int64 {
	n, _ := safetensors.ByteSize(t.dtype, t.shape)
	return int64(n)
}

// touch records a change of the tensor's bytes.
func (t *tensor) touch() {
	t.gen++
	t.mtime = time.Now()
	t.ctime = t.mtime
}

// changed records a change of anything else about the tensor.
func (t *tensor) changed() {
	t.gen++
	t.ctime = time.Now()
}

func (t *tensor) info() Info {
	// The shape is copied: callers may not write through to ours.
	return Info{Key: t.key, DType: t.dtype, Shape: slices.Clone(t.shape), Size: t.cur.size, MTime: t.mtime, CTime: t.ctime}
}

// Open validates the checkpoint strictly and maps it. A read-write open
// first finishes a write-back a crash interrupted (journal replay), then
// takes the advisory lock that makes this the checkpoint's only writer.
// Nothing is kept open when it fails.
func Open(path string, opt Options) (*Checkpoint, error) {
	c := &Checkpoint{path: path, readOnly: opt.ReadOnly, hooks: opt.hooks}
	if opt.ReadOnly {
		if j, ok := PendingJournal(path); ok {
			return nil, fmt.Errorf("%s: a write-back was interrupted (journal %s); mount it read-write once to finish it", path, j)
		}
	} else {
		if err := cleanStaleTemps(path); err != nil {
			return nil, err
		}
		if _, err := replayJournal(path); err != nil {
			return nil, err
		}
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	m := newMapping(f)
	if !opt.ReadOnly {
		if err := c.openForWrite(); err != nil {
			m.release()
			return nil, err
		}
	}
	c.cur = m
	c.meta = f.Metadata
	c.tensors = make([]*tensor, len(f.Tensors))
	c.byKey = make(map[string]ID, len(f.Tensors))
	// Until something changes, every tensor carries the file's times.
	var mtime time.Time
	if st, err := os.Stat(path); err == nil {
		mtime = st.ModTime()
	}
	for i := range f.Tensors {
		t := &f.Tensors[i]
		c.tensors[i] = &tensor{key: t.Key, dtype: t.DType, shape: t.Shape, cur: fileContent(m, i), mtime: mtime, ctime: mtime}
		c.byKey[t.Key] = ID(i)
	}
	return c, nil
}

// openForWrite opens the checkpoint for in-place writes, locks it, and
// remembers its identity. Called at open and after every rewrite (the new
// file is a new inode).
func (c *Checkpoint) openForWrite() error {
	rw, err := os.OpenFile(c.path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	unlock, err := lockFile(rw)
	if err != nil {
		rw.Close()
		return err
	}
	ident, err := statIdentity(c.path)
	if err != nil {
		unlock()
		rw.Close()
		return err
	}
	c.closeFiles()
	c.rw, c.unlock, c.ident = rw, unlock, ident
	return nil
}

func (c *Checkpoint) closeFiles() {
	if c.unlock != nil {
		c.unlock()
		c.unlock = nil
	}
	if c.rw != nil {
		c.rw.Close()
		c.rw = nil
	}
}

// Path is the checkpoint's file name as given to Open.
func (c *Checkpoint) Path() string { return c.path }

// ReadOnly reports whether edits are refused.
func (c *Checkpoint) ReadOnly() bool { return c.readOnly }

// Keys returns the tensors' keys indexed by ID, so a caller can build its
// namespace with tensor index == ID. Deleted IDs hold "": call it before
// any edit (at mount), when every ID is live.
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

// Info returns what tensor id looks like now.
func (c *Checkpoint) Info(id ID) (Info, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	t := c.get(id)
	if t == nil {
		return Info{}, false
	}
	return t.info(), true
}

func (c *Checkpoint) get(id ID) *tensor {
	if id < 0 || int(id) >= len(c.tensors) {
		return nil
	}
	return c.tensors[id]
}

// Metadata returns a copy of the header's metadata; nil when the checkpoint
// has none.
func (c *Checkpoint) Metadata() map[string]string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return maps.Clone(c.meta)
}

// Read returns up to n bytes of tensor id starting at off, as slices of the
// mapping or of edits in memory (no copy). The slices stay valid and
// unchanged until release is called (once), even if the checkpoint is
// rewritten or written in place meanwhile.
func (c *Checkpoint) Read(id ID, off int64, n int) (segs [][]byte, release func(), err error) {
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
	return v.segments(off, int64(n)), func() {
		m.release()
		done()
	}, nil
}

func nop() {}

// Close persists what is pending (read-write) and releases the files. If
// the checkpoint cannot take the edits, they are written to a recovery file
// next to it, named in the returned error: nothing the user wrote is lost
// silently.
func (c *Checkpoint) Close() error {
	var err error
	if !c.readOnly {
		if err = c.Sync(); err != nil && !errors.Is(err, ErrChanged) {
			s := c.snapshot()
			if p, rerr := writeRecovery(c.path, c.sources(s), s.meta); rerr == nil {
				err = fmt.Errorf("%w; your edits are in %s", err, p)
			}
			s.release()
		}
	}
	if !c.readOnly && err == nil {
		// Everything is in the checkpoint: no journal is left next to an
		// unmounted checkpoint (removed while we still hold the lock).
		if rerr := retireJournal(c.path); rerr != nil {
			err = fmt.Errorf("removing the journal of %s: %w", c.path, rerr)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.releaseAll()
	return err
}

// releaseAll closes the files and drops the mappings (slices handed out to
// reads still in flight stay valid until their release). Caller holds mu.
func (c *Checkpoint) releaseAll() {
	c.closeFiles()
	if c.cur != nil {
		c.cur.release()
		c.cur = nil
	}
	for _, m := range c.retired {
		m.release()
	}
	c.retired = nil
	for id := range c.removed {
		c.drop(id)
	}
}

// PendingJournal reports the journal of a write-back that a crash
// interrupted, if the checkpoint at path has one: until a read-write Open
// replays it, tensors it covers may be torn on disk. A journal whose commit
// completed (or never started) is not pending.
func PendingJournal(path string) (string, bool) {
	return journalPending(path)
}
