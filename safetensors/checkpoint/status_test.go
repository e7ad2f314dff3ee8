package checkpoint

import (
	"os"
	"path/filepath"
	"testing"
)

// What a mount's status reads of its checkpoint: the edits not yet written
// back, and a write-back's temp files as it writes them.

func TestPendingEdits(t *testing.T) {
	t.Parallel()
	ck := defaultCkpt(t)
	c, err := Open(ck.path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.PendingEdits(); p != (Unwritten{}) {
		t.Errorf("right after open: %+v", p)
	}
	before := c.Edits()
	if err := c.WriteAt(ckID(t, c, "step"), []byte{1}, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ckID(t, c, "embed")); err != nil {
		t.Fatal(err)
	}
	if c.Edits() == before {
		t.Error("Edits did not move with two edits")
	}
	p := c.PendingEdits()
	if p.Changed != 1 || p.Removed != 1 || p.Files != 1 || p.Log != "" {
		t.Errorf("two edits, not committed: %+v", p)
	}
	persists := c.Persists()
	if err := c.Sync(); err != nil { // into the log
		t.Fatal(err)
	}
	if c.Persists() == persists {
		t.Error("Persists did not move with a commit to the log")
	}
	persists = c.Persists()
	p = c.PendingEdits()
	if p.Changed != 1 || p.Removed != 1 || p.Log == "" || p.LogBytes <= 0 {
		t.Errorf("two edits in the log: %+v", p)
	}
	if st, err := os.Stat(p.Log); err != nil || st.Size() != p.LogBytes {
		t.Errorf("the log %s: %v", p.Log, err)
	}
	if err := c.Compact(); err != nil { // into the file
		t.Fatal(err)
	}
	if c.Persists() == persists {
		t.Error("Persists did not move with a write-back")
	}
	if p := c.PendingEdits(); p.Changed != 0 || p.Removed != 0 || p.Files != 0 || p.Log != "" {
		t.Errorf("after the write-back: %+v", p)
	}
	ro, err := Open(ck.path, Options{ReadOnly: true})
	if err == nil {
		if p := ro.PendingEdits(); p != (Unwritten{}) {
			t.Errorf("read-only: %+v", p)
		}
		ro.Close()
	}
}

// A temp file of a write-back under way is what WriteBackProgress counts:
// its bytes against what the rewritten file will hold. A temp file seen
// while no compaction runs is a stale one, not progress: an idle daemon
// does not read its directory for it.
func TestWriteBackProgress(t *testing.T) {
	t.Parallel()
	ck := defaultCkpt(t)
	dir := filepath.Dir(ck.path)
	c, err := Open(ck.path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if w := c.WriteBackProgress(); w.Active {
		t.Errorf("no write-back under way: %+v", w)
	}
	stale := filepath.Join(dir, ".model.safetensors"+tmpInfix+"0123456789abcdef")
	if err := os.WriteFile(stale, make([]byte, 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	if w := c.WriteBackProgress(); w.Active {
		t.Errorf("a stale temp file, no compaction running: %+v", w)
	}
	os.Remove(stale)
	// Not temp files of this checkpoint: another name, a short suffix.
	os.WriteFile(filepath.Join(dir, ".other.safetensors"+tmpInfix+"0123456789abcdef"), make([]byte, 7), 0o600)
	os.WriteFile(filepath.Join(dir, ".model.safetensors"+tmpInfix+"0123"), make([]byte, 7), 0o600)

	// A rename changes the header: the compaction writes a whole new file,
	// and is looked at once that file is written.
	if err := c.Rename(ckID(t, c, "step"), "steps"); err != nil {
		t.Fatal(err)
	}
	var during WriteBack
	c.hooks = &crashHooks{at: func(p string) error {
		if p == "tmp-written" {
			during = c.WriteBackProgress()
		}
		return nil
	}}
	if err := c.Compact(); err != nil {
		t.Fatal(err)
	}
	c.hooks = nil
	st, err := os.Stat(ck.path)
	if err != nil {
		t.Fatal(err)
	}
	if !during.Active || during.Done != st.Size() || during.Total < during.Done || during.Total > st.Size()+int64(len("steps")) {
		t.Errorf("the %d-byte new file written, not yet renamed: %+v", st.Size(), during)
	}
	if w := c.WriteBackProgress(); w.Active {
		t.Errorf("after the compaction: %+v", w)
	}
}
