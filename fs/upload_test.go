package fs

import (
	"bytes"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors/npy"
)

// TestUploadSpills: past spillAt an upload moves to an unnamed temp file;
// a sparse one stays sparse there, reads back, and commits the bytes a
// memory upload would have; nothing is left in the spill directory.
func TestUploadSpills(t *testing.T) {
	f, _ := testPool(t, 1<<40, 1<<20, 8<<20)
	u := f.newUpload(0, "big.npy", nil, true, 1<<40)
	if errno := u.write([]byte("head"), 0); errno != 0 || u.spilled() {
		t.Fatalf("small write: %v, spilled %v", errno, u.spilled())
	}
	if errno := u.truncate(40 << 20); errno != 0 || !u.spilled() {
		t.Fatalf("truncate past spillAt: %v, spilled %v", errno, u.spilled())
	}
	if errno := u.write([]byte("tail"), 20<<20); errno != 0 {
		t.Fatal(errno)
	}
	var blocks int64
	var st syscall.Stat_t
	if syscall.Fstat(int(u.file.Fd()), &st) == nil {
		blocks = st.Blocks * 512
	}
	if blocks > 1<<20 {
		t.Errorf("the 40 MiB sparse upload takes %d bytes of disk", blocks)
	}
	got := make([]byte, 8)
	if r := u.read(got, 20<<20-4); r.Size() != 8 {
		t.Fatalf("read back %d bytes", r.Size())
	} else if b, _ := r.Bytes(got); !bytes.Equal(b, []byte("\x00\x00\x00\x00tail")) {
		t.Errorf("read back %q", b)
	}
	var committed []byte
	if errno := u.flush(func(b []byte) syscall.Errno { committed = b; return 0 }, nil); errno != 0 {
		t.Fatal(errno)
	}
	want := make([]byte, 40<<20)
	copy(want, "head")
	copy(want[20<<20:], "tail")
	if !bytes.Equal(committed, want) {
		t.Error("the commit of a spilled upload differs from what was written")
	}
	if entries, _ := os.ReadDir(f.upPool.dir); len(entries) != 0 {
		t.Errorf("the spill directory holds %v: temp files must have no name", entries)
	}
	u.close()
	if f.upPool.total != 0 || f.upPool.memory != 0 {
		t.Errorf("after close the pool still counts %d bytes, %d in memory", f.upPool.total, f.upPool.memory)
	}
}

// TestUploadMemoryBudget: uploads that together would pass the memory
// budget spill, whatever their own size.
func TestUploadMemoryBudget(t *testing.T) {
	f, _ := testPool(t, 1<<40, 4<<20, 6<<20)
	a := f.newUpload(0, "a.npy", nil, true, 1<<40)
	b := f.newUpload(0, "b.npy", nil, true, 1<<40)
	chunk := bytes.Repeat([]byte{7}, 3<<20)
	a.write(chunk, 0)
	b.write(chunk, 0)
	if a.spilled() || b.spilled() {
		t.Fatal("two 3 MiB uploads within a 6 MiB budget spilled")
	}
	a.write(chunk[:1<<20], 3<<20)
	if !a.spilled() && !b.spilled() {
		t.Errorf("7 MiB in memory, over a 6 MiB budget, and nothing spilled (memory %d)", f.upPool.memory)
	}
	if f.upPool.memory > 6<<20 {
		t.Errorf("uploads hold %d bytes of memory, over the budget", f.upPool.memory)
	}
	a.close()
	b.close()
}

// TestUploadTotalCap: all open uploads together are capped: past it a
// write fails with EFBIG and the reason says so; closing one makes room.
func TestUploadTotalCap(t *testing.T) {
	f, refusals := testPool(t, 10<<20, 1<<20, 8<<20)
	a := f.newUpload(0, "a.npy", nil, true, 1<<40)
	b := f.newUpload(0, "b.npy", nil, true, 1<<40)
	if errno := a.truncate(6 << 20); errno != 0 {
		t.Fatal(errno)
	}
	if errno := b.truncate(6 << 20); errno != syscall.EFBIG {
		t.Fatalf("second 6 MiB upload under a 10 MiB cap: %v, want EFBIG", errno)
	}
	if len(*refusals) != 1 || !strings.Contains((*refusals)[0], "all files being written whole") {
		t.Errorf("refusal reasons: %q", *refusals)
	}
	a.close()
	if errno := b.truncate(6 << 20); errno != 0 {
		t.Errorf("after the first closed: %v", errno)
	}
	b.close()
}

// TestUploadSpillFails: with nowhere to spill, an upload too large for
// memory is refused with the reason, not kept in memory.
func TestUploadSpillFails(t *testing.T) {
	f, refusals := testPool(t, 1<<40, 1<<20, 8<<20)
	f.upPool.dir = "/nonexistent-spill-dir"
	u := f.newUpload(0, "a.npy", nil, true, 1<<40)
	if errno := u.truncate(2 << 20); errno == 0 {
		t.Fatal("a truncate past spillAt with nowhere to spill succeeded")
	}
	if len(*refusals) != 1 || !strings.Contains((*refusals)[0], "temp file") || u.size() != 0 || f.upPool.total != 0 {
		t.Errorf("refusal %q, size %d, pool %d", *refusals, u.size(), f.upPool.total)
	}
	u.close()
}

// TestSpilledUploadCheckedFromItsHeader: a spilled .npy upload that cannot
// be a .npy of its size is refused from its first bytes, without reading
// the whole file into memory (a sparse 1 GiB file of garbage once took
// 1 GiB of the daemon's memory when the runtime zeroed the buffer); one
// whose header fits its size is committed whole.
func TestSpilledUploadCheckedFromItsHeader(t *testing.T) {
	f, _ := testPool(t, 1<<40, 1<<20, 8<<20)
	f.maxUpload = 1 << 40
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
			u := f.newNPYUpload(0, "x.npy", nil, true)
			defer u.close()
			if errno := u.truncate(c.size); errno != 0 || !u.spilled() {
				t.Fatalf("truncate: %v, spilled %v", errno, u.spilled())
			}
			if errno := u.write(c.head, 0); errno != 0 {
				t.Fatal(errno)
			}
			var stats runtime.MemStats
			runtime.ReadMemStats(&stats)
			before := stats.TotalAlloc
			committed, refused := false, error(nil)
			errno := u.flush(func(b []byte) syscall.Errno { committed = true; return 0 },
				func(err error) syscall.Errno { refused = err; return syscall.EINVAL })
			runtime.ReadMemStats(&stats)
			if c.refuse {
				if errno != syscall.EINVAL || refused == nil || committed {
					t.Errorf("flush: %v, refused %v, committed %v", errno, refused, committed)
				}
				if grew := stats.TotalAlloc - before; grew > 1<<20 {
					t.Errorf("a refused %d-byte upload allocated %d bytes", c.size, grew)
				}
			} else if errno != 0 || !committed {
				t.Errorf("flush: %v, refused %v, committed %v", errno, refused, committed)
			}
		})
	}
}
