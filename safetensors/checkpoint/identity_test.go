package checkpoint

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestIdentity(t *testing.T) {
	t.Parallel()
	c := defaultCkpt(t)
	a, err := statIdentity(c.path)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := statIdentity(c.path); !a.same(b) {
		t.Fatal("identity changed without a change")
	}
	f := openRW(t, c.path)
	if fi, _ := fileIdentity(f); !a.same(fi) {
		t.Error("fstat identity differs from stat identity")
	}

	// In place, same size: only mtime tells. Set it 1ns later to show the
	// nanoseconds count.
	mt := a.mtime.Add(time.Nanosecond)
	if _, err := f.WriteAt([]byte{1}, c.dataOff); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(c.path, mt, mt); err != nil {
		t.Fatal(err)
	}
	b, _ := statIdentity(c.path)
	if a.same(b) {
		t.Error("in-place write with a 1ns later mtime not detected")
	}

	// Renamed over with the same size and mtime: the inode tells.
	other := filepath.Join(filepath.Dir(c.path), "other")
	if err := os.WriteFile(other, c.content, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(other, b.mtime, b.mtime)
	if err := os.Rename(other, c.path); err != nil {
		t.Fatal(err)
	}
	d, _ := statIdentity(c.path)
	if b.same(d) || d.size != b.size || !d.mtime.Equal(b.mtime) {
		t.Errorf("rename-replace not detected by inode: %s vs %s", b, d)
	}
	// By path, not by descriptor: the open file is not what is there now.
	if fi, _ := fileIdentity(f); fi.same(d) {
		t.Error("fileIdentity of the old descriptor matches the new file")
	}

	// Symlinks are followed.
	link := filepath.Join(t.TempDir(), "l")
	os.Symlink(c.path, link)
	if l, err := statIdentity(link); err != nil || !l.same(d) {
		t.Errorf("identity through a symlink: %v %v", l, err)
	}
	if _, err := statIdentity(filepath.Join(t.TempDir(), "missing")); !os.IsNotExist(err) {
		t.Errorf("missing file: %v", err)
	}
}
