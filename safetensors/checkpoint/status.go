package checkpoint

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// What a mount's status shows of its checkpoint (safejaxfs status, and the
// progress of a write-back that unmount and wait show). Read-only views of
// the state, taken under mu; nothing here changes anything.

// Unwritten is what is not yet written back into the checkpoint files.
type Unwritten struct {
	// Tensors changed, added, renamed or retyped since the files were
	// last written, and tensors the files hold that were removed since.
	Changed, Removed int
	// Files is how many files the next write-back changes (shards, and
	// the index of a sharded checkpoint).
	Files int
	// Log is the checkpoint's log (where edits are durable until the
	// write-back) and LogBytes its size on disk; 0 when there is none.
	Log      string
	LogBytes int64
}

// Edits counts every change made since the open: a cheap way to tell
// whether anything changed since it was last looked at.
func (c *Checkpoint) Edits() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.edits
}

// Persists counts the persistence steps (commits to the log, write-backs,
// failed ones too) ended since the open. They change what PendingEdits
// reports without an edit (the log grows, the files catch up): with Edits,
// a cheap way to tell whether PendingEdits may have changed since it was
// last called. Read both before calling it.
func (c *Checkpoint) Persists() uint64 { return c.persists.Load() }

// unlockPersist ends a persistence step: counted (Persists) after every
// change it made, then persistMu released.
func (c *Checkpoint) unlockPersist() {
	c.persists.Add(1)
	c.persistMu.Unlock()
}

// PendingEdits reports what the next write-back has to write. It walks
// every tensor (about a millisecond for 100k).
func (c *Checkpoint) PendingEdits() Unwritten {
	var p Unwritten
	if c.readOnly || c.root == nil {
		return p
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return p
	}
	dirty := make([]bool, len(c.shards))
	used := make([]int, len(c.shards))
	for _, t := range c.tensors {
		if t == nil {
			continue
		}
		sh := c.shards[t.shard]
		d := t.cur
		inFile := d != nil && d.ref == sh.cur && sh.cur != nil && d.src >= 0 && d.src < len(sh.cur.file.Tensors)
		if inFile {
			used[t.shard]++
			ft := &sh.cur.file.Tensors[d.src]
			inFile = d.clean() && ft.Key == t.key && ft.DType == t.dtype && slices.Equal(ft.Shape, t.shape)
		}
		if !inFile {
			p.Changed++
			dirty[t.shard] = true
		}
	}
	for i, sh := range c.shards {
		if sh.cur != nil {
			if gone := len(sh.cur.file.Tensors) - used[i]; gone > 0 {
				p.Removed += gone
				dirty[i] = true
			}
		}
		if dirty[i] || sh.layoutGen != sh.persistedLayout {
			p.Files++
		}
	}
	if x := c.index; x != nil && (x.layoutGen != x.persistedLayout || p.Files > 0 && p.Removed+p.Changed > 0) {
		p.Files++
	}
	p.Log = c.walPath()
	if st, err := os.Lstat(p.Log); err == nil {
		p.LogBytes = st.Size()
	} else {
		p.Log = ""
	}
	return p
}

// WriteBack is how far a write-back that rewrites files is: Done bytes
// are in the new files it is writing (temp files beside the old ones),
// Total is what those files will hold. Active is false when no such file
// is being written (none is, or the write-back patches in place, which
// writes only the edited bytes and takes little time).
type WriteBack struct {
	Active      bool
	Done, Total int64
}

// WriteBackProgress looks at the temp files of a write-back under way.
// It reads the directories by path, not through the checkpoint's own
// directory descriptor, whose offset the write-back itself may be using.
// The status file asks four times a second: the directories are read only
// while a compaction runs (temp files of any other time are stale, removed
// by the next read-write open), and the tensors walked (for the sizes the
// new files will have) only when a temp file is there.
func (c *Checkpoint) WriteBackProgress() WriteBack {
	var w WriteBack
	if c.readOnly || c.root == nil || !c.compacting.Load() {
		return w
	}
	type file struct {
		path  string
		shard int // -1: the index
		temps []int64
	}
	var files []file
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return w
	}
	for i, sh := range c.shards {
		files = append(files, file{path: c.root.join(sh.name), shard: i})
	}
	if c.index != nil {
		files = append(files, file{path: c.root.join(c.index.name), shard: -1})
	}
	c.mu.RUnlock()

	listed := map[string][]string{}
	for i := range files {
		f := &files[i]
		dir, base := filepath.Split(f.path)
		names, ok := listed[dir]
		if !ok {
			names, _ = readNames(dir)
			listed[dir] = names
		}
		for _, n := range names {
			if !isTempOf(n, base) {
				continue
			}
			if st, err := os.Lstat(filepath.Join(dir, n)); err == nil {
				f.temps = append(f.temps, st.Size())
			}
		}
		w.Active = w.Active || len(f.temps) > 0
	}
	if !w.Active {
		return w
	}
	// What each rewritten file will hold, about: its header and the
	// tensors' bytes now.
	sizes := make([]int64, len(files))
	c.mu.RLock()
	if !c.closed {
		for _, t := range c.tensors {
			if t != nil && t.cur != nil && t.shard < len(sizes) {
				sizes[t.shard] += t.cur.size
			}
		}
		for i, sh := range c.shards {
			if i < len(sizes) && sh.cur != nil {
				sizes[i] += sh.cur.file.Size - int64(sh.cur.file.DataSize())
			}
		}
	}
	c.mu.RUnlock()
	for _, f := range files {
		size := int64(0)
		if f.shard >= 0 {
			size = sizes[f.shard]
		}
		for _, done := range f.temps {
			w.Done += done
			w.Total += max(size, done)
		}
	}
	return w
}

func readNames(dir string) ([]string, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	return slices.DeleteFunc(names, func(n string) bool { return !strings.HasPrefix(n, ".") }), err
}
