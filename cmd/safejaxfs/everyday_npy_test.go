package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/npy"
)

// .npy views under everyday use: np.save and np.load through numpy, several
// writers at once, renames and removals while the kernel caches names, and
// a writable mmap of a view.

// npyFile is what np.save writes for a tensor.
func npyFile(t testing.TB, g genTensor) []byte {
	t.Helper()
	h, err := npy.Header(g.dtype.String(), g.shape)
	if err != nil {
		t.Fatal(err)
	}
	return append(h, g.data...)
}

// TestNPYCloseNeverDeletesOthers: a .npy closed after someone else created
// its tensor replaces that tensor (the last close wins), and never leaves
// a name that ls lists but nothing else can use.
func TestNPYCloseNeverDeletesOthers(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	d := filepath.Join(mnt, "d")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	a, err := os.OpenFile(filepath.Join(d, "new.npy"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	mine := f32("d.new", 5, 4)
	if _, err := a.Write(npyFile(t, mine)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "new"), []byte("theirs!!"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("closing new.npy after someone created new: %v", err)
	}
	// Two programs saving the same new name at once, many times.
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				b := npyFile(t, f32("x", float32(100*w+i), 8))
				if err := os.WriteFile(filepath.Join(d, "x.npy"), b, 0o644); err != nil {
					t.Errorf("writer %d: %v", w, err)
				}
			}
		}()
	}
	wg.Wait()
	ents, err := os.ReadDir(d)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"new", "x"}) {
		t.Errorf("d lists %v, want [new x]", names)
	}
	for _, name := range names {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err != nil {
			t.Errorf("stat of a listed name: %v", err)
		}
		if err := os.Chtimes(p, time.Now(), time.Now()); err != nil {
			t.Errorf("touch of a listed name: %v", err)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(d, "new")); !bytes.Equal(got, mine.data) {
		t.Errorf("d/new holds %q, want the last close's array", got)
	}
	if dt := getxattr(t, filepath.Join(d, "new"), "user.safetensors.dtype"); dt != "F32" {
		t.Errorf("d/new is %s", dt)
	}
	if err := os.Remove(filepath.Join(d, "x")); err != nil {
		t.Errorf("rm of a listed name: %v", err)
	}
	unmountOK(t, mnt)
	checkFile(t, ckpt, flaxMeta, append(flaxTensors(), mine)...)
}

// vmHWM is a process's peak resident memory, in bytes.
func vmHWM(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

func daemonOf(t testing.TB, mnt string) int {
	t.Helper()
	pid, err := strconv.Atoi(getxattr(t, mnt, "user.safejaxfs.pid"))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestNPYRewriteCopiesNothing: np.save over an existing view does not
// first copy the whole tensor into the daemon, and a huge truncate of an
// upload is refused instead of allocated.
func TestNPYRewriteCopiesNothing(t *testing.T) {
	if !isolated(t) {
		return
	}
	const big = 64 << 20
	ckpt := writeCheckpoint(t, "big.safetensors", nil, raw("big", safetensors.F32, make([]byte, big), big/4))
	mnt := mount(t, ckpt)
	pid := daemonOf(t, mnt)
	before := vmHWM(t, pid)
	f, err := os.OpenFile(filepath.Join(mnt, "big.npy"), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	small := npyFile(t, f32("big", 1, 4))
	if _, err := f.Write(small); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if grew := vmHWM(t, pid) - before; grew > big/2 {
		t.Errorf("the daemon's peak memory grew by %d MiB for a %d-byte np.save over a %d MiB tensor", grew>>20, len(small), big>>20)
	}
	if got, _ := os.ReadFile(filepath.Join(mnt, "big")); !bytes.Equal(got, f32("", 1, 4).data) {
		t.Errorf("big after np.save holds %d bytes", len(got))
	}

	// 1 TiB truncates and writes of uploads: EFBIG, and the daemon lives.
	for _, name := range []string{"huge.npy", "__metadata__"} {
		f, err := os.OpenFile(filepath.Join(mnt, name), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(1 << 40); !errors.Is(err, syscall.EFBIG) {
			t.Errorf("%s: truncate to 1 TiB: %v, want EFBIG", name, err)
		}
		if _, err := f.WriteAt([]byte{1}, 1<<40); !errors.Is(err, syscall.EFBIG) {
			t.Errorf("%s: write at 1 TiB: %v, want EFBIG", name, err)
		}
		f.Close()
	}
	if _, err := os.Stat(filepath.Join(mnt, "big")); err != nil || exited(pid) {
		t.Fatalf("daemon after huge truncates: %v (exited: %v)", err, exited(pid))
	}
}

// TestViewsFollowChanges: a view read (and so cached) by the kernel shows
// every later change made through the raw file, however it was looked up:
// by many threads at once, or created under its own name by np.save.
func TestViewsFollowChanges(t *testing.T) {
	if !isolated(t) {
		return
	}
	const n = 400
	var tensors []genTensor
	for i := range n {
		tensors = append(tensors, f32(fmt.Sprintf("t.%d", i), float32(i), 16))
	}
	ckpt := writeCheckpoint(t, "many.safetensors", nil, tensors...)
	mnt := mount(t, ckpt)
	view := func(i int) string { return filepath.Join(mnt, "t", strconv.Itoa(i)+".npy") }
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				os.Stat(view(i))
			}
		}()
	}
	wg.Wait()
	hdr := len(npyFile(t, f32("", 0, 16))) - 64
	for i := range n {
		if _, err := os.ReadFile(view(i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		f, err := os.OpenFile(filepath.Join(mnt, "t", strconv.Itoa(i)), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte{0xAB, 0xCD}, 8)
		f.Close()
	}
	stale := 0
	for i := range n {
		b, err := os.ReadFile(view(i))
		if err != nil || !bytes.Equal(b[hdr+8:hdr+10], []byte{0xAB, 0xCD}) {
			stale++
		}
	}
	if stale > 0 {
		t.Errorf("%d of %d views stale after writes through their raw files", stale, n)
	}
	// A view created under its own name.
	runPython(t, `
import sys, numpy as np
m = sys.argv[1]
np.save(m + '/fresh.npy', np.zeros(16, np.float32))
assert (np.load(m + '/fresh.npy') == 0).all()
with open(m + '/fresh', 'r+b') as f:
    f.write(np.ones(16, np.float32).tobytes())
assert (np.load(m + '/fresh.npy') == 1).all(), np.load(m + '/fresh.npy')
`, mnt)
}

// TestNPYNamesFollowRenames: np.save after mv and rm of a tensor, and the
// tmp.npy + os.replace idiom.
func TestNPYNamesFollowRenames(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	runPython(t, `
import os, sys, numpy as np
m = sys.argv[1] + '/params/Dense_0/'
# Save to a temp name, then replace the final one.
np.save(m + 'tmp.npy', np.arange(6, dtype=np.int16))
os.replace(m + 'tmp.npy', m + 'final.npy')
assert list(np.load(m + 'final.npy')) == list(range(6))
assert not os.path.exists(m + 'tmp') and not os.path.exists(m + 'tmp.npy')
# Save, move the tensor away, save again: the moved one is untouched.
np.save(m + 'bias.npy', np.full(3, 1, np.float32))
os.rename(m + 'bias', m + 'bias_backup')
np.save(m + 'bias.npy', np.full(3, 2, np.float32))
assert (np.load(m + 'bias_backup.npy') == 1).all(), np.load(m + 'bias_backup.npy')
assert (np.load(m + 'bias.npy') == 2).all()
# Save, remove, save again.
np.save(m + 'new.npy', np.zeros(2, np.float64))
os.remove(m + 'new')
np.save(m + 'new.npy', np.ones(2, np.float64))
assert (np.load(m + 'new.npy') == 1).all()
# Rename over: the view of the name is the new tensor's.
k = np.load(m + 'kernel.npy')
os.rename(m + 'kernel', m + 'bias')
assert (np.load(m + 'bias.npy') == k).all()
np.save(m + 'bias.npy', np.full(4, 3, np.int32))
assert (np.load(m + 'bias.npy') == 3).all()
`, mnt)
	unmountOK(t, mnt)
	want := flaxTensors()[2:]
	i16 := raw("params.Dense_0.final", safetensors.I16, []byte{0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0}, 6)
	backup := raw("params.Dense_0.bias_backup", safetensors.F32, f32("", 1, 3).data, 3)
	for i := 4; i < 12; i += 4 {
		copy(backup.data[i:], backup.data[:4])
	}
	ones := raw("params.Dense_0.new", safetensors.F64, []byte{0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f}, 2)
	threes := make([]byte, 16)
	for i := range 4 {
		threes[4*i] = 3
	}
	want = append(want, i16, backup, ones, raw("params.Dense_0.bias", safetensors.I32, threes, 4))
	checkFile(t, ckpt, flaxMeta, want...)
}

// TestNPYWritableMmap: np.load(mmap_mode='r+') of a view writes the tensor
// in place, as a memmap of the raw file does.
func TestNPYWritableMmap(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	runPython(t, `
import sys, numpy as np
m = sys.argv[1] + '/params/Dense_0/'
a = np.load(m + 'kernel.npy', mmap_mode='r+')
a[1, :] = 7
a.flush()
del a
raw = np.fromfile(m + 'kernel', '<f4').reshape(3, 16)
assert (raw[1] == 7).all() and raw[0, 1] == 1, raw
with open(m + 'bias.npy', 'r+b') as f:
    f.seek(-4, 2)
    f.write(np.float32(-1).tobytes())
assert np.fromfile(m + 'bias', '<f4')[-1] == -1
`, mnt)
	unmountOK(t, mnt)
	want := flaxTensors()
	for i := 16; i < 32; i++ {
		copy(want[0].data[4*i:], f32("", 7).data)
	}
	copy(want[1].data[60:], f32("", -1).data)
	checkFile(t, ckpt, flaxMeta, want...)
}

// TestRsyncNPYIntoMount: rsync writes each .npy under a temp name and
// renames it into place; the .npy still becomes the tensor its name says.
func TestRsyncNPYIntoMount(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	src := t.TempDir()
	fresh := f32("params.Dense_0.fresh", 9, 2, 2)
	bias := f32("params.Dense_0.bias", -5, 3)
	os.WriteFile(filepath.Join(src, "fresh.npy"), npyFile(t, fresh), 0o644)
	os.WriteFile(filepath.Join(src, "bias.npy"), npyFile(t, bias), 0o644)
	runCmd(t, "rsync", "-a", src+"/", filepath.Join(mnt, "params/Dense_0")+"/")
	ents, _ := os.ReadDir(filepath.Join(mnt, "params/Dense_0"))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"bias", "fresh", "kernel"}) {
		t.Errorf("after rsync of .npy files: %v", names)
	}
	if s := getxattr(t, filepath.Join(mnt, "params/Dense_0/fresh"), "user.safetensors.shape"); s != "[2,2]" {
		t.Errorf("fresh has shape %s", s)
	}
	unmountOK(t, mnt)
	want := flaxTensors()
	want[1] = bias
	checkFile(t, ckpt, flaxMeta, append(want, fresh)...)
}
