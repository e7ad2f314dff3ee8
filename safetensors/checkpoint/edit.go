package checkpoint

import (
	"fmt"
	"maps"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// The mutations below change only the in-memory state; Sync makes them
// durable. Each one checks the rule it could break and refuses with an
// error naming the key, leaving the state unchanged.

func (c *Checkpoint) writable(id ID) (*tensor, error) {
	if c.readOnly {
		return nil, ErrReadOnly
	}
	t := c.get(id)
	if t == nil {
		return nil, fmt.Errorf("tensor %d: %w", id, ErrNotFound)
	}
	return t, nil
}

// WriteAt writes p at off into tensor id. A write that would make a fixed-size
// tensor longer than dtype x shape is refused (ErrSize); a tensor being
// rewritten after a truncate takes its new bytes as staged content until its
// size matches again.
func (c *Checkpoint) WriteAt(id ID, p []byte, off int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, err := c.writable(id)
	if err != nil {
		return err
	}
	end := off + int64(len(p))
	switch {
	case t.growable:
		t.cur.write(p, off)
		t.shape = []uint64{uint64(t.cur.size)}
		c.layoutChanged(t.shard, true)
	case end > t.want():
		return fmt.Errorf("tensor %q: writing up to byte %d, but %s %s holds %d bytes: %w",
			t.key, end, t.dtype, shapeString(t.shape), t.want(), ErrSize)
	case t.staged != nil:
		t.staged.write(p, off)
		t.promote()
	default:
		t.cur.write(p, off)
	}
	t.gen++
	c.edits++
	return nil
}

// promote makes a staged rewrite the committed content once its size is
// right again.
func (t *tensor) promote() {
	if t.staged != nil && t.staged.size == t.want() {
		t.cur, t.staged = t.staged, nil
	}
}

// Truncate sets tensor id's visible size (ftruncate, O_TRUNC). A size other
// than dtype x shape starts a staged rewrite; the committed bytes stay what
// persistence sees until the rewrite reaches the right size.
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
	case t.staged == nil && size == t.cur.size:
		return nil
	default:
		if t.staged == nil {
			t.staged = t.cur.clone()
		}
		t.staged.truncate(size)
		t.promote()
	}
	t.gen++
	c.edits++
	return nil
}

// EndWrite is called when a handle that wrote tensor id is closed: a rewrite
// that did not end at the tensor's size is refused and the tensor keeps its
// previous bytes.
func (c *Checkpoint) EndWrite(id ID) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.get(id)
	if t == nil || t.staged == nil {
		return nil
	}
	got := t.staged.size
	t.staged = nil
	t.gen++
	c.edits++
	return fmt.Errorf("tensor %q: %d bytes written, but %s %s needs %d; kept the previous bytes: %w",
		t.key, got, t.dtype, shapeString(t.shape), t.want(), ErrSize)
}

// Create adds an empty tensor. A growable one is a 1-D U8 tensor whose
// shape follows the bytes written (a plain file created in the mount).
func (c *Checkpoint) Create(key string) (ID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkNewKey(key); err != nil {
		return 0, err
	}
	t := &tensor{key: key, dtype: safetensors.U8, shape: []uint64{0}, shard: c.shardFor(key), cur: memoryContent(nil), growable: true}
	return c.add(t), nil
}

// Put creates or replaces the tensor at key with the given dtype, shape and
// bytes (a .npy written into the mount). data is kept, not copied.
func (c *Checkpoint) Put(key string, dtype safetensors.DType, shape []uint64, data []byte) (ID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.readOnly {
		return 0, ErrReadOnly
	}
	n, err := safetensors.ByteSize(dtype, shape)
	if err != nil {
		return 0, fmt.Errorf("tensor %q: %v: %w", key, err, ErrInvalid)
	}
	if uint64(len(data)) != n {
		return 0, fmt.Errorf("tensor %q: %d bytes of data, but %s %s needs %d: %w",
			key, len(data), dtype, shapeString(shape), n, ErrSize)
	}
	if id, ok := c.byKey[key]; ok {
		t := c.tensors[id]
		t.dtype, t.shape, t.cur, t.staged, t.growable = dtype, shape, memoryContent(data), nil, false
		t.gen++
		c.edits++
		c.layoutChanged(t.shard, true)
		return id, nil
	}
	if err := c.checkNewKey(key); err != nil {
		return 0, err
	}
	return c.add(&tensor{key: key, dtype: dtype, shape: shape, shard: c.shardFor(key), cur: memoryContent(data)}), nil
}

func (c *Checkpoint) add(t *tensor) ID {
	id := ID(len(c.tensors))
	c.tensors = append(c.tensors, t)
	c.byKey[t.key] = id
	c.layoutChanged(t.shard, true)
	return id
}

func (c *Checkpoint) checkNewKey(key string) error {
	if c.readOnly {
		return ErrReadOnly
	}
	if key == "__metadata__" {
		return fmt.Errorf("tensor %q: the key is reserved for the header's metadata: %w", key, ErrInvalid)
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
	delete(c.byKey, t.key)
	c.tensors[id] = nil
	c.layoutChanged(t.shard, true)
	return nil
}

// Rename gives tensor id a new key; several renames (a directory moved) go
// through RenameAll so they succeed or fail together.
func (c *Checkpoint) Rename(id ID, key string) error {
	return c.RenameAll(map[ID]string{id: key})
}

// RenameAll renames several tensors at once. Keys may be swapped among the
// renamed tensors; a new key may not belong to any other tensor.
func (c *Checkpoint) RenameAll(renames map[ID]string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.readOnly {
		return ErrReadOnly
	}
	taken := maps.Clone(c.byKey)
	for id := range renames {
		t := c.get(id)
		if t == nil {
			return fmt.Errorf("tensor %d: %w", id, ErrNotFound)
		}
		delete(taken, t.key)
	}
	for id, key := range renames {
		if key == "__metadata__" {
			return fmt.Errorf("tensor %q: the key is reserved for the header's metadata: %w", key, ErrInvalid)
		}
		if _, ok := taken[key]; ok {
			return fmt.Errorf("tensor %q: %w", key, ErrExists)
		}
		taken[key] = id
	}
	for id, key := range renames {
		t := c.tensors[id]
		t.key = key
		t.gen++
		c.layoutChanged(t.shard, true)
	}
	c.byKey = taken
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
	if int64(n) != t.cur.size || t.staged != nil {
		return fmt.Errorf("tensor %q: %s %s needs %d bytes, the tensor has %d: %w",
			t.key, dtype, shapeString(shape), n, t.cur.size, ErrSize)
	}
	t.dtype, t.shape, t.growable = dtype, shape, false
	t.gen++
	c.edits++
	c.layoutChanged(t.shard, false)
	return nil
}

// SetMetadata replaces the header's metadata. In a sharded checkpoint it
// replaces the entries all shards share (what Metadata shows) in every
// shard, leaving entries particular to one shard as they are.
func (c *Checkpoint) SetMetadata(m map[string]string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.readOnly {
		return ErrReadOnly
	}
	common := c.commonMeta()
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
		sh.meta = next
		c.layoutChanged(i, false)
	}
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

func shapeString(shape []uint64) string {
	b := []byte{'['}
	for i, d := range shape {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, "%d", d)
	}
	return string(append(b, ']'))
}
