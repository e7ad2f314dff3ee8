package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// TestHostileDirectoryThroughTheCLI: issue 15 item 3 as a user meets it.
// A downloaded set whose shard is a symlink to a file elsewhere, with a
// log planted beside it that matches that file exactly. A read-write
// mount refuses the log (exit 4, naming it and the way out) without
// writing anything anywhere; recover --discard moves the log aside; then
// the mount goes read-only with a notice (safejaxfs never writes through
// a symlink in a checkpoint directory) and reads fine; still nothing
// outside changed.
func TestHostileDirectoryThroughTheCLI(t *testing.T) {
	a := []genTensor{f32("a.w", 1, 4, 4)}
	b := []genTensor{f32("b.w", 2, 64), raw("b.x", safetensors.U8, []byte("abcdef"), 6)}
	dir := writeShardedSet(t, nil, a, b)
	// An earlier mount's edit, logged, then a crash: the planted log.
	mnt := mount(t, dir)
	if err := os.WriteFile(filepath.Join(mnt, "b", "x"), []byte("ZZZZZZ"), 0o644); err != nil {
		t.Fatal(err)
	}
	pid := daemonOf(t, mnt)
	unix.Kill(pid, unix.SIGKILL)
	waitGone(t, pid)
	unix.Unmount(mnt, unix.MNT_DETACH)
	log := filepath.Join(dir, "."+indexName+".safejaxfs-log")
	if _, err := os.Stat(log); err != nil {
		t.Fatalf("no log left by the crash: %v", err)
	}
	// The victim: the shard moved out (same inode) and linked back.
	victim := filepath.Join(t.TempDir(), "victim.safetensors")
	shard := filepath.Join(dir, shardName(1, 2))
	if err := os.Rename(shard, victim); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, shard); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(victim)

	mnt2 := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt2, 0o755)
	r := cli(t, "mount", dir, mnt2)
	if r.code != exitWriteBack || !strings.Contains(r.stderr, log) || !strings.Contains(r.stderr, "recover --discard") {
		t.Fatalf("mount with a planted log: exit %d %q; want %d naming the log and the way out", r.code, r.stderr, exitWriteBack)
	}
	if mounted(t, mnt2) {
		t.Fatal("mounted anyway")
	}
	if got, _ := os.ReadFile(victim); !bytes.Equal(got, before) {
		t.Fatal("the file outside the directory was written")
	}
	r = cli(t, "recover", "--discard", dir)
	if r.code != 0 || !strings.Contains(r.stdout, ".stale-") {
		t.Fatalf("recover --discard: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Stat(log); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the log is still there")
	}
	mnt3 := mount(t, dir)
	if got, err := os.ReadFile(filepath.Join(mnt3, "b", "x")); err != nil || string(got) != "abcdef" {
		t.Errorf("b/x through the read-only mount: %q, %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(mnt3, "b", "x"), []byte("YYYYYY"), 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("a write into the mount of a set with a symlinked shard: %v, want EROFS", err)
	}
	if got, _ := os.ReadFile(victim); !bytes.Equal(got, before) {
		t.Fatal("the file outside the directory was written")
	}
}
