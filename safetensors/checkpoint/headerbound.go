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

func (t *tensor) entryBound() int64 {
	return safetensors.EntryBound(t.key, t.dtype, t.shape, t.growable)
}

// headerBound is shard si's bound, computed if it is not known yet.
// Caller holds mu.
func (c *Checkpoint) headerBound(si int) int64 {
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

// headerDelta is a change of some shards' bounds an edit would make.
type headerDelta map[int]int64

// check refuses the edit (what names it) if a shard's header could pass
// the limit after it. Caller holds mu.
func (c *Checkpoint) checkHeader(d headerDelta, what string) error {
	for si, delta := range d {
		if n := c.headerBound(si) + delta; delta > 0 && n > safetensors.MaxHeaderSize {
			return fmt.Errorf("%s: %w (its header in %s could reach %d bytes)", what, ErrHeaderLimit, c.shards[si].name, n)
		}
	}
	return nil
}

// applyHeader moves the bounds once the edit is applied. Caller holds mu.
func (c *Checkpoint) applyHeader(d headerDelta) {
	for si, delta := range d {
		if sh := c.shards[si]; sh.hdrBound > 0 {
			sh.hdrBound += delta
		}
	}
}

// forgetHeaderBounds makes every bound be computed again (after a replay,
// which changes the state record by record).
func (c *Checkpoint) forgetHeaderBounds() {
	for _, sh := range c.shards {
		sh.hdrBound = 0
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
