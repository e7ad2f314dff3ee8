package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// A full disk during a commit to the log and during a write-back: the error
// is ENOSPC (not EIO), nothing acknowledged is lost, the files stay as they
// were, and removing what was added frees the way.
func TestDiskFull(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=3m"); err != nil {
		t.Skipf("cannot mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	m := &ckModel{tensors: map[string]ckTensor{
		"w": {safetensors.U8, []uint64{1_200_000}, ctPattern(60, 1_200_000)},
		"b": {safetensors.F32, []uint64{16}, ctPattern(61, 64)},
	}}
	path := filepath.Join(dir, "model.safetensors")
	if err := os.WriteFile(path, m.canonical(t), 0o644); err != nil {
		t.Fatal(err)
	}
	c := ckOpen(t, path, Options{})
	defer c.Close()
	before, _ := os.ReadFile(path)

	// An edit that fits is acknowledged.
	p := ctPattern(62, 64)
	if err := c.WriteAt(ckID(t, c, "b"), p, 0); err != nil {
		t.Fatal(err)
	}
	m.write("b", p, 0)
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}

	// A commit that cannot fit: ENOSPC, the state keeps it, the log keeps
	// what was acknowledged.
	big := ctPattern(63, 2<<20)
	if _, err := c.Put("big", safetensors.U8, []uint64{2 << 20}, big); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("Sync of a tensor that does not fit: %v, want ENOSPC", err)
	}
	if got, _ := os.ReadFile(path); string(got) != string(before) {
		t.Fatal("a failed commit changed the checkpoint file")
	}
	// Removing it frees the way.
	if err := c.Delete(ckID(t, c, "big")); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(); err != nil {
		t.Fatalf("Sync after removing what did not fit: %v", err)
	}

	// A write-back that cannot fit: a new tensor makes the file be
	// rewritten, and the new file does not fit next to the old one.
	mid := ctPattern(64, 600_000)
	if _, err := c.Put("mid", safetensors.U8, []uint64{600_000}, mid); err != nil {
		t.Fatal(err)
	}
	m.tensors["mid"] = ckTensor{safetensors.U8, []uint64{600_000}, mid}
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := c.Compact(); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("write-back that does not fit: %v, want ENOSPC", err)
	}
	if got, _ := os.ReadFile(path); string(got) != string(before) {
		t.Fatal("a failed write-back changed the checkpoint file")
	}
	if s := ckSideFiles(t, path); len(s) != 1 || s[0] != filepath.Base(walPathOf(path)) {
		t.Errorf("after the failed write-back, next to the checkpoint: %v, want only the log", s)
	}
	ckCheckState(t, c, m, "after the failed write-back")
	if _, pending := Pending(path); !pending {
		t.Error("after a failed write-back the log is not pending: the edits would be lost in a crash")
	}
	// Removing what was added frees the way.
	if err := c.Delete(ckID(t, c, "mid")); err != nil {
		t.Fatal(err)
	}
	delete(m.tensors, "mid")
	if err := c.Compact(); err != nil {
		t.Fatalf("write-back after removing what did not fit: %v", err)
	}
	ckCheckFile(t, path, m, "after the write-back")
	if s := ckSideFiles(t, path); len(s) != 0 {
		t.Errorf("left behind: %v", s)
	}
}
