package checkpoint

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// The file view against the truth: the files a compaction leaves on disk.
// Each kind of edit is made, every file of the view read whole, then the
// checkpoint compacted and its files compared byte for byte; the view's
// decision (as it is, patched in place, rewritten) is held to the
// snapshot's for every shard.

// readView reads a view whole through Read, in odd-sized pieces.
func readView(t testing.TB, v *FileView) []byte {
	t.Helper()
	var out []byte
	for off := int64(0); off < v.Size(); {
		segs, release, err := v.Read(off, 100_003)
		if err != nil {
			t.Fatalf("%s at %d: %v", v.Name(), off, err)
		}
		n := 0
		for _, s := range segs {
			out = append(out, s...)
			n += len(s)
		}
		release()
		if n == 0 {
			t.Fatalf("%s at %d: no bytes", v.Name(), off)
		}
		off += int64(n)
	}
	return out
}

// viewFiles reads every file of the set, by name.
func viewFiles(t testing.TB, fs *FileSet) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, n := range append(fs.Names(), fs.Siblings()...) {
		fi, err := fs.Stat(n)
		if err != nil {
			t.Fatalf("stat %s: %v", n, err)
		}
		v, err := fs.Open(n, fi.Stamp)
		if err != nil {
			t.Fatalf("open %s: %v", n, err)
		}
		b := readView(t, v)
		v.Close()
		if int64(len(b)) != fi.Size {
			t.Fatalf("%s: Stat says %d bytes, the view has %d", n, fi.Size, len(b))
		}
		out[n] = b
	}
	return out
}

// diskFiles reads the files the set names from dir.
func diskFiles(t testing.TB, dir string, names []string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		out[n] = b
	}
	return out
}

func sameFiles(t testing.TB, what string, got, want map[string][]byte) {
	t.Helper()
	for n, w := range want {
		g, ok := got[n]
		if !ok {
			t.Fatalf("%s: %s missing", what, n)
		}
		if !bytes.Equal(g, w) {
			i := 0
			for i < len(g) && i < len(w) && g[i] == w[i] {
				i++
			}
			t.Fatalf("%s: %s differs (%d vs %d bytes, first difference at %d)", what, n, len(g), len(w), i)
		}
	}
}

// decisionsAgree holds every shard's view decision to the snapshot's.
func decisionsAgree(t testing.TB, c *Checkpoint, fs *FileSet, what string) {
	t.Helper()
	s := c.snapshot()
	defer s.release()
	c.mu.RLock()
	defer c.mu.RUnlock()
	for i := range c.shards {
		st := fs.shardState(i)
		ss := s.shards[i]
		var want stampMode
		switch {
		case ss.rewrite:
			want = stampRewrite
		case ss.dirty:
			want = stampInPlace
		default:
			want = stampClean
		}
		if st.stamp.mode != want {
			t.Fatalf("%s: shard %s: the view decides %d, compaction %d", what, c.shards[i].name, st.stamp.mode, want)
		}
	}
}

// unCanonical rewrites a file's header as Python's json.dumps would
// (spaces, keys sorted), a valid file no canonical writer produces, so an
// in-place edit must keep that header and a rewrite must not.
func unCanonical(t testing.TB, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b)
	var h map[string]any
	if err := json.Unmarshal(b[8:8+n], &h); err != nil {
		t.Fatal(err)
	}
	j, err := json.MarshalIndent(h, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	for len(j)%8 != 0 {
		j = append(j, ' ')
	}
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(j)))
	out = append(append(out, j...), b[8+n:]...)
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

type viewEdit struct {
	name string
	do   func(t testing.TB, c *Checkpoint)
}

func idOf(t testing.TB, c *Checkpoint, key string) ID {
	t.Helper()
	c.mu.RLock()
	defer c.mu.RUnlock()
	id, ok := c.byKey[key]
	if !ok {
		t.Fatalf("no tensor %q", key)
	}
	return id
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// edits are the kinds of edit, on keys both test checkpoints have or
// make.
func viewEdits(big, small string) []viewEdit {
	return []viewEdit{
		{"bytes", func(t testing.TB, c *Checkpoint) {
			must(t, c.WriteAt(idOf(t, c, big), bytes.Repeat([]byte{0xab}, 70_000), 65_000))
		}},
		{"bytes+sync", func(t testing.TB, c *Checkpoint) {
			must(t, c.WriteAt(idOf(t, c, big), []byte("logged"), 3))
			must(t, c.Sync())
			must(t, c.WriteAt(idOf(t, c, big), []byte("in memory"), 190_000))
		}},
		{"create", func(t testing.TB, c *Checkpoint) {
			_, err := c.Put("zz.new", safetensors.F32, []uint64{3}, pseudo(90, 12))
			must(t, err)
		}},
		{"create plain file", func(t testing.TB, c *Checkpoint) {
			id, err := c.Create("aa.plain")
			must(t, err)
			must(t, c.WriteAt(id, pseudo(91, 100_000), 0))
		}},
		{"remove", func(t testing.TB, c *Checkpoint) { must(t, c.Delete(idOf(t, c, small))) }},
		{"rename", func(t testing.TB, c *Checkpoint) { must(t, c.Rename(idOf(t, c, small), small+".renamed")) }},
		{"reshape", func(t testing.TB, c *Checkpoint) {
			info, _ := c.Info(idOf(t, c, big))
			must(t, c.Reshape(idOf(t, c, big), safetensors.U8, []uint64{uint64(info.Size)}))
		}},
		{"metadata", func(t testing.TB, c *Checkpoint) {
			must(t, c.SetMetadata(map[string]string{"edited": "yes", "<&>": "é"}))
		}},
		{"bytes+rename+sync", func(t testing.TB, c *Checkpoint) {
			must(t, c.WriteAt(idOf(t, c, big), []byte("xyz"), 10))
			must(t, c.Sync())
			must(t, c.Rename(idOf(t, c, small), "a.first"))
		}},
	}
}

func TestFileViewMatchesWriteBack(t *testing.T) {
	t.Parallel()
	type setup struct {
		name       string
		make       func(t testing.TB) (dir, path string)
		big, small string
	}
	single := func(canonical bool) func(t testing.TB) (string, string) {
		return func(t testing.TB) (string, string) {
			c := defaultCkpt(t)
			if !canonical {
				unCanonical(t, c.path)
			}
			return filepath.Dir(c.path), c.path
		}
	}
	sharded := func(t testing.TB) (string, string) {
		dir := shFiles(t, shDefault())
		unCanonical(t, filepath.Join(dir, "model-00001-of-00003.safetensors"))
		return dir, filepath.Join(dir, shIndexName)
	}
	for _, s := range []setup{
		{"single", single(true), "embed", "step"},
		{"single, header not canonical", single(false), "embed", "step"},
		{"sharded", sharded, "embed", "layers.1.b"},
	} {
		for _, e := range viewEdits(s.big, s.small) {
			t.Run(s.name+"/"+e.name, func(t *testing.T) {
				dir, path := s.make(t)
				c, err := Open(path, Options{})
				must(t, err)
				defer c.Close()
				fs := c.Files(FilesOptions{})
				names := fs.Names()
				before := diskFiles(t, dir, names)
				sameFiles(t, "unedited", viewFiles(t, fs), before)
				for _, n := range names {
					fi, _ := fs.Stat(n)
					if !fi.Direct && n != shIndexName {
						t.Errorf("unedited %s is not served as the file itself", n)
					}
				}
				e.do(t, c)
				decisionsAgree(t, c, fs, e.name)
				view := viewFiles(t, fs)
				must(t, c.Compact())
				sameFiles(t, "after "+e.name, view, diskFiles(t, dir, names))
				decisionsAgree(t, c, fs, "compacted")
				// Compacted: served as the files again, the same bytes.
				sameFiles(t, "compacted", viewFiles(t, fs), diskFiles(t, dir, names))
				for _, n := range names {
					if fi, _ := fs.Stat(n); !fi.Direct && n != shIndexName {
						t.Errorf("compacted %s is not served as the file itself", n)
					}
				}
			})
		}
	}
}

// A view keeps its version across an edit and the compaction that writes
// it back in place: the shard is then written as a patched copy, so the
// view (a clean one, as the kernel would read through passthrough, and an
// edited one) still reads the bytes it opened, the file on disk has the
// new ones, and a stamp looked up before the edit is refused (ErrStale).
func TestFileViewHeldAcrossCompaction(t *testing.T) {
	t.Parallel()
	ck := defaultCkpt(t)
	c, err := Open(ck.path, Options{})
	must(t, err)
	defer c.Close()
	fs := c.Files(FilesOptions{})
	name := filepath.Base(ck.path)
	fi, err := fs.Stat(name)
	must(t, err)
	clean, err := fs.Open(name, fi.Stamp)
	must(t, err)
	defer clean.Close()
	if clean.Backing() == nil {
		t.Fatal("an unedited file has no backing file")
	}
	var before unix.Stat_t
	must(t, unix.Stat(ck.path, &before))

	id := idOf(t, c, "embed")
	must(t, c.WriteAt(id, []byte("first edit"), 100))
	fi2, err := fs.Stat(name)
	must(t, err)
	if fi2.Stamp == fi.Stamp {
		t.Fatal("an edit left the stamp as it was")
	}
	if _, err := fs.Open(name, fi.Stamp); !errors.Is(err, ErrStale) {
		t.Fatalf("opening the old stamp after an edit: %v, want ErrStale", err)
	}
	edited, err := fs.Open(name, fi2.Stamp)
	must(t, err)
	defer edited.Close()
	if edited.Backing() != nil {
		t.Fatal("an edited file claims a backing file")
	}
	mid := readView(t, edited)
	// A second edit of other bytes of the same chunk region the edited
	// view reads from the file.
	must(t, c.WriteAt(id, []byte("second edit"), 150_000))
	must(t, c.Compact())

	if got := readView(t, clean); !bytes.Equal(got, ck.content) {
		t.Fatal("the view opened before the edits changed")
	}
	if got := readView(t, edited); !bytes.Equal(got, mid) {
		t.Fatal("the view opened between the edits changed")
	}
	var after unix.Stat_t
	must(t, unix.Stat(ck.path, &after))
	if after.Ino == before.Ino {
		t.Fatal("the file was patched in place under open views")
	}
	want := applied(ck.content, []patch{{ck.at("embed", 100), []byte("first edit")}, {ck.at("embed", 150_000), []byte("second edit")}})
	checkFile(t, ck.path, want, "written back")
	sameFiles(t, "now", viewFiles(t, fs), map[string][]byte{name: want})

	// With no view open, an edit is patched in place again.
	clean.Close()
	edited.Close()
	must(t, c.WriteAt(id, []byte("third"), 7))
	must(t, c.Compact())
	var third unix.Stat_t
	must(t, unix.Stat(ck.path, &third))
	if third.Ino != after.Ino {
		t.Fatal("with no view open the edit was not patched in place")
	}
}

// A sibling: listed by pattern, the checkpoint's own files and dot files
// not; read as it is; a change of it is a new stamp.
func TestFileViewSiblings(t *testing.T) {
	t.Parallel()
	dir := shFiles(t, shDefault())
	for n, b := range map[string]string{"config.json": `{"a":1}`, "tokenizer.model": "spm", ".hidden.json": "x", "notes.md": "no", "merges.txt": "m"} {
		must(t, os.WriteFile(filepath.Join(dir, n), []byte(b), 0o640))
	}
	must(t, os.Symlink(filepath.Join(dir, "config.json"), filepath.Join(dir, "vocab.json")))
	c, err := Open(dir, Options{ReadOnly: true})
	must(t, err)
	defer c.Close()
	fs := c.Files(FilesOptions{Siblings: true})
	if got, want := fs.Siblings(), []string{"config.json", "merges.txt", "tokenizer.model", "vocab.json"}; !slices.Equal(got, want) {
		t.Fatalf("siblings %v, want %v", got, want)
	}
	got := viewFiles(t, fs)
	if string(got["vocab.json"]) != `{"a":1}` || string(got["tokenizer.model"]) != "spm" {
		t.Fatalf("siblings read %q", got)
	}
	fi, err := fs.Stat("config.json")
	must(t, err)
	if !fi.Own || fi.Mode != 0o440 {
		t.Fatalf("config.json shows mode %o (own %v), want its own 0440", fi.Mode, fi.Own)
	}
	must(t, os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"a":2}`), 0o640))
	if _, err := fs.Open("config.json", fi.Stamp); !errors.Is(err, ErrStale) {
		t.Fatalf("a changed sibling opened at its old stamp: %v", err)
	}
	if c2 := c.Files(FilesOptions{}); len(c2.Siblings()) != 0 {
		t.Fatal("siblings listed without being asked for")
	}
}

// A view whose bytes come from the log and from a shard's file keeps them
// across the compaction that rewrites the shard and removes the log: it
// holds both until it is closed.
func TestFileViewOutlivesLogAndFile(t *testing.T) {
	t.Parallel()
	dir := shFiles(t, shDefault())
	c, err := Open(dir, Options{})
	must(t, err)
	defer c.Close()
	fs := c.Files(FilesOptions{})
	must(t, c.WriteAt(idOf(t, c, "embed"), []byte("logged bytes"), 70_000))
	must(t, c.Sync()) // in the log now
	must(t, c.Rename(idOf(t, c, "layers.0.b"), "layers.0.bias"))
	const name = "model-00001-of-00003.safetensors"
	fi, err := fs.Stat(name)
	must(t, err)
	v, err := fs.Open(name, fi.Stamp)
	must(t, err)
	defer v.Close()
	before := readView(t, v)
	if len(c.walMaps) == 0 {
		t.Fatal("no log to outlive")
	}
	must(t, c.Compact())
	if len(c.walMaps) != 0 {
		t.Fatal("the compaction left the log")
	}
	if got := readView(t, v); !bytes.Equal(got, before) {
		t.Fatal("the view changed across the compaction")
	}
	sameFiles(t, "written back", map[string][]byte{name: before}, diskFiles(t, dir, []string{name}))
}
