package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Sharded checkpoints through a real mount: one tree over every shard,
// byte-exact; edits across shards leave a set the reference format accepts;
// inconsistent sets are refused before anything is mounted.

const indexName = "model.safetensors.index.json"

func shardName(i, n int) string { return fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, n) }

// writeShardedSet writes parts[i] as shard i (with metadata meta) and the
// index transformers would write, in a fresh directory it returns.
func writeShardedSet(t testing.TB, meta map[string]string, parts ...[]genTensor) string {
	t.Helper()
	dir := t.TempDir()
	wm := map[string]string{}
	total := 0
	for i, part := range parts {
		name := shardName(i, len(parts))
		if err := os.WriteFile(filepath.Join(dir, name), canonical(t, meta, part...), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, g := range part {
			wm[g.key] = name
			total += len(g.data)
		}
	}
	idx := &safetensors.Index{WeightMap: wm, Metadata: map[string]json.RawMessage{"total_size": json.RawMessage(fmt.Sprint(total))}}
	b, err := idx.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, indexName), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// checkIndex parses the set's index with encoding/json and checks it
// against the shards' headers (owner: key -> shard path, entries: key ->
// header entry): every key listed, in its shard, nothing else, and
// total_size the sum of the tensors' sizes.
func checkIndex(t testing.TB, dir string, owner map[string]string, entries map[string]rawEntry) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, indexName))
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Metadata  map[string]any    `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatalf("the index is not JSON: %v", err)
	}
	var total uint64
	for k, f := range owner {
		if got := idx.WeightMap[k]; got != filepath.Base(f) {
			t.Fatalf("the index puts %q in %q, it is in %s", k, got, filepath.Base(f))
		}
		total += entries[k].Offsets[1] - entries[k].Offsets[0]
	}
	if len(idx.WeightMap) != len(owner) {
		t.Fatalf("the index lists %d keys, the shards hold %d", len(idx.WeightMap), len(owner))
	}
	if got, ok := idx.Metadata["total_size"].(float64); !ok || uint64(got) != total {
		t.Fatalf("total_size %v, the tensors hold %d bytes", idx.Metadata["total_size"], total)
	}
}

// defaultSet is three shards of transformers-style keys; layer 0 spans the
// first two shards.
func defaultSet(t testing.TB) (string, [][]genTensor) {
	parts := [][]genTensor{
		{f32("model.embed_tokens.weight", 1, 16, 8), f32("model.layers.0.self_attn.q_proj.weight", 100, 8, 8)},
		{f32("model.layers.0.mlp.up_proj.weight", 200, 8, 4), raw("model.layers.0.input_layernorm.weight", safetensors.BF16, ctBytes(3, 16), 8),
			f32("model.layers.1.self_attn.q_proj.weight", 300, 8, 8)},
		{f32("model.norm.weight", 400, 8), raw("lm_head.weight", safetensors.F16, ctBytes(4, 256), 16, 8)},
	}
	return writeShardedSet(t, map[string]string{"format": "pt"}, parts...), parts
}

func TestShardedMountShowsEveryTensor(t *testing.T) {
	if !isolated(t) {
		return
	}
	dir, parts := defaultSet(t)
	for _, src := range []string{dir, filepath.Join(dir, indexName)} {
		mnt := mount(t, src, "--read-only")
		n := 0
		for i, part := range parts {
			for _, g := range part {
				p := filepath.Join(mnt, strings.ReplaceAll(g.key, ".", "/"))
				got, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, g.data) {
					t.Errorf("%s: bytes differ", g.key)
				}
				if s := getxattr(t, p, "user.safetensors.shard"); s != shardName(i, len(parts)) {
					t.Errorf("%s: shard %q, want %q", g.key, s, shardName(i, len(parts)))
				}
				n++
			}
		}
		if files := walkFiles(t, mnt); len(files) != n+2 {
			t.Errorf("%d files (%v), want %d tensors and two metadata files", len(files), files, n)
		}
		if b, _ := os.ReadFile(filepath.Join(mnt, "__metadata__")); string(b) != "{\"format\":\"pt\"}\n" {
			t.Errorf("__metadata__ = %q", b)
		}
		var im map[string]any
		b, _ := os.ReadFile(filepath.Join(mnt, "__index_metadata__"))
		if err := json.Unmarshal(b, &im); err != nil || im["total_size"] == nil {
			t.Errorf("__index_metadata__ = %q", b)
		}
		unmountOK(t, mnt)
	}
}

func TestShardedLsAndVerify(t *testing.T) {
	t.Parallel()
	dir, _ := defaultSet(t)
	r := cli(t, "verify", dir)
	if r.code != 0 || !strings.Contains(r.stdout, "3 shards, 7 tensors") {
		t.Errorf("verify: %d %q %q", r.code, r.stdout, r.stderr)
	}
	r = cli(t, "ls", "--json", dir, "model/layers/0")
	var got []struct{ Key, Shard string }
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got) != 3 {
		t.Fatalf("ls --json: %v %q %q", err, r.stdout, r.stderr)
	}
	for _, g := range got {
		if want := map[bool]string{true: shardName(0, 3), false: shardName(1, 3)}[strings.Contains(g.Key, "q_proj")]; g.Shard != want {
			t.Errorf("%s in %s, want %s", g.Key, g.Shard, want)
		}
	}
	if r := cli(t, "ls", filepath.Join(dir, indexName)); r.code != 0 || !strings.Contains(r.stdout, shardName(2, 3)) {
		t.Errorf("ls of the index: %d %q", r.code, r.stdout)
	}
}

// Each broken rule is refused by mount (nothing mounted) and verify, with
// a message naming the file and key.
func TestShardedRefusals(t *testing.T) {
	if !isolated(t) {
		return
	}
	cases := []struct {
		name   string
		break_ func(dir string)
		says   []string
	}{
		{"missing shard", func(dir string) { os.Remove(filepath.Join(dir, shardName(1, 3))) }, []string{shardName(1, 3), "missing"}},
		{"key not in the index", func(dir string) {
			os.WriteFile(filepath.Join(dir, shardName(2, 3)), canonical(t, nil, f32("stray.w", 1, 2)), 0o644)
		}, []string{"stray.w", "not listed"}},
		{"index not JSON", func(dir string) { os.WriteFile(filepath.Join(dir, indexName), []byte("{"), 0o644) }, []string{indexName}},
		{"shard escapes", func(dir string) {
			os.WriteFile(filepath.Join(dir, indexName), []byte(`{"weight_map": {"a": "../x.safetensors"}}`), 0o644)
		}, []string{"escapes", `"a"`}},
		{"ambiguous directory", func(dir string) {
			os.WriteFile(filepath.Join(dir, "other.safetensors.index.json"), []byte(`{"weight_map": {}}`), 0o644)
		}, []string{"2 safetensors indexes", "other.safetensors.index.json"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, _ := defaultSet(t)
			c.break_(dir)
			mnt := newMountpoint(t)
			r := cli(t, "mount", dir, mnt)
			if mounted(t, mnt) {
				forceUnmount(t, mnt)
				t.Fatal("an invalid set was mounted")
			}
			for _, out := range []result{r, cli(t, "verify", dir)} {
				if out.code != exitInvalid {
					t.Errorf("exit %d, want %d: %s", out.code, exitInvalid, out.stderr)
				}
				for _, w := range c.says {
					if !strings.Contains(out.stderr, w) {
						t.Errorf("%q does not say %q", out.stderr, w)
					}
				}
			}
		})
	}
}

// Edits across shards: an in-place memmap edit, a new tensor beside its
// siblings, a removal, a move of a subtree spanning two shards, metadata
// of both kinds. After unmount every shard and the index agree, checked
// with encoding/json and numpy, not our parser.
func TestShardedWrites(t *testing.T) {
	if !isolated(t) {
		return
	}
	dir, _ := defaultSet(t)
	mnt := mount(t, dir)
	runPython(t, `
import numpy as np, os, sys
m = sys.argv[1]
k = np.memmap(m + '/model/layers/1/self_attn/q_proj/weight', dtype='<f4', mode='r+', shape=(8, 8))
k[0, :] = -1; k.flush(); del k
os.makedirs(m + '/model/layers/1/self_attn/k_proj')
np.save(m + '/model/layers/1/self_attn/k_proj/weight.npy', np.arange(12, dtype=np.int16).reshape(3, 4))
`, mnt)
	if err := os.Remove(filepath.Join(mnt, "model/norm/weight")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(mnt, "model/layers/0"), filepath.Join(mnt, "model/layers/zero")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "__metadata__"), []byte(`{"format": "pt", "step": "9"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "__index_metadata__"), []byte(`{"total_size": 1, "note": "patched"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if s := getxattr(t, filepath.Join(mnt, "model/layers/1/self_attn/k_proj/weight"), "user.safetensors.shard"); s != shardName(1, 3) {
		t.Errorf("the new tensor went to %s, want its siblings' shard %s", s, shardName(1, 3))
	}
	unmountOK(t, mnt)

	owner, entries := map[string]string{}, map[string]rawEntry{}
	for i := range 3 {
		p := filepath.Join(dir, shardName(i, 3))
		e, meta, _ := rawHeader(t, p)
		if meta["step"] != "9" || meta["format"] != "pt" {
			t.Errorf("%s metadata %v", p, meta)
		}
		for k, v := range e {
			owner[k], entries[k] = p, v
		}
	}
	checkIndex(t, dir, owner, entries)
	for _, k := range []string{"model.layers.zero.self_attn.q_proj.weight", "model.layers.zero.mlp.up_proj.weight", "model.layers.1.self_attn.k_proj.weight"} {
		if _, ok := entries[k]; !ok {
			t.Errorf("%s missing after unmount", k)
		}
	}
	if _, ok := entries["model.norm.weight"]; ok {
		t.Error("model.norm.weight survived its rm")
	}
	b, _ := os.ReadFile(filepath.Join(dir, indexName))
	if !strings.Contains(string(b), `"note": "patched"`) {
		t.Errorf("index metadata lost: %s", b)
	}
	// numpy reads what was written, from the shard the index names.
	out := runPython(t, `
import json, struct, sys, numpy as np
d = sys.argv[1]
idx = json.load(open(d + '/model.safetensors.index.json'))
def load(key):
    f = open(d + '/' + idx['weight_map'][key], 'rb').read()
    n = struct.unpack('<Q', f[:8])[0]
    e = json.loads(f[8:8+n])[key]
    a, b = e['data_offsets']
    return np.frombuffer(f[8+n+a:8+n+b], dtype={'F32': '<f4', 'I16': '<i2'}[e['dtype']]).reshape(e['shape'])
print(load('model.layers.1.self_attn.q_proj.weight')[0].tolist(), load('model.layers.1.self_attn.k_proj.weight').tolist())
`, dir)
	if want := "[-1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0] [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]"; out != want {
		t.Errorf("numpy read %s, want %s", out, want)
	}
	if r := cli(t, "verify", dir); r.code != 0 {
		t.Errorf("verify after the edits: %s", r.stderr)
	}
}
