package checkpoint

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/internal/race"
	"github.com/safejaxfs/safejaxfs/safetensors"
)

// The log's format: what is appended is what a scan reads back, a torn
// batch (cut at any byte) reads as the batches before it, and damage ends
// the log where it is.

func walTestBatches() [][]walRecord {
	big := ctPattern(50, 100_000)
	return [][]walRecord{
		{
			{typ: recPut, head: putHead("a.w", 1, safetensors.F32, []uint64{5, 5}), data: [][]byte{ctPattern(51, 60), ctPattern(52, 40)}},
			{typ: recData, head: dataHead("embed", 65536), data: [][]byte{big}},
		},
		{
			{typ: recDelete, head: deleteBody("gone")},
			{typ: recRename, head: renameBody([][2]string{{"a.w", "b.w"}, {"x", "y"}})},
			{typ: recReshape, head: reshapeBody("b.w", safetensors.I32, []uint64{25})},
			{typ: recMeta, head: metaBody(2, map[string]string{"format": "pt", "é": "<&>"})},
			{typ: recMeta, head: metaBody(0, nil)},
			{typ: recIndexMeta, head: indexMetaBody(map[string][]byte{"note": []byte(`{"a": 1}`)})},
		},
		{
			{typ: recCompact, head: compactBody(walTestCompact)},
			{typ: recInstall, head: installBody(1)},
		},
	}
}

var walTestCompact = &compactRec{
	renames: []commitRename{{File: 1, Temp: ".x.safejaxfs-tmp-0123456789abcdef", Dev: 3, Ino: 4, Size: 5000, Hash: [32]byte{9, 8}}},
	patches: []patchedFile{
		{File: 0, Runs: []patchRun{{Off: 4000, N: 200, Old: []uint32{1, 2}, New: []uint32{3, 4}}}},
		{File: 2, Runs: []patchRun{{Off: 8192, N: 4096, Old: []uint32{5}, New: []uint32{6}}, {Off: 100, N: 1, Old: []uint32{7}, New: []uint32{8}}}},
	},
}

func TestWALRoundTrip(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "model.safetensors")
	os.WriteFile(ckpt, nil, 0o644)
	path := walPathOf(ckpt)
	base := []walFile{{name: "model.safetensors", size: 123, dev: 1, ino: 2, mtime: 99, hash: [32]byte{7}}}
	w, err := createWALPath(t, path, base)
	if err != nil {
		t.Fatal(err)
	}
	var ends []int64
	var locs [][]int64
	for _, b := range walTestBatches() {
		at, err := w.commit(b, nil)
		if err != nil {
			t.Fatal(err)
		}
		locs = append(locs, at)
		ends = append(ends, w.end)
	}
	// The mapping serves what was written.
	if got := w.bytesAt(locs[0][1], 100_000); !bytes.Equal(got, ctPattern(50, 100_000)) {
		t.Error("mapped data bytes differ")
	}
	if got := w.bytesAt(locs[0][0], 100); !bytes.Equal(got, append(ctPattern(51, 60), ctPattern(52, 40)...)) {
		t.Error("mapped put bytes differ")
	}
	w.close()

	s := walScanFile(t, path)
	if s.seq != 4 || s.end != ends[2] {
		t.Fatalf("scan: seq %d end %d, want 4 and %d", s.seq, s.end, ends[2])
	}
	var typs []uint32
	for _, r := range s.recs {
		typs = append(typs, r.typ)
	}
	want := []uint32{recBase, recCommit, recPut, recData, recCommit, recDelete, recRename, recReshape, recMeta, recMeta, recIndexMeta, recCommit, recCompact, recInstall, recCommit}
	if !reflect.DeepEqual(typs, want) {
		t.Fatalf("record types %v, want %v", typs, want)
	}
	r := s.recs[0]
	if !reflect.DeepEqual(r.files, base) {
		t.Errorf("base %+v, want %+v", r.files, base)
	}
	if r := s.recs[2]; r.key != "a.w" || r.shard != 1 || r.dtype != safetensors.F32 || !reflect.DeepEqual(r.shape, []uint64{5, 5}) || r.at != locs[0][0] || r.n != 100 {
		t.Errorf("put %+v", r)
	}
	if r := s.recs[3]; r.key != "embed" || r.pos != 65536 || r.at != locs[0][1] || r.n != 100_000 {
		t.Errorf("data %+v", r)
	}
	if r := s.recs[6]; !reflect.DeepEqual(r.renames, [][2]string{{"a.w", "b.w"}, {"x", "y"}}) {
		t.Errorf("rename %+v", r.renames)
	}
	if r := s.recs[8]; r.shard != 2 || r.meta["é"] != "<&>" || len(r.meta) != 2 {
		t.Errorf("meta %+v", r.meta)
	}
	if r := s.recs[9]; r.meta != nil {
		t.Errorf("absent meta read as %v", r.meta)
	}
	if r := s.recs[10]; string(r.imeta["note"]) != `{"a": 1}` {
		t.Errorf("index meta %+v", r.imeta)
	}
	if c := s.recs[12].compact; c == nil || !reflect.DeepEqual(c.renames, walTestCompact.renames) || !reflect.DeepEqual(c.patches, walTestCompact.patches) {
		t.Errorf("compact %+v", c)
	}
	if r := s.recs[13]; r.shard != 1 {
		t.Errorf("install %+v", r)
	}
}

// createWALPath is createWAL for the log at path.
func createWALPath(t testing.TB, path string, base []walFile) (*wal, error) {
	t.Helper()
	d, err := openDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.close)
	return createWAL(d, filepath.Base(path), base, nil, nil)
}

func walScanFile(t *testing.T, path string) *walScan {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := scanWAL(f)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Cut the log at every byte of its last batch (and a sample of the ones
// before): a scan sees exactly the batches that are whole.
func TestWALTornAtEveryByte(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "m.safetensors")
	path := walPathOf(ckpt)
	w, err := createWALPath(t, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ends := []int64{w.end}
	for _, b := range walTestBatches() {
		if _, err := w.commit(b, nil); err != nil {
			t.Fatal(err)
		}
		ends = append(ends, w.end)
	}
	w.close()
	full, _ := os.ReadFile(path)
	// Past the end the log is zeros written ahead (prefill): they read as
	// no record.
	if s := walScanFile(t, path); s.end != ends[len(ends)-1] {
		t.Fatalf("with the zeros written ahead the scan ends at %d, want %d", s.end, ends[len(ends)-1])
	}
	full = full[:ends[len(ends)-1]]
	for cut := int64(0); cut <= int64(len(full)); cut++ {
		last := ends[len(ends)-2]
		if cut < last && cut%97 != 0 || cut >= last && !race.Sample(int(cut-last), len(full)+1-int(last)) {
			continue
		}
		os.WriteFile(path, full[:cut], 0o600)
		s := walScanFile(t, path)
		want := int64(0)
		for _, e := range ends {
			if e <= cut {
				want = e
			}
		}
		if cut < walHead {
			want = 0
		}
		if s.end != want {
			t.Fatalf("cut at %d: the scan ends at %d, want %d", cut, s.end, want)
		}
	}
	// A flipped byte anywhere ends the log at the batch before it.
	for _, at := range []int64{ends[0] + 3, ends[1] + 20, ends[2] - 1, ends[3] - 9} {
		b := bytes.Clone(full)
		b[at] ^= 0x40
		os.WriteFile(path, b, 0o600)
		s := walScanFile(t, path)
		if s.end > at {
			t.Errorf("a byte flipped at %d: the scan still reads to %d", at, s.end)
		}
	}
	// Not a log at all.
	os.WriteFile(path, []byte("something else entirely"), 0o600)
	f, _ := os.Open(path)
	defer f.Close()
	if _, err := scanWAL(f); !errors.Is(err, errWALVersion) {
		t.Errorf("a foreign file: %v", err)
	}
}

// A commit that cannot be written (disk full) leaves the log as it was,
// and says ENOSPC.
func TestWALCommitFailureLeavesNoTrace(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	path := walPathOf(filepath.Join(dir, "m.safetensors"))
	w, err := createWALPath(t, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if _, err := w.commit([]walRecord{{typ: recData, head: dataHead("k", 0), data: [][]byte{ctPattern(1, 100)}}}, nil); err != nil {
		t.Fatal(err)
	}
	end := w.end
	_, err = w.commit([]walRecord{{typ: recData, head: dataHead("k", 0), data: [][]byte{make([]byte, 2<<20)}}}, nil)
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("commit on a full disk: %v, want ENOSPC", err)
	}
	if w.end != end {
		t.Errorf("the end moved to %d after a failed commit", w.end)
	}
	if s := walScanFile(t, path); s.end != end {
		t.Errorf("the log reads to %d after a failed commit, want %d", s.end, end)
	}
	if _, err := w.commit([]walRecord{{typ: recDelete, head: deleteBody("k")}}, nil); err != nil {
		t.Fatalf("a small commit after the failed one: %v", err)
	}
	if s := walScanFile(t, path); s.seq != 3 {
		t.Errorf("after the failure the log holds %d commits, want 3", s.seq)
	}
}
