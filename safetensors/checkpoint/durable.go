package checkpoint

import (
	"encoding/json"
	"fmt"
	"sync"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Edits that a close commits (a rewrite of a tensor, a .npy written into
// the mount, __metadata__) are all or nothing with their durability: when
// the close succeeds the edit is in the log, and when it fails the edit
// never happened, now and after unmount (issue 15 item 7). durably does
// that: with persistMu and mu held throughout, the edit is applied, every
// change so far is committed to the log in one batch, and if that fails
// the edit is undone before anyone else can see it. Changes made before
// the edit (other descriptors' writes) stay pending, as after any failed
// Sync. Writes into a tensor through a descriptor opened without O_TRUNC
// are not of this kind: they are applied as they are written, as on any
// file system, and their fsync or close only reports whether they are
// durable.

// durably applies edit (with mu held; it returns its own undo) and makes
// it and everything before it durable, or leaves the state as if it had
// never been made.
func (c *Checkpoint) durably(edit func() (undo func(), err error)) error {
	return c.durablyUnder(nil, edit)
}

// durablyUnder is durably with outer (a lock that comes between persistMu
// and mu in the lock order: a Staged's) held as well.
func (c *Checkpoint) durablyUnder(outer *sync.Mutex, edit func() (undo func(), err error)) error {
	if c.readOnly {
		return ErrReadOnly
	}
	c.persistMu.Lock()
	defer c.unlockPersist()
	if err := c.resume(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotDurable, err)
	}
	if c.stuck != nil {
		return fmt.Errorf("%w: %w", ErrNotDurable, c.stuck)
	}
	if outer != nil {
		outer.Lock()
		defer outer.Unlock()
	}
	c.mu.Lock()
	if err := c.editable(); err != nil {
		c.mu.Unlock()
		return err // (diverted: a Staged's commit checks nothing else)
	}
	undo, err := edit()
	if err != nil {
		c.mu.Unlock()
		return err
	}
	if c.recovery != "" || !c.unchangedOnDisk() {
		// The checkpoint is another program's now: nothing more is
		// logged for it. The edit stays, diverted with every other one
		// to a recovery file, which the error names.
		c.mu.Unlock()
		s := c.snapshot()
		defer s.release()
		return c.recover(s)
	}
	b := c.collect()
	if len(b.recs) == 0 {
		c.mu.Unlock()
		return nil
	}
	at, err := c.writeBatch(b, true)
	if err != nil {
		c.abort(b)
		undo()
		c.mu.Unlock()
		return fmt.Errorf("%w: %w", ErrNotDurable, err)
	}
	c.apply(b, at)
	c.mu.Unlock()
	// A log past its limit is folded by the next Sync (the caller's
	// locks may be held here: no write-back under them).
	return nil
}

// undoTensor returns a func that puts t back as it is now: its fields and
// bytes, whether it is dirty, its shard's header bound and the edit count.
// Caller holds mu (and still does when the func runs).
func (c *Checkpoint) undoTensor(t *tensor) func() {
	saved := *t
	saved.cur = t.cur.clone() // an edit may write into t.cur's chunk map
	_, dirty := c.dirty[t]
	layout := c.markLayout(t.shard)
	return func() {
		*t = saved
		if !dirty {
			delete(c.dirty, t)
		}
		c.restoreLayout(layout)
	}
}

// layoutMark is what an edit of a tensor changes besides the tensor: its
// shard's header bound and layout generation, the index's, and the edit
// count.
type layoutMark struct {
	sh                   *shard
	bound, indexBound    int64
	layout, index, edits uint64
}

// markLayout notes them for shard i, for restoreLayout. Caller holds mu.
func (c *Checkpoint) markLayout(i int) layoutMark {
	sh := c.shards[i]
	m := layoutMark{sh: sh, bound: sh.hdrBound, layout: sh.layoutGen, edits: c.edits}
	if c.index != nil {
		m.index, m.indexBound = c.index.layoutGen, c.index.hdrBound
	}
	return m
}

// restoreLayout puts them back as markLayout found them. Caller holds mu.
func (c *Checkpoint) restoreLayout(m layoutMark) {
	m.sh.hdrBound, m.sh.layoutGen, c.edits = m.bound, m.layout, m.edits
	if c.index != nil {
		c.index.layoutGen, c.index.hdrBound = m.index, m.indexBound
	}
}

// undoNew returns a func that removes tensor id, just added: its ID is
// never used again.
func (c *Checkpoint) undoNew(id ID) func() {
	t := c.tensors[id]
	return func() {
		delete(c.byKey, t.key)
		delete(c.dirty, t)
		c.tensors[id] = nil
		c.applyHeader(headerDelta{t.shard: -t.entryBound(), indexFile: -c.indexEntry(t.key, t.shard)})
	}
}

// PutSync is Put, durable before it returns or not made at all.
func (c *Checkpoint) PutSync(key string, dtype safetensors.DType, shape []uint64, data []byte) (ID, error) {
	return c.putSync(key, dtype, shape, data, false, NoID)
}

// PutNewSync is PutNew, durable before it returns or not made at all.
func (c *Checkpoint) PutNewSync(key string, dtype safetensors.DType, shape []uint64, data []byte) (ID, error) {
	return c.putSync(key, dtype, shape, data, true, NoID)
}

// NoID is no tensor: the *Deleting calls delete nothing with it.
const NoID ID = -1

// PutNewSyncDeleting is PutNewSync that also deletes tensor gone in the
// same commit: the new tensor and the deletion are durable together, or
// neither is made. A file renamed into place as another (an editor's temp
// file saved as a .npy) becomes the tensor it holds without a moment, or
// a crash, where both exist or neither does.
func (c *Checkpoint) PutNewSyncDeleting(key string, dtype safetensors.DType, shape []uint64, data []byte, gone ID) (ID, error) {
	return c.putSync(key, dtype, shape, data, true, gone)
}

func (c *Checkpoint) putSync(key string, dtype safetensors.DType, shape []uint64, data []byte, mustBeNew bool, gone ID) (ID, error) {
	var id ID
	err := c.durably(func() (func(), error) {
		old, exists := c.byKey[key]
		if exists && mustBeNew {
			return nil, fmt.Errorf("tensor %q: %w", key, ErrExists)
		}
		if exists && old == gone {
			return nil, fmt.Errorf("tensor %q: put over the tensor it deletes: %w", key, ErrExists)
		}
		undoGone, err := c.deleteUndoable(gone)
		if err != nil {
			return nil, err
		}
		var undo func()
		if exists {
			undo = c.undoTensor(c.tensors[old])
		}
		if id, err = c.put(key, dtype, shape, data); err != nil {
			if undo != nil {
				undo()
			}
			undoGone()
			return nil, err
		}
		if undo == nil {
			undo = c.undoNew(id)
		}
		return func() { undo(); undoGone() }, nil
	})
	return id, err
}

// deleteUndoable deletes tensor id (none for NoID) as Delete does, and
// returns the func that puts it back exactly as it was: for an edit that
// is all or nothing with its commit (durably). Caller holds mu, and still
// does when the func runs.
func (c *Checkpoint) deleteUndoable(id ID) (func(), error) {
	if id == NoID {
		return nop, nil
	}
	t, err := c.writable(id)
	if err != nil {
		return nil, err
	}
	saved := *t
	_, dirty := c.dirty[t]
	layout := c.markLayout(t.shard)
	gone := len(c.gone)
	c.deleteLocked(id, t)
	return func() {
		c.drop(id) // what deleteLocked took to keep it for open files
		*t = saved
		c.tensors[id] = t
		c.byKey[t.key] = id
		if dirty {
			c.dirty[t] = struct{}{}
		}
		c.gone = c.gone[:gone]
		c.restoreLayout(layout)
	}, nil
}

// ReplaceSync is Replace, durable before it returns or not made at all.
func (c *Checkpoint) ReplaceSync(id ID, dtype safetensors.DType, shape []uint64, data []byte) error {
	return c.ReplaceSyncDeleting(id, dtype, shape, data, NoID)
}

// ReplaceSyncDeleting is ReplaceSync that also deletes tensor gone in the
// same commit (see PutNewSyncDeleting).
func (c *Checkpoint) ReplaceSyncDeleting(id ID, dtype safetensors.DType, shape []uint64, data []byte, gone ID) error {
	return c.durably(func() (func(), error) {
		t := c.get(id)
		if t == nil {
			return nil, fmt.Errorf("tensor %d: %w", id, ErrNotFound)
		}
		if id == gone {
			return nil, fmt.Errorf("tensor %q: replaced and deleted at once: %w", t.key, ErrExists)
		}
		undoGone, err := c.deleteUndoable(gone)
		if err != nil {
			return nil, err
		}
		undo := c.undoTensor(t)
		if _, err := c.put(t.key, dtype, shape, data); err != nil {
			undo()
			undoGone()
			return nil, err
		}
		return func() { undo(); undoGone() }, nil
	})
}

// SetMetadataSync is SetMetadata, durable before it returns or not made.
func (c *Checkpoint) SetMetadataSync(m map[string]string) error {
	return c.durably(func() (func(), error) {
		undo := c.undoMeta()
		if err := c.setMetadata(m); err != nil {
			undo()
			return nil, err
		}
		return undo, nil
	})
}

// SetIndexMetadataSync is SetIndexMetadata, durable before it returns or
// not made.
func (c *Checkpoint) SetIndexMetadataSync(m map[string]json.RawMessage) error {
	return c.durably(func() (func(), error) {
		undo := c.undoMeta()
		if err := c.setIndexMetadata(m); err != nil {
			undo()
			return nil, err
		}
		return undo, nil
	})
}

// undoMeta returns a func that puts every shard's metadata (and the
// index's) back as it is now. Caller holds mu.
func (c *Checkpoint) undoMeta() func() {
	type shardMeta struct {
		meta               map[string]string
		metaGen, layoutGen uint64
		hdr                int64
	}
	saved := make([]shardMeta, len(c.shards))
	for i, sh := range c.shards {
		saved[i] = shardMeta{meta: sh.meta, metaGen: sh.metaGen, layoutGen: sh.layoutGen, hdr: sh.hdrBound}
	}
	var x indexState
	if c.index != nil {
		x = *c.index
	}
	edits := c.edits
	return func() {
		for i, sh := range c.shards {
			sh.meta, sh.metaGen, sh.layoutGen, sh.hdrBound = saved[i].meta, saved[i].metaGen, saved[i].layoutGen, saved[i].hdr
		}
		if c.index != nil {
			c.index.meta, c.index.metaGen, c.index.layoutGen, c.index.hdrBound = x.meta, x.metaGen, x.layoutGen, x.hdrBound
		}
		c.edits = edits
	}
}
