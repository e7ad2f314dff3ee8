package checkpoint

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// ---- helpers shared by the persistence tests (journal, rewrite, lock) ----

// testCkpt is a real checkpoint file in a temp dir and what it holds.
type testCkpt struct {
	path    string
	content []byte // the whole file as written
	dataOff int64
	tensors map[string][2]int64 // key -> absolute [begin, end)
}

// pseudo returns n deterministic pseudo-random bytes.
func pseudo(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func testSources(seed uint64) ([]safetensors.Source, map[string]string) {
	return []safetensors.Source{
		{Key: "params.Dense_0.kernel", DType: safetensors.F32, Shape: []uint64{256, 64}, Data: safetensors.Bytes(pseudo(seed, 256*64*4))},
		{Key: "params.Dense_0.bias", DType: safetensors.F32, Shape: []uint64{64}, Data: safetensors.Bytes(pseudo(seed+1, 64*4))},
		{Key: "embed", DType: safetensors.U8, Shape: []uint64{300_000}, Data: safetensors.Bytes(pseudo(seed+2, 300_000))},
		{Key: "step", DType: safetensors.I64, Shape: []uint64{}, Data: safetensors.Bytes(pseudo(seed+3, 8))},
	}, map[string]string{"framework": "flax"}
}

// makeCkpt writes a checkpoint with safetensors.Write at dir/name.
func makeCkpt(t testing.TB, dir, name string, sources []safetensors.Source, meta map[string]string) *testCkpt {
	t.Helper()
	var buf bytes.Buffer
	if _, err := safetensors.Write(&buf, sources, meta); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return describeCkpt(t, path)
}

func describeCkpt(t testing.TB, path string) *testCkpt {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := safetensors.ReadHeader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	c := &testCkpt{path: path, content: b, dataOff: h.DataOffset(), tensors: map[string][2]int64{}}
	for _, ts := range h.Tensors {
		c.tensors[ts.Key] = [2]int64{c.dataOff + int64(ts.Begin), c.dataOff + int64(ts.End)}
	}
	return c
}

func defaultCkpt(t testing.TB) *testCkpt {
	src, meta := testSources(1)
	return makeCkpt(t, t.TempDir(), "model.safetensors", src, meta)
}

// at is an absolute offset inside tensor key.
func (c *testCkpt) at(key string, off int64) int64 { return c.tensors[key][0] + off }

// applied is the content with patches applied in order.
func applied(content []byte, patches []patch) []byte {
	b := bytes.Clone(content)
	for _, p := range patches {
		copy(b[p.off:], p.data)
	}
	return b
}

func openRW(t testing.TB, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// checkFile fails unless path holds exactly want and validates strictly.
func checkFile(t testing.TB, path string, want []byte, what string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: %s differs from the expected content (%d vs %d bytes, first difference at %d)", what, path, len(got), len(want), i)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatalf("%s: %s does not validate: %v", what, path, err)
	}
	f.Close()
}

// sideFiles lists the dot files safejaxfs keeps next to the checkpoint.
func sideFiles(t testing.TB, path string) []string {
	t.Helper()
	dir, base := filepath.Split(path)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "."+base+".safejaxfs-") {
			out = append(out, e.Name())
		}
	}
	return out
}

var errCrash = errors.New("simulated crash")

// crashAt returns hooks that crash at the nth (1-based) time point is
// reached, after running before (if any) at that moment.
func crashAt(point string, nth int, before func()) *crashHooks {
	seen := 0
	return &crashHooks{at: func(p string) error {
		if p != point {
			return nil
		}
		if seen++; seen == nth {
			if before != nil {
				before()
			}
			return errCrash
		}
		return nil
	}}
}

// recordPoints returns hooks that record the points reached, in order.
func recordPoints(points *[]string) *crashHooks {
	return &crashHooks{at: func(p string) error { *points = append(*points, p); return nil }}
}

// editPatches is a same-layout edit across three tensors: two adjacent
// patches, an overlapping pair (later wins), a large one, a one-byte one.
func editPatches(c *testCkpt) []patch {
	return []patch{
		{c.at("embed", 1000), pseudo(100, 5000)},
		{c.at("embed", 6000), pseudo(101, 3000)},                   // adjacent to the one before
		{c.at("params.Dense_0.kernel", 4096), pseudo(102, 50_000)}, // large
		{c.at("params.Dense_0.kernel", 4000), pseudo(103, 1000)},   // overlaps the large one, wins
		{c.at("step", 7), []byte{0xAB}},
		{c.at("embed", 299_990), pseudo(104, 10)}, // last bytes of the file
	}
}

// ---- planRuns ----

func TestPlanRuns(t *testing.T) {
	data := func(n int, v byte) []byte { return bytes.Repeat([]byte{v}, n) }
	const D, size = 100, 1000
	cases := []struct {
		name    string
		patches []patch
		want    []patch // expected runs, flattened
		wantErr string
	}{
		{"empty", nil, nil, ""},
		{"zero-length skipped", []patch{{200, nil}, {50, nil}}, nil, ""},
		{"sorted", []patch{{300, data(10, 1)}, {200, data(10, 2)}}, []patch{{200, data(10, 2)}, {300, data(10, 1)}}, ""},
		{"adjacent merged", []patch{{210, data(5, 1)}, {200, data(10, 2)}}, []patch{{200, append(data(10, 2), data(5, 1)...)}}, ""},
		{"later wins", []patch{{200, data(10, 1)}, {205, data(10, 2)}}, []patch{{200, append(data(5, 1), data(10, 2)...)}}, ""},
		{"later inside earlier", []patch{{200, data(10, 1)}, {203, data(2, 2)}}, []patch{{200, []byte{1, 1, 1, 2, 2, 1, 1, 1, 1, 1}}}, ""},
		{"earlier hidden", []patch{{203, data(2, 1)}, {200, data(10, 2)}}, []patch{{200, data(10, 2)}}, ""},
		{"three-way", []patch{{200, data(10, 1)}, {220, data(10, 2)}, {205, data(20, 3)}}, []patch{{200, append(append(data(5, 1), data(20, 3)...), data(5, 2)...)}}, ""},
		{"whole data", []patch{{D, data(size-D, 7)}}, []patch{{D, data(size-D, 7)}}, ""},
		{"header", []patch{{200, data(1, 1)}, {D - 1, data(2, 1)}}, nil, "overwrite the header"},
		{"past end", []patch{{size - 1, data(2, 1)}}, nil, "past the end"},
		{"far past end", []patch{{1 << 62, data(2, 1)}}, nil, "past the end"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			runs, err := planRuns(tc.patches, D, size)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(runs) != len(tc.want) {
				t.Fatalf("%d runs, want %d: %+v", len(runs), len(tc.want), runs)
			}
			for i, r := range runs {
				got := bytes.Join(r.segs, nil)
				if r.off != tc.want[i].off || r.n != int64(len(got)) || !bytes.Equal(got, tc.want[i].data) {
					t.Errorf("run %d = off %d n %d %v, want off %d %v", i, r.off, r.n, got, tc.want[i].off, tc.want[i].data)
				}
			}
			// Whatever the runs, applying them must equal applying the
			// patches in order.
			base := make([]byte, size)
			var flat []patch
			for _, r := range runs {
				flat = append(flat, patch{r.off, bytes.Join(r.segs, nil)})
			}
			if !bytes.Equal(applied(base, flat), applied(base, tc.patches)) {
				t.Error("runs do not reproduce the patches applied in order")
			}
		})
	}
}

func TestPlanRunsRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const D, size = 64, 4096
	for iter := range 2000 {
		var ps []patch
		for range r.IntN(12) {
			off := D + r.Int64N(size-D)
			n := r.Int64N(min(size-off, 300) + 1)
			ps = append(ps, patch{off, pseudo(uint64(iter*100+len(ps)), int(n))})
		}
		runs, err := planRuns(ps, D, size)
		if err != nil {
			t.Fatal(err)
		}
		var flat []patch
		for i, run := range runs {
			if i > 0 && runs[i-1].off+runs[i-1].n >= run.off {
				t.Fatalf("runs %d and %d touch or overlap", i-1, i)
			}
			flat = append(flat, patch{run.off, bytes.Join(run.segs, nil)})
		}
		base := pseudo(7, size)
		if !bytes.Equal(applied(base, flat), applied(base, ps)) {
			t.Fatalf("iteration %d: runs differ from patches applied in order", iter)
		}
		for _, s := range pickSamples(runs, D, size) {
			for _, run := range runs {
				if s.off < run.off+run.n && run.off < s.end {
					t.Fatalf("sample [%d,%d) overlaps run [%d,+%d)", s.off, s.end, run.off, run.n)
				}
			}
		}
	}
}

// ---- commitInPlace ----

func TestCommitInPlace(t *testing.T) {
	c := defaultCkpt(t)
	ps := editPatches(c)
	want := applied(c.content, ps)
	f := openRW(t, c.path)
	var points []string
	if err := commitInPlace(f, c.path, c.dataOff, ps, recordPoints(&points)); err != nil {
		t.Fatal(err)
	}
	checkFile(t, c.path, want, "after commit")
	if s := sideFiles(t, c.path); len(s) != 0 {
		t.Errorf("left behind: %v", s)
	}
	// 4 runs: embed's two adjacent patches are one, kernel's overlapping
	// pair is one, step, embed's tail.
	wantPoints := "journal-written journal-synced journal-committed patch-applied patch-applied patch-applied patch-applied applied-synced journal-removed"
	if got := strings.Join(points, " "); got != wantPoints {
		t.Errorf("hook points:\n got %s\nwant %s", got, wantPoints)
	}
	// Nothing pending: replay is a no-op.
	if ok, err := replayJournal(c.path); ok || err != nil {
		t.Errorf("replay after a clean commit = %v, %v", ok, err)
	}
}

func TestCommitInPlaceStreamsLargePatch(t *testing.T) {
	dir := t.TempDir()
	src := []safetensors.Source{{Key: "w", DType: safetensors.F32, Shape: []uint64{4 << 20}, Data: safetensors.Bytes(make([]byte, 16<<20))}}
	c := makeCkpt(t, dir, "big.safetensors", src, nil)
	ps := []patch{{c.at("w", 123), pseudo(5, 4<<20)}, {c.at("w", 8<<20), pseudo(6, 3<<20)}}
	f := openRW(t, c.path)
	var jsize int64
	hooks := &crashHooks{at: func(p string) error {
		if p == "journal-committed" {
			st, err := os.Stat(journalPath(c.path))
			if err != nil {
				t.Error(err)
			} else {
				jsize = st.Size()
			}
		}
		return nil
	}}
	if err := commitInPlace(f, c.path, c.dataOff, ps, hooks); err != nil {
		t.Fatal(err)
	}
	checkFile(t, c.path, applied(c.content, ps), "after a 7 MiB commit")
	// The journal holds the new bytes plus a small fixed overhead,
	// whatever the checkpoint's size.
	if over := jsize - (7 << 20); over < 0 || over > 1024 {
		t.Errorf("journal is %d bytes for 7 MiB of patches", jsize)
	}
}

// commitCrashCase is one place to crash and what the checkpoint must hold
// once replayJournal has run.
type commitCrashCase struct {
	point       string
	nth         int
	wantNew     bool // else the old content
	wantApplied bool // replayJournal reports it applied a journal
}

var commitCrashCases = []commitCrashCase{
	{"journal-written", 1, false, false},
	{"journal-synced", 1, false, false},
	{"journal-committed", 1, true, true},
	{"patch-applied", 1, true, true},
	{"patch-applied", 2, true, true},
	{"patch-applied", 3, true, true},
	{"patch-applied", 4, true, true},
	{"applied-synced", 1, true, true},
	{"journal-removed", 1, true, false},
}

func TestCommitInPlaceCrashAtEveryPoint(t *testing.T) {
	for _, tc := range commitCrashCases {
		t.Run(fmt.Sprintf("%s#%d", tc.point, tc.nth), func(t *testing.T) {
			c := defaultCkpt(t)
			ps := editPatches(c)
			want := c.content
			if tc.wantNew {
				want = applied(c.content, ps)
			}
			f := openRW(t, c.path)
			err := commitInPlace(f, c.path, c.dataOff, ps, crashAt(tc.point, tc.nth, nil))
			if !errors.Is(err, errCrash) {
				t.Fatalf("commit returned %v, want the simulated crash", err)
			}
			f.Close()
			if !tc.wantNew {
				// Before the commit point the checkpoint is never touched.
				checkFile(t, c.path, c.content, "right after the crash")
			}
			ok, err := replayJournal(c.path)
			if err != nil || ok != tc.wantApplied {
				t.Fatalf("replayJournal = %v, %v; want %v, nil", ok, err, tc.wantApplied)
			}
			checkFile(t, c.path, want, "after replay")
			if err := cleanStaleTemps(c.path); err != nil {
				t.Fatal(err)
			}
			if s := sideFiles(t, c.path); len(s) != 0 {
				t.Errorf("left behind after replay and cleanup: %v", s)
			}
		})
	}
}

// A power cut loses writes that were not synced, in any subset and at
// block granularity. Crash after some in-place writes, throw away a random
// part of what they wrote (as if it never reached the disk): replay must
// still produce exactly the new content.
func TestCommitInPlaceCrashLosesUnsyncedWrites(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for iter := range 40 {
		c := defaultCkpt(t)
		ps := editPatches(c)
		want := applied(c.content, ps)
		f := openRW(t, c.path)
		nth := 1 + iter%4
		lose := func() {
			// Revert random 512-byte blocks of the data region to the old
			// bytes.
			for range 1 + r.IntN(200) {
				blk := c.dataOff + r.Int64N(int64(len(c.content))-c.dataOff)/512*512
				end := min(blk+512, int64(len(c.content)))
				if _, err := f.WriteAt(c.content[blk:end], blk); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := commitInPlace(f, c.path, c.dataOff, ps, crashAt("patch-applied", nth, lose)); !errors.Is(err, errCrash) {
			t.Fatal(err)
		}
		f.Close()
		if ok, err := replayJournal(c.path); !ok || err != nil {
			t.Fatalf("replayJournal = %v, %v", ok, err)
		}
		checkFile(t, c.path, want, fmt.Sprintf("iteration %d", iter))
	}
}

// If the removal of the journal is lost (power cut before the directory
// sync), the journal comes back: replaying it again must change nothing.
func TestReplayIsIdempotent(t *testing.T) {
	c := defaultCkpt(t)
	ps := editPatches(c)
	var saved []byte
	hooks := &crashHooks{at: func(p string) error {
		if p == "applied-synced" {
			var err error
			saved, err = os.ReadFile(journalPath(c.path))
			if err != nil {
				t.Fatal(err)
			}
		}
		return nil
	}}
	f := openRW(t, c.path)
	if err := commitInPlace(f, c.path, c.dataOff, ps, hooks); err != nil {
		t.Fatal(err)
	}
	want := applied(c.content, ps)
	for i := range 3 {
		if err := os.WriteFile(journalPath(c.path), saved, 0o600); err != nil {
			t.Fatal(err)
		}
		if ok, err := replayJournal(c.path); !ok || err != nil {
			t.Fatalf("replay %d = %v, %v", i, ok, err)
		}
		checkFile(t, c.path, want, "after replaying a resurrected journal")
	}
}

// A commit that finds an earlier commit's journal finishes that one first:
// otherwise a crash during the second would leave the first half applied
// with no journal to complete it.
func TestCommitInPlaceFinishesPendingJournalFirst(t *testing.T) {
	c := defaultCkpt(t)
	p1 := editPatches(c)
	f := openRW(t, c.path)
	if err := commitInPlace(f, c.path, c.dataOff, p1, crashAt("patch-applied", 1, nil)); !errors.Is(err, errCrash) {
		t.Fatal(err)
	}
	// The second edit overlaps part of the first and leaves the rest alone.
	p2 := []patch{{c.at("embed", 3000), pseudo(200, 10_000)}}
	if err := commitInPlace(f, c.path, c.dataOff, p2, crashAt("patch-applied", 1, nil)); !errors.Is(err, errCrash) {
		t.Fatal(err)
	}
	if ok, err := replayJournal(c.path); !ok || err != nil {
		t.Fatalf("replayJournal = %v, %v", ok, err)
	}
	checkFile(t, c.path, applied(applied(c.content, p1), p2), "first edit then second")
}

func TestCommitInPlaceRefuses(t *testing.T) {
	c := defaultCkpt(t)
	f := openRW(t, c.path)
	for _, tc := range []struct {
		name    string
		dataOff int64
		ps      []patch
		want    string
	}{
		{"header byte", c.dataOff, []patch{{c.dataOff - 1, []byte{1}}}, "header"},
		{"length field", c.dataOff, []patch{{0, []byte{1}}}, "header"},
		{"past the end", c.dataOff, []patch{{int64(len(c.content)) - 1, []byte{1, 2}}}, "past the end"},
		{"wrong data offset", c.dataOff + 8, []patch{{c.dataOff + 100, []byte{1}}}, "header length"},
	} {
		err := commitInPlace(f, c.path, tc.dataOff, tc.ps, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", tc.name, err, tc.want)
		}
	}
	checkFile(t, c.path, c.content, "after refused commits")
	if s := sideFiles(t, c.path); len(s) != 0 {
		t.Errorf("left behind: %v", s)
	}

	// The file at the path is no longer the one open for writing.
	other := makeCkpt(t, t.TempDir(), "other.safetensors", func() []safetensors.Source { s, _ := testSources(9); return s }(), nil)
	if err := os.Rename(other.path, c.path); err != nil {
		t.Fatal(err)
	}
	err := commitInPlace(f, c.path, c.dataOff, []patch{{c.dataOff + 10, []byte{1}}}, nil)
	if !errors.Is(err, ErrChanged) {
		t.Errorf("commit into a replaced file: err = %v, want ErrChanged", err)
	}
	checkFile(t, c.path, other.content, "the replacing file")
}

// A symlinked checkpoint is edited through the link: the journal lives
// next to the real file, and the link stays a link.
func TestCommitInPlaceThroughSymlink(t *testing.T) {
	c := defaultCkpt(t)
	link := filepath.Join(t.TempDir(), "link.safetensors")
	if err := os.Symlink(c.path, link); err != nil {
		t.Fatal(err)
	}
	if journalPath(link) != journalPath(c.path) {
		t.Errorf("journalPath(link) = %s, want %s", journalPath(link), journalPath(c.path))
	}
	ps := editPatches(c)
	f := openRW(t, link)
	if err := commitInPlace(f, link, c.dataOff, ps, crashAt("journal-committed", 1, nil)); !errors.Is(err, errCrash) {
		t.Fatal(err)
	}
	if ok, err := replayJournal(link); !ok || err != nil {
		t.Fatalf("replay through the link = %v, %v", ok, err)
	}
	checkFile(t, c.path, applied(c.content, ps), "target after replay")
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("link is no longer a symlink: %v %v", fi, err)
	}
}

// ---- replayJournal with journals that must not be applied ----

// crashedJournal makes a checkpoint with a committed but unapplied journal
// and returns it with the journal's bytes.
func crashedJournal(t *testing.T) (*testCkpt, []patch, []byte) {
	t.Helper()
	c := defaultCkpt(t)
	ps := editPatches(c)
	f := openRW(t, c.path)
	if err := commitInPlace(f, c.path, c.dataOff, ps, crashAt("journal-committed", 1, nil)); !errors.Is(err, errCrash) {
		t.Fatal(err)
	}
	f.Close()
	j, err := os.ReadFile(journalPath(c.path))
	if err != nil {
		t.Fatal(err)
	}
	checkFile(t, c.path, c.content, "before replay")
	return c, ps, j
}

func TestReplayDiscardsTornJournal(t *testing.T) {
	c, _, j := crashedJournal(t)
	r := rand.New(rand.NewPCG(5, 6))
	try := func(what string, bad []byte) {
		t.Helper()
		if err := os.WriteFile(journalPath(c.path), bad, 0o600); err != nil {
			t.Fatal(err)
		}
		ok, err := replayJournal(c.path)
		if ok || err != nil {
			t.Fatalf("%s: replayJournal = %v, %v; want false, nil", what, ok, err)
		}
		if exists(journalPath(c.path)) {
			t.Fatalf("%s: journal not removed", what)
		}
		if s := sideFiles(t, c.path); len(s) != 0 {
			t.Fatalf("%s: left behind: %v", what, s)
		}
	}
	var lengths []int
	for n := 0; n < 200; n++ {
		lengths = append(lengths, n)
	}
	for range 100 {
		lengths = append(lengths, r.IntN(len(j)))
	}
	lengths = append(lengths, len(j)-12, len(j)-4, len(j)-1)
	for _, n := range lengths {
		try(fmt.Sprintf("truncated to %d of %d bytes", n, len(j)), j[:n])
	}
	// A flipped byte anywhere: the head, the samples, record heads, data,
	// the CRC, the end marker.
	var positions []int
	for i := 0; i < 300; i++ {
		positions = append(positions, i)
	}
	for range 200 {
		positions = append(positions, r.IntN(len(j)))
	}
	for i := len(j) - 12; i < len(j); i++ {
		positions = append(positions, i)
	}
	for _, i := range positions {
		bad := bytes.Clone(j)
		bad[i] ^= byte(1 << r.IntN(8))
		try(fmt.Sprintf("byte %d of %d flipped", i, len(j)), bad)
	}
	// Extra bytes after a complete journal.
	try("trailing garbage", append(bytes.Clone(j), 0))
	checkFile(t, c.path, c.content, "after every torn journal")
}

// staleCheck runs replay on a journal that must not be applied and checks
// it was moved aside with the checkpoint untouched.
func staleCheck(t *testing.T, c *testCkpt, wantFile []byte, wantMsg string) {
	t.Helper()
	ok, err := replayJournal(c.path)
	if ok || !errors.Is(err, errStaleJournal) {
		t.Fatalf("replayJournal = %v, %v; want false and a stale-journal error", ok, err)
	}
	if !strings.Contains(err.Error(), wantMsg) || !strings.Contains(err.Error(), ".stale-") {
		t.Errorf("error does not explain (want %q and the new name): %v", wantMsg, err)
	}
	checkFile(t, c.path, wantFile, "checkpoint after a stale journal")
	if exists(journalPath(c.path)) {
		t.Error("journal still in place")
	}
	s := sideFiles(t, c.path)
	if len(s) != 1 || !strings.Contains(s[0], ".safejaxfs-journal.stale-") {
		t.Errorf("side files = %v, want one stale journal", s)
	}
	// With the journal aside the checkpoint opens cleanly.
	if ok, err := replayJournal(c.path); ok || err != nil {
		t.Errorf("second replay = %v, %v", ok, err)
	}
}

func TestReplayRefusesJournalForAnotherFile(t *testing.T) {
	t.Run("different header", func(t *testing.T) {
		c, _, _ := crashedJournal(t)
		src, _ := testSources(1)
		other := makeCkpt(t, t.TempDir(), "x.safetensors", src[:2], map[string]string{"other": "file"})
		if err := os.Rename(other.path, c.path); err != nil {
			t.Fatal(err)
		}
		staleCheck(t, c, other.content, "-byte checkpoint")
	})
	t.Run("same size different header", func(t *testing.T) {
		c, _, _ := crashedJournal(t)
		src, _ := testSources(1)
		other := makeCkpt(t, t.TempDir(), "x.safetensors", src, map[string]string{"framework": "FLAX"})
		if len(other.content) != len(c.content) {
			t.Fatal("test setup: sizes differ")
		}
		if err := os.Rename(other.path, c.path); err != nil {
			t.Fatal(err)
		}
		staleCheck(t, c, other.content, "header")
	})
	t.Run("same header different data", func(t *testing.T) {
		// The next training step of the same model copied over it.
		c, _, _ := crashedJournal(t)
		src, meta := testSources(77)
		other := makeCkpt(t, t.TempDir(), "x.safetensors", src, meta)
		if !bytes.Equal(other.content[:other.dataOff], c.content[:c.dataOff]) {
			t.Fatal("test setup: headers differ")
		}
		if err := os.Rename(other.path, c.path); err != nil {
			t.Fatal(err)
		}
		staleCheck(t, c, other.content, "different tensor data")
	})
	t.Run("newer version", func(t *testing.T) {
		c, _, j := crashedJournal(t)
		bad := bytes.Clone(j)
		binary.LittleEndian.PutUint32(bad[8:], 2)
		body := len(bad) - trailerSize
		binary.LittleEndian.PutUint32(bad[body:], crc32.Checksum(bad[:body], castagnoli))
		if err := os.WriteFile(journalPath(c.path), bad, 0o600); err != nil {
			t.Fatal(err)
		}
		staleCheck(t, c, c.content, "version")
	})
	t.Run("checkpoint gone", func(t *testing.T) {
		c, _, _ := crashedJournal(t)
		if err := os.Remove(c.path); err != nil {
			t.Fatal(err)
		}
		ok, err := replayJournal(c.path)
		if ok || !errors.Is(err, errStaleJournal) {
			t.Fatalf("replayJournal = %v, %v", ok, err)
		}
		if s := sideFiles(t, c.path); len(s) != 1 || !strings.Contains(s[0], ".stale-") {
			t.Errorf("side files = %v", s)
		}
	})
}

// The lock holder of another process owns the journal: a mount that is
// about to be refused must not replay it.
func TestReplayRespectsOtherWriter(t *testing.T) {
	c, ps, _ := crashedJournal(t)
	other, err := os.Open(c.path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// A raw flock on another open file description: to this process's
	// bookkeeping it is someone else's lock.
	if err := flock(other, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	if ok, err := replayJournal(c.path); ok || !errors.Is(err, ErrLocked) {
		t.Fatalf("replayJournal under another writer's lock = %v, %v; want ErrLocked", ok, err)
	}
	if err := cleanStaleTemps(c.path); !errors.Is(err, ErrLocked) {
		t.Fatalf("cleanStaleTemps under another writer's lock = %v; want ErrLocked", err)
	}
	if !exists(journalPath(c.path)) {
		t.Fatal("journal touched")
	}
	flock(other, unix.LOCK_UN)
	if ok, err := replayJournal(c.path); !ok || err != nil {
		t.Fatalf("replayJournal = %v, %v", ok, err)
	}
	checkFile(t, c.path, applied(c.content, ps), "after replay")
}

// ---- benchmark ----

// bigCkpt makes a checkpoint of about 1 GiB fast: a real header, then
// Truncate for the data (a sparse file; the benchmark's writes allocate
// what they touch).
func bigCkpt(b *testing.B) (path string, dataOff int64) {
	b.Helper()
	var src []safetensors.Source
	for i := range 16 {
		src = append(src, safetensors.Source{Key: fmt.Sprintf("layers.%d.weight", i), DType: safetensors.BF16, Shape: []uint64{8192, 4096}})
	}
	l, err := safetensors.Plan(src, map[string]string{"framework": "flax"})
	if err != nil {
		b.Fatal(err)
	}
	path = filepath.Join(b.TempDir(), "big.safetensors")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(l.Header); err != nil {
		b.Fatal(err)
	}
	if err := f.Truncate(int64(len(l.Header)) + int64(l.DataSize())); err != nil {
		b.Fatal(err)
	}
	if _, err := safetensors.ReadHeader(f, int64(len(l.Header))+int64(l.DataSize())); err != nil {
		b.Fatal(err)
	}
	return path, int64(len(l.Header))
}

// BenchmarkCommitInPlace: a 4 MiB edit into a 1 GiB checkpoint, against
// what the same 4 MiB cost written and fsynced to a plain file. The
// journal writes the bytes twice and syncs four times, so about 2-3x the
// plain write is the expected price; what matters is that it does not
// depend on the checkpoint's size (compare rewriteAtomic).
func BenchmarkCommitInPlace(b *testing.B) {
	const edit = 4 << 20
	data := pseudo(1, edit)

	b.Run("commitInPlace-4MiB-into-1GiB-same-range", func(b *testing.B) {
		path, dataOff := bigCkpt(b)
		f := openRW(b, path)
		b.SetBytes(edit)
		for b.Loop() {
			if err := commitInPlace(f, path, dataOff, []patch{{dataOff + 100<<20, data}}, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("commitInPlace-4MiB-into-1GiB-new-range", func(b *testing.B) {
		path, dataOff := bigCkpt(b)
		f := openRW(b, path)
		st, _ := f.Stat()
		b.SetBytes(edit)
		i := int64(0)
		for b.Loop() {
			off := dataOff + (i*edit)%(st.Size()-dataOff-edit)
			i++
			if err := commitInPlace(f, path, dataOff, []patch{{off, data}}, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("commitInPlace-4KiB-into-1GiB", func(b *testing.B) {
		path, dataOff := bigCkpt(b)
		f := openRW(b, path)
		b.SetBytes(4096)
		for b.Loop() {
			if err := commitInPlace(f, path, dataOff, []patch{{dataOff + 100<<20, data[:4096]}}, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("plain-pwrite+fsync-4MiB-overwrite", func(b *testing.B) {
		f, err := os.Create(filepath.Join(b.TempDir(), "plain"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		b.SetBytes(edit)
		for b.Loop() {
			if _, err := f.WriteAt(data, 0); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("plain-write+fsync-4MiB-new-file", func(b *testing.B) {
		dir := b.TempDir()
		b.SetBytes(edit)
		i := 0
		for b.Loop() {
			f, err := os.Create(filepath.Join(dir, strconv.Itoa(i)))
			i++
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.Write(data); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
	// For scale: what the same edit would cost as a whole-file rewrite
	// (copy_file_range of the unchanged 1 GiB, kernel-side).
	b.Run("rewriteAtomic-1GiB", func(b *testing.B) {
		path, _ := bigCkpt(b)
		b.SetBytes(edit)
		for b.Loop() {
			old, err := safetensors.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			var src []safetensors.Source
			for _, t := range old.Tensors {
				src = append(src, safetensors.Source{Key: t.Key, DType: t.DType, Shape: t.Shape, Data: old.Fd(), Off: old.DataOffset() + int64(t.Begin)})
			}
			src[0].Data, src[0].Off = safetensors.Bytes(pseudo(2, int(old.Tensors[0].Size()))), 0
			if err := rewriteAtomic(path, src, old.Metadata, nil); err != nil {
				b.Fatal(err)
			}
			old.Close()
		}
	})
}
