package checkpoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/internal/race"
	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Tests of a sharded checkpoint: an index over several files. The truth is
// the canonical file of each shard's expected tensors (safetensors.Write)
// and the index transformers would write for them (Index.Marshal, itself
// compared with Python's json.dumps).

// shModel is what a sharded checkpoint should hold: each shard's tensors
// and metadata by shard name, and the index's metadata (total_size aside).
type shModel struct {
	shards    map[string]*ckModel
	indexMeta map[string]json.RawMessage
}

func (m *shModel) clone() *shModel {
	n := &shModel{shards: map[string]*ckModel{}, indexMeta: maps.Clone(m.indexMeta)}
	for k, s := range m.shards {
		n.shards[k] = s.clone()
	}
	return n
}

func (m *shModel) names() []string { return slices.Sorted(maps.Keys(m.shards)) }

// find returns the shard holding key.
func (m *shModel) find(key string) (string, ckTensor) {
	for n, s := range m.shards {
		if t, ok := s.tensors[key]; ok {
			return n, t
		}
	}
	return "", ckTensor{}
}

// union is the model a mount of the whole set shows: every tensor, and the
// metadata all shards share.
func (m *shModel) union() *ckModel {
	u := &ckModel{tensors: map[string]ckTensor{}}
	for i, n := range m.names() {
		s := m.shards[n]
		maps.Copy(u.tensors, s.tensors)
		if i == 0 {
			u.meta = maps.Clone(s.meta)
			continue
		}
		for k, v := range u.meta {
			if w, ok := s.meta[k]; !ok || w != v {
				delete(u.meta, k)
			}
		}
	}
	return u
}

// index is the index file the model calls for.
func (m *shModel) index(t testing.TB) []byte {
	t.Helper()
	idx := &safetensors.Index{WeightMap: map[string]string{}, Metadata: maps.Clone(m.indexMeta)}
	if idx.Metadata == nil {
		idx.Metadata = map[string]json.RawMessage{}
	}
	total := 0
	for n, s := range m.shards {
		for k, ts := range s.tensors {
			idx.WeightMap[k] = n
			total += len(ts.data)
		}
	}
	idx.Metadata["total_size"] = json.RawMessage(fmt.Sprint(total))
	b, err := idx.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const shIndexName = "model.safetensors.index.json"

func shDefault() *shModel {
	pt := map[string]string{"format": "pt"}
	return &shModel{
		shards: map[string]*ckModel{
			"model-00001-of-00003.safetensors": {tensors: map[string]ckTensor{
				"layers.0.w": {safetensors.F32, []uint64{10, 10}, ctPattern(31, 400)},
				"layers.0.b": {safetensors.F32, []uint64{10}, ctPattern(32, 40)},
				"embed":      {safetensors.U8, []uint64{200_000}, ctPattern(33, 200_000)},
			}, meta: maps.Clone(pt)},
			"model-00002-of-00003.safetensors": {tensors: map[string]ckTensor{
				"layers.0.norm": {safetensors.BF16, []uint64{10}, ctPattern(34, 20)},
				"layers.1.w":    {safetensors.F32, []uint64{10, 10}, ctPattern(35, 400)},
				"layers.1.b":    {safetensors.F32, []uint64{10}, ctPattern(36, 40)},
			}, meta: maps.Clone(pt)},
			"model-00003-of-00003.safetensors": {tensors: map[string]ckTensor{
				"head.w": {safetensors.F16, []uint64{10, 20}, ctPattern(37, 400)},
				"step":   {safetensors.I64, []uint64{}, ctPattern(38, 8)},
			}, meta: map[string]string{"format": "pt", "part": "3"}},
		},
		indexMeta: map[string]json.RawMessage{"format": json.RawMessage(`"pt"`)},
	}
}

// shFiles writes the model's files into a fresh directory and returns it.
func shFiles(t testing.TB, m *shModel) string {
	t.Helper()
	dir := t.TempDir()
	for n, s := range m.shards {
		if err := os.WriteFile(filepath.Join(dir, n), s.canonical(t), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, shIndexName), m.index(t), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// shCheckFiles asserts every shard and the index are byte for byte what
// the model calls for.
func shCheckFiles(t testing.TB, dir string, m *shModel, what string) {
	t.Helper()
	for n, s := range m.shards {
		ckCheckFile(t, filepath.Join(dir, n), s, what+": "+n)
	}
	got, err := os.ReadFile(filepath.Join(dir, shIndexName))
	if err != nil {
		t.Fatal(err)
	}
	if want := m.index(t); !bytes.Equal(got, want) {
		t.Fatalf("%s: the index is not what the tensors call for:\n%s\nwant:\n%s", what, got, want)
	}
	set, err := safetensors.OpenSet(dir)
	if err != nil {
		t.Fatalf("%s: the set does not validate: %v", what, err)
	}
	set.Close()
}

// shState reads which state the files on disk hold: "old", "new", or "".
func shState(t testing.TB, dir string, old, new *shModel) string {
	t.Helper()
	equal := func(m *shModel) bool {
		for n, s := range m.shards {
			got, err := os.ReadFile(filepath.Join(dir, n))
			if err != nil || !bytes.Equal(got, s.canonical(t)) {
				return false
			}
		}
		got, err := os.ReadFile(filepath.Join(dir, shIndexName))
		return err == nil && bytes.Equal(got, m.index(t))
	}
	switch {
	case equal(new):
		return "new"
	case equal(old):
		return "old"
	}
	return ""
}

func TestShardedOpen(t *testing.T) {
	t.Parallel()
	m := shDefault()
	dir := shFiles(t, m)
	for _, p := range []string{dir, filepath.Join(dir, shIndexName)} {
		for _, ro := range []bool{true, false} {
			c := ckOpen(t, p, Options{ReadOnly: ro})
			if !c.Sharded() {
				t.Error("not sharded")
			}
			ckCheckState(t, c, m.union(), "opened")
			for i, k := range c.Keys() {
				info, _ := c.Info(ID(i))
				if want, _ := m.find(k); info.Shard != want {
					t.Errorf("%q: shard %q, want %q", k, info.Shard, want)
				}
			}
			if got := string(c.IndexMetadata()["total_size"]); got != fmt.Sprint(400+40+200_000+20+400+40+400+8) {
				t.Errorf("total_size %s", got)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	shCheckFiles(t, dir, m, "after opening and closing")
}

// Byte edits in two shards are written in place: nothing is rewritten,
// the index is untouched.
func TestShardedInPlace(t *testing.T) {
	t.Parallel()
	m := shDefault()
	dir := shFiles(t, m)
	inos := map[string]uint64{}
	for _, n := range append(m.names(), shIndexName) {
		inos[n] = ckIno(t, filepath.Join(dir, n))
	}
	c := ckOpen(t, dir, Options{})
	p := ctPattern(40, 70_000)
	if err := c.WriteAt(ckID(t, c, "embed"), p, 100_000); err != nil {
		t.Fatal(err)
	}
	m.shards["model-00001-of-00003.safetensors"].write("embed", p, 100_000)
	if err := c.WriteAt(ckID(t, c, "step"), []byte{9, 9}, 3); err != nil {
		t.Fatal(err)
	}
	m.shards["model-00003-of-00003.safetensors"].write("step", []byte{9, 9}, 3)
	if err := c.Compact(); err != nil {
		t.Fatal(err)
	}
	shCheckFiles(t, dir, m, "after an in-place Sync")
	for n, ino := range inos {
		if ckIno(t, filepath.Join(dir, n)) != ino {
			t.Errorf("%s was rewritten for an in-place edit", n)
		}
	}
	ckCheckState(t, c, m.union(), "after an in-place Sync")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if s := shSideFiles(t, dir); len(s) != 0 {
		t.Errorf("left behind: %v", s)
	}
}

// shLayout makes layout changes in every shard and the index: a new tensor
// next to its siblings, a removal, a rename of a subtree whose tensors span
// two shards, a reshape, shared and index metadata.
func shLayout(t testing.TB, c *Checkpoint, m *shModel) {
	t.Helper()
	s1, s2, s3 := m.shards["model-00001-of-00003.safetensors"], m.shards["model-00002-of-00003.safetensors"], m.shards["model-00003-of-00003.safetensors"]
	d := ctPattern(41, 24)
	id, err := c.Put("layers.1.new", safetensors.I32, []uint64{2, 3}, bytes.Clone(d))
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := c.Info(id); info.Shard != "model-00002-of-00003.safetensors" {
		t.Errorf("a new tensor beside layers.1.* went to %s", info.Shard)
	}
	s2.tensors["layers.1.new"] = ckTensor{safetensors.I32, []uint64{2, 3}, d}
	if err := c.Delete(ckID(t, c, "layers.1.b")); err != nil {
		t.Fatal(err)
	}
	delete(s2.tensors, "layers.1.b")
	renames := map[ID]string{}
	for _, k := range []string{"layers.0.w", "layers.0.b", "layers.0.norm"} {
		nk := "blocks.0." + strings.TrimPrefix(k, "layers.0.")
		renames[ckID(t, c, k)] = nk
		for _, s := range []*ckModel{s1, s2} {
			if ts, ok := s.tensors[k]; ok {
				delete(s.tensors, k)
				s.tensors[nk] = ts
			}
		}
	}
	if err := c.RenameAll(renames); err != nil {
		t.Fatal(err)
	}
	if err := c.Reshape(ckID(t, c, "head.w"), safetensors.F16, []uint64{200}); err != nil {
		t.Fatal(err)
	}
	hw := s3.tensors["head.w"]
	s3.tensors["head.w"] = ckTensor{hw.dtype, []uint64{200}, hw.data}
	if err := c.SetMetadata(map[string]string{"format": "pt", "step": "7"}); err != nil {
		t.Fatal(err)
	}
	for _, s := range m.shards {
		s.meta["step"] = "7"
	}
	if err := c.SetIndexMetadata(map[string]json.RawMessage{"format": json.RawMessage(`"pt"`), "note": json.RawMessage(`{"by": "test"}`)}); err != nil {
		t.Fatal(err)
	}
	m.indexMeta["note"] = json.RawMessage(`{"by": "test"}`)
}

func TestShardedLayout(t *testing.T) {
	t.Parallel()
	m := shDefault()
	dir := shFiles(t, m)
	c := ckOpen(t, dir, Options{})
	shLayout(t, c, m)
	ckCheckState(t, c, m.union(), "after the layout changes")
	if err := c.Compact(); err != nil {
		t.Fatal(err)
	}
	shCheckFiles(t, dir, m, "after the Sync")
	ckCheckState(t, c, m.union(), "after the Sync")
	// A shard-particular metadata entry survives a change of the shared ones.
	if got := m.shards["model-00003-of-00003.safetensors"].meta["part"]; got != "3" {
		t.Fatalf("model lost part: %q", got)
	}
	// Edits go on in place on the new files.
	p := ctPattern(42, 100)
	if err := c.WriteAt(ckID(t, c, "blocks.0.w"), p, 10); err != nil {
		t.Fatal(err)
	}
	m.shards["model-00001-of-00003.safetensors"].write("blocks.0.w", p, 10)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	shCheckFiles(t, dir, m, "after Close")
	c = ckOpen(t, filepath.Join(dir, shIndexName), Options{ReadOnly: true})
	ckCheckState(t, c, m.union(), "reopened")
	c.Close()
	if s := shSideFiles(t, dir); len(s) != 0 {
		t.Errorf("left behind: %v", s)
	}
}

// A shard that loses its last tensor stays a valid (empty) safetensors file
// and leaves the index's weight_map.
func TestShardedEmptiedShard(t *testing.T) {
	t.Parallel()
	m := shDefault()
	dir := shFiles(t, m)
	c := ckOpen(t, dir, Options{})
	s3 := m.shards["model-00003-of-00003.safetensors"]
	for k := range s3.tensors {
		if err := c.Delete(ckID(t, c, k)); err != nil {
			t.Fatal(err)
		}
		delete(s3.tensors, k)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	shCheckFiles(t, dir, m, "after emptying a shard")
}

// After a write-back that empties a shard (the index no longer names it),
// an edit is logged and the mount crashes: the next open replays the log
// over the files it was written for, the emptied shard included.
func TestShardedEmptiedShardThenCrash(t *testing.T) {
	t.Parallel()
	m := shDefault()
	dir := shFiles(t, m)
	c := ckOpen(t, dir, Options{})
	s3 := m.shards["model-00003-of-00003.safetensors"]
	for k := range s3.tensors {
		if err := c.Delete(ckID(t, c, k)); err != nil {
			t.Fatal(err)
		}
		delete(s3.tensors, k)
	}
	if err := c.Compact(); err != nil {
		t.Fatal(err)
	}
	p := ctPattern(70, 40)
	if err := c.WriteAt(ckID(t, c, "layers.0.b"), p, 0); err != nil {
		t.Fatal(err)
	}
	m.shards["model-00001-of-00003.safetensors"].write("layers.0.b", p, 0)
	if _, err := c.Put("layers.1.late", safetensors.U8, []uint64{3}, []byte("new")); err != nil {
		t.Fatal(err)
	}
	m.shards["model-00002-of-00003.safetensors"].tensors["layers.1.late"] = ckTensor{safetensors.U8, []uint64{3}, []byte("new")}
	if err := c.Sync(); err != nil { // acknowledged
		t.Fatal(err)
	}
	ckAbandon(c)
	c = ckOpen(t, dir, Options{})
	ckCheckState(t, c, m.union(), "recovered after emptying a shard")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	shCheckFiles(t, dir, m, "recovered after emptying a shard")
	if s := shSideFiles(t, dir); len(s) != 0 {
		t.Errorf("left behind: %v", s)
	}
}

// shSideFiles lists what was left next to the set that should not be.
func shSideFiles(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if n == shIndexName || strings.HasSuffix(n, ".safetensors") && !strings.Contains(n, "safejaxfs") {
			continue
		}
		out = append(out, n)
	}
	return out
}

// shScenario is a multi-file change: layout changes in every shard and
// the index, plus byte edits.
func shScenario(t testing.TB, c *Checkpoint, m *shModel) {
	p := ctPattern(43, 3000)
	if err := c.WriteAt(ckID(t, c, "embed"), p, 65_000); err != nil {
		t.Fatal(err)
	}
	m.shards["model-00001-of-00003.safetensors"].write("embed", p, 65_000)
	shLayout(t, c, m)
}

func shPoints(t *testing.T) []struct {
	point string
	nth   int
} {
	m := shDefault()
	c := ckOpen(t, shFiles(t, m), Options{})
	defer c.Close()
	shScenario(t, c, m)
	rec := &ckRecorder{}
	c.hooks = rec.hooks()
	if err := c.Compact(); err != nil {
		t.Fatal(err)
	}
	var out []struct {
		point string
		nth   int
	}
	seen := map[string]int{}
	for _, p := range rec.take() {
		seen[p]++
		out = append(out, struct {
			point string
			nth   int
		}{p, seen[p]})
	}
	for _, want := range []string{"tmp-written", "tmp-synced", "log-synced", "renamed", "compacted"} {
		if seen[want] == 0 {
			t.Errorf("the multi-file commit never passed %s: %v", want, out)
		}
	}
	if seen["renamed"] != 4 {
		t.Errorf("%d renames, want 4 (three shards and the index)", seen["renamed"])
	}
	return out
}

// A crash at every point of a multi-file commit: the next read-write open
// leaves every file old or every file new, never a mix, and once one point
// leaves the new state every later one does. A read-only open refuses a
// set with a commit under way.
func TestShardedCrashAtEveryPoint(t *testing.T) {
	t.Parallel()
	sawNew := false
	points := shPoints(t)
	for i, cp := range points {
		if !race.Sample(i, len(points)) {
			continue
		}
		name := fmt.Sprintf("%s#%d", cp.point, cp.nth)
		t.Run(name, func(t *testing.T) {
			m := shDefault()
			dir := shFiles(t, m)
			old := m.clone()
			c := ckOpen(t, dir, Options{})
			shScenario(t, c, m)
			c.hooks = ckCrashAt(cp.point, cp.nth)
			if err := c.Compact(); !errors.Is(err, errCkCrash) {
				t.Fatalf("Sync returned %v, want the simulated crash", err)
			}
			ckAbandon(c)
			if _, pending := Pending(dir); pending {
				if ro, err := Open(dir, Options{ReadOnly: true}); err == nil {
					ro.Close()
					t.Error("a read-only open accepted a set with a commit under way")
				}
			}
			c = ckOpen(t, dir, Options{})
			state := shState(t, dir, old, m)
			switch state {
			case "new":
				sawNew = true
				ckCheckState(t, c, m.union(), "reopened")
			case "old":
				if sawNew {
					t.Errorf("a crash at %s left the old state after an earlier point left the new one", name)
				}
				// The byte edit was never acknowledged either; the old
				// bytes are all there.
				ckCheckState(t, c, old.union(), "reopened")
			default:
				c.Close()
				t.Fatalf("a crash at %s left a mix of old and new files", name)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if s := shSideFiles(t, dir); len(s) != 0 {
				t.Errorf("left behind: %v", s)
			}
		})
	}
	if !sawNew {
		t.Error("no crash point left the new state")
	}
}

// Someone replaces a shard while the set is mounted: the edits go to a
// recovery directory that is a complete set, theirs is not overwritten.
func TestShardedChangedByOthers(t *testing.T) {
	t.Parallel()
	m := shDefault()
	dir := shFiles(t, m)
	c := ckOpen(t, dir, Options{})
	defer c.Close()
	shLayout(t, c, m)
	theirs := []byte("their file")
	s2 := filepath.Join(dir, "model-00002-of-00003.safetensors")
	tmp := s2 + ".new"
	os.WriteFile(tmp, theirs, 0o644)
	if err := os.Rename(tmp, s2); err != nil {
		t.Fatal(err)
	}
	err := c.Compact()
	if !errors.Is(err, ErrChanged) {
		t.Fatalf("Sync: %v, want ErrChanged", err)
	}
	if got, _ := os.ReadFile(s2); !bytes.Equal(got, theirs) {
		t.Fatal("their file was overwritten")
	}
	named := regexp.MustCompile(`your edits are in (\S+?)(;|$)`).FindStringSubmatch(err.Error())
	if named == nil {
		t.Fatalf("the error names no recovery directory: %v", err)
	}
	shCheckFiles(t, named[1], m, "the recovery directory")
}
