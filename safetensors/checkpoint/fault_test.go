package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCopyMappedFault: a copy from a mapping whose file another program
// truncated is an error, not a SIGBUS that kills the process.
func TestCopyMappedFault(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, make([]byte, 2*os.Getpagesize()), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, 2*os.Getpagesize(), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	dst := make([]byte, len(m))
	if n, err := copyMapped(dst, m); err != nil || n != len(m) {
		t.Fatalf("copy from an intact mapping: %d, %v", n, err)
	}
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	if _, err := copyMapped(dst, m); !errors.Is(err, ErrFault) || !errors.Is(err, unix.EIO) {
		t.Errorf("copy from a truncated mapping: %v, want ErrFault (EIO)", err)
	}
	// The content operations that copy from a mapping report it too.
	c := &content{size: int64(len(m)), base: m}
	if err := c.write([]byte{1}, 10); !errors.Is(err, ErrFault) {
		t.Errorf("write into content over a truncated mapping: %v", err)
	}
	if len(c.chunks) != 0 {
		t.Error("a failed write left a chunk behind")
	}
	if _, err := c.readAt(dst, 0); !errors.Is(err, ErrFault) {
		t.Errorf("readAt of a truncated mapping: %v", err)
	}
}

// TestReadOfTruncatedFile: another program truncates a checkpoint file in
// place while it is open. Reads from its mapping fail with ErrFault
// instead of handing out slices whose pages are gone: the float32 views'
// conversion and the CLI's stats and diff read those slices in this
// process, where touching them would raise SIGBUS and kill it.
func TestReadOfTruncatedFile(t *testing.T) {
	t.Parallel()
	ck := defaultCkpt(t)
	c, err := Open(ck.path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	last, end := "", int64(0)
	for k, r := range ck.tensors {
		if r[1] > end && r[1] > r[0] {
			last, end = k, r[1]
		}
	}
	id := ckID(t, c, last)
	segs, release, err := c.Read(id, 0, 1<<20)
	if err != nil || len(segs) == 0 {
		t.Fatalf("read of %q before the truncate: %v", last, err)
	}
	release()
	if err := os.Truncate(ck.path, ck.tensors[last][0]); err != nil {
		t.Fatal(err)
	}
	segs, release, err = c.Read(id, 0, 1<<20)
	release()
	if !errors.Is(err, ErrFault) || segs != nil {
		t.Fatalf("read of %q, whose bytes the truncate took: %d segments, %v; want ErrFault", last, len(segs), err)
	}
}
