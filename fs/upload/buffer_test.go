package upload

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/safejaxfs/safejaxfs/fs/namespace"
	"github.com/safejaxfs/safejaxfs/safetensors/npy"
)

// testPool is a pool spilling into a fresh directory, with the refusals
// it reported.
func testPool(t *testing.T, limit, spillAt, budget int64) (*Pool, *[]string) {
	var refusals []string
	p := &Pool{Dir: t.TempDir(), Limit: limit, SpillAt: spillAt, Budget: budget, Report: func(err error) { refusals = append(refusals, err.Error()) }}
	return p, &refusals
}

// errnoIs reports whether err is a refusal with errno want.
func errnoIs(err error, want syscall.Errno) bool {
	var e *Error
	return errors.As(err, &e) && e.Errno == want
}

func TestFlushRepeatsRefusal(t *testing.T) {
	p, refusals := testPool(t, 1<<30, SpillAt, MemoryBudget)
	u := p.New("x.npy", nil, false, 1<<20, nil)
	u.WriteAt([]byte("abc"), 0)
	calls := 0
	no := errors.New("no")
	refuse := func([]byte) error { calls++; return no }
	if err := u.Flush(refuse); err != no {
		t.Fatalf("first flush: %v", err)
	}
	// A later close of another descriptor of the same open file reports
	// the refusal again without committing again.
	if err := u.Flush(refuse); err != no || calls != 1 {
		t.Fatalf("second flush: %v after %d commits", err, calls)
	}
	u.WriteAt([]byte("d"), 3)
	ok := func(b []byte) error {
		if string(b) != "abcd" {
			t.Errorf("commit got %q", b)
		}
		return nil
	}
	if err := u.Flush(ok); err != nil {
		t.Fatalf("flush after a new write: %v", err)
	}
	// Past the limit: refused, nothing allocated.
	if err := u.Truncate(1 << 40); !errnoIs(err, syscall.EFBIG) || !errors.Is(err, ErrLimit) || u.Size() != 4 {
		t.Errorf("truncate past the limit: %v, size %d", err, u.Size())
	}
	if err := u.WriteAt([]byte("x"), 1<<20); !errnoIs(err, syscall.EFBIG) {
		t.Errorf("write past the limit: %v", err)
	}
	if len(*refusals) != 2 {
		t.Errorf("reported %q; want the two refusals of the limit (a commit's refusal is its taker's to report)", *refusals)
	}
}

// TestSharedAfterCommit: a commit may keep the bytes it was given; a later
// write must not change them.
func TestSharedAfterCommit(t *testing.T) {
	p, _ := testPool(t, 1<<30, SpillAt, MemoryBudget)
	u := p.New("x.npy", nil, true, 1<<20, nil)
	defer u.Close()
	u.WriteAt([]byte("abcd"), 0)
	var kept []byte
	u.Flush(func(b []byte) error { kept = b; return nil })
	u.WriteAt([]byte("X"), 0)
	if string(kept) != "abcd" {
		t.Errorf("a write after the commit changed the committed bytes to %q", kept)
	}
	if got := u.ReadAt(make([]byte, 8), 0); string(got) != "Xbcd" {
		t.Errorf("read back %q", got)
	}
}

// TestSpills: past SpillAt an upload moves to an unnamed temp file; a
// sparse one stays sparse there, reads back, and commits the bytes a
// memory upload would have; nothing is left in the spill directory.
func TestSpills(t *testing.T) {
	p, _ := testPool(t, 1<<40, 1<<20, 8<<20)
	u := p.New("big.npy", nil, true, 1<<40, nil)
	if err := u.WriteAt([]byte("head"), 0); err != nil || u.Spilled() {
		t.Fatalf("small write: %v, spilled %v", err, u.Spilled())
	}
	if err := u.Truncate(40 << 20); err != nil || !u.Spilled() {
		t.Fatalf("truncate past SpillAt: %v, spilled %v", err, u.Spilled())
	}
	if err := u.WriteAt([]byte("tail"), 20<<20); err != nil {
		t.Fatal(err)
	}
	var blocks int64
	var st syscall.Stat_t
	if syscall.Fstat(int(u.file.Fd()), &st) == nil {
		blocks = st.Blocks * 512
	}
	if blocks > 1<<20 {
		t.Errorf("the 40 MiB sparse upload takes %d bytes of disk", blocks)
	}
	if got := u.ReadAt(make([]byte, 8), 20<<20-4); !bytes.Equal(got, []byte("\x00\x00\x00\x00tail")) {
		t.Errorf("read back %q", got)
	}
	if got := u.ReadAt(make([]byte, 8), 40<<20-3); len(got) != 3 {
		t.Errorf("read at the end gave %d bytes, want 3", len(got))
	}
	var committed []byte
	if err := u.Flush(func(b []byte) error { committed = b; return nil }); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 40<<20)
	copy(want, "head")
	copy(want[20<<20:], "tail")
	if !bytes.Equal(committed, want) {
		t.Error("the commit of a spilled upload differs from what was written")
	}
	if entries, _ := os.ReadDir(p.Dir); len(entries) != 0 {
		t.Errorf("the spill directory holds %v: temp files must have no name", entries)
	}
	u.Close()
	if total, memory := p.Usage(); total != 0 || memory != 0 {
		t.Errorf("after close the pool still counts %d bytes, %d in memory", total, memory)
	}
}

// TestMemoryBudget: uploads that together would pass the memory budget
// spill, whatever their own size.
func TestMemoryBudget(t *testing.T) {
	p, _ := testPool(t, 1<<40, 4<<20, 6<<20)
	a := p.New("a.npy", nil, true, 1<<40, nil)
	b := p.New("b.npy", nil, true, 1<<40, nil)
	chunk := bytes.Repeat([]byte{7}, 3<<20)
	a.WriteAt(chunk, 0)
	b.WriteAt(chunk, 0)
	if a.Spilled() || b.Spilled() {
		t.Fatal("two 3 MiB uploads within a 6 MiB budget spilled")
	}
	a.WriteAt(chunk[:1<<20], 3<<20)
	_, memory := p.Usage()
	if !a.Spilled() && !b.Spilled() {
		t.Errorf("7 MiB in memory, over a 6 MiB budget, and nothing spilled (memory %d)", memory)
	}
	if memory > 6<<20 {
		t.Errorf("uploads hold %d bytes of memory, over the budget", memory)
	}
	a.Close()
	b.Close()
}

// TestTotalCap: all open uploads together are capped: past it a write
// fails with EFBIG and the reason says so; closing one makes room.
func TestTotalCap(t *testing.T) {
	p, refusals := testPool(t, 10<<20, 1<<20, 8<<20)
	a := p.New("a.npy", nil, true, 1<<40, nil)
	b := p.New("b.npy", nil, true, 1<<40, nil)
	if err := a.Truncate(6 << 20); err != nil {
		t.Fatal(err)
	}
	if err := b.Truncate(6 << 20); !errnoIs(err, syscall.EFBIG) {
		t.Fatalf("second 6 MiB upload under a 10 MiB cap: %v, want EFBIG", err)
	}
	if len(*refusals) != 1 || !strings.Contains((*refusals)[0], "all files being written whole") {
		t.Errorf("refusal reasons: %q", *refusals)
	}
	a.Close()
	if err := b.Truncate(6 << 20); err != nil {
		t.Errorf("after the first closed: %v", err)
	}
	b.Close()
}

// TestSpillFails: with nowhere to spill, an upload too large for memory
// is refused with the reason, not kept in memory.
func TestSpillFails(t *testing.T) {
	p, refusals := testPool(t, 1<<40, 1<<20, 8<<20)
	p.Dir = "/nonexistent-spill-dir"
	u := p.New("a.npy", nil, true, 1<<40, nil)
	err := u.Truncate(2 << 20)
	if !errnoIs(err, syscall.ENOENT) {
		t.Fatalf("a truncate past SpillAt with nowhere to spill: %v, want the temp file's ENOENT", err)
	}
	if total, _ := p.Usage(); len(*refusals) != 1 || !strings.Contains((*refusals)[0], "temp file") || u.Size() != 0 || total != 0 {
		t.Errorf("refusal %q, size %d, pool %d", *refusals, u.Size(), total)
	}
	u.Close()
}

// TestSet: a truncate by path reaches every open upload of the file, and
// is refused (ErrNotOpen) when none is open.
func TestSet(t *testing.T) {
	p, _ := testPool(t, 1<<30, SpillAt, MemoryBudget)
	var s Set
	if err := s.TruncateAll(0); err != ErrNotOpen {
		t.Fatalf("truncate with nothing open: %v", err)
	}
	a := s.Add(p.New("a", []byte("abc"), false, 1<<20, nil))
	b := s.Add(p.New("a", []byte("abcdef"), false, 1<<20, nil))
	if err := s.TruncateAll(2); err != nil || a.Size() != 2 || b.Size() != 2 {
		t.Fatalf("TruncateAll(2): %v, sizes %d %d", err, a.Size(), b.Size())
	}
	s.Release(a)
	s.Release(b)
	if total, memory := p.Usage(); total != 0 || memory != 0 {
		t.Errorf("after release the pool counts %d bytes, %d in memory", total, memory)
	}
	if err := s.TruncateAll(0); err != ErrNotOpen {
		t.Errorf("truncate after the last release: %v", err)
	}
}

// TestSpilledUploadCheckedFromItsHeader: a spilled .npy upload that cannot
// be a .npy of its size is refused from its first bytes, without reading
// the whole file into memory (a sparse 1 GiB file of garbage once took
// 1 GiB of the daemon's memory when the runtime zeroed the buffer); one
// whose header fits its size is committed whole.
func TestSpilledUploadCheckedFromItsHeader(t *testing.T) {
	p, refusals := testPool(t, 1<<40, 1<<20, 8<<20)
	hdr, err := npy.Header("F32", []uint64{1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		head   []byte
		size   int64
		refuse bool
	}{
		{"garbage", []byte("not a numpy header"), 1 << 30, true},
		{"a header for another size", hdr, 1 << 30, true},
		{"a header that fits", hdr, int64(len(hdr)) + 4<<20, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			*refusals = nil
			u := p.New("x.npy", nil, true, 1<<40, namespace.NPYPrecheck)
			defer u.Close()
			if err := u.Truncate(c.size); err != nil || !u.Spilled() {
				t.Fatalf("truncate: %v, spilled %v", err, u.Spilled())
			}
			if err := u.WriteAt(c.head, 0); err != nil {
				t.Fatal(err)
			}
			var stats runtime.MemStats
			runtime.ReadMemStats(&stats)
			before := stats.TotalAlloc
			committed := false
			err := u.Flush(func(b []byte) error { committed = true; return nil })
			runtime.ReadMemStats(&stats)
			if c.refuse {
				if err == nil || committed || len(*refusals) != 1 || !strings.HasPrefix((*refusals)[0], "x.npy: ") {
					t.Errorf("flush: %v, committed %v, reported %q", err, committed, *refusals)
				}
				if grew := stats.TotalAlloc - before; grew > 1<<20 {
					t.Errorf("a refused %d-byte upload allocated %d bytes", c.size, grew)
				}
			} else if err != nil || !committed {
				t.Errorf("flush: %v, committed %v", err, committed)
			}
		})
	}
}
