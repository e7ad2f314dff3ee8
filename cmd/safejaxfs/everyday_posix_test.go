package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// What tools trust of a file system beyond bytes: an open file of a removed
// tensor reads on, times move with changes (rsync, make, find -newer),
// inode numbers are real.

// TestOpenFileOfRemovedTensor: a descriptor of a tensor removed, or renamed
// over, keeps reading its bytes (and writing, to nowhere) until closed, as
// on ext4.
func TestOpenFileOfRemovedTensor(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	m := func(s string) string { return filepath.Join(mnt, s) }
	tensors := flaxTensors()
	kernel, err := os.Open(m("params/Dense_0/kernel"))
	if err != nil {
		t.Fatal(err)
	}
	defer kernel.Close()
	bias, err := os.OpenFile(m("params/Dense_0/bias"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer bias.Close()
	if err := os.Remove(m("params/Dense_0/kernel")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(m("params/Dense_1/bias"), m("params/Dense_0/bias")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		f    *os.File
		want []byte
	}{{kernel, tensors[0].data}, {bias, tensors[1].data}} {
		got := make([]byte, len(c.want)+1)
		n, err := c.f.ReadAt(got, 0)
		if n != len(c.want) || !bytes.Equal(got[:n], c.want) {
			t.Errorf("%s after removal: read %d bytes (%v), want its %d old bytes", c.f.Name(), n, err, len(c.want))
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(c.f.Fd()), &st); err != nil || st.Size != int64(len(c.want)) || st.Nlink != 0 {
			t.Errorf("fstat of %s after removal: %v, size %d, nlink %d; want size %d, nlink 0", c.f.Name(), err, st.Size, st.Nlink, len(c.want))
		}
	}
	if _, err := bias.WriteAt([]byte{1, 2, 3, 4}, 0); err != nil {
		t.Errorf("write to a removed tensor's descriptor: %v", err)
	}
	if got, _ := os.ReadFile(m("params/Dense_0/bias")); !bytes.Equal(got, tensors[3].data) {
		t.Error("a write through the old descriptor reached the tensor that took the name")
	}
	kernel.Close()
	bias.Close()
	unmountOK(t, mnt)
	checkFile(t, ckpt, flaxMeta, rekey(tensors[3], "params.Dense_0.bias"), tensors[2], tensors[4], tensors[5], tensors[6])
}

func statT(t testing.TB, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func mtimeOf(st unix.Stat_t) time.Time { return time.Unix(st.Mtim.Unix()) }
func ctimeOf(st unix.Stat_t) time.Time { return time.Unix(st.Ctim.Unix()) }

func TestTimesMoveWithChanges(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	old := time.Now().Add(-time.Hour)
	os.Chtimes(ckpt, old, old)
	mnt := mount(t, ckpt)
	m := func(s string) string { return filepath.Join(mnt, s) }

	if st := statT(t, mnt); st.Ino == 0 {
		t.Error("the mount root is inode 0")
	}
	st0 := statT(t, m("params/Dense_0/kernel"))
	if time.Unix(st0.Atim.Unix()).Year() < 2000 {
		t.Errorf("atime %v", time.Unix(st0.Atim.Unix()))
	}
	if !mtimeOf(st0).Equal(old.Truncate(time.Second)) && mtimeOf(st0).Sub(old).Abs() > time.Second {
		t.Errorf("an unchanged tensor shows mtime %v, want the checkpoint's %v", mtimeOf(st0), old)
	}
	bk := t.TempDir()
	runCmd(t, "rsync", "-a", m("params")+"/", bk+"/")
	ref := filepath.Join(t.TempDir(), "ref")
	os.WriteFile(ref, nil, 0o644)
	start := time.Now().Add(-time.Second)

	// Change a tensor in place (memmap), replace one (np.save), add one.
	runPython(t, `
import sys, numpy as np
m = sys.argv[1] + '/params/'
k = np.memmap(m + 'Dense_0/kernel', dtype='<f4', mode='r+', shape=(3, 16))
k[0, 0] = 42
k.flush()
del k
np.save(m + 'Dense_1/bias.npy', np.arange(4, dtype=np.float32) * 2)
np.save(m + 'Dense_1/extra.npy', np.ones(2, np.float32))
`, mnt)
	check := func(what string) {
		t.Helper()
		for _, p := range []string{"params/Dense_0/kernel", "params/Dense_1/bias", "params/Dense_1"} {
			st := statT(t, m(p))
			if mtimeOf(st).Before(start) || ctimeOf(st).Before(start) {
				t.Errorf("%s: %s has mtime %v ctime %v, older than the change at %v", what, p, mtimeOf(st), ctimeOf(st), start)
			}
		}
		if st := statT(t, m("params/Dense_0/bias")); mtimeOf(st).After(start) {
			t.Errorf("%s: an unchanged tensor's mtime moved to %v", what, mtimeOf(st))
		}
	}
	check("after the changes")
	// The kernel forgets the inodes; the times stay.
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0); err != nil {
		t.Logf("drop_caches: %v", err)
	}
	check("after dropping the kernel's caches")
	out, err := exec.Command("find", m("params"), "-type", "f", "-newer", ref).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(strings.ReplaceAll(string(out), m("")+"/", ""))
	if !sameSet(got, []string{"params/Dense_0/kernel", "params/Dense_1/bias", "params/Dense_1/extra"}) {
		t.Errorf("find -newer lists %v", got)
	}
	// rsync -a (which compares size and mtime) carries the changes over.
	runCmd(t, "rsync", "-a", m("params")+"/", bk+"/")
	for _, p := range []string{"Dense_0/kernel", "Dense_1/bias"} {
		want, _ := os.ReadFile(m("params/" + p))
		if got, _ := os.ReadFile(filepath.Join(bk, p)); !bytes.Equal(got, want) {
			t.Errorf("rsync -a left the backup of %s stale", p)
		}
	}
	// touch sets the time shown for the mount's life.
	when := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.Chtimes(m("params/Dense_0/bias"), when, when); err != nil {
		t.Fatal(err)
	}
	if st := statT(t, m("params/Dense_0/bias")); !mtimeOf(st).Equal(when) {
		t.Errorf("after touch: mtime %v, want %v", mtimeOf(st), when)
	}
	unmountOK(t, mnt)
	f, err := safetensors.Open(ckpt)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]bool{}
	for _, s := range a {
		seen[s] = true
	}
	for _, s := range b {
		if !seen[s] {
			return false
		}
	}
	return true
}
