package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

func TestParseShardSize(t *testing.T) {
	for s, want := range map[string]int64{
		"5GB": 5_000_000_000, "500MB": 500_000_000, "1.5GB": 1_500_000_000, "2GiB": 2 << 30, "10MiB": 10 << 20,
		"64KiB": 64 << 10, "1000": 1000, "3kb": 3000, " 7 MB ": 7_000_000, "1TB": 1e12, "100B": 100,
	} {
		got, err := parseShardSize(s)
		if err != nil || got != want {
			t.Errorf("parseShardSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "GB", "five GB", "-1GB", "0", "5XB"} {
		if n, err := parseShardSize(s); err == nil {
			t.Errorf("parseShardSize(%q) = %d, want an error", s, n)
		}
	}
}

// TestSplitShards follows huggingface_hub's split_state_dict_into_shards
// on a case with a tensor larger than the limit and tied weights.
func TestSplitShards(t *testing.T) {
	src := func(key string, n uint64) safetensors.Source {
		return safetensors.Source{Key: key, DType: safetensors.U8, Shape: []uint64{n}}
	}
	srcs := []safetensors.Source{src("a", 40), src("b", 50), src("c", 30), src("huge", 500), src("d", 60), src("a_tied", 40), src("e", 10)}
	shards, total := splitShards(srcs, [][]string{{"a", "a_tied"}}, 100)
	got := [][]string{}
	for _, sh := range shards {
		var keys []string
		for _, i := range sh {
			keys = append(keys, srcs[i].Key)
		}
		got = append(got, keys)
	}
	// The hub closes a shard when the next tensor would pass the limit; a
	// tensor above the limit gets its own shard at once (before the open
	// one is closed), and a tied tensor joins its storage's shard.
	want := [][]string{{"a", "b", "a_tied"}, {"huge"}, {"c", "d", "e"}}
	if len(got) != len(want) {
		t.Fatalf("shards %v, want %v", got, want)
	}
	for i := range want {
		if strings.Join(got[i], ",") != strings.Join(want[i], ",") {
			t.Fatalf("shards %v, want %v", got, want)
		}
	}
	if total != 40+50+30+500+60+10 {
		t.Errorf("total %d", total)
	}
}

func TestConvertShardedAndSubtree(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	in := filepath.Join(refDir, "..", "flax_mlp.safetensors")
	single := filepath.Join(dir, "single.safetensors")
	cliOK(t, "convert", in, single)
	mustEqualFiles(t, single, in) // a canonical file converts to itself

	out := filepath.Join(dir, "set", "model.safetensors")
	os.Mkdir(filepath.Dir(out), 0o755)
	cliOK(t, "convert", "--max-shard-size", "200", in, out)
	b, err := os.ReadFile(out + ".index.json")
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Metadata  map[string]int64  `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if idx.Metadata["total_size"] != int64(f.DataSize()) || len(idx.WeightMap) != len(f.Tensors) {
		t.Errorf("index: total_size %d for %d bytes, %d keys for %d tensors", idx.Metadata["total_size"], f.DataSize(), len(idx.WeightMap), len(f.Tensors))
	}
	shards := map[string]bool{}
	for _, s := range idx.WeightMap {
		shards[s] = true
	}
	if len(shards) < 2 || !shards["model-00001-of-0000"+string(rune('0'+len(shards)))+".safetensors"] {
		t.Errorf("shard names %v", shards)
	}
	for s := range shards {
		sf, err := safetensors.Open(filepath.Join(dir, "set", s))
		if err != nil {
			t.Fatal(err)
		}
		if sf.DataSize() > 200 && len(sf.Tensors) > 1 {
			t.Errorf("shard %s holds %d bytes in %d tensors, above 200 bytes", s, sf.DataSize(), len(sf.Tensors))
		}
		sf.Close()
	}
	if r := cli(t, "diff", in, filepath.Dir(out)); r.code != 0 {
		t.Errorf("diff of the file and its sharded conversion: exit %d %s%s", r.code, r.stdout, r.stderr)
	}
	if r := cli(t, "convert", "--max-shard-size", "200", in, out); r.code != exitUsage || !strings.Contains(r.stderr, "--force") {
		t.Errorf("converting over existing shards: exit %d %s", r.code, r.stderr)
	}

	// A mount's subtree converts to what the same prefix of the file does.
	mnt := mount(t, in, "--read-only")
	var sub string
	entries, _ := os.ReadDir(mnt)
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") { // not the /.files/ view
			sub = e.Name()
			break
		}
	}
	if sub == "" {
		t.Fatal("the fixture has no directory")
	}
	fromMount := filepath.Join(dir, "mount.safetensors")
	fromFile := filepath.Join(dir, "prefix.safetensors")
	cliOK(t, "convert", filepath.Join(mnt, sub), fromMount)
	cliOK(t, "convert", in, fromFile, sub)
	// The mount's subtree has no metadata of its own; the prefix keeps
	// the file's: compare the tensors.
	if r := cli(t, "diff", fromMount, fromFile); r.code != 0 && !strings.Contains(r.stdout, "metadata") {
		t.Errorf("mount subtree and prefix conversions differ: %s%s", r.stdout, r.stderr)
	}
	whole := filepath.Join(dir, "whole.safetensors")
	cliOK(t, "convert", mnt, whole)
	mustEqualFiles(t, whole, in)
}

// convert's output gets the mode a new file would (0644 less the umask),
// read without changing the umask.
func TestConvertOutputMode(t *testing.T) {
	out := filepath.Join(t.TempDir(), "o.safetensors")
	in := filepath.Join(refDir, "..", "flax_mlp.safetensors")
	cmd := exec.Command("sh", "-c", `umask 027; exec "$0" "$@"`, os.Args[0], "convert", in, out)
	cmd.Env = append(os.Environ(), asCLIEnv+"=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("convert: %v\n%s", err, b)
	}
	st, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o640 {
		t.Errorf("mode %#o under umask 027, want 0640", st.Mode().Perm())
	}
}
