package checkpoint

import (
	"fmt"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

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
				return bad(r, "put of %q: %d bytes for %s %s in shard %d", r.key, r.n, r.dtype, safetensors.ShapeString(r.shape), r.shard)
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
				return bad(r, "reshape of %q to %s %s", r.key, r.dtype, safetensors.ShapeString(r.shape))
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
	c.forgetHeaderBounds()
	return nil
}

// replayed marks t changed by a replayed record: its shard's header (and
// the index) will be written, and the log already holds its state.
func (c *Checkpoint) replayed(t *tensor) {
	t.logged = logState{key: t.key, shape: t.shape, dtype: t.dtype, exists: true}
	c.shards[t.shard].layoutGen++
	c.index.bump()
}

func (c *Checkpoint) byKeyT(key string) *tensor {
	if id, ok := c.byKey[key]; ok {
		return c.tensors[id]
	}
	return nil
}
