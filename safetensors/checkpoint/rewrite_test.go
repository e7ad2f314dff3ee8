package checkpoint

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// relayout is a layout change of the default checkpoint: one tensor
// renamed, one reshaped, one dropped, one added, metadata changed. Unchanged
// bytes come from the old file itself, through both kinds of source the
// checkpoint uses: the *os.File (copy_file_range) and the mapped
// *safetensors.File.
func relayout(t testing.TB, c *testCkpt, fd *os.File, mapped *safetensors.File) ([]safetensors.Source, map[string]string) {
	t.Helper()
	k, e := c.tensors["params.Dense_0.kernel"], c.tensors["embed"]
	return []safetensors.Source{
		{Key: "params.dense.kernel", DType: safetensors.F32, Shape: []uint64{256, 64}, Data: fd, Off: k[0]},
		{Key: "embed", DType: safetensors.U8, Shape: []uint64{1000, 300}, Data: mapped, Off: e[0]},
		{Key: "new", DType: safetensors.BF16, Shape: []uint64{3, 7}, Data: safetensors.Bytes(pseudo(42, 42))},
	}, map[string]string{"framework": "flax", "edited": "yes"}
}

func canonical(t testing.TB, src []safetensors.Source, meta map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := safetensors.Write(&b, src, meta); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func openOld(t testing.TB, path string) (*os.File, *safetensors.File) {
	t.Helper()
	fd, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	mapped, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fd.Close(); mapped.Close() })
	return fd, mapped
}

func TestRewriteAtomic(t *testing.T) {
	t.Parallel()
	c := defaultCkpt(t)
	if err := os.Chmod(c.path, 0o640); err != nil {
		t.Fatal(err)
	}
	asRoot := os.Geteuid() == 0
	if asRoot {
		if err := os.Chown(c.path, 1234, 5678); err != nil {
			t.Fatal(err)
		}
	}
	fd, mapped := openOld(t, c.path)
	src, meta := relayout(t, c, fd, mapped)
	want := canonical(t, src, meta)

	var points []string
	if err := rewriteAtomicPath(c.path, src, meta, recordPoints(&points)); err != nil {
		t.Fatal(err)
	}
	checkFile(t, c.path, want, "after rewrite")
	if got := strings.Join(points, " "); got != "tmp-written tmp-synced renamed" {
		t.Errorf("hook points = %s", got)
	}
	var st unix.Stat_t
	if err := unix.Stat(c.path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o640 {
		t.Errorf("mode = %o, want 640", st.Mode&0o7777)
	}
	if asRoot && (st.Uid != 1234 || st.Gid != 5678) {
		t.Errorf("owner = %d:%d, want 1234:5678", st.Uid, st.Gid)
	}
	if s := sideFiles(t, c.path); len(s) != 0 {
		t.Errorf("left behind: %v", s)
	}
	// The old file is still there for whoever has it open or mapped.
	old := make([]byte, len(c.content))
	if _, err := fd.ReadAt(old, 0); err != nil || !bytes.Equal(old, c.content) {
		t.Errorf("old descriptor no longer reads the old bytes (%v)", err)
	}
	if !bytes.Equal(mapped.Mapped(), c.content) {
		t.Error("old mapping no longer shows the old bytes")
	}
}

func TestRewriteAtomicCrash(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		point   string
		wantNew bool
	}{
		{"tmp-written", false},
		{"tmp-synced", false},
		{"renamed", true},
	} {
		t.Run(tc.point, func(t *testing.T) {
			c := defaultCkpt(t)
			fd, mapped := openOld(t, c.path)
			src, meta := relayout(t, c, fd, mapped)
			want := c.content
			if tc.wantNew {
				want = canonical(t, src, meta)
			}
			if err := rewriteAtomicPath(c.path, src, meta, crashAt(tc.point, 1, nil)); !errors.Is(err, errCrash) {
				t.Fatalf("rewrite returned %v, want the simulated crash", err)
			}
			checkFile(t, c.path, want, "after the crash")
			if s := sideFiles(t, c.path); !tc.wantNew && len(s) != 1 {
				t.Errorf("a crash before the rename should leave its temp file, found %v", s)
			}
			// What the next open does.
			if err := cleanTempsPath(c.path); err != nil {
				t.Fatal(err)
			}
			checkFile(t, c.path, want, "after cleanup")
			if s := sideFiles(t, c.path); len(s) != 0 {
				t.Errorf("left behind after cleanStaleTemps: %v", s)
			}
		})
	}
}

func TestRewriteAtomicFailureLeavesCheckpoint(t *testing.T) {
	t.Parallel()
	c := defaultCkpt(t)
	for name, src := range map[string][]safetensors.Source{
		"duplicate key": {
			{Key: "a", DType: safetensors.U8, Shape: []uint64{1}, Data: safetensors.Bytes{1}},
			{Key: "a", DType: safetensors.U8, Shape: []uint64{1}, Data: safetensors.Bytes{2}},
		},
		"short source": {
			{Key: "a", DType: safetensors.F32, Shape: []uint64{100}, Data: safetensors.Bytes(make([]byte, 399))},
		},
		"short file source": {
			{Key: "a", DType: safetensors.U8, Shape: []uint64{1 << 20}, Data: mustOpen(t, c.path)},
		},
	} {
		if err := rewriteAtomicPath(c.path, src, nil, nil); err == nil {
			t.Errorf("%s: rewrite succeeded", name)
		}
		checkFile(t, c.path, c.content, name)
		if s := sideFiles(t, c.path); len(s) != 0 {
			t.Errorf("%s: left behind: %v", name, s)
		}
	}
}

func mustOpen(t testing.TB, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// Another program saves over the checkpoint while the rewrite is writing:
// its file must survive.
func TestRewriteAtomicChangedMeanwhile(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"renamed over", "written in place"} {
		t.Run(how, func(t *testing.T) {
			c := defaultCkpt(t)
			fd, mapped := openOld(t, c.path)
			src, meta := relayout(t, c, fd, mapped)
			var theirs []byte
			hooks := &crashHooks{at: func(p string) error {
				if p != "tmp-written" {
					return nil
				}
				s, m := testSources(5)
				if how == "renamed over" {
					o := makeCkpt(t, filepath.Dir(c.path), "theirs.safetensors", s, m)
					theirs = o.content
					return os.Rename(o.path, c.path)
				}
				theirs = bytes.Clone(c.content)
				theirs[len(theirs)-1] ^= 0xff
				return os.WriteFile(c.path, theirs, 0o644)
			}}
			err := rewriteAtomicPath(c.path, src, meta, hooks)
			if !errors.Is(err, ErrChanged) {
				t.Fatalf("rewrite returned %v, want ErrChanged", err)
			}
			got, _ := os.ReadFile(c.path)
			if !bytes.Equal(got, theirs) {
				t.Error("the other program's file was overwritten")
			}
			if s := sideFiles(t, c.path); len(s) != 0 {
				t.Errorf("left behind: %v", s)
			}
		})
	}
}

// A symlinked checkpoint (the Hugging Face cache links snapshots to blobs)
// is rewritten where it really is: the link stays a link.
func TestRewriteAtomicThroughSymlink(t *testing.T) {
	t.Parallel()
	c := defaultCkpt(t)
	linkDir := t.TempDir()
	link := filepath.Join(linkDir, "model.safetensors")
	if err := os.Symlink(c.path, link); err != nil {
		t.Fatal(err)
	}
	fd, mapped := openOld(t, c.path)
	src, meta := relayout(t, c, fd, mapped)
	if err := rewriteAtomicPath(link, src, meta, nil); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("link replaced by a file: %v %v", fi, err)
	}
	checkFile(t, c.path, canonical(t, src, meta), "link target")
	if ents, _ := os.ReadDir(linkDir); len(ents) != 1 {
		t.Errorf("files next to the link: %v", ents)
	}
}

func TestCleanStaleTemps(t *testing.T) {
	t.Parallel()
	c := defaultCkpt(t)
	dir := filepath.Dir(c.path)
	stale := []string{
		".model.safetensors.safejaxfs-tmp-0123456789abcdef",
		".model.safetensors.safejaxfs-tmp-fedcba9876543210",
	}
	keep := []string{
		".model.safetensors.safejaxfs-tmp-short",
		".model.safetensors.safejaxfs-tmp-0123456789abcdef.x",
		".model.safetensors.safejaxfs-tmp-0123456789abcdeg",
		// the temp file of a checkpoint named "model.safetensors.safejaxfs-tmp-x"
		".model.safetensors.safejaxfs-tmp-x.safejaxfs-tmp-0123456789abcdef",
		".other.safetensors.safejaxfs-tmp-0123456789abcdef",
		".model.safetensors.safejaxfs-log",
		"model.safetensors.safejaxfs-tmp-0123456789abcdef",
	}
	for _, n := range append(append([]string{}, stale...), keep...) {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := cleanTempsPath(c.path); err != nil {
		t.Fatal(err)
	}
	for _, n := range stale {
		if exists(filepath.Join(dir, n)) {
			t.Errorf("%s not removed", n)
		}
	}
	for _, n := range keep {
		if !exists(filepath.Join(dir, n)) {
			t.Errorf("%s removed", n)
		}
	}
	checkFile(t, c.path, c.content, "checkpoint")
	// A temp file createTemp makes is one cleanStaleTemps recognises.
	d, base := dirOfPath(t, c.path)
	f, name, err := createTemp(d, base, 0o644, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	name = d.join(name)
	if !isTempOf(filepath.Base(name), "model.safetensors") {
		t.Errorf("createTemp's %s is not recognised as a temp file", name)
	}
	if err := cleanTempsPath(c.path); err != nil || exists(name) {
		t.Errorf("createTemp's file survives cleanStaleTemps (%v)", err)
	}
	if err := cleanTempsPath(filepath.Join(dir, "missing.safetensors")); err != nil {
		t.Errorf("cleanStaleTemps of a missing checkpoint: %v", err)
	}
}

func TestWriteRecovery(t *testing.T) {
	t.Parallel()
	c := defaultCkpt(t)
	if err := os.Chmod(c.path, 0o600); err != nil {
		t.Fatal(err)
	}
	fd, mapped := openOld(t, c.path)
	src, meta := relayout(t, c, fd, mapped)
	want := canonical(t, src, meta)
	name := regexp.MustCompile(`^model\.safejaxfs-recovered-(\d{8}-\d{6})(-\d+)?\.safetensors$`)

	var paths []string
	for range 3 {
		p, err := writeRecoveryPath(c.path, "", src, meta)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
		if filepath.Dir(p) != filepath.Dir(c.path) {
			t.Errorf("%s is not next to the checkpoint", p)
		}
		m := name.FindStringSubmatch(filepath.Base(p))
		if m == nil {
			t.Fatalf("recovery file name %s does not match %s", filepath.Base(p), name)
		}
		if ts, err := time.ParseInLocation("20060102-150405", m[1], time.Local); err != nil || time.Since(ts) > time.Minute || time.Since(ts) < -time.Second {
			t.Errorf("timestamp %s is not now (%v)", m[1], err)
		}
		checkFile(t, p, want, "recovery file")
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("recovery file mode %v, want the checkpoint's 0600 (%v)", fi.Mode(), err)
		}
	}
	if paths[0] == paths[1] || paths[1] == paths[2] || paths[0] == paths[2] {
		t.Errorf("recovery files overwrote each other: %v", paths)
	}
	checkFile(t, c.path, c.content, "checkpoint after writeRecovery")
	if s := sideFiles(t, c.path); len(s) != 0 {
		t.Errorf("left behind: %v", s)
	}

	// A name without the .safetensors extension keeps it whole.
	other := filepath.Join(filepath.Dir(c.path), "weights.bin")
	if err := os.WriteFile(other, c.content, 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := writeRecoveryPath(other, "", src, meta)
	if err != nil {
		t.Fatal(err)
	}
	if b := filepath.Base(p); !strings.HasPrefix(b, "weights.bin.safejaxfs-recovered-") || !strings.HasSuffix(b, ".safetensors") {
		t.Errorf("recovery name %s", b)
	}

	// Invalid content never gets a recovery name.
	bad := []safetensors.Source{{Key: "a", DType: safetensors.F32, Shape: []uint64{4}, Data: safetensors.Bytes{1}}}
	before, _ := os.ReadDir(filepath.Dir(c.path))
	if p, err := writeRecoveryPath(c.path, "", bad, nil); err == nil {
		t.Errorf("writeRecovery of a short source succeeded: %s", p)
	}
	after, _ := os.ReadDir(filepath.Dir(c.path))
	if len(after) != len(before) {
		t.Errorf("a failed writeRecovery left files: %d before, %d after", len(before), len(after))
	}
}

func TestRenameNoReplace(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(a, []byte("a"), 0o644)
	os.WriteFile(b, []byte("b"), 0o644)
	if err := renameNoReplacePath(a, b); !errors.Is(err, os.ErrExist) {
		t.Fatalf("rename over an existing file: %v", err)
	}
	if got, _ := os.ReadFile(b); string(got) != "b" {
		t.Fatal("existing file overwritten")
	}
	c := filepath.Join(dir, "c")
	if err := renameNoReplacePath(a, c); err != nil {
		t.Fatal(err)
	}
	if exists(a) || !exists(c) {
		t.Fatal("rename did not happen")
	}
	d, _ := dirOfPath(t, c)
	p, err := renameAside(d, "c", "b")
	if err != nil || p != "b-2" {
		t.Fatalf("renameAside = %s, %v; want b-2", p, err)
	}
}
