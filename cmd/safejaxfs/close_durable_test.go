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

// TestCloseOnFullDiskKeepsOldBytes: a close that commits a change (a
// rewrite by cp or shell >, an np.save, __metadata__) is all or nothing
// with its durability (issue 15 item 7). On a full disk the close fails
// with ENOSPC, and the tensor (or the metadata) reads its old bytes, now
// and after unmount; a close that succeeds left its change durable.
func TestCloseOnFullDiskKeepsOldBytes(t *testing.T) {
	disk := smallDisk(t, "1m")
	big := raw("big", safetensors.U8, randomBytes(600<<10, 5), 600<<10)
	w := f32("w", 1, 16)
	meta := map[string]string{"format": "flax"}
	ckpt := filepath.Join(disk, "model.safetensors")
	orig := canonical(t, meta, big, w)
	if err := os.WriteFile(ckpt, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"run", "tmp"} {
		os.Mkdir(filepath.Join(disk, d), 0o700)
	}
	env := []string{"XDG_RUNTIME_DIR=" + filepath.Join(disk, "run"), "TMPDIR=" + filepath.Join(disk, "tmp")}
	mnt := mountEnv(t, env, ckpt)
	m := func(s string) string { return filepath.Join(mnt, s) }
	read := func(name string) []byte {
		t.Helper()
		b, err := os.ReadFile(m(name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	// cp / shell > over a tensor: O_TRUNC, every byte written, close.
	if err := os.WriteFile(m("big"), randomBytes(600<<10, 6), 0o644); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("rewrite of 600 KiB on a full disk: %v, want ENOSPC", err)
	}
	if !bytes.Equal(read("big"), big.data) {
		t.Error("after the failed rewrite, big does not read its old bytes")
	}
	// np.save over a tensor, with a new shape.
	huge := raw("w", safetensors.U8, randomBytes(600<<10, 7), 600<<10)
	if err := os.WriteFile(m("w.npy"), npyFile(t, huge), 0o644); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("np.save of 600 KiB on a full disk: %v, want ENOSPC", err)
	}
	if !bytes.Equal(read("w"), w.data) || getxattr(t, m("w"), "user.safetensors.shape") != "[16]" {
		t.Error("after the failed np.save, w is not its old self")
	}
	// np.save of a new tensor: nothing is left behind.
	if err := os.WriteFile(m("new.npy"), npyFile(t, raw("new", safetensors.U8, randomBytes(600<<10, 8), 600<<10)), 0o644); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("np.save of a new 600 KiB tensor on a full disk: %v, want ENOSPC", err)
	}
	if _, err := os.Stat(m("new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the new tensor whose np.save failed exists: %v", err)
	}
	// __metadata__.
	doc := `{"format": "flax", "note": "` + strings.Repeat("n", 600<<10) + `"}`
	if err := os.WriteFile(m("__metadata__"), []byte(doc), 0o644); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("600 KiB of metadata on a full disk: %v, want ENOSPC", err)
	}
	if got := string(read("__metadata__")); strings.Contains(got, "note") {
		t.Errorf("after the failed write, __metadata__ reads %q", got[:min(len(got), 80)])
	}
	// A change the log can take succeeds, and is there after unmount.
	w2 := f32("w", 100, 16)
	if err := os.WriteFile(m("w"), w2.data, 0o644); err != nil {
		t.Fatalf("a rewrite the log takes: %v", err)
	}
	// Room for the write-back.
	if err := unix.Mount("", disk, "", unix.MS_REMOUNT, "size=8m"); err != nil {
		t.Fatal(err)
	}
	unmountOK(t, mnt)
	checkFile(t, ckpt, meta, big, w2)
}
