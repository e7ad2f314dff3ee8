package checkpoint

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// The mutations below change only the in-memory state; Sync makes them
// durable. Each one checks the rule it could break and refuses with an
// error naming the key, leaving the state unchanged.

// editable reports why the state may take no edit: a read-only
// checkpoint, or one whose edits were diverted to a recovery file because
// another program changed it while mounted. From then on the mount takes
// no more edits, as ext4 turns read-only after an error: the recovery
// file, written once, keeps holding every edit the mount made, where
// going on would write a whole new copy of the checkpoint per edit.
// Caller holds mu.
func (c *Checkpoint) editable() error {
	if c.readOnly {
		return ErrReadOnly
	}
	if c.recovery != "" {
		return fmt.Errorf("%w: %s was changed by another program while mounted, and this mount takes no more edits (those it made are in %s; unmount it and mount the checkpoint again)", ErrReadOnly, c.path, c.recovery)
	}
	return nil
}

func (c *Checkpoint) writable(id ID) (*tensor, error) {
	if err := c.editable(); err != nil {
		return nil, err
	}
	t := c.get(id)
	if t == nil {
		return nil, fmt.Errorf("tensor %d: %w", id, ErrNotFound)
	}
	return t, nil
}

// WriteAt writes p at off into tensor id. A write that would make a fixed-size
// tensor longer than dtype x shape is refused (ErrSize). A rewrite from a
// truncate goes through Stage instead.
func (c *Checkpoint) WriteAt(id ID, p []byte, off int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, err := c.writable(id)
	if errors.Is(err, ErrNotFound) && c.removed[id] != nil {
		return c.removed[id].cur.write(p, off)
	}
	if err != nil {
		return err
	}
	end := off + int64(len(p))
	if !t.growable && end > t.want() {
		return sizeError(t, end)
	}
	if err := t.cur.write(p, off); err != nil {
		return fmt.Errorf("tensor %q: %w", t.key, err)
	}
	if t.growable {
		t.shape = []uint64{uint64(t.cur.size)}
		c.layoutChanged(t.shard, true)
	}
	t.touch()
	c.mark(t)
	c.edits++
	return nil
}

// mark records that t changed since the last commit. Caller holds mu.
func (c *Checkpoint) mark(t *tensor) { c.dirty[t] = struct{}{} }

// Truncate sets the size of a tensor created as a plain file (its shape
// follows). A fixed-size tensor keeps dtype x shape: truncating it to that
// size changes nothing, to another size is refused (ErrSize); a rewrite
// that starts with a truncate belongs to the descriptor that does it
// (Stage).
func (c *Checkpoint) Truncate(id ID, size int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, err := c.writable(id)
	if err != nil {
		return err
	}
	switch {
	case t.growable:
		t.cur.truncate(size)
		t.shape = []uint64{uint64(size)}
		c.layoutChanged(t.shard, true)
	case size == t.cur.size:
		return nil
	default:
		return fmt.Errorf("tensor %q: truncating to %d bytes, but %s %s holds %d: %w",
			t.key, size, t.dtype, safetensors.ShapeString(t.shape), t.want(), ErrSize)
	}
	t.touch()
	c.mark(t)
	c.edits++
	return nil
}

// Growable reports whether tensor id is a plain file created in the mount
// that no dtype or shape was given yet (its shape follows its bytes).
func (c *Checkpoint) Growable(id ID) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	t := c.get(id)
	return t != nil && t.growable
}

// Create adds an empty tensor. A growable one is a 1-D U8 tensor whose
// shape follows the bytes written (a plain file created in the mount).
func (c *Checkpoint) Create(key string) (ID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkNewKey(key); err != nil {
		return 0, err
	}
	now := time.Now().UnixNano()
	t := &tensor{key: key, dtype: safetensors.U8, shape: []uint64{0}, shard: c.shardFor(key), cur: memoryContent(nil), growable: true, mtime: now, ctime: now}
	d := headerDelta{t.shard: t.entryBound(), indexFile: c.indexEntry(key, t.shard)}
	if err := c.checkHeader(d, fmt.Sprintf("tensor %q", key)); err != nil {
		return 0, err
	}
	c.applyHeader(d)
	return c.add(t), nil
}

// Put creates or replaces the tensor at key with the given dtype, shape and
// bytes (a .npy written into the mount). data is kept, not copied.
func (c *Checkpoint) Put(key string, dtype safetensors.DType, shape []uint64, data []byte) (ID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.put(key, dtype, shape, data)
}

// put is Put; caller holds mu.
func (c *Checkpoint) put(key string, dtype safetensors.DType, shape []uint64, data []byte) (ID, error) {
	if err := c.editable(); err != nil {
		return 0, err
	}
	n, err := safetensors.ByteSize(dtype, shape)
	if err != nil {
		return 0, fmt.Errorf("tensor %q: %v: %w", key, err, ErrInvalid)
	}
	if uint64(len(data)) != n {
		return 0, fmt.Errorf("tensor %q: %d bytes of data, but %s %s needs %d: %w",
			key, len(data), dtype, safetensors.ShapeString(shape), n, ErrSize)
	}
	if id, ok := c.byKey[key]; ok {
		t := c.tensors[id]
		if !t.growable && t.dtype == dtype && slices.Equal(t.shape, shape) {
			// Same dtype and shape (np.save over a tensor): new bytes in
			// place, logged and written back as an edit, not a new layout.
			if err := t.cur.write(data, 0); err != nil {
				return id, fmt.Errorf("tensor %q: %w", key, err)
			}
			t.touch()
			c.mark(t)
			c.edits++
			return id, nil
		}
		d := headerDelta{t.shard: safetensors.EntryBound(key, dtype, shape, false) - t.entryBound()}
		if err := c.checkHeader(d, fmt.Sprintf("tensor %q", key)); err != nil {
			return id, err
		}
		c.applyHeader(d)
		t.touch()
		c.mark(t)
		c.edits++
		t.dtype, t.shape, t.cur, t.growable = dtype, shape, memoryContent(data), false
		t.replaced = true
		c.layoutChanged(t.shard, true)
		return id, nil
	}
	if err := c.checkNewKey(key); err != nil {
		return 0, err
	}
	now := time.Now().UnixNano()
	t := &tensor{key: key, dtype: dtype, shape: shape, shard: c.shardFor(key), cur: memoryContent(data), mtime: now, ctime: now}
	d := headerDelta{t.shard: t.entryBound(), indexFile: c.indexEntry(key, t.shard)}
	if err := c.checkHeader(d, fmt.Sprintf("tensor %q", key)); err != nil {
		return 0, err
	}
	c.applyHeader(d)
	return c.add(t), nil
}

// PutNew is Put of a tensor that must be new: a key that exists is
// refused (ErrExists), never replaced.
func (c *Checkpoint) PutNew(key string, dtype safetensors.DType, shape []uint64, data []byte) (ID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, taken := c.byKey[key]; taken {
		return 0, fmt.Errorf("tensor %q: %w", key, ErrExists)
	}
	return c.put(key, dtype, shape, data)
}

// Replace gives tensor id new bytes, dtype and shape (a .npy written over
// its view). data is kept, not copied.
func (c *Checkpoint) Replace(id ID, dtype safetensors.DType, shape []uint64, data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.get(id)
	if t == nil {
		return fmt.Errorf("tensor %d: %w", id, ErrNotFound)
	}
	_, err := c.put(t.key, dtype, shape, data)
	return err
}

func (c *Checkpoint) add(t *tensor) ID {
	id := ID(len(c.tensors))
	c.tensors = append(c.tensors, t)
	c.byKey[t.key] = id
	c.mark(t)
	c.layoutChanged(t.shard, true)
	return id
}

func (c *Checkpoint) checkNewKey(key string) error {
	if err := c.editable(); err != nil {
		return err
	}
	if err := validKey(key); err != nil {
		return err
	}
	if _, ok := c.byKey[key]; ok {
		return fmt.Errorf("tensor %q: %w", key, ErrExists)
	}
	return nil
}

// Delete removes tensor id.
func (c *Checkpoint) Delete(id ID) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, err := c.writable(id)
	if err != nil {
		return err
	}
	c.deleteLocked(id, t)
	return nil
}

// deleteLocked removes tensor t (ID id). Caller holds mu.
func (c *Checkpoint) deleteLocked(id ID, t *tensor) {
	c.applyHeader(headerDelta{t.shard: -t.entryBound(), indexFile: -c.indexEntry(t.key, t.shard)})
	delete(c.byKey, t.key)
	c.tensors[id] = nil
	t.deleted = true
	delete(c.dirty, t)
	if t.logged.exists && !t.inFlight {
		// (A tensor in a batch being written is removed from the log by
		// apply, under the key that batch gives it.)
		c.gone = append(c.gone, t.logged.key)
	}
	c.keepRemoved(id, t)
	c.layoutChanged(t.shard, true)
}

// Rename gives tensor id a new key; several renames (a directory moved) go
// through RenameAll so they succeed or fail together.
func (c *Checkpoint) Rename(id ID, key string) error {
	return c.RenameAll(map[ID]string{id: key})
}

// RenameAll renames several tensors at once. Keys may be swapped among the
// renamed tensors; a new key may not belong to any other tensor.
func (c *Checkpoint) RenameAll(renames map[ID]string) error {
	return c.Move(renames, nil, nil)
}

// Retype is a dtype and shape for a tensor to take, if its bytes fit them.
type Retype struct {
	ID    ID
	DType safetensors.DType
	Shape []uint64
}

// Move is rename(2) over existing files, for tensors: the tensors in
// renames get their new keys and those in replaced (whose keys the renames
// take) are removed, all at once, so no commit can see the state between.
// A plain file moved over a tensor of its size may take that tensor's
// dtype and shape in the same step (adopt: rsync's temp file renamed over
// the tensor it replaces). Keys may be swapped among the renamed tensors;
// a new key may not belong to any other tensor.
func (c *Checkpoint) Move(renames map[ID]string, replaced []ID, adopt *Retype) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.editable(); err != nil {
		return err
	}
	gone := make(map[ID]bool, len(replaced))
	for _, id := range replaced {
		if c.get(id) == nil {
			return fmt.Errorf("tensor %d: %w", id, ErrNotFound)
		}
		if _, moving := renames[id]; moving {
			return fmt.Errorf("tensor %q is both moved and replaced: %w", c.tensors[id].key, ErrInvalid)
		}
		gone[id] = true
	}
	// Checked without copying the key map: a rename costs what it renames.
	targets := make(map[string]bool, len(renames))
	hdr, renamed := headerDelta{}, headerDelta{}
	for _, id := range replaced {
		t := c.tensors[id]
		hdr[t.shard] -= t.entryBound()
		hdr[indexFile] -= c.indexEntry(t.key, t.shard)
	}
	for id, key := range renames {
		t := c.get(id)
		if t == nil {
			return fmt.Errorf("tensor %d: %w", id, ErrNotFound)
		}
		if err := validKey(key); err != nil {
			return err
		}
		delta := safetensors.EntryBound(key, t.dtype, t.shape, t.growable) - t.entryBound()
		hdr[t.shard] += delta
		renamed[t.shard] += delta
		idx := c.indexEntry(key, t.shard) - c.indexEntry(t.key, t.shard)
		hdr[indexFile] += idx
		renamed[indexFile] += idx
		if targets[key] {
			return fmt.Errorf("tensor %q: %w", key, ErrExists)
		}
		targets[key] = true
		if other, ok := c.byKey[key]; ok {
			if _, moving := renames[other]; !moving && !gone[other] {
				return fmt.Errorf("tensor %q: %w", key, ErrExists)
			}
		}
	}
	// The dtype and shape a plain file moved over a tensor takes, if its
	// bytes fit them.
	var adopting *tensor
	if adopt != nil {
		if t := c.get(adopt.ID); t != nil && t.growable {
			if n, err := safetensors.ByteSize(adopt.DType, adopt.Shape); err == nil && int64(n) == t.cur.size {
				adopting = t
				key := t.key
				if k, ok := renames[adopt.ID]; ok {
					key = k
				}
				hdr[t.shard] += safetensors.EntryBound(key, adopt.DType, adopt.Shape, false) - safetensors.EntryBound(key, t.dtype, t.shape, true)
			}
		}
	}
	if err := c.checkHeader(hdr, "rename"); err != nil {
		return err
	}
	for _, id := range replaced {
		c.deleteLocked(id, c.tensors[id])
	}
	for id := range renames {
		delete(c.byKey, c.tensors[id].key)
	}
	for id, key := range renames {
		t := c.tensors[id]
		t.key = key
		c.byKey[key] = id
		t.changed()
		c.mark(t)
		c.layoutChanged(t.shard, true)
	}
	c.applyHeader(renamed)
	if adopting != nil {
		c.reshapeLocked(adopting, adopt.DType, adopt.Shape)
	}
	return nil
}

// Reshape reinterprets tensor id's bytes as dtype x shape; the byte size
// must not change.
func (c *Checkpoint) Reshape(id ID, dtype safetensors.DType, shape []uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, err := c.writable(id)
	if err != nil {
		return err
	}
	n, err := safetensors.ByteSize(dtype, shape)
	if err != nil {
		return fmt.Errorf("tensor %q: %v: %w", t.key, err, ErrInvalid)
	}
	if int64(n) != t.cur.size {
		return fmt.Errorf("tensor %q: %s %s needs %d bytes, the tensor has %d: %w",
			t.key, dtype, safetensors.ShapeString(shape), n, t.cur.size, ErrSize)
	}
	d := headerDelta{t.shard: safetensors.EntryBound(t.key, dtype, shape, false) - t.entryBound()}
	if err := c.checkHeader(d, fmt.Sprintf("tensor %q", t.key)); err != nil {
		return err
	}
	c.reshapeLocked(t, dtype, shape)
	return nil
}

// reshapeLocked gives t a dtype and shape of its byte size (its header
// bound follows; the caller checked it). Caller holds mu.
func (c *Checkpoint) reshapeLocked(t *tensor, dtype safetensors.DType, shape []uint64) {
	c.applyHeader(headerDelta{t.shard: safetensors.EntryBound(t.key, dtype, shape, false) - t.entryBound()})
	t.dtype, t.shape, t.growable = dtype, shape, false
	t.changed()
	c.mark(t)
	c.edits++
	c.layoutChanged(t.shard, false)
}

// SetMTime sets the modification time tensor id shows (touch, cp -p,
// rsync -a and tar set it after writing). A checkpoint stores no times, so
// it lasts as long as the mount and is no edit to persist.
func (c *Checkpoint) SetMTime(id ID, mtime time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, err := c.writable(id)
	if err != nil {
		return err
	}
	t.mtime, t.ctime = nanos(mtime), time.Now().UnixNano()
	return nil
}

// SetMetadata replaces the header's metadata. In a sharded checkpoint it
// replaces the entries all shards share (what Metadata shows) in every
// shard, leaving entries particular to one shard as they are.
func (c *Checkpoint) SetMetadata(m map[string]string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.setMetadata(m)
}

// setMetadata is SetMetadata; caller holds mu.
func (c *Checkpoint) setMetadata(m map[string]string) error {
	if err := c.editable(); err != nil {
		return err
	}
	if err := validMetadata(m); err != nil {
		return err
	}
	common := c.commonMeta()
	nexts := make([]map[string]string, len(c.shards))
	hdr := headerDelta{}
	for i, sh := range c.shards {
		next := maps.Clone(m)
		if next == nil {
			next = map[string]string{}
		}
		if len(c.shards) > 1 {
			if sh.meta == nil && len(m) == 0 {
				continue // no __metadata__ before, none needed now
			}
			for k, v := range sh.meta {
				if _, shared := common[k]; !shared {
					next[k] = v
				}
			}
		}
		if sh.meta != nil && maps.Equal(next, sh.meta) {
			continue
		}
		nexts[i] = next
		hdr[i] = safetensors.MetadataLen(next) - safetensors.MetadataLen(sh.meta)
	}
	if err := c.checkHeader(hdr, "__metadata__"); err != nil {
		return err
	}
	for i, sh := range c.shards {
		if nexts[i] == nil {
			continue
		}
		sh.meta = nexts[i]
		sh.metaGen++
		c.layoutChanged(i, false)
	}
	c.applyHeader(hdr)
	return nil
}

// layoutChanged records a change to shard's header; derived says it may
// change what the index derives from the tensors (keys, sizes).
func (c *Checkpoint) layoutChanged(shard int, derived bool) {
	c.shards[shard].layoutGen++
	if derived && c.index != nil {
		c.index.layoutGen++
	}
	c.edits++
}

// shardFor is the shard a new tensor goes to: the one holding the tensor
// whose key shares the longest prefix with key (in practice its siblings:
// model.layers.5.mlp.new joins model.layers.5.mlp.*), the last shard when
// no key shares a byte with it. Caller holds mu.
func (c *Checkpoint) shardFor(key string) int {
	best, bestLen := len(c.shards)-1, 0
	for _, t := range c.tensors {
		if t == nil {
			continue
		}
		n := commonPrefix(t.key, key)
		if n > bestLen || n == bestLen && n > 0 && t.shard > best {
			best, bestLen = t.shard, n
		}
	}
	return best
}

func commonPrefix(a, b string) int {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}
