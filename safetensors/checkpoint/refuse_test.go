package checkpoint

import (
	"errors"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Edits the checkpoint could never be written back with (issue 15 item 4)
// are refused when made, with the state left as it was: after each, the
// checkpoint shows exactly the model, and closing writes exactly the
// model's canonical file, which validates.
// smallLimits lowers the header and index limits for a test: the rules
// are the same at any scale, and 100 MB strings are slow under -race.
//
// It changes them for the package: a test that calls it is not parallel
// (the parallel tests wait until the sequential ones are done).
func smallLimits(t *testing.T, header, index int64) {
	h, i := headerLimit, indexLimit
	headerLimit, indexLimit = header, index
	t.Cleanup(func() { headerLimit, indexLimit = h, i })
}

func TestLimitsAreTheRealOnes(t *testing.T) {
	t.Parallel()
	if headerLimit != safetensors.MaxHeaderSize || indexLimit != safetensors.MaxIndexSize {
		t.Fatalf("limits %d and %d, want the reader's %d and %d", headerLimit, indexLimit, safetensors.MaxHeaderSize, safetensors.MaxIndexSize)
	}
}

func TestRefusesEditsThatCouldNotBeWrittenBack(t *testing.T) {
	smallLimits(t, 1<<20, 1<<20)
	big := strings.Repeat("a", 1<<20-200)
	cases := []struct {
		name string
		edit func(c *Checkpoint) error
		want error
	}{
		{"metadata past the header limit", func(c *Checkpoint) error {
			return c.SetMetadata(map[string]string{"blob": big})
		}, ErrHeaderLimit},
		{"metadata key not UTF-8", func(c *Checkpoint) error {
			return c.SetMetadata(map[string]string{"a\xff": "x"})
		}, ErrInvalid},
		{"metadata value not UTF-8", func(c *Checkpoint) error {
			return c.SetMetadata(map[string]string{"a": "\xc3\x28"})
		}, ErrInvalid},
		{"new key not UTF-8", func(c *Checkpoint) error {
			_, err := c.Create("bad\xff")
			return err
		}, ErrInvalid},
		{"put key not UTF-8", func(c *Checkpoint) error {
			_, err := c.Put("bad\xfe", safetensors.U8, []uint64{1}, []byte{1})
			return err
		}, ErrInvalid},
		{"rename to a key not UTF-8", func(c *Checkpoint) error {
			return c.Rename(ckID(t, c, "embed"), "embed\x80")
		}, ErrInvalid},
		{"rename to __metadata__", func(c *Checkpoint) error {
			return c.Rename(ckID(t, c, "embed"), "__metadata__")
		}, ErrInvalid},
		{"a key past the header limit", func(c *Checkpoint) error {
			_, err := c.Create(big)
			return err
		}, ErrHeaderLimit},
		{"a rename past the header limit", func(c *Checkpoint) error {
			return c.Rename(ckID(t, c, "step"), big)
		}, ErrHeaderLimit},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := ckDefault()
			path := ckFile(t, m)
			c := ckOpen(t, path, Options{})
			if err := tc.edit(c); !errors.Is(err, tc.want) {
				t.Fatalf("%v, want %v", err, tc.want)
			}
			ckCheckState(t, c, m, "after the refusal")
			// The checkpoint goes on as if nothing happened.
			p := ctPattern(9, 4)
			if err := c.WriteAt(ckID(t, c, "params.b"), p, 0); err != nil {
				t.Fatal(err)
			}
			m.write("params.b", p, 0)
			if err := c.Close(); err != nil {
				t.Fatalf("Close after a refused edit: %v", err)
			}
			ckCheckFile(t, path, m, "after Close")
		})
	}
}

// TestHeaderLimitEdge: a header grown up to the limit by metadata still
// takes what fits and refuses the byte more; the file written validates.
func TestHeaderLimitEdge(t *testing.T) {
	smallLimits(t, 1<<20, 1<<20)
	m := ckDefault()
	path := ckFile(t, m)
	c := ckOpen(t, path, Options{})
	defer c.Close()
	// Room left: the bound counts offsets at 20 digits, so fill to just
	// under the bound's limit.
	c.mu.Lock()
	room := headerLimit - c.headerBound(0)
	c.mu.Unlock()
	meta := map[string]string{"framework": "flax"}
	extra := room - (safetensors.MetadataLen(map[string]string{"framework": "flax", "pad": ""}) - safetensors.MetadataLen(meta))
	meta["pad"] = strings.Repeat("p", int(extra))
	if err := c.SetMetadata(meta); err != nil {
		t.Fatalf("metadata filling the header to its bound: %v", err)
	}
	if _, err := c.Create("x"); !errors.Is(err, ErrHeaderLimit) {
		t.Fatalf("a tensor more: %v, want ErrHeaderLimit", err)
	}
	if err := c.Compact(); err != nil {
		t.Fatalf("writing back a header at the bound: %v", err)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatalf("the file written does not validate: %v", err)
	}
	if n := f.DataOffset() - 8; n > headerLimit {
		t.Errorf("header %d bytes, above the limit", n)
	}
	f.Close()
}

// The index of a sharded checkpoint is bounded too: a key that would take
// it past the size the next mount reads is refused when made.
func TestIndexLimit(t *testing.T) {
	smallLimits(t, 4<<20, 1<<20)
	m := shDefault()
	dir := shFiles(t, m)
	c := ckOpen(t, dir, Options{})
	defer c.Close()
	c.mu.Lock()
	room := indexLimit - c.indexBound()
	c.mu.Unlock()
	// A key whose index entry alone is too much (the header of its shard
	// takes it: one entry is far from 100 MB).
	long := strings.Repeat("k", int(room)+100)
	if _, err := c.Create(long); !errors.Is(err, ErrIndexLimit) {
		t.Fatalf("a key past the index limit: %v, want ErrIndexLimit", err)
	}
	if err := c.Rename(ckID(t, c, "step"), long); !errors.Is(err, ErrIndexLimit) {
		t.Fatalf("a rename past the index limit: %v, want ErrIndexLimit", err)
	}
	if _, err := c.Create(strings.Repeat("k", int(room)/2)); err != nil {
		t.Fatalf("a key that fits: %v", err)
	}
	ckCheckState(t, c, func() *ckModel {
		u := m.union()
		u.tensors[strings.Repeat("k", int(room)/2)] = ckTensor{safetensors.U8, []uint64{0}, nil}
		return u
	}(), "after the refusals")
}
