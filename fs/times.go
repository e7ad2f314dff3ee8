package fs

import (
	"maps"
	"sync"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
)

// OtherTimes are the times kept that are not a tensor's.
type OtherTimes = checkpoint.OtherTimes

// Times set through the mount (touch, cp -p, tar, rsync -a) outlive it:
// they are kept beside the checkpoint after the write-back
// (checkpoint.SaveTimes) and shown again by the next mount of the same
// files, so a second rsync -a after a remount finds every tensor up to
// date and copies nothing. A tensor written after its time was set has
// the time of that write, which, like every time no one set, is not
// kept: the next mount shows the checkpoint file's.

// keptTimes are the times set (or loaded) per tensor and directory.
type keptTimes struct {
	mu   sync.Mutex
	t    map[checkpoint.ID]time.Time
	dirs map[*tree.Node]time.Time
}

func (s *keptTimes) put(id checkpoint.ID, t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.t == nil {
		s.t = map[checkpoint.ID]time.Time{}
	}
	s.t[id] = t
}

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
	tensors, other, err := tf.Load()
	if err != nil {
		f.logf("the times kept by an earlier mount are not used: %v", err)
		return
	}
	for id, t := range tensors {
		f.times.put(id, t)
	}
	if meta := other.Metadata; !meta.IsZero() {
		if d := f.doc(MetadataName); d != nil {
			d.mtime.Store(&meta)
		}
	}
	for p, t := range other.Dirs {
		if n := f.tree.Find(p); n != nil && n.IsDir() {
			f.setDirMTime(n, t)
		}
	}
}

// setDirMTime sets directory n's modification time (rsync -a and tar set
// the times of the directories they fill, once they are full).
func (f *FS) setDirMTime(n *tree.Node, t time.Time) {
	f.dirTimes.mu.Lock()
	if f.dirTimes.t == nil {
		f.dirTimes.t = map[*tree.Node]time.Time{}
	}
	f.dirTimes.t[n] = t
	f.dirTimes.mu.Unlock()
	f.times.mu.Lock()
	if f.times.dirs == nil {
		f.times.dirs = map[*tree.Node]time.Time{}
	}
	f.times.dirs[n] = t
	f.times.mu.Unlock()
}

// setMTime sets tensor id's modification time (utimensat).
func (f *FS) setMTime(id checkpoint.ID, t time.Time) error {
	if err := f.ck.SetMTime(id, t); err != nil {
		return err
	}
	f.times.put(id, t)
	return nil
}

// SaveTimes keeps the times set through the mount beside the checkpoint:
// call it once, after the checkpoint is closed (written back).
func (f *FS) SaveTimes() error {
	if f.timesFile == nil {
		return nil
	}
	defer f.timesFile.Close()
	keep := map[checkpoint.ID]time.Time{}
	f.times.mu.Lock()
	for id, t := range f.times.t {
		// Still the time that was set: no write moved it since.
		if info, ok := f.ck.Info(id); ok && info.MTime.Equal(t) {
			keep[id] = t
		}
	}
	dirs := maps.Clone(f.times.dirs)
	f.times.mu.Unlock()
	var other OtherTimes
	if d := f.doc(MetadataName); d != nil && !d.hidden.Load() {
		if t := d.mtime.Load(); t != nil {
			other.Metadata = *t
		}
	}
	f.mu.RLock()
	for n, t := range dirs {
		// Still in the tree, and still that time (no entry changed since).
		if attached(f.tree, n) && f.dirTime(n).Equal(t) {
			if other.Dirs == nil {
				other.Dirs = map[string]time.Time{}
			}
			other.Dirs[n.Path()] = t
		}
	}
	f.mu.RUnlock()
	return f.timesFile.Save(keep, other)
}

// attached reports whether n hangs in t (a removed directory does not).
func attached(t *tree.Tree, n *tree.Node) bool {
	for n.Parent != nil {
		n = n.Parent
	}
	return n == t.Root
}
