package checkpoint

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// What a log found at a read-write open means, decided in one place
// (settleLog), and the replay of a log into the state (replay).

// settleLog looks at the log of the checkpoint at loc, at a read-write
// open, before the files are validated, with the write lock held:
//
//   - no log, or one that holds nothing beyond its base: nothing to do
//     (an empty one is removed);
//   - a log whose compaction was committed (it ends in a compact record):
//     the compaction is finished from the record (renames rolled forward,
//     patches written again from the log) and the log removed;
//   - a log written for the files as they are (same size, inode, mtime
//     and header of each): returned, for Open to replay and compact;
//   - a log for other files (the checkpoint was replaced since), or one
//     this code cannot read: set aside, never applied, and the open fails
//     with an error naming it; the next open goes ahead with the files as
//     they are.
//
// finished reports that a compaction was finished (files may have been
// replaced).
//
// The files a log applies to are its own list (its base record), in its
// order: a shard a write-back emptied is no longer in the index, but the
// mount that wrote the log still had it (and records name shards by their
// place in that list). The Location returned is that list.
func settleLog(loc *safetensors.Location) (scan *walScan, at *safetensors.Location, finished bool, err error) {
	main := loc.Index
	if main == "" {
		main = loc.Paths[0]
	}
	lpath := walPathOf(main)
	f, err := os.OpenFile(lpath, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, loc, false, nil
	}
	if err != nil {
		return nil, loc, false, fmt.Errorf("opening the log %s: %w", lpath, err)
	}
	s, err := scanWAL(f)
	f.Close()
	switch {
	case errors.Is(err, errWALVersion):
		return nil, loc, false, setAside(lpath, main, err.Error())
	case err != nil:
		return nil, loc, false, fmt.Errorf("reading the log %s: %w", lpath, err)
	case len(s.recs) == 0 || s.recs[0].typ != recBase:
		// Never committed its first batch: it holds nothing.
		return nil, loc, false, removeSynced(lpath)
	}
	if c := lastCompact(s); c != nil {
		if err := finishCompaction(loc, s, c); err != nil {
			return nil, loc, false, fmt.Errorf("%s: finishing an interrupted write-back from the log %s: %w", main, lpath, err)
		}
		return nil, loc, true, removeSynced(lpath)
	}
	at, why := logLocation(loc, s.recs[0].files)
	if why == "" {
		if why, err = mismatch(at, s.recs[0].files); err != nil {
			return nil, loc, false, err
		}
	}
	if why != "" {
		if s.seq <= 1 {
			return nil, loc, false, removeSynced(lpath) // nothing in it to lose
		}
		return nil, loc, false, setAside(lpath, main, why)
	}
	if s.seq <= 1 {
		return nil, loc, false, removeSynced(lpath)
	}
	return s, at, false, nil
}

// lastCompact is the log's compact record, if it has one.
func lastCompact(s *walScan) *compactRec {
	for i := len(s.recs) - 1; i >= 0; i-- {
		if s.recs[i].typ == recCompact {
			return s.recs[i].compact
		}
	}
	return nil
}

// logLocation is the list of files a log applies to, as a Location: the
// log's shards in its order, next to the index; for a plain checkpoint,
// loc. why says what makes that impossible.
func logLocation(loc *safetensors.Location, base []walFile) (at *safetensors.Location, why string) {
	if !loc.Sharded() {
		return loc, ""
	}
	at = &safetensors.Location{Index: loc.Index}
	dir := filepath.Dir(loc.Index)
	for _, wf := range base {
		if wf.name == "" {
			continue
		}
		if err := safetensors.CheckShardName(wf.name); err != nil {
			return nil, fmt.Sprintf("the log names a shard %q: %v", wf.name, err)
		}
		at.Names = append(at.Names, wf.name)
		at.Paths = append(at.Paths, filepath.Join(dir, filepath.FromSlash(wf.name)))
	}
	for _, n := range loc.Names {
		if indexOf(at.Names, n) < 0 {
			return nil, fmt.Sprintf("the index names a shard %s the log does not", n)
		}
	}
	return at, ""
}

// mismatch says why the files are not those the log was written for, or
// "" if they are.
func mismatch(loc *safetensors.Location, base []walFile) (string, error) {
	want := len(loc.Paths)
	if loc.Sharded() {
		want++
	}
	if len(base) != want {
		return fmt.Sprintf("the log is for %d files, the checkpoint has %d", len(base), want), nil
	}
	for _, wf := range base {
		path, hdr := "", int64(-1)
		if wf.name == "" {
			path = loc.Index
		} else if i := indexOf(loc.Names, wf.name); i >= 0 {
			path = loc.Paths[i]
			h, err := headerLength(path)
			if err != nil {
				return "", err
			}
			hdr = h
		} else {
			return fmt.Sprintf("the log names a file %q the checkpoint does not have", wf.name), nil
		}
		ok, err := wf.sameFile(path, hdr)
		if err != nil {
			return "", err
		}
		if !ok {
			return fmt.Sprintf("%s is not the file the log was written for (it was replaced or changed since)", path), nil
		}
	}
	return "", nil
}

func indexOf(names []string, n string) int {
	for i, x := range names {
		if x == n {
			return i
		}
	}
	return -1
}

// headerLength is 8+N of the safetensors file at path, or its size if it
// is shorter (then it cannot match a log anyway).
func headerLength(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var b [8]byte
	st, err := fstat(f)
	if err != nil {
		return 0, err
	}
	if _, err := f.ReadAt(b[:], 0); err != nil {
		return st.Size, nil
	}
	n := int64(leU64(b[:]))
	if n < 0 || n > st.Size-8 {
		return st.Size, nil
	}
	return 8 + n, nil
}

// finishCompaction does what a committed compact record says is left:
// renames rolled forward, then each shard patched in place gets every data
// record of its tensors again (idempotent), and is fdatasynced.
func finishCompaction(loc *safetensors.Location, s *walScan, c *compactRec) error {
	if err := rollForward(c.renames); err != nil {
		return err
	}
	if len(c.inPlace) == 0 {
		return nil
	}
	main := loc.Index
	if main == "" {
		main = loc.Paths[0]
	}
	lf, err := os.Open(walPathOf(main))
	if err != nil {
		return err
	}
	defer lf.Close()
	base := s.recs[0].files
	buf := make([]byte, 1<<20)
	for _, si := range c.inPlace {
		if si < 0 || si >= len(base) || base[si].name == "" {
			return fmt.Errorf("%w: compact record names shard %d", errWALInvalid, si)
		}
		i := indexOf(loc.Names, base[si].name)
		if i < 0 {
			return fmt.Errorf("the log patches %s, which the checkpoint does not have", base[si].name)
		}
		if err := patchFromLog(loc.Paths[i], lf, s, buf); err != nil {
			return err
		}
	}
	return nil
}

// patchFromLog writes every data record of the log whose key is a tensor
// of the shard at path into it, in log order, and fdatasyncs it. Its keys
// never changed in the log (a shard patched in place has the header it
// had), so a key names the same tensor in every record.
func patchFromLog(path string, lf *os.File, s *walScan, buf []byte) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := fstat(f)
	if err != nil {
		return err
	}
	h, err := safetensors.ReadHeader(f, st.Size)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	where := make(map[string]*safetensors.Tensor, len(h.Tensors))
	for i := range h.Tensors {
		where[h.Tensors[i].Key] = &h.Tensors[i]
	}
	for _, r := range s.recs {
		if r.typ != recData {
			continue
		}
		t, ok := where[r.key]
		if !ok {
			continue
		}
		if r.pos < 0 || r.pos+r.n > int64(t.Size()) {
			return fmt.Errorf("%w: data for %q at %d, %d bytes, outside its %d bytes", errWALInvalid, r.key, r.pos, r.n, t.Size())
		}
		dst := h.DataOffset() + int64(t.Begin) + r.pos
		for done := int64(0); done < r.n; {
			b := buf[:min(int64(len(buf)), r.n-done)]
			if _, err := lf.ReadAt(b, r.at+done); err != nil {
				return err
			}
			if _, err := f.WriteAt(b, dst+done); err != nil {
				return err
			}
			done += int64(len(b))
		}
	}
	return control(f, unix.Fdatasync)
}

// replay applies a log's records to the state just opened from the files
// the log was written for, so the state is what the mount showed when the
// log was last committed. Its bytes are served from the log's mapping.
// Everything replayed counts as logged; compaction follows.
func (c *Checkpoint) replay(s *walScan) error {
	w := c.wal
	bad := func(r *rec, format string, args ...any) error {
		return fmt.Errorf("%s: %w: record at %d: %s", w.path, errWALInvalid, r.off, fmt.Sprintf(format, args...))
	}
	for i := range s.recs {
		r := &s.recs[i]
		switch r.typ {
		case recBase, recCommit:
		case recData:
			t := c.byKeyT(r.key)
			if t == nil {
				return bad(r, "data for %q, which does not exist", r.key)
			}
			if r.pos%chunkSize != 0 || r.pos < 0 || r.pos+r.n > t.cur.size {
				return bad(r, "data for %q at %d, %d bytes, does not fit", r.key, r.pos, r.n)
			}
			if t.cur.chunks == nil {
				t.cur.chunks = map[int64][]byte{}
			}
			for k := int64(0); k < r.n; k += chunkSize {
				t.cur.chunks[(r.pos+k)/chunkSize] = w.bytesAt(r.at+k, min(chunkSize, r.n-k))
			}
		case recPut:
			n, err := safetensors.ByteSize(r.dtype, r.shape)
			if err != nil || int64(n) != r.n || r.shard < 0 || r.shard >= len(c.shards) {
				return bad(r, "put of %q: %d bytes for %s %s in shard %d", r.key, r.n, r.dtype, shapeString(r.shape), r.shard)
			}
			content := logContent(w.bytesAt(r.at, r.n))
			if t := c.byKeyT(r.key); t != nil {
				t.dtype, t.shape, t.cur, t.growable = r.dtype, r.shape, content, false
				c.replayed(t)
				continue
			}
			t := &tensor{key: r.key, dtype: r.dtype, shape: r.shape, shard: r.shard, cur: content}
			c.byKey[t.key] = ID(len(c.tensors))
			c.tensors = append(c.tensors, t)
			c.replayed(t)
		case recDelete:
			id, ok := c.byKey[r.key]
			if !ok {
				return bad(r, "removal of %q, which does not exist", r.key)
			}
			t := c.tensors[id]
			delete(c.byKey, r.key)
			c.tensors[id] = nil
			c.shards[t.shard].layoutGen++
			c.index.bump()
		case recRename:
			ids := make([]ID, len(r.renames))
			for j, p := range r.renames {
				id, ok := c.byKey[p[0]]
				if !ok {
					return bad(r, "rename of %q, which does not exist", p[0])
				}
				ids[j] = id
			}
			for _, p := range r.renames {
				delete(c.byKey, p[0])
			}
			for j, p := range r.renames {
				if _, taken := c.byKey[p[1]]; taken {
					return bad(r, "rename to %q, which exists", p[1])
				}
				t := c.tensors[ids[j]]
				t.key = p[1]
				c.byKey[p[1]] = ids[j]
				c.replayed(t)
			}
		case recReshape:
			t := c.byKeyT(r.key)
			if t == nil {
				return bad(r, "reshape of %q, which does not exist", r.key)
			}
			if n, err := safetensors.ByteSize(r.dtype, r.shape); err != nil || int64(n) != t.cur.size {
				return bad(r, "reshape of %q to %s %s", r.key, r.dtype, shapeString(r.shape))
			}
			t.dtype, t.shape = r.dtype, r.shape
			c.replayed(t)
		case recMeta:
			if r.shard < 0 || r.shard >= len(c.shards) {
				return bad(r, "metadata of shard %d", r.shard)
			}
			c.shards[r.shard].meta = r.meta
			c.shards[r.shard].layoutGen++
		case recIndexMeta:
			if c.index == nil {
				return bad(r, "index metadata for a checkpoint without an index")
			}
			m := map[string][]byte{}
			for k, v := range r.imeta {
				m[k] = v
			}
			c.index.setMeta(m)
			c.index.layoutGen++
		default:
			return bad(r, "record type %d", r.typ)
		}
	}
	return nil
}

// replayed marks t changed by a replayed record: its shard's header (and
// the index) will be written, and the log already holds its state.
func (c *Checkpoint) replayed(t *tensor) {
	t.logged = logState{true, t.key, t.dtype, t.shape}
	c.shards[t.shard].layoutGen++
	c.index.bump()
}

func (c *Checkpoint) byKeyT(key string) *tensor {
	if id, ok := c.byKey[key]; ok {
		return c.tensors[id]
	}
	return nil
}

// pendingLog reports a log next to the checkpoint at loc that holds
// something a read-write open would apply.
func pendingLog(loc *safetensors.Location) (string, bool) {
	main := loc.Index
	if main == "" {
		main = loc.Paths[0]
	}
	p := walPathOf(main)
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return p, !errors.Is(err, fs.ErrNotExist)
	}
	defer f.Close()
	s, err := scanWAL(f)
	if err != nil {
		return p, true
	}
	return p, s.seq > 1 || lastCompact(s) != nil
}

// dirOf is the directory of the checkpoint's main file.
func dirOf(loc *safetensors.Location) string {
	if loc.Sharded() {
		return filepath.Dir(loc.Index)
	}
	return filepath.Dir(loc.Paths[0])
}
