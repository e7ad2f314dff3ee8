package checkpoint

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// bindMounted makes the default checkpoint a file bind-mounted over its
// own name, as docker run -v model.safetensors:/m/model.safetensors does:
// renaming anything over it fails with EBUSY (root only). It returns the
// mounted path and the host file.
func bindMounted(t *testing.T, m *ckModel) (path, host string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("bind mounts need root")
	}
	path = ckFile(t, m)
	host = filepath.Join(t.TempDir(), "host.safetensors")
	if err := os.WriteFile(host, m.canonical(t), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(host, path, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("bind mount: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(path, unix.MNT_DETACH) })
	if err := os.Rename(host, path); !errors.Is(err, unix.EBUSY) && !errors.Is(err, unix.EXDEV) {
		t.Fatalf("rename over the bind mount: %v, want EBUSY or EXDEV", err)
	}
	return path, host
}

// Issue 15 item 1: a file that cannot be renamed over is written back in
// place, under the log's guard, while every reader keeps reading what it
// read: a rewrite in progress, a removed tensor still open, tensors read
// during and after.
func TestBindMountedInstalledInPlace(t *testing.T) {
	t.Parallel()
	m := ckDefault()
	path, host := bindMounted(t, m)
	c := ckOpen(t, path, Options{})
	// A reader of the old bytes of each kind.
	embed := bytes.Clone(m.tensors["embed"].data)
	st, err := c.Stage(ckID(t, c, "embed"), 100_000) // keeps a prefix of the mapping
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	removedID := ckID(t, c, "params.b")
	removed := bytes.Clone(m.tensors["params.b"].data)
	if err := c.Delete(removedID); err != nil {
		t.Fatal(err)
	}
	delete(m.tensors, "params.b")
	// Layout changes: the file is rewritten whole.
	if _, err := c.Put("new", safetensors.U8, []uint64{7}, []byte("in place")[:7]); err != nil {
		t.Fatal(err)
	}
	m.tensors["new"] = ckTensor{safetensors.U8, []uint64{7}, []byte("in plac")}
	if err := c.Rename(ckID(t, c, "step"), "train.step"); err != nil {
		t.Fatal(err)
	}
	m.tensors["train.step"] = m.tensors["step"]
	delete(m.tensors, "step")
	if err := c.Compact(); err != nil {
		t.Fatalf("write-back of a file that cannot be renamed over: %v", err)
	}
	ckCheckFile(t, path, m, "the bind-mounted checkpoint")
	if !bytes.Equal(mustRead(t, host), m.canonical(t)) {
		t.Error("the host file is not the new checkpoint")
	}
	ckCheckState(t, c, m, "after the in-place write-back")
	segs, release, err := st.Read(0, 100_000)
	if err != nil {
		t.Fatal(err)
	}
	if got := bytes.Join(segs, nil); !bytes.Equal(got, embed[:100_000]) {
		t.Error("the rewrite in progress lost the bytes it kept")
	}
	release()
	segs, release, err = c.Read(removedID, 0, len(removed))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bytes.Join(segs, nil), removed) {
		t.Error("the removed tensor still open lost its bytes")
	}
	release()
	c.Drop(removedID)
	// More edits, in place this time (the header stays): patched.
	ckVersion(t, c, m, 3, "embed")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	ckCheckFile(t, path, m, "after Close")
	if pending, ok := Pending(path); ok {
		t.Errorf("a log is left: %s", pending)
	}
}

// A crash in the middle of the copy in place: the next open recognises
// the tear as its own (the log says the copy began), copies again, and
// removes the temp file and the log.
func TestBindMountedCrashDuringCopy(t *testing.T) {
	t.Parallel()
	for _, point := range []string{"log-synced", "copied"} {
		t.Run(point, func(t *testing.T) {
			m := ckDefault()
			path, _ := bindMounted(t, m)
			c := ckOpen(t, path, Options{})
			crashScenarios[1].edit(t, c, m)
			if err := c.Sync(); err != nil {
				t.Fatal(err)
			}
			nth := 1
			if point == "log-synced" {
				nth = 2 // the install record, after the compact record
			}
			c.hooks = ckCrashAt(point, nth)
			if err := c.Compact(); !errors.Is(err, errCkCrash) {
				t.Fatalf("Compact: %v, want the crash", err)
			}
			ckAbandon(c)
			c = ckOpen(t, path, Options{})
			ckCheckState(t, c, m, "reopened")
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			ckCheckFile(t, path, m, "after the crash and reopen")
			if s := ckSideFiles(t, path); len(s) != 0 {
				t.Errorf("left behind: %v", s)
			}
		})
	}
}
