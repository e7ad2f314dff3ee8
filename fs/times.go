package fs

import (
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
)

// The times a mount shows outlive it. safetensors has no place for them,
// so after the write-back they are kept beside the checkpoint
// (checkpoint.TimesFile): the time of everything that did not change
// (the checkpoint file's when this mount began), and each tensor,
// directory and __metadata__ that shows another (written, created, or
// given a time by touch, cp -p, tar or rsync -a). The next mount of the
// same files shows them again, so a second rsync -a after a remount finds
// everything up to date and copies nothing, and a tensor the write-back
// did not change does not look changed because the file was rewritten.

// OtherTimes are the times kept that are not a tensor's.
type OtherTimes = checkpoint.OtherTimes

// loadTimes shows the times an earlier mount kept, if they were kept for
// the files as they are, and keeps the times file open for SaveTimes
// (read-write mounts).
func (f *FS) loadTimes() {
	tf, err := f.ck.Times()
	if err != nil || tf == nil {
		if err != nil {
			f.logf("the times kept by an earlier mount are not used: %v", err)
		}
		return
	}
	if f.ck.ReadOnly() {
		defer tf.Close()
	} else {
		f.timesFile = tf
	}
	_, other, err := tf.Load() // the tensors' are applied by Load
	if err != nil {
		f.logf("the times kept by an earlier mount are not used: %v", err)
		return
	}
	if !other.Default.IsZero() {
		f.mtime = other.Default
	}
	if d := f.doc(MetadataName); d != nil {
		if meta := other.Metadata; !meta.IsZero() {
			d.mtime.Store(&meta)
		}
		// Removed by the last mount and not written since (the header
		// holds an empty one): still gone.
		if other.MetadataRemoved && len(f.ck.Metadata()) == 0 {
			d.hidden.Store(true)
		}
	}
	f.ns.View(func(tr *tree.Tree) {
		for p, t := range other.Dirs {
			if n := tr.Find(p); n != nil && n.IsDir() {
				f.setDirMTime(n, t)
			}
		}
	})
}

// setDirMTime sets directory n's modification time (rsync -a and tar set
// the times of the directories they fill, once they are full).
func (f *FS) setDirMTime(n *tree.Node, t time.Time) {
	f.dirTimes.mu.Lock()
	defer f.dirTimes.mu.Unlock()
	if f.dirTimes.t == nil {
		f.dirTimes.t = map[*tree.Node]time.Time{}
	}
	f.dirTimes.t[n] = t
}

// SaveTimes keeps the times the mount shows beside the checkpoint: call it
// once, after the checkpoint is closed (written back).
func (f *FS) SaveTimes() error {
	if f.timesFile == nil {
		return nil
	}
	defer f.timesFile.Close()
	base := f.mtime
	other := OtherTimes{Default: base}
	// Each file's tensors mostly show one time (the file's, for those
	// nothing changed: a sharded set's files each have their own): it is
	// kept once per file, and only the tensors that show another are
	// named. Lossless whatever the times, and a times file written
	// tensor by tensor (format 1) shrinks at the next save.
	times := f.ck.TensorTimes()
	for name, t := range commonTimes(times) {
		if !t.Equal(base) {
			if other.Shards == nil {
				other.Shards = map[string]time.Time{}
			}
			other.Shards[name] = t
		}
	}
	tensors := map[checkpoint.ID]time.Time{}
	for _, tt := range times {
		def := base
		if t, ok := other.Shards[tt.Shard]; ok {
			def = t
		}
		if !tt.MTime.Equal(def) {
			tensors[tt.ID] = tt.MTime
		}
	}
	if d := f.doc(MetadataName); d != nil && d.hidden.Load() {
		other.MetadataRemoved = true
	} else if d != nil {
		if t := d.mtime.Load(); t != nil && !t.Equal(base) {
			other.Metadata = *t
		}
	}
	f.ns.View(func(tr *tree.Tree) {
		f.dirTimes.mu.Lock()
		defer f.dirTimes.mu.Unlock()
		for n, t := range f.dirTimes.t {
			// A directory still in the tree (one removed, or left
			// empty by the write-back, is not).
			if !t.Equal(base) && attached(tr, n) && (n.Len() > 0 || n.Parent == nil) {
				if other.Dirs == nil {
					other.Dirs = map[string]time.Time{}
				}
				other.Dirs[n.Path()] = t
			}
		}
	})
	return f.timesFile.Save(tensors, other)
}

// attached reports whether n hangs in t (a removed directory does not).
func attached(t *tree.Tree, n *tree.Node) bool {
	for n.Parent != nil {
		n = n.Parent
	}
	return n == t.Root
}

// commonTimes is, by file, the time most of its tensors show (ties: the
// earliest, so the choice does not depend on map order).
func commonTimes(times []checkpoint.TensorTime) map[string]time.Time {
	type count struct {
		t time.Time
		n int
	}
	counts := map[string]map[int64]*count{}
	for _, tt := range times {
		byTime := counts[tt.Shard]
		if byTime == nil {
			byTime = map[int64]*count{}
			counts[tt.Shard] = byTime
		}
		k := tt.MTime.UnixNano()
		if c := byTime[k]; c != nil {
			c.n++
		} else {
			byTime[k] = &count{tt.MTime, 1}
		}
	}
	out := make(map[string]time.Time, len(counts))
	for shard, byTime := range counts {
		var best *count
		for _, c := range byTime {
			if best == nil || c.n > best.n || c.n == best.n && c.t.Before(best.t) {
				best = c
			}
		}
		out[shard] = best.t
	}
	return out
}
