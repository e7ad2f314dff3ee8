package checkpoint

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Tests of Checkpoint: the edit rules, and Sync (in place, rewrite,
// concurrent edits, files changed by others, the lock, Close). The truth a
// file is compared with is always what safetensors.Write makes of the
// tensors the test expects, byte for byte.

// ckTensor is a tensor as a test expects it.
type ckTensor struct {
	dtype safetensors.DType
	shape []uint64
	data  []byte
}

// ckModel is what a checkpoint should hold.
type ckModel struct {
	tensors map[string]ckTensor
	meta    map[string]string
}

func (m *ckModel) clone() *ckModel {
	n := &ckModel{tensors: maps.Clone(m.tensors), meta: maps.Clone(m.meta)}
	for k, t := range n.tensors {
		t.data = bytes.Clone(t.data)
		n.tensors[k] = t
	}
	return n
}

func (m *ckModel) write(k string, p []byte, off int64) {
	t := m.tensors[k]
	copy(t.data[off:], p)
}

// canonical is the file the reference writer makes for the model.
func (m *ckModel) canonical(t testing.TB) []byte {
	t.Helper()
	var src []safetensors.Source
	for k, ts := range m.tensors {
		src = append(src, safetensors.Source{Key: k, DType: ts.dtype, Shape: ts.shape, Data: safetensors.Bytes(ts.data)})
	}
	var b bytes.Buffer
	if _, err := safetensors.Write(&b, src, m.meta); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// ckDefault: tensors of several dtypes, sizes from none to several chunks,
// and metadata.
func ckDefault() *ckModel {
	return &ckModel{
		tensors: map[string]ckTensor{
			"params.w": {safetensors.F32, []uint64{300, 100}, ctPattern(21, 120_000)}, // ~1.8 chunks
			"params.b": {safetensors.F32, []uint64{100}, ctPattern(22, 400)},
			"embed":    {safetensors.U8, []uint64{200_000}, ctPattern(23, 200_000)}, // ~3.05 chunks
			"step":     {safetensors.I64, []uint64{}, ctPattern(24, 8)},
			"half":     {safetensors.BF16, []uint64{3, 5}, ctPattern(25, 30)},
			"empty":    {safetensors.F32, []uint64{0}, nil},
		},
		meta: map[string]string{"framework": "flax"},
	}
}

// ckFile writes the model's canonical file into a fresh directory.
func ckFile(t testing.TB, m *ckModel) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "model.safetensors")
	if err := os.WriteFile(p, m.canonical(t), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func ckOpen(t testing.TB, path string, opt Options) *Checkpoint {
	t.Helper()
	c, err := Open(path, opt)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ckID finds the tensor's ID by key.
func ckID(t testing.TB, c *Checkpoint, key string) ID {
	t.Helper()
	for i, k := range c.Keys() {
		if k == key && k != "" {
			if _, ok := c.Info(ID(i)); ok {
				return ID(i)
			}
		}
	}
	t.Fatalf("no tensor %q", key)
	return -1
}

// ckRead copies the whole tensor as the mount would show it.
func ckRead(t testing.TB, c *Checkpoint, id ID) []byte {
	t.Helper()
	info, ok := c.Info(id)
	if !ok {
		t.Fatalf("tensor %d is gone", id)
	}
	segs, release, err := c.Read(id, 0, int(info.Size)+1)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	return bytes.Join(segs, nil)
}

// ckCheckState asserts the checkpoint shows exactly the model.
func ckCheckState(t testing.TB, c *Checkpoint, m *ckModel, what string) {
	t.Helper()
	seen := map[string]bool{}
	for i, k := range c.Keys() {
		info, ok := c.Info(ID(i))
		if !ok {
			continue
		}
		if k != info.Key {
			t.Fatalf("%s: Keys()[%d] = %q, Info says %q", what, i, k, info.Key)
		}
		want, ok := m.tensors[k]
		if !ok {
			t.Fatalf("%s: unexpected tensor %q", what, k)
		}
		seen[k] = true
		if info.DType != want.dtype || !slices.Equal(info.Shape, want.shape) || info.Size != int64(len(want.data)) {
			t.Fatalf("%s: %q is %s %v %d bytes, want %s %v %d bytes", what, k, info.DType, info.Shape, info.Size, want.dtype, want.shape, len(want.data))
		}
		if got := ckRead(t, c, ID(i)); !bytes.Equal(got, want.data) {
			t.Fatalf("%s: %q bytes differ from the model at %d", what, k, firstDiff(got, want.data))
		}
	}
	for k := range m.tensors {
		if !seen[k] {
			t.Fatalf("%s: tensor %q missing", what, k)
		}
	}
	if got := c.Metadata(); !maps.Equal(got, m.meta) {
		t.Fatalf("%s: metadata %v, want %v", what, got, m.meta)
	}
	// The shortcut a compaction takes when there is nothing to write
	// must agree with the snapshot it skips, in every state a test
	// reaches: one that said clean wrongly would drop edits.
	c.mu.RLock()
	closed := c.closed
	c.mu.RUnlock()
	if !c.readOnly && !closed {
		s := c.snapshot()
		dirty := s.dirty
		s.release()
		if w := c.wouldWrite(); w != dirty {
			t.Fatalf("%s: wouldWrite says %v, a snapshot's dirty %v", what, w, dirty)
		}
	}
}

// ckCheckFile asserts path validates and is byte for byte the canonical
// file of the model.
func ckCheckFile(t testing.TB, path string, m *ckModel, what string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatalf("%s: %s does not validate: %v", what, path, err)
	}
	f.Close()
	if want := m.canonical(t); !bytes.Equal(got, want) {
		t.Fatalf("%s: %s is not the canonical file of the expected tensors (%d vs %d bytes, first difference at %d)",
			what, path, len(got), len(want), firstDiff(got, want))
	}
}

func ckIno(t testing.TB, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// ckSideFiles lists what safejaxfs left next to the checkpoint: temp
// files, recovery files, a log. Once everything is written back there is
// none.
func ckSideFiles(t testing.TB, path string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.Name() != filepath.Base(path) {
			out = append(out, e.Name())
		}
	}
	return out
}

// ckRecorder records the crash hook points a persist passes.
type ckRecorder struct {
	mu     sync.Mutex
	points []string
}

func (r *ckRecorder) hooks() *crashHooks {
	return &crashHooks{at: func(p string) error {
		r.mu.Lock()
		r.points = append(r.points, p)
		r.mu.Unlock()
		return nil
	}}
}

func (r *ckRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.points
	r.points = nil
	return p
}

// The crash points of the rewrite (rewrite.go); an in-place persist must
// reach none of them.
var rewritePoints = []string{"tmp-written", "tmp-synced", "renamed"}

// ---- edit rules ----

func TestEditWriteAndTruncateRules(t *testing.T) {
	t.Parallel()
	m := ckDefault()
	path := ckFile(t, m)
	c := ckOpen(t, path, Options{})
	defer c.Close()
	b := ckID(t, c, "params.b")

	// Past the end of a fixed-size tensor: refused, nothing changed.
	err := c.WriteAt(b, []byte{1, 2, 3, 4, 5}, 396)
	if !errors.Is(err, ErrSize) || !strings.Contains(err.Error(), "params.b") {
		t.Errorf("write past the end: %v, want ErrSize naming the key", err)
	}
	ckCheckState(t, c, m, "after a refused write")

	// Inside: visible at once.
	p := ctPattern(30, 100)
	if err := c.WriteAt(b, p, 300); err != nil {
		t.Fatal(err)
	}
	m.write("params.b", p, 300)
	ckCheckState(t, c, m, "after a write")

	// Truncate then rewrite to the right size: committed, as cp does it.
	st, err := c.Stage(b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 0 {
		t.Errorf("after truncate to 0 the rewrite has %d bytes", st.Size())
	}
	newB := ctPattern(31, 400)
	if err := st.WriteAt(newB[:150], 0); err != nil {
		t.Fatal(err)
	}
	if st.Size() != 150 {
		t.Errorf("mid-rewrite the rewrite has %d bytes, want the 150 written", st.Size())
	}
	// Until committed, the tensor keeps its bytes for everyone else.
	ckCheckState(t, c, m, "mid-rewrite")
	if err := st.Commit(); !errors.Is(err, ErrSize) {
		t.Errorf("commit of 150 bytes of 400: %v, want ErrSize", err)
	}
	if err := st.WriteAt(newB[150:], 150); err != nil {
		t.Fatal(err)
	}
	if err := st.WriteAt([]byte{1}, 400); !errors.Is(err, ErrSize) {
		t.Errorf("rewrite past the end: %v, want ErrSize", err)
	}
	if got := ckReadStaged(t, st); !bytes.Equal(got, newB) {
		t.Error("the rewrite does not read back what was written")
	}
	if err := st.Commit(); err != nil {
		t.Errorf("commit of a complete rewrite: %v", err)
	}
	st.Close()
	m.tensors["params.b"] = ckTensor{safetensors.F32, []uint64{100}, bytes.Clone(newB)}
	ckCheckState(t, c, m, "after truncate and a complete rewrite")

	// Wrong size, then abandoned: the tensor never changed.
	for _, tc := range []struct {
		name  string
		trunc int64
		write int // bytes written from 0 after the truncate
	}{
		{"short", 0, 200},
		{"nothing written", 0, 0},
		{"truncated shorter, not rewritten", 10, 0},
	} {
		st, err := c.Stage(b, tc.trunc)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if tc.write > 0 {
			if err := st.WriteAt(ctPattern(32, tc.write), 0); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
		}
		if err := st.Commit(); !errors.Is(err, ErrSize) {
			t.Errorf("%s: Commit = %v, want ErrSize", tc.name, err)
		}
		st.Close()
		ckCheckState(t, c, m, tc.name+": after the refused rewrite")
	}
	if _, err := c.Stage(b, 1000); !errors.Is(err, ErrSize) {
		t.Errorf("a rewrite longer than the tensor: %v, want ErrSize", err)
	}
	// A rewrite in progress never reaches the file.
	st, err = c.Stage(b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Compact(); err != nil {
		t.Fatal(err)
	}
	ckCheckFile(t, path, m, "synced mid-rewrite")
	st.Close()
	// Truncate to the same size is a no-op; to another without a
	// rewrite of one's own, refused.
	if err := c.Truncate(b, 400); err != nil {
		t.Fatal(err)
	}
	if err := c.Truncate(b, 10); !errors.Is(err, ErrSize) {
		t.Errorf("truncate by path to another size: %v, want ErrSize", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	ckCheckFile(t, path, m, "after Close")
}

func TestEditCreateGrowable(t *testing.T) {
	t.Parallel()
	m := ckDefault()
	path := ckFile(t, m)
	c := ckOpen(t, path, Options{})
	defer c.Close()
	id, err := c.Create("notes")
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := c.Info(id); info.DType != safetensors.U8 || !slices.Equal(info.Shape, []uint64{0}) || info.Size != 0 {
		t.Errorf("new file: %+v, want U8 [0]", info)
	}
	if err := c.WriteAt(id, []byte("hello"), 0); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAt(id, []byte("world"), 10); err != nil {
		t.Fatal(err)
	}
	want := []byte("hello\x00\x00\x00\x00\x00world")
	if info, _ := c.Info(id); !slices.Equal(info.Shape, []uint64{15}) {
		t.Errorf("shape %v after writing 15 bytes", info.Shape)
	}
	if got := ckRead(t, c, id); !bytes.Equal(got, want) {
		t.Errorf("read %q", got)
	}
	if err := c.Truncate(id, 7); err != nil {
		t.Fatal(err)
	}
	m.tensors["notes"] = ckTensor{safetensors.U8, []uint64{7}, want[:7]}
	ckCheckState(t, c, m, "growable")

	if _, err := c.Create("notes"); !errors.Is(err, ErrExists) {
		t.Errorf("create of an existing key: %v", err)
	}
	if _, err := c.Create("params.w"); !errors.Is(err, ErrExists) {
		t.Errorf("create of an existing key: %v", err)
	}
	if _, err := c.Create("__metadata__"); !errors.Is(err, ErrInvalid) {
		t.Errorf("create of __metadata__: %v", err)
	}
	// IDs are never reused: a deleted key created again is a new tensor,
	// and the old ID misses.
	if err := c.Delete(id); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Info(id); ok {
		t.Error("deleted tensor still has Info")
	}
	// Until dropped (no file has it open any more) it reads on, takes
	// writes that go nowhere, and stats as removed.
	if err := c.WriteAt(id, []byte("9"), 0); err != nil {
		t.Errorf("write to a deleted tensor still open: %v", err)
	}
	if segs, release, err := c.Read(id, 0, 100); err != nil || !bytes.Equal(bytes.Join(segs, nil), []byte("9ello\x00\x00")) {
		t.Errorf("read of a deleted tensor still open: %q %v", bytes.Join(segs, nil), err)
	} else {
		release()
	}
	if info, ok := c.Attr(id); !ok || !info.Removed || info.Size != 7 {
		t.Errorf("Attr of a deleted tensor still open: %+v %v", info, ok)
	}
	c.Drop(id)
	if _, _, err := c.Read(id, 0, 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("read of a deleted tensor: %v", err)
	}
	if err := c.WriteAt(id, []byte{1}, 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("write to a deleted tensor: %v", err)
	}
	if _, ok := c.Attr(id); ok {
		t.Error("a dropped tensor still has Attr")
	}
	if err := c.Delete(id); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	id2, err := c.Create("notes")
	if err != nil {
		t.Fatal(err)
	}
	if id2 == id {
		t.Error("an ID was reused")
	}
	if c.Keys()[id] != "" {
		t.Errorf("Keys() names the deleted ID %q", c.Keys()[id])
	}
	m.tensors["notes"] = ckTensor{safetensors.U8, []uint64{0}, nil}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	ckCheckFile(t, path, m, "after Close")
}

func TestEditPutRenameReshapeMetadata(t *testing.T) {
	t.Parallel()
	m := ckDefault()
	path := ckFile(t, m)
	c := ckOpen(t, path, Options{})
	defer c.Close()

	// Put replaces in place: same ID, new dtype, shape and bytes.
	b := ckID(t, c, "params.b")
	i32 := ctPattern(40, 24)
	id, err := c.Put("params.b", safetensors.I32, []uint64{2, 3}, i32)
	if err != nil || id != b {
		t.Fatalf("Put over params.b = %d, %v; want its ID %d", id, err, b)
	}
	m.tensors["params.b"] = ckTensor{safetensors.I32, []uint64{2, 3}, bytes.Clone(i32)}
	// And creates.
	if _, err := c.Put("extra.scale", safetensors.F64, []uint64{}, ctPattern(41, 8)); err != nil {
		t.Fatal(err)
	}
	m.tensors["extra.scale"] = ckTensor{safetensors.F64, []uint64{}, ctPattern(41, 8)}
	if _, err := c.Put("bad", safetensors.F32, []uint64{3}, make([]byte, 11)); !errors.Is(err, ErrSize) {
		t.Errorf("Put with the wrong byte count: %v", err)
	}
	if _, err := c.Put("bad", safetensors.F4, []uint64{3}, make([]byte, 1)); !errors.Is(err, ErrInvalid) {
		t.Errorf("Put of 3 F4 (not whole bytes): %v", err)
	}
	if _, err := c.Put("__metadata__", safetensors.U8, []uint64{1}, []byte{1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Put of __metadata__: %v", err)
	}
	ckCheckState(t, c, m, "after Put")

	// Swap two keys in one RenameAll: allowed, bytes follow the IDs.
	w, e := ckID(t, c, "params.w"), ckID(t, c, "embed")
	if err := c.RenameAll(map[ID]string{w: "embed", e: "params.w"}); err != nil {
		t.Fatalf("swap: %v", err)
	}
	m.tensors["embed"], m.tensors["params.w"] = m.tensors["params.w"], m.tensors["embed"]
	if got, _ := c.Info(w); got.Key != "embed" {
		t.Errorf("after the swap ID %d is %q", w, got.Key)
	}
	ckCheckState(t, c, m, "after a swap")
	// Refusals change nothing.
	step := ckID(t, c, "step")
	for _, tc := range []struct {
		name    string
		renames map[ID]string
		want    error
	}{
		{"onto another tensor", map[ID]string{w: "step"}, ErrExists},
		{"two onto one key", map[ID]string{w: "x", e: "x"}, ErrExists},
		{"half a swap", map[ID]string{w: "params.w", step: "y"}, ErrExists},
		{"onto __metadata__", map[ID]string{w: "__metadata__"}, ErrInvalid},
		{"a missing ID", map[ID]string{w: "x", 999: "z"}, ErrNotFound},
	} {
		if err := c.RenameAll(tc.renames); !errors.Is(err, tc.want) {
			t.Errorf("rename %s: %v, want %v", tc.name, err, tc.want)
		}
		ckCheckState(t, c, m, "after refused rename "+tc.name)
	}
	if err := c.Rename(step, "opt.step"); err != nil {
		t.Fatal(err)
	}
	m.tensors["opt.step"] = m.tensors["step"]
	delete(m.tensors, "step")

	// Reshape: same byte size only.
	pw := ckID(t, c, "params.w") // now the 200000-byte U8 tensor
	if err := c.Reshape(pw, safetensors.F32, []uint64{50_000, 2}); !errors.Is(err, ErrSize) {
		t.Errorf("reshape to 400000 bytes: %v", err)
	}
	if err := c.Reshape(pw, safetensors.F4, []uint64{3}); !errors.Is(err, ErrInvalid) {
		t.Errorf("reshape to sub-byte remainder: %v", err)
	}
	if err := c.Reshape(pw, safetensors.F16, []uint64{1000, 100}); err != nil {
		t.Fatal(err)
	}
	mt := m.tensors["params.w"]
	m.tensors["params.w"] = ckTensor{safetensors.F16, []uint64{1000, 100}, mt.data}
	// A rewrite under way must fit the new shape to commit.
	st, err := c.Stage(pw, 10)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Commit(); !errors.Is(err, ErrSize) {
		t.Errorf("commit of 10 bytes: %v", err)
	}
	st.Close()
	ckCheckState(t, c, m, "after reshape")

	// Metadata: copies in and out.
	meta := map[string]string{"step": "1300", "note": "<&>"}
	if err := c.SetMetadata(meta); err != nil {
		t.Fatal(err)
	}
	meta["step"] = "mutated after SetMetadata"
	got := c.Metadata()
	got["note"] = "mutated after Metadata"
	m.meta = map[string]string{"step": "1300", "note": "<&>"}
	ckCheckState(t, c, m, "after SetMetadata")

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	ckCheckFile(t, path, m, "after Close")

	// Metadata cleared: an empty object, as the writer is given it.
	c = ckOpen(t, path, Options{})
	if err := c.SetMetadata(nil); err != nil {
		t.Fatal(err)
	}
	m.meta = map[string]string{}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	ckCheckFile(t, path, m, "after clearing the metadata")
}

func TestReadOnlyRefusesEdits(t *testing.T) {
	t.Parallel()
	m := ckDefault()
	path := ckFile(t, m)
	before, _ := os.ReadFile(path)
	c := ckOpen(t, path, Options{ReadOnly: true})
	if !c.ReadOnly() {
		t.Error("ReadOnly() is false")
	}
	id := ckID(t, c, "embed")
	for name, err := range map[string]error{
		"WriteAt":     c.WriteAt(id, []byte{1}, 0),
		"Truncate":    c.Truncate(id, 0),
		"Delete":      c.Delete(id),
		"RenameAll":   c.RenameAll(map[ID]string{id: "x"}),
		"Reshape":     c.Reshape(id, safetensors.I8, []uint64{200_000}),
		"SetMetadata": c.SetMetadata(map[string]string{"a": "b"}),
		"Create":      func() error { _, err := c.Create("x"); return err }(),
		"Put":         func() error { _, err := c.Put("x", safetensors.U8, []uint64{1}, []byte{1}); return err }(),
		"Put replace": func() error { _, err := c.Put("embed", safetensors.U8, []uint64{1}, []byte{1}); return err }(),
	} {
		if !errors.Is(err, ErrReadOnly) {
			t.Errorf("%s on a read-only checkpoint: %v, want ErrReadOnly", name, err)
		}
	}
	ckCheckState(t, c, m, "read-only after refusals")
	if err := c.Compact(); err != nil {
		t.Errorf("Sync of a read-only checkpoint: %v", err)
	}
	// Read-only opens take no lock: a writer may open alongside.
	w := ckOpen(t, path, Options{})
	w.Close()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("the read-only checkpoint changed")
	}
	if s := ckSideFiles(t, path); len(s) != 0 {
		t.Errorf("left behind: %v", s)
	}
}

// ---- Sync ----

// ckWatch reports the names in dir that something was done to, and what,
// through inotify.
type ckWatch struct {
	fd int
}

func ckWatchDir(t *testing.T, dir string) *ckWatch {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	const mask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_MODIFY | unix.IN_ATTRIB
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		t.Fatal(err)
	}
	return &ckWatch{fd}
}

// events drains what happened since the last call: name -> event kinds.
func (w *ckWatch) events(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(w.fd, buf)
		if errors.Is(err, unix.EAGAIN) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			nl := int(binary.NativeEndian.Uint32(buf[off+12:]))
			name := string(bytes.TrimRight(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+nl], "\x00"))
			off += unix.SizeofInotifyEvent + nl
			for bit, kind := range map[uint32]string{unix.IN_CREATE: "create", unix.IN_DELETE: "delete", unix.IN_MOVED_FROM: "moved-from",
				unix.IN_MOVED_TO: "moved-to", unix.IN_MODIFY: "modify", unix.IN_ATTRIB: "attrib"} {
				if mask&bit != 0 && !slices.Contains(out[name], kind) {
					out[name] = append(out[name], kind)
				}
			}
		}
	}
}

// ckSameLayoutEdits edits bytes only: across chunk boundaries, at tensor
// ends, whole small tensors, and a truncate-and-rewrite that leaves a gap
// of zeros (which must be written as zeros).
func ckSameLayoutEdits(t *testing.T, c *Checkpoint, m *ckModel, seed uint64) {
	t.Helper()
	edit := func(key string, off int64, n int) {
		p := ctPattern(seed+uint64(off)+uint64(n), n)
		if err := c.WriteAt(ckID(t, c, key), p, off); err != nil {
			t.Fatal(err)
		}
		m.write(key, p, off)
	}
	edit("embed", chunkSize-3, 10)
	edit("embed", 2*chunkSize, chunkSize)
	edit("embed", 200_000-5, 5)
	edit("params.w", 0, 1)
	edit("params.w", 120_000-4, 4)
	edit("step", 0, 8)
	edit("half", 28, 2)
	// cp-style rewrite of params.b that only writes from byte 200 on.
	b := ckID(t, c, "params.b")
	tail := ctPattern(seed+99, 200)
	ckRewrite(t, c, b, 10, tail, 200)
	old := m.tensors["params.b"].data
	nb := append(append(bytes.Clone(old[:10]), make([]byte, 190)...), tail...)
	m.tensors["params.b"] = ckTensor{safetensors.F32, []uint64{100}, nb}
	// The same on several chunks of embed: whole chunks of zeros that no
	// write covers must reach the file as zeros.
	e := ckID(t, c, "embed")
	tail = ctPattern(seed+98, 200_000-3*chunkSize)
	ckRewrite(t, c, e, 10, tail, 3*chunkSize)
	old = m.tensors["embed"].data
	ne := append(append(bytes.Clone(old[:10]), make([]byte, 3*chunkSize-10)...), tail...)
	m.tensors["embed"] = ckTensor{safetensors.U8, []uint64{200_000}, ne}
}

// Sync writes the log and nothing else: the checkpoint file is untouched
// until a compaction, which for same-layout edits patches it in place (no
// new file) and removes the log.
func TestSyncLogsCompactPatchesInPlace(t *testing.T) {
	t.Parallel()
	m := ckDefault()
	path := ckFile(t, m)
	rec := &ckRecorder{}
	c := ckOpen(t, path, Options{hooks: rec.hooks()})
	defer c.Close()
	ino := ckIno(t, path)
	base := filepath.Base(path)
	lname := filepath.Base(walPathOf(path))
	w := ckWatchDir(t, filepath.Dir(path))

	for round := range 2 {
		before, _ := os.ReadFile(path)
		ckSameLayoutEdits(t, c, m, uint64(100*round))
		if err := c.Sync(); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(path); !bytes.Equal(got, before) {
			t.Fatalf("round %d: Sync changed the checkpoint file (it only logs)", round)
		}
		ckCheckState(t, c, m, "after Sync, served from the log")
		for _, p := range rec.take() {
			if p != "log-written" && p != "log-synced" {
				t.Errorf("round %d: Sync passed %q", round, p)
			}
		}
		for name, kinds := range w.events(t) {
			if name != lname && !isTempOf(name, lname[1:len(lname)-len(walSuffix)]) {
				t.Errorf("round %d: Sync touched %s (%v)", round, name, kinds)
			}
		}
		if err := c.Compact(); err != nil {
			t.Fatal(err)
		}
		ckCheckFile(t, path, m, "after an in-place compaction")
		if got := ckIno(t, path); got != ino {
			t.Fatalf("round %d: a same-layout edit replaced the file (inode %d -> %d)", round, ino, got)
		}
		for _, p := range rec.take() {
			if slices.Contains(rewritePoints, p) {
				t.Errorf("round %d: an in-place compaction reached the rewrite's %q", round, p)
			}
		}
		ev := w.events(t)
		for name, kinds := range ev {
			switch {
			case name == base:
				if !slices.Equal(kinds, []string{"modify"}) {
					t.Errorf("round %d: the checkpoint saw %v, want only modify", round, kinds)
				}
			case name == lname:
			default:
				t.Errorf("round %d: %s was touched (%v)", round, name, kinds)
			}
		}
		if s := ckSideFiles(t, path); len(s) != 0 {
			t.Errorf("round %d: left behind: %v", round, s)
		}
		// Written-back tensors read from the file again: one slice.
		segs, release, err := c.Read(ckID(t, c, "embed"), 0, 200_000)
		if err != nil || len(segs) != 1 {
			t.Errorf("round %d: after compaction a whole-tensor read is %d segments (%v), want one slice of the mapping", round, len(segs), err)
		}
		release()
		ckCheckState(t, c, m, "after compaction")
	}
	// Nothing pending: no write at all.
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := c.Compact(); err != nil {
		t.Fatal(err)
	}
	if p := rec.take(); len(p) != 0 {
		t.Errorf("a Sync and a Compact with nothing to do reached %v", p)
	}
	if ev := w.events(t); len(ev) != 0 {
		t.Errorf("a Sync and a Compact with nothing to do touched %v", ev)
	}
}

// ckLayoutChanges are edits that move bytes in the file.
var ckLayoutChanges = []struct {
	name  string
	apply func(t *testing.T, c *Checkpoint, m *ckModel)
}{
	{"create a file", func(t *testing.T, c *Checkpoint, m *ckModel) {
		id, err := c.Create("notes")
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WriteAt(id, []byte("hello"), 0); err != nil {
			t.Fatal(err)
		}
		m.tensors["notes"] = ckTensor{safetensors.U8, []uint64{5}, []byte("hello")}
	}},
	{"put a new tensor", func(t *testing.T, c *Checkpoint, m *ckModel) {
		d := ctPattern(50, 3*chunkSize)
		if _, err := c.Put("params.new", safetensors.I16, []uint64{3, chunkSize / 2}, d); err != nil {
			t.Fatal(err)
		}
		m.tensors["params.new"] = ckTensor{safetensors.I16, []uint64{3, chunkSize / 2}, bytes.Clone(d)}
	}},
	{"replace with another shape", func(t *testing.T, c *Checkpoint, m *ckModel) {
		d := ctPattern(51, 56)
		if _, err := c.Put("params.b", safetensors.F64, []uint64{7}, d); err != nil {
			t.Fatal(err)
		}
		m.tensors["params.b"] = ckTensor{safetensors.F64, []uint64{7}, bytes.Clone(d)}
	}},
	{"rename", func(t *testing.T, c *Checkpoint, m *ckModel) {
		if err := c.Rename(ckID(t, c, "embed"), "tok.embed"); err != nil {
			t.Fatal(err)
		}
		m.tensors["tok.embed"] = m.tensors["embed"]
		delete(m.tensors, "embed")
	}},
	{"swap", func(t *testing.T, c *Checkpoint, m *ckModel) {
		if err := c.RenameAll(map[ID]string{ckID(t, c, "params.w"): "params.b", ckID(t, c, "params.b"): "params.w"}); err != nil {
			t.Fatal(err)
		}
		m.tensors["params.w"], m.tensors["params.b"] = m.tensors["params.b"], m.tensors["params.w"]
	}},
	{"delete", func(t *testing.T, c *Checkpoint, m *ckModel) {
		if err := c.Delete(ckID(t, c, "step")); err != nil {
			t.Fatal(err)
		}
		delete(m.tensors, "step")
	}},
	{"reshape", func(t *testing.T, c *Checkpoint, m *ckModel) {
		if err := c.Reshape(ckID(t, c, "params.w"), safetensors.U8, []uint64{120_000}); err != nil {
			t.Fatal(err)
		}
		m.tensors["params.w"] = ckTensor{safetensors.U8, []uint64{120_000}, m.tensors["params.w"].data}
	}},
	{"metadata", func(t *testing.T, c *Checkpoint, m *ckModel) {
		if err := c.SetMetadata(map[string]string{"framework": "flax", "step": "2"}); err != nil {
			t.Fatal(err)
		}
		m.meta = map[string]string{"framework": "flax", "step": "2"}
	}},
	{"rename there and back", func(t *testing.T, c *Checkpoint, m *ckModel) {
		id := ckID(t, c, "half")
		if err := c.Rename(id, "x"); err != nil {
			t.Fatal(err)
		}
		if err := c.Rename(id, "half"); err != nil {
			t.Fatal(err)
		}
	}},
	{"byte edits and a delete", func(t *testing.T, c *Checkpoint, m *ckModel) {
		ckSameLayoutEdits(t, c, m, 7)
		if err := c.Delete(ckID(t, c, "empty")); err != nil {
			t.Fatal(err)
		}
		delete(m.tensors, "empty")
	}},
}

func TestSyncRewrite(t *testing.T) {
	t.Parallel()
	for _, tc := range ckLayoutChanges {
		t.Run(tc.name, func(t *testing.T) {
			m := ckDefault()
			path := ckFile(t, m)
			rec := &ckRecorder{}
			c := ckOpen(t, path, Options{hooks: rec.hooks()})
			defer c.Close()
			ino := ckIno(t, path)
			tc.apply(t, c, m)
			if err := c.Compact(); err != nil {
				t.Fatal(err)
			}
			ckCheckFile(t, path, m, "after a rewrite")
			if ckIno(t, path) == ino {
				t.Error("a layout change did not replace the file")
			}
			if p := rec.take(); !slices.Contains(p, "renamed") {
				t.Errorf("rewrite passed %v, not the rename", p)
			}
			if s := ckSideFiles(t, path); len(s) != 0 {
				t.Errorf("left behind: %v", s)
			}
			ckCheckState(t, c, m, "after the rewrite")
			// The lock followed the new file.
			if c2, err := Open(path, Options{}); !errors.Is(err, ErrLocked) {
				if c2 != nil {
					c2.Close()
				}
				t.Errorf("second read-write open after a rewrite: %v, want ErrLocked", err)
			}
			// Byte edits on the rewritten file go in place again.
			ino = ckIno(t, path)
			id := ckID(t, c, "params.w")
			p := ctPattern(60, 3)
			if err := c.WriteAt(id, p, 1); err != nil {
				t.Fatal(err)
			}
			m.write("params.w", p, 1)
			if err := c.Compact(); err != nil {
				t.Fatal(err)
			}
			if ckIno(t, path) != ino {
				t.Error("a byte edit after a rewrite was not done in place")
			}
			if p := rec.take(); len(p) == 0 || slices.Contains(p, "renamed") {
				t.Errorf("byte edit after a rewrite passed %v", p)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			ckCheckFile(t, path, m, "after Close")
			c = ckOpen(t, path, Options{ReadOnly: true})
			ckCheckState(t, c, m, "reopened")
		})
	}
}

// ckCatchFault turns a fault on unmapped memory in fn into a test failure
// instead of a crash of the whole test binary.
func ckCatchFault(t *testing.T, what string, fn func()) {
	t.Helper()
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("%s: %v (memory no longer mapped)", what, r)
		}
	}()
	fn()
}

func TestReadSurvivesRewrite(t *testing.T) {
	t.Parallel()
	m := ckDefault()
	old := m.clone()
	path := ckFile(t, m)
	c := ckOpen(t, path, Options{})
	defer c.Close()
	oldMap := c.shards[0].cur
	e, w := ckID(t, c, "embed"), ckID(t, c, "params.w")
	eSegs, eRelease, err := c.Read(e, 0, 200_000)
	if err != nil {
		t.Fatal(err)
	}
	wSegs, wRelease, err := c.Read(w, 1000, 50_000)
	if err != nil {
		t.Fatal(err)
	}
	// Rewrite the file: the tensor held is replaced, another moved.
	d := ctPattern(70, 200_000)
	if _, err := c.Put("embed", safetensors.U8, []uint64{200_000}, d); err != nil {
		t.Fatal(err)
	}
	m.tensors["embed"] = ckTensor{safetensors.U8, []uint64{200_000}, bytes.Clone(d)}
	tc := ckLayoutChanges[1] // a new tensor moves everything after it
	tc.apply(t, c, m)
	if err := c.Compact(); err != nil {
		t.Fatal(err)
	}
	ckCheckFile(t, path, m, "after the rewrite")
	if c.shards[0].cur == oldMap {
		t.Fatal("no new mapping after a rewrite")
	}
	ckCatchFault(t, "reading slices taken before a rewrite", func() {
		if got := bytes.Join(eSegs, nil); !bytes.Equal(got, old.tensors["embed"].data) {
			t.Errorf("a read taken before the rewrite changed (at %d)", firstDiff(got, old.tensors["embed"].data))
		}
		if got := bytes.Join(wSegs, nil); !bytes.Equal(got, old.tensors["params.w"].data[1000:51_000]) {
			t.Error("a read taken before the rewrite changed")
		}
	})
	if n := oldMap.refs.Load(); n != 2 {
		t.Errorf("the old mapping has %d references with two reads in flight, want 2", n)
	}
	eRelease()
	wRelease()
	if n := oldMap.refs.Load(); n != 0 || oldMap.file.Fd() != nil {
		t.Errorf("after the reads finished the old mapping has %d references (closed: %v), want it closed", n, oldMap.file.Fd() == nil)
	}
	ckCheckState(t, c, m, "after the rewrite")
}

// A read hands out slices of the mapping; an in-place Sync writes the same
// file. Bytes a read already returned must not change under it: the FUSE
// reply is still being copied from them.
func TestReadStableAcrossInPlaceSync(t *testing.T) {
	t.Parallel()
	m := ckDefault()
	path := ckFile(t, m)
	c := ckOpen(t, path, Options{})
	defer c.Close()
	e := ckID(t, c, "embed")
	segs, release, err := c.Read(e, 0, 2*chunkSize)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(m.tensors["embed"].data[:2*chunkSize])
	p := ctPattern(80, 2*chunkSize)
	if err := c.WriteAt(e, p, 0); err != nil {
		t.Fatal(err)
	}
	m.write("embed", p, 0)
	done := make(chan error, 1)
	go func() { done <- c.Compact() }()
	var synced bool
	select {
	case err := <-done:
		synced = true
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(300 * time.Millisecond):
	}
	if got := bytes.Join(segs, nil); !bytes.Equal(got, want) {
		t.Errorf("bytes a read returned before the write changed under it (first difference at %d; Sync finished: %v)", firstDiff(got, want), synced)
	}
	release()
	if !synced {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	ckCheckFile(t, path, m, "after the Sync")
}

// Edits made while a persist is under way (from inside its hooks, so the
// timing is exact) are neither lost nor half persisted.
func TestEditsDuringSync(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		layout bool   // the first Sync rewrites
		point  string // where the edits come in
	}{
		{"log written", false, "log-written"},
		{"log synced", false, "log-synced"},
		{"in place, patch written", false, "patch-written"},
		{"rewrite, temp written", true, "tmp-written"},
		{"rewrite, renamed", true, "renamed"},
	} {
		// A commit (Sync) is where edits race at the log's points; a
		// compaction takes its last commit under the lock, so they race
		// at its later points.
		logPoint := strings.HasPrefix(tc.point, "log-")
		t.Run(tc.name, func(t *testing.T) {
			m := ckDefault()
			path := ckFile(t, m)
			c := ckOpen(t, path, Options{})
			defer c.Close()
			write := func(key string, off int64, n int) {
				p := ctPattern(uint64(off)+uint64(n), n)
				if err := c.WriteAt(ckID(t, c, key), p, off); err != nil {
					panic(err)
				}
				m.write(key, p, off)
			}
			// Edits in the first chunk of the big tensors only: the rest
			// of their bytes are read from the file.
			write("embed", 0, 10)
			write("params.w", 100, 4)
			if tc.layout {
				ckLayoutChanges[1].apply(t, c, m)
			}
			snap := m.clone() // what the first Sync must write
			var hookErr error
			var staged *Staged
			c.hooks = &crashHooks{at: func(p string) error {
				if p != tc.point {
					return nil
				}
				c.hooks = nil
				defer func() { hookErr, _ = recover().(error) }()
				// Tensors in the snapshot, edited again in another chunk
				// (their other chunks still come from the old file); a
				// tensor that was clean; a staged rewrite; a new tensor.
				write("embed", chunkSize+1, 10)
				write("params.w", 0, 1)
				write("half", 1, 7)
				write("params.b", 396, 4)
				var err error
				if staged, err = c.Stage(ckID(t, c, "step"), 3); err != nil {
					panic(err)
				}
				ckLayoutChanges[0].apply(t, c, m)
				return nil
			}}
			persist := c.Compact
			if logPoint {
				persist = c.Sync
			}
			if err := persist(); err != nil {
				t.Fatal(err)
			}
			if hookErr != nil {
				t.Fatal(hookErr)
			}
			if logPoint {
				// The batch holds the state before the race (the racing
				// edits are still to be logged): a crash now recovers
				// exactly that.
				ckAbandon(c)
				r := ckOpen(t, path, Options{})
				ckCheckState(t, r, snap, "recovered from the log")
				if err := r.Close(); err != nil {
					t.Fatal(err)
				}
				ckCheckFile(t, path, snap, "recovered from the log")
				return
			}
			ckCheckFile(t, path, snap, "the Sync that edits raced")
			// The staged rewrite is abandoned: the committed bytes stay.
			if err := staged.Commit(); !errors.Is(err, ErrSize) {
				t.Errorf("Commit: %v", err)
			}
			staged.Close()
			ckCatchFault(t, "reading after a Sync that edits raced", func() {
				ckCheckState(t, c, m, "after the Sync that edits raced")
			})
			ckCatchFault(t, "syncing after a Sync that edits raced", func() {
				if err := c.Compact(); err != nil {
					t.Fatal(err)
				}
			})
			ckCheckFile(t, path, m, "the next Sync")
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			ckCheckFile(t, path, m, "after Close")
		})
	}
}

// Sync in a loop in one goroutine while another edits: whatever the
// interleaving, nothing is lost and the final file is the final state.
func TestSyncConcurrentWithEdits(t *testing.T) {
	t.Parallel()
	m := ckDefault()
	path := ckFile(t, m)
	c := ckOpen(t, path, Options{})
	defer c.Close()
	stop := make(chan struct{})
	errs := make(chan error, 1)
	var syncs int
	go func() {
		defer close(errs)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := c.Compact(); err != nil {
				errs <- err
				return
			}
			syncs++
		}
	}()
	r := rand.New(rand.NewPCG(5, 6))
	keys := []string{"params.w", "params.b", "embed", "step", "half"}
	ckCatchFault(t, "editing while syncing", func() {
		for op := range 300 {
			k := keys[r.IntN(len(keys))]
			id := ckID(t, c, k)
			switch r.IntN(10) {
			case 0:
				// A layout change: the next Sync rewrites.
				d := ctPattern(uint64(op), len(m.tensors[k].data))
				if _, err := c.Put(k, m.tensors[k].dtype, m.tensors[k].shape, d); err != nil {
					t.Fatal(err)
				}
				m.tensors[k] = ckTensor{m.tensors[k].dtype, m.tensors[k].shape, bytes.Clone(d)}
			case 1:
				got := ckRead(t, c, id)
				if !bytes.Equal(got, m.tensors[k].data) {
					t.Fatalf("op %d: %q reads differently from the model", op, k)
				}
			default:
				size := len(m.tensors[k].data)
				off := r.IntN(size)
				p := ctPattern(uint64(op), 1+r.IntN(min(size-off, 2*chunkSize)))
				if err := c.WriteAt(id, p, int64(off)); err != nil {
					t.Fatal(err)
				}
				m.write(k, p, int64(off))
			}
			if op%50 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	})
	close(stop)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d syncs ran during the edits", syncs)
	if err := c.Compact(); err != nil {
		t.Fatal(err)
	}
	ckCheckFile(t, path, m, "after the final Sync")
	ckCheckState(t, c, m, "after the final Sync")
}

func TestSyncRefusesChangedFile(t *testing.T) {
	t.Parallel()
	theirs := &ckModel{tensors: map[string]ckTensor{"theirs": {safetensors.F32, []uint64{2}, ctPattern(1, 8)}}}
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, path string) []byte // returns the file it leaves
		exact  bool                                   // the recovery file must equal our model exactly
		// Otherwise the other program wrote into our inode, so the bytes
		// of ours it did not edit exist nowhere any more: the recovery
		// file holds the tensors we wrote whole, and the error names the
		// ones edited in part, which could not be saved without mixing.
	}{
		{"replaced by rename", func(t *testing.T, path string) []byte {
			b := theirs.canonical(t)
			os.WriteFile(path+".new", b, 0o644)
			if err := os.Rename(path+".new", path); err != nil {
				t.Fatal(err)
			}
			return b
		}, true},
		{"written in place, same size", func(t *testing.T, path string) []byte {
			b, _ := os.ReadFile(path)
			b[len(b)-1] ^= 0xff // last byte of the data
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt(b[len(b)-1:], int64(len(b)-1))
			f.Close()
			return b
		}, false},
		{"truncated and rewritten", func(t *testing.T, path string) []byte {
			b := theirs.canonical(t)
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			return b
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := ckDefault()
			path := ckFile(t, m)
			c := ckOpen(t, path, Options{})
			defer c.Close()
			p := ctPattern(3, 10)
			if err := c.WriteAt(ckID(t, c, "params.w"), p, 5); err != nil {
				t.Fatal(err)
			}
			m.write("params.w", p, 5)
			if _, err := c.Create("notes"); err != nil {
				t.Fatal(err)
			}
			m.tensors["notes"] = ckTensor{safetensors.U8, []uint64{0}, nil}
			// An edit in the log (a close): the log applies only to the
			// file as it is now.
			if _, err := c.PutSync("logged", safetensors.U8, []uint64{2}, []byte{7, 9}); err != nil {
				t.Fatal(err)
			}
			m.tensors["logged"] = ckTensor{safetensors.U8, []uint64{2}, []byte{7, 9}}
			if _, ok := Pending(path); !ok {
				t.Fatal("no log after a durable edit")
			}
			waitMtimeTick(t, path) // the change gets another mtime, however coarse the clock
			left := tc.change(t, path)
			err := c.Compact()
			if !errors.Is(err, ErrChanged) {
				t.Fatalf("Sync over a changed file: %v, want ErrChanged", err)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, left) {
				t.Fatal("Sync wrote over the other program's file")
			}
			rec := ckRecoveryFiles(t, path)
			if len(rec) != 1 || !strings.Contains(err.Error(), rec[0]) {
				t.Fatalf("recovery files %v; the error says %v", rec, err)
			}
			if !tc.exact && !strings.Contains(err.Error(), `"params.w"`) {
				t.Errorf("the error does not name the partly edited tensor it could not save: %v", err)
			}
			ckCheckRecovery(t, rec[0], m, tc.exact, "notes", "empty", "logged")
			// Nothing new: no new recovery file, the same error.
			if err := c.Compact(); !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), rec[0]) {
				t.Errorf("second Sync: %v", err)
			}
			if r := ckRecoveryFiles(t, path); len(r) != 1 {
				t.Errorf("a Sync without new edits wrote another recovery file: %v", r)
			}
			// Asked for a recovery file (unmount --force), it names
			// that one, not the log, which applies only to the file as
			// it was.
			if p, err := c.SaveRecovery(t.TempDir()); err != nil || p != rec[0] {
				t.Errorf("SaveRecovery after the checkpoint changed: %q, %v; want %s", p, err, rec[0])
			}
			// The mount takes no more edits: refused, naming the file
			// that holds those it made, and no other recovery file.
			if err := c.WriteAt(ckID(t, c, "half"), ctPattern(4, 3), 0); !errors.Is(err, ErrReadOnly) || !strings.Contains(err.Error(), rec[0]) {
				t.Errorf("an edit after the checkpoint changed: %v, want ErrReadOnly naming %s", err, rec[0])
			}
			if _, err := c.PutSync("later", safetensors.U8, []uint64{1}, []byte{1}); !errors.Is(err, ErrReadOnly) {
				t.Errorf("a new tensor after the checkpoint changed: %v, want ErrReadOnly", err)
			}
			const wantRec = 1
			err = c.Close()
			if !errors.Is(err, ErrChanged) {
				t.Errorf("Close: %v, want ErrChanged", err)
			}
			rec = ckRecoveryFiles(t, path)
			if len(rec) != wantRec || err == nil || !strings.Contains(err.Error(), rec[wantRec-1]) {
				t.Fatalf("recovery files after refused edits: %v (want %d); Close said %v", rec, wantRec, err)
			}
			if !tc.exact && !strings.Contains(err.Error(), `"params.w"`) {
				t.Errorf("the error does not name the partly edited tensor it could not save: %v", err)
			}
			// The log, which applies only to the files as they were, is
			// set aside (kept), so the checkpoint opens again as it is.
			if pending, ok := Pending(path); ok {
				t.Errorf("the log is left beside the changed checkpoint: %s", pending)
			}
			if aside, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*.safejaxfs-log.stale-*")); len(aside) != 1 || !strings.Contains(err.Error(), aside[0]) {
				t.Errorf("logs set aside %v; Close said %v", aside, err)
			}
			ckCheckRecovery(t, rec[wantRec-1], m, tc.exact, "notes", "empty", "logged")
			if got, _ := os.ReadFile(path); !bytes.Equal(got, left) {
				t.Fatal("Close wrote over the other program's file")
			}
		})
	}
}

// ckRecoveryFiles lists recovery files, oldest first.
func ckRecoveryFiles(t *testing.T, path string) []string {
	t.Helper()
	got, err := filepath.Glob(strings.TrimSuffix(path, ".safetensors") + ".safejaxfs-recovered-*.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, func(a, b string) int {
		sa, _ := os.Stat(a)
		sb, _ := os.Stat(b)
		return sa.ModTime().Compare(sb.ModTime())
	})
	return got
}

// ckCheckRecovery: the recovery file validates and holds our edits; when
// the other program replaced the file (exact), it is exactly our state.
// Otherwise (it wrote into the same inode, so the bytes of ours it did not
// edit are gone) it holds exactly the tensors this mount wrote whole, each
// exactly as ours: never a tensor mixing our bytes with the other
// program's.
func ckCheckRecovery(t *testing.T, path string, m *ckModel, exact bool, whole ...string) {
	t.Helper()
	if exact {
		ckCheckFile(t, path, m, "recovery file")
		return
	}
	c := ckOpen(t, path, Options{ReadOnly: true})
	defer c.Close()
	var keys []string
	for _, k := range c.Keys() {
		if k != "" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	slices.Sort(whole)
	if !slices.Equal(keys, whole) {
		t.Errorf("recovery file holds %v, want exactly the tensors written whole %v", keys, whole)
	}
	for _, k := range keys {
		if got := ckRead(t, c, ckID(t, c, k)); !bytes.Equal(got, m.tensors[k].data) {
			t.Errorf("recovery file: %q differs from our state", k)
		}
	}
}

func TestSecondWriterRefused(t *testing.T) {
	t.Parallel()
	m := ckDefault()
	path := ckFile(t, m)
	c := ckOpen(t, path, Options{})
	c2, err := Open(path, Options{})
	if !errors.Is(err, ErrLocked) || c2 != nil {
		t.Fatalf("second read-write Open: %v, want ErrLocked", err)
	}
	// Through another name of the same file too.
	link := filepath.Join(t.TempDir(), "link.safetensors")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(link, Options{}); !errors.Is(err, ErrLocked) {
		t.Errorf("read-write Open through a symlink: %v, want ErrLocked", err)
	}
	ro := ckOpen(t, path, Options{ReadOnly: true})
	ro.Close()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c = ckOpen(t, path, Options{})
	c.Close()
}

func TestClosePersists(t *testing.T) {
	t.Parallel()
	for _, layout := range []bool{false, true} {
		t.Run(fmt.Sprintf("layout=%v", layout), func(t *testing.T) {
			m := ckDefault()
			path := ckFile(t, m)
			c := ckOpen(t, path, Options{})
			ckSameLayoutEdits(t, c, m, 3)
			if layout {
				ckLayoutChanges[3].apply(t, c, m)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			ckCheckFile(t, path, m, "after Close")
			if s := ckSideFiles(t, path); len(s) != 0 {
				t.Errorf("left behind: %v", s)
			}
			// The lock is gone with it.
			c = ckOpen(t, path, Options{})
			ckCheckState(t, c, m, "reopened")
			c.Close()
		})
	}
}

// waitMtimeTick returns once a file written now gets another mtime than
// path has: the file system's clock has moved on (by a tick of the kernel's
// coarse clock, whatever its length).
func waitMtimeTick(t *testing.T, path string) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	probe := filepath.Join(t.TempDir(), "clock")
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err := os.WriteFile(probe, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		ps, err := os.Stat(probe)
		if err != nil {
			t.Fatal(err)
		}
		if ps.ModTime().After(st.ModTime()) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("file times stand still: %v, written before %v", ps.ModTime(), st.ModTime())
		}
		time.Sleep(time.Millisecond)
	}
}
