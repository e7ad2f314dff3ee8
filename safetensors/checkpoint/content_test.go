package checkpoint

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// Tests of content, the chunked copy-on-write bytes of one tensor, against
// a plain []byte model of what the bytes should be.

// ctPattern is n deterministic bytes that differ between seeds and between
// positions, so a byte read from the wrong place or version shows.
func ctPattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0x5afe))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func ctFlatten(segs [][]byte) []byte {
	var b []byte
	for _, s := range segs {
		b = append(b, s...)
	}
	return b
}

// ctCheck asserts the content shows exactly want, through both ways the
// package reads it (segments for FUSE reads, readAt for the writer), and that
// its invariants hold.
func ctCheck(t *testing.T, c *content, want []byte, what string) {
	t.Helper()
	if c.size != int64(len(want)) {
		t.Fatalf("%s: size %d, want %d", what, c.size, len(want))
	}
	if got := ctFlatten(c.segments(0, c.size+10)); !bytes.Equal(got, want) {
		t.Fatalf("%s: segments differ from the model (first difference at %d)", what, firstDiff(got, want))
	}
	got := make([]byte, len(want))
	if n, err := c.readAt(got, 0); err != nil || n != len(want) || !bytes.Equal(got, want) {
		t.Fatalf("%s: readAt returned %d bytes, differing at %d", what, n, firstDiff(got, want))
	}
	if int64(len(c.base)) > c.size {
		t.Fatalf("%s: base is %d bytes, longer than the size %d", what, len(c.base), c.size)
	}
	for idx, ch := range c.chunks {
		if len(ch) != chunkSize {
			t.Fatalf("%s: chunk %d is %d bytes", what, idx, len(ch))
		}
		lo := idx * chunkSize
		if lo >= c.size {
			t.Fatalf("%s: chunk %d lies wholly past the size %d", what, idx, c.size)
		}
		for i := max(c.size-lo, 0); i < chunkSize; i++ {
			if ch[i] != 0 {
				t.Fatalf("%s: chunk %d has a non-zero byte past the size (at %d)", what, idx, lo+i)
			}
		}
	}
}

func firstDiff(a, b []byte) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}

func TestContentWriteAcrossChunks(t *testing.T) {
	t.Parallel()
	const size = 3*chunkSize + 100
	model := ctPattern(1, size)
	c := memoryContent(bytes.Clone(model))
	ctCheck(t, c, model, "fresh")
	writes := []struct {
		name string
		off  int64
		n    int
	}{
		{"straddles chunks 0 and 1", chunkSize - 10, 20},
		{"spans chunks 1, 2 and 3", 2*chunkSize - 1, chunkSize + 2},
		{"exactly chunk 0", 0, chunkSize},
		{"inside chunk 1 again", chunkSize + 5, 3},
		{"last bytes", size - 7, 7},
		{"one byte at a chunk start", 2 * chunkSize, 1},
	}
	for i, w := range writes {
		p := ctPattern(uint64(100+i), w.n)
		c.write(p, w.off)
		copy(model[w.off:], p)
		ctCheck(t, c, model, w.name)
	}
	if len(c.chunks) != 4 {
		t.Errorf("%d chunks after writes touching all 4, want 4", len(c.chunks))
	}
	// The base is never written: it may be a read-only mapping.
	if !bytes.Equal(c.base, ctPattern(1, size)) {
		t.Error("a write modified the base")
	}
	// Growing by a write past the end: a gap of zeros, then the bytes.
	p := ctPattern(200, 10)
	c.write(p, size+chunkSize)
	model = append(model, make([]byte, chunkSize)...)
	model = append(model, p...)
	ctCheck(t, c, model, "write past the end")
}

func TestContentTruncateShrinkThenGrowReadsZeros(t *testing.T) {
	t.Parallel()
	const size = 2*chunkSize + chunkSize/2
	for _, tc := range []struct {
		name   string
		edited []int64 // chunks written before the truncate
		cut    int64
	}{
		{"inside the base", nil, chunkSize + 5},
		{"inside an edited chunk", []int64{1}, chunkSize + 5},
		{"at a chunk boundary", []int64{0, 1, 2}, chunkSize},
		{"to zero", []int64{2}, 0},
		{"edited chunk past the cut", []int64{2}, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			model := ctPattern(2, size)
			c := memoryContent(bytes.Clone(model))
			for _, idx := range tc.edited {
				p := ctPattern(uint64(10+idx), 50)
				c.write(p, idx*chunkSize+2)
				copy(model[idx*chunkSize+2:], p)
			}
			before := c.segments(0, size)
			old := bytes.Clone(model)
			c.truncate(tc.cut)
			model = model[:tc.cut]
			ctCheck(t, c, model, "shrunk")
			c.truncate(3 * chunkSize)
			model = append(model, make([]byte, 3*chunkSize-tc.cut)...)
			ctCheck(t, c, model, "grown again")
			// Truncate copies a chunk it cuts: slices handed out before
			// still show the bytes they showed.
			if got := ctFlatten(before); !bytes.Equal(got, old) {
				t.Errorf("a slice read before the truncate changed (at %d)", firstDiff(got, old))
			}
			// Writing after the regrow lands where it should.
			p := ctPattern(99, 30)
			c.write(p, 3*chunkSize-15)
			model = append(model[:3*chunkSize-15], p...)
			ctCheck(t, c, model, "written after the regrow")
		})
	}
}

func TestContentSegmentsMergeBaseRuns(t *testing.T) {
	t.Parallel()
	const size = 4 * chunkSize
	base := ctPattern(3, size)
	c := memoryContent(base)
	if segs := c.segments(0, size); len(segs) != 1 || len(segs[0]) != size {
		t.Fatalf("an unedited read is %d segments, want one slice of the base", len(segs))
	}
	if segs := c.segments(chunkSize/2, 2*chunkSize); len(segs) != 1 || &segs[0][0] != &base[chunkSize/2] {
		t.Fatalf("an unedited read across chunks is %d segments, want one slice of the base", len(segs))
	}
	c.write([]byte{1, 2, 3}, 2*chunkSize+7)
	segs := c.segments(0, size)
	if len(segs) != 3 || len(segs[0]) != 2*chunkSize || len(segs[1]) != chunkSize || len(segs[2]) != chunkSize {
		lens := []int{}
		for _, s := range segs {
			lens = append(lens, len(s))
		}
		t.Fatalf("read around one edited chunk: segment lengths %v, want [2 chunks of base, the chunk, 1 chunk of base]", lens)
	}
	if &segs[0][0] != &base[0] || &segs[2][0] != &base[3*chunkSize] {
		t.Error("base runs are not slices of the base")
	}
	// Reads are clipped to the size, and past it return nothing.
	if got := ctFlatten(c.segments(size-5, 100)); len(got) != 5 {
		t.Errorf("read over the end returned %d bytes, want 5", len(got))
	}
	if segs := c.segments(size, 10); len(segs) != 0 {
		t.Errorf("read at the end returned %d segments", len(segs))
	}
	// A grown tensor: the base, then zeros no longer than a chunk each.
	c = memoryContent(ctPattern(4, chunkSize/2))
	c.truncate(3 * chunkSize)
	segs = c.segments(0, 3*chunkSize)
	if len(segs) < 2 || len(segs[0]) != chunkSize/2 {
		t.Fatalf("grown content: %d segments", len(segs))
	}
	for _, s := range segs[1:] {
		if len(s) > chunkSize || !bytes.Equal(s, make([]byte, len(s))) {
			t.Fatal("the grown part is not zeros")
		}
	}
}

func TestContentCopyOnWrite(t *testing.T) {
	t.Parallel()
	const size = 3 * chunkSize
	base := ctPattern(5, size)
	c := memoryContent(bytes.Clone(base))
	c.write(ctPattern(6, 100), chunkSize+10) // chunk 1 is now an edit chunk
	model := ctFlatten(c.segments(0, size))

	held := c.segments(0, size) // what a FUSE read still sending its reply holds
	clone := c.clone()          // what a persist in progress holds
	// Partial and whole-chunk writes over every chunk, and a truncate.
	c.write(ctPattern(7, 50), 20)
	c.write(ctPattern(8, 30), chunkSize+5)
	c.write(ctPattern(9, chunkSize), 2*chunkSize)
	c.truncate(chunkSize + 7)

	if got := ctFlatten(held); !bytes.Equal(got, model) {
		t.Errorf("slices read before the writes changed (first difference at %d)", firstDiff(got, model))
	}
	ctCheck(t, clone, model, "clone taken before the writes")
	// And the other way: writes to the clone leave the original alone.
	now := ctFlatten(c.segments(0, c.size))
	clone.write(ctPattern(10, 2*chunkSize), 1)
	ctCheck(t, c, now, "original after writes to its clone")
}

// TestContentRandom runs seeded random writes and truncates against the
// model, checking every read path and invariant after each.
func TestContentRandom(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(11, 12))
	for iter := range 15 {
		n := r.IntN(3 * chunkSize)
		model := ctPattern(uint64(iter), n)
		c := memoryContent(bytes.Clone(model))
		var held [][]byte
		var heldWant []byte
		for op := range 40 {
			switch r.IntN(5) {
			case 0:
				size := int64(r.IntN(4 * chunkSize))
				c.truncate(size)
				if size <= int64(len(model)) {
					model = model[:size]
				} else {
					model = append(model, make([]byte, size-int64(len(model)))...)
				}
			case 1:
				// Hold a read across later edits.
				off := int64(r.IntN(len(model) + 1))
				held = c.segments(off, r.Int64N(2*chunkSize))
				heldWant = bytes.Clone(ctFlatten(held))
			default:
				off := int64(r.IntN(4 * chunkSize))
				p := ctPattern(uint64(iter*1000+op), 1+r.IntN(chunkSize+chunkSize/2))
				c.write(p, off)
				if end := off + int64(len(p)); end > int64(len(model)) {
					model = append(model, make([]byte, end-int64(len(model)))...)
				}
				copy(model[off:], p)
			}
			ctCheck(t, c, model, "random edits")
			if got := ctFlatten(held); !bytes.Equal(got, heldWant) {
				t.Fatalf("iteration %d op %d: a held read changed", iter, op)
			}
		}
	}
}
