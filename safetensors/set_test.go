package safetensors

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// writeShard writes a safetensors file holding keys (1-D U8 tensors of
// their own length) and returns nothing: failures end the test.
func writeShard(t *testing.T, path string, keys ...string) {
	t.Helper()
	var src []Source
	for _, k := range keys {
		src = append(src, Source{Key: k, DType: U8, Shape: []uint64{uint64(len(k))}, Data: Bytes(k)})
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := Write(f, src, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
}

func writeIndex(t *testing.T, path string, wm map[string]string) {
	t.Helper()
	b, err := (&Index{WeightMap: wm}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// shardedDir makes a valid two-shard set and returns its directory.
func shardedDir(t *testing.T) string {
	dir := t.TempDir()
	writeShard(t, filepath.Join(dir, "model-00001-of-00002.safetensors"), "a.w", "a.b")
	writeShard(t, filepath.Join(dir, "model-00002-of-00002.safetensors"), "b.w")
	writeIndex(t, filepath.Join(dir, "model.safetensors.index.json"), map[string]string{
		"a.w": "model-00001-of-00002.safetensors",
		"a.b": "model-00001-of-00002.safetensors",
		"b.w": "model-00002-of-00002.safetensors",
	})
	return dir
}

func TestOpenSet(t *testing.T) {
	t.Parallel()
	dir := shardedDir(t)
	for _, p := range []string{dir, filepath.Join(dir, "model.safetensors.index.json")} {
		s, err := OpenSet(p)
		if err != nil {
			t.Fatal(err)
		}
		if !s.Sharded() || len(s.Files) != 2 || s.Names[0] != "model-00001-of-00002.safetensors" {
			t.Errorf("%s: %+v", p, s.Location)
		}
		keys := 0
		for _, f := range s.Files {
			keys += len(f.Tensors)
		}
		if keys != 3 {
			t.Errorf("%d tensors, want 3", keys)
		}
		s.Close()
	}
	// A single file names itself.
	one := filepath.Join(dir, "model-00002-of-00002.safetensors")
	s, err := OpenSet(one)
	if err != nil {
		t.Fatal(err)
	}
	if s.Sharded() || s.Paths[0] != one {
		t.Errorf("single file located as %+v", s.Location)
	}
	s.Close()
}

func TestLocateDirectory(t *testing.T) {
	t.Parallel()
	mk := func(names ...string) string {
		dir := t.TempDir()
		for _, n := range names {
			switch {
			case strings.HasSuffix(n, IndexSuffix):
				writeIndex(t, filepath.Join(dir, n), map[string]string{})
			default:
				writeShard(t, filepath.Join(dir, n), "k")
			}
		}
		return dir
	}
	// One .safetensors and no index: that file. Dot files are ignored.
	dir := mk("model.safetensors", ".model.safetensors.safejaxfs-tmp-0123456789abcdef")
	loc, _, err := Locate(dir)
	if err != nil || loc.Sharded() || filepath.Base(loc.Paths[0]) != "model.safetensors" {
		t.Errorf("one file: %+v, %v", loc, err)
	}
	// An index wins over the shards beside it.
	dir = mk("model.safetensors.index.json", "consolidated.safetensors")
	if loc, _, err := Locate(dir); err != nil || !loc.Sharded() {
		t.Errorf("index: %+v, %v", loc, err)
	}
	for _, c := range []struct {
		names []string
		says  string
	}{
		{nil, "no .safetensors file"},
		{[]string{"a.safetensors", "b.safetensors"}, "2 .safetensors files and no"},
		{[]string{"a.safetensors.index.json", "b.safetensors.index.json"}, "2 safetensors indexes (a.safetensors.index.json, b.safetensors.index.json)"},
	} {
		_, _, err := Locate(mk(c.names...))
		if !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%v: %v, want %q", c.names, err, c.says)
		}
	}
}

// Every rule of a sharded set, broken once: refused before anything is
// used, naming the file and key.
func TestOpenSetRefuses(t *testing.T) {
	t.Parallel()
	const s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
	cases := []struct {
		name  string
		setup func(t *testing.T, dir string)
		rule  error
		says  []string
	}{
		{"shard missing", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, s2))
		}, ErrShardMissing, []string{s2, `"b.w"`}},
		{"key listed but not in its shard", func(t *testing.T, dir string) {
			writeShard(t, filepath.Join(dir, s2), "other")
			writeIndex(t, filepath.Join(dir, "model.safetensors.index.json"), map[string]string{"a.w": s1, "a.b": s1, "b.w": s2, "other": s2})
		}, ErrKeyNotInShard, []string{`"b.w"`, s2}},
		{"key in the wrong shard", func(t *testing.T, dir string) {
			writeIndex(t, filepath.Join(dir, "model.safetensors.index.json"), map[string]string{"a.w": s2, "a.b": s1, "b.w": s2})
		}, ErrKeyNotInShard, []string{`"a.w"`, s1, s2}},
		{"key in two shards", func(t *testing.T, dir string) {
			writeShard(t, filepath.Join(dir, s2), "b.w", "a.w")
		}, ErrKeyInTwoShards, []string{`"a.w"`, s1, s2}},
		{"key not in the index", func(t *testing.T, dir string) {
			writeShard(t, filepath.Join(dir, s2), "b.w", "stray")
		}, ErrKeyNotInIndex, []string{`"stray"`, s2}},
		{"invalid shard", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, s1), []byte("\x10\x00\x00\x00\x00\x00\x00\x00{}"), 0o644)
		}, ErrShardInvalid, []string{s1}},
		{"index not JSON", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), []byte(`{"weight_map": `), 0o644)
		}, ErrIndexJSON, []string{"model.safetensors.index.json"}},
		{"shard escapes the directory", func(t *testing.T, dir string) {
			writeIndex(t, filepath.Join(dir, "model.safetensors.index.json"), map[string]string{"a.w": "../" + s1})
		}, ErrIndexShardName, []string{`"a.w"`, "escapes"}},
		{"absolute shard path", func(t *testing.T, dir string) {
			writeIndex(t, filepath.Join(dir, "model.safetensors.index.json"), map[string]string{"a.w": filepath.Join(dir, s1)})
		}, ErrIndexShardName, []string{`"a.w"`, "absolute"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := shardedDir(t)
			c.setup(t, dir)
			s, err := OpenSet(dir)
			if err == nil {
				s.Close()
				t.Fatal("accepted")
			}
			if !errors.Is(err, c.rule) {
				t.Errorf("%v: want rule %v", err, c.rule)
			}
			for _, w := range c.says {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q does not name %s", err, w)
				}
			}
		})
	}
}

// A FIFO named as a checkpoint or shard is refused, not waited on.
func TestOpenSetFIFO(t *testing.T) {
	t.Parallel()
	dir := shardedDir(t)
	p := filepath.Join(dir, "model-00002-of-00002.safetensors")
	os.Remove(p)
	if err := mkfifo(p); err != nil {
		t.Skip(err)
	}
	done := make(chan error, 1)
	go func() {
		s, err := OpenSet(dir)
		if err == nil {
			s.Close()
		}
		done <- err
	}()
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("FIFO shard: %v", err)
	}
}

func ExampleLocate() {
	fmt.Println(CheckShardName("model-00001-of-00002.safetensors") == nil, CheckShardName("../x") != nil)
	// Output: true true
}

func mkfifo(p string) error { return syscall.Mkfifo(p, 0o644) }
