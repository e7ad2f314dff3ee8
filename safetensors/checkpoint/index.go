package checkpoint

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// indexState is the index of a sharded checkpoint. Its weight_map and
// metadata.total_size are derived from the tensors whenever it is written,
// so they always match the shards; other metadata members and top-level
// members are kept as they were (or as SetIndexMetadata set them).
type indexState struct {
	name   string // below the checkpoint's directory
	path   string // cdir.join(name), for messages
	extra  map[string]json.RawMessage
	meta   map[string]json.RawMessage // without total_size, which is derived
	unlock func() error               // read-write: the set's lock
	ident  identity
	// layoutGen counts changes that alter the index (keys added, removed or
	// renamed, sizes changed, its metadata edited); persistedLayout is its
	// value when it was last written.
	layoutGen, persistedLayout uint64
	// metaGen counts changes of meta; loggedMetaGen is its value when the
	// log last recorded it.
	metaGen, loggedMetaGen uint64
	// hdrBound bounds the index's rendered size (see indexBound); 0 when
	// not known.
	hdrBound int64
}

// bump records a change the index derives from (keys, sizes); nil-safe
// for a plain checkpoint.
func (x *indexState) bump() {
	if x != nil {
		x.layoutGen++
	}
}

// setMeta replaces the metadata members (total_size aside).
func (x *indexState) setMeta(m map[string][]byte) {
	x.meta = make(map[string]json.RawMessage, len(m))
	for k, v := range m {
		if k != totalSizeKey {
			x.meta[k] = json.RawMessage(v)
		}
	}
}

// totalSizeKey is the metadata member huggingface_hub derives.
const totalSizeKey = "total_size"

func newIndexState(d *cdir, name string, idx *safetensors.Index) *indexState {
	x := &indexState{name: name, path: d.join(name), extra: idx.Extra, meta: maps.Clone(idx.Metadata)}
	if x.meta == nil {
		x.meta = map[string]json.RawMessage{}
	}
	delete(x.meta, totalSizeKey)
	return x
}

// openIndex takes the set's write lock on the index file and remembers the
// index as it is on disk.
func openIndex(d *cdir, name string, idx *safetensors.Index) (*indexState, error) {
	x := newIndexState(d, name, idx)
	if err := x.lock(d); err != nil {
		return nil, err
	}
	return x, nil
}

// lock locks the index file at its name (after a rewrite: the new inode,
// whose lock the rewrite handed over) and records its identity. It is
// opened through the directory, never through a symlink (dirfs.go): the
// index is rewritten by rename, and must be the directory's own file.
func (x *indexState) lock(d *cdir) error {
	if x.unlock != nil {
		// Already locked: a lock on the same inode again would conflict
		// with our own.
		if now, err := identityAt(d, x.name); err == nil && now.dev == x.ident.dev && now.ino == x.ident.ino {
			x.ident = now
			return nil
		}
	}
	f, err := d.open(x.name, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	unlock, err := lockFile(d, x.name, f)
	if err != nil {
		return err
	}
	ident, err := fileIdentity(f)
	if err != nil {
		unlock()
		return err
	}
	if x.unlock != nil {
		x.unlock()
	}
	x.unlock, x.ident = unlock, ident
	return nil
}

func (c *Checkpoint) closeIndex() {
	if c.index != nil && c.index.unlock != nil {
		c.index.unlock()
		c.index.unlock = nil
	}
}

// render is the index for the given tensors (key -> shard name and byte
// size), in transformers' format.
func (x *indexState) render(keys, shards []string, sizes []uint64) ([]byte, error) {
	idx := &safetensors.Index{Extra: x.extra, WeightMap: make(map[string]string, len(keys))}
	var total uint64
	for i, k := range keys {
		idx.WeightMap[k] = shards[i]
		total += sizes[i]
	}
	idx.Metadata = maps.Clone(x.meta)
	idx.Metadata[totalSizeKey] = json.RawMessage(strconv.FormatUint(total, 10))
	return idx.Marshal()
}

// IndexMetadata returns the index's "metadata" object of a sharded
// checkpoint, total_size (the sum of the tensors' sizes) included; nil for
// a plain checkpoint.
func (c *Checkpoint) IndexMetadata() map[string]json.RawMessage {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.index == nil {
		return nil
	}
	m := maps.Clone(c.index.meta)
	var total uint64
	for _, t := range c.tensors {
		if t != nil {
			total += uint64(t.want())
		}
	}
	m[totalSizeKey] = json.RawMessage(strconv.FormatUint(total, 10))
	return m
}

// SetIndexMetadata replaces the members of the index's metadata object.
// total_size is derived from the tensors: a value given for it is ignored.
// Values must be valid JSON.
func (c *Checkpoint) SetIndexMetadata(m map[string]json.RawMessage) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.setIndexMetadata(m)
}

// setIndexMetadata is SetIndexMetadata; caller holds mu.
func (c *Checkpoint) setIndexMetadata(m map[string]json.RawMessage) error {
	if err := c.editable(); err != nil {
		return err
	}
	if c.index == nil {
		return fmt.Errorf("%s has no index: %w", c.path, ErrInvalid)
	}
	meta := make(map[string]json.RawMessage, len(m))
	for k, v := range m {
		if k == totalSizeKey {
			continue
		}
		if !json.Valid(v) {
			return fmt.Errorf("index metadata %q: %q is not JSON: %w", k, v, ErrInvalid)
		}
		meta[k] = slices.Clone(v)
	}
	if maps.EqualFunc(meta, c.index.meta, func(a, b json.RawMessage) bool { return string(a) == string(b) }) {
		return nil
	}
	// The index's size with the new metadata, rendered: this is rare.
	old, bound := c.index.meta, c.index.hdrBound
	c.index.meta, c.index.hdrBound = meta, 0
	if n := c.indexBound(); n > indexLimit {
		c.index.meta, c.index.hdrBound = old, bound
		return fmt.Errorf("index metadata: %w (the index %s would be %d bytes, above the limit of %d)", ErrIndexLimit, c.index.name, n, indexLimit)
	}
	c.index.meta = meta
	c.index.layoutGen++
	c.index.metaGen++
	c.edits++
	return nil
}
