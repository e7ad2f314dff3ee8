package checkpoint

import (
	"fmt"
	"unicode/utf8"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// An edit the checkpoint could never be written back with is refused when
// it is made, never acknowledged (the write-back would fail later, with
// the edit already promised). Two rules are checked here: every key and
// metadata string is UTF-8 (a header is JSON), and no shard's header may
// pass the reference reader's limit of safetensors.MaxHeaderSize bytes.
// The header is not rendered for that: each shard keeps a bound of what
// its header may reach (keys, dtypes, shapes and metadata counted exactly,
// data offsets at their longest), computed once, when first needed, and
// moved by each edit before it is applied. A header is refused slightly
// before the reference would refuse it, by at most 40 bytes a tensor.

// ErrHeaderLimit: an edit after which a shard's header could pass the
// limit the reference reader enforces.
var ErrHeaderLimit = fmt.Errorf("%w: the header would pass the safetensors limit of %d bytes", ErrSize, safetensors.MaxHeaderSize)

// ErrIndexLimit: an edit after which the index of a sharded checkpoint
// could pass the size safejaxfs (and so the next mount) reads.
var ErrIndexLimit = fmt.Errorf("%w: the index would pass its size limit", ErrHeaderLimit)

func (t *tensor) entryBound() int64 {
	return safetensors.EntryBound(t.key, t.dtype, t.shape, t.growable)
}

// The limits checked: the reference reader's header limit and the size an
// index may have to be read back. Variables so that tests can check the
// rules at a smaller scale (TestLimitsAreTheReal ones pins the defaults).
var (
	headerLimit int64 = safetensors.MaxHeaderSize
	indexLimit  int64 = safetensors.MaxIndexSize
)

// indexFile is the headerDelta key of a sharded checkpoint's index, whose
// size is bounded the same way, by safetensors.MaxIndexSize.
const indexFile = -1

// indexEntry is what tensor key in shard si adds to the index; 0 for a
// checkpoint without one.
func (c *Checkpoint) indexEntry(key string, si int) int64 {
	if c.index == nil {
		return 0
	}
	return safetensors.IndexEntryLen(key, c.shards[si].name)
}

// headerBound is shard si's bound (or the index's), computed if it is not
// known yet. Caller holds mu.
func (c *Checkpoint) headerBound(si int) int64 {
	if si == indexFile {
		return c.indexBound()
	}
	sh := c.shards[si]
	if sh.hdrBound > 0 {
		return sh.hdrBound
	}
	n := safetensors.HeaderBase + safetensors.MetadataLen(sh.meta)
	for _, t := range c.tensors {
		if t != nil && t.shard == si {
			n += t.entryBound()
		}
	}
	sh.hdrBound = n
	return n
}

// indexBound is the index's bound: its size as rendered now, with room
// for total_size to gain digits. Caller holds mu.
func (c *Checkpoint) indexBound() int64 {
	x := c.index
	if x.hdrBound > 0 {
		return x.hdrBound
	}
	var keys, shards []string
	var sizes []uint64
	for _, t := range c.tensors {
		if t != nil {
			keys = append(keys, t.key)
			shards = append(shards, c.shards[t.shard].name)
			sizes = append(sizes, uint64(t.want()))
		}
	}
	b, err := x.render(keys, shards, sizes)
	if err != nil {
		return indexLimit + 1 // refuse until it renders
	}
	x.hdrBound = int64(len(b)) + 20
	return x.hdrBound
}

// headerDelta is a change of some shards' bounds (and the index's, at
// indexFile) an edit would make.
type headerDelta map[int]int64

// check refuses the edit (what names it) if a shard's header could pass
// the limit after it. Caller holds mu.
func (c *Checkpoint) checkHeader(d headerDelta, what string) error {
	for si, delta := range d {
		if delta <= 0 || si == indexFile && c.index == nil {
			continue
		}
		if si == indexFile {
			if n := c.indexBound() + delta; n > indexLimit {
				return fmt.Errorf("%s: %w (the index %s could reach %d bytes, above the limit of %d)", what, ErrIndexLimit, c.index.name, n, indexLimit)
			}
			continue
		}
		if n := c.headerBound(si) + delta; n > headerLimit {
			return fmt.Errorf("%s: %w (its header in %s could reach %d bytes)", what, ErrHeaderLimit, c.shards[si].name, n)
		}
	}
	return nil
}

// applyHeader moves the bounds once the edit is applied. Caller holds mu.
func (c *Checkpoint) applyHeader(d headerDelta) {
	for si, delta := range d {
		switch {
		case si == indexFile:
			if c.index != nil && c.index.hdrBound > 0 {
				c.index.hdrBound += delta
			}
		case c.shards[si].hdrBound > 0:
			c.shards[si].hdrBound += delta
		}
	}
}

// forgetHeaderBounds makes every bound be computed again (after a replay,
// which changes the state record by record).
func (c *Checkpoint) forgetHeaderBounds() {
	for _, sh := range c.shards {
		sh.hdrBound = 0
	}
	if c.index != nil {
		c.index.hdrBound = 0
	}
}

// validKey refuses a key the format cannot hold.
func validKey(key string) error {
	switch {
	case key == "__metadata__":
		return fmt.Errorf("tensor %q: the key is reserved for the header's metadata: %w", key, ErrInvalid)
	case !utf8.ValidString(key):
		return fmt.Errorf("tensor %q: the key is not valid UTF-8 (a safetensors header is JSON): %w", key, ErrInvalid)
	}
	return nil
}

// validMetadata refuses metadata the format cannot hold.
func validMetadata(m map[string]string) error {
	for k, v := range m {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("__metadata__ entry %q: not valid UTF-8 (a safetensors header is JSON): %w", k, ErrInvalid)
		}
	}
	return nil
}
