package tree

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
)

// TestConventions shows what real naming schemes turn into. Every case lists
// the path each key must get.
func TestConventions(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 400)
	longName := strings.Repeat("x", 246) + "~" + hash8(long)
	reserved := Options{Reserved: []string{"__metadata__"}}
	tests := []struct {
		name string
		opt  Options
		want map[string]string // key -> path
	}{
		{"safejax/flax", Options{}, map[string]string{
			"params.Dense_0.kernel":        "params/Dense_0/kernel",
			"params.Dense_0.bias":          "params/Dense_0/bias",
			"batch_stats.BatchNorm_0.mean": "batch_stats/BatchNorm_0/mean",
			"batch_stats.BatchNorm_0.var":  "batch_stats/BatchNorm_0/var",
		}},
		{"haiku", Options{}, map[string]string{
			"res_net50/~/initial_conv.w":                              "res_net50/~/initial_conv/w",
			"res_net50/~/block_group_0/~/block_0/~/conv_0.w":          "res_net50/~/block_group_0/~/block_0/~/conv_0/w",
			"res_net50/~/block_group_0/~/block_0/~/batchnorm_0.scale": "res_net50/~/block_group_0/~/block_0/~/batchnorm_0/scale",
		}},
		{"haiku with Sep /~/", Options{Sep: "/~/"}, map[string]string{
			"res_net50/~/initial_conv.w":                     "res_net50/initial_conv.w",
			"res_net50/~/block_group_0/~/block_0/~/conv_0.w": "res_net50/block_group_0/block_0/conv_0.w",
		}},
		{"objax", Options{}, map[string]string{
			// Nothing special about brackets: only separators split.
			"(Sequential)[0](Linear).w::TrainVar": "(Sequential)[0](Linear)/w::TrainVar",
			"(Sequential)[0](Linear).b::TrainVar": "(Sequential)[0](Linear)/b::TrainVar",
			"(Sequential)[2](Linear).w::TrainVar": "(Sequential)[2](Linear)/w::TrainVar",
		}},
		{"transformers", Options{}, map[string]string{
			"model.embed_tokens.weight":              "model/embed_tokens/weight",
			"model.layers.0.self_attn.q_proj.weight": "model/layers/0/self_attn/q_proj/weight",
			"model.layers.10.mlp.gate_proj.weight":   "model/layers/10/mlp/gate_proj/weight",
			"model.layers.0.input_layernorm.weight":  "model/layers/0/input_layernorm/weight",
			"lm_head.weight":                         "lm_head/weight",
		}},
		{"tf/keras", Options{}, map[string]string{
			"dense/kernel:0":                    "dense/kernel:0",
			"dense/bias:0":                      "dense/bias:0",
			"batch_normalization/moving_mean:0": "batch_normalization/moving_mean:0",
			"model/conv2d_1/kernel:0":           "model/conv2d_1/kernel:0",
		}},
		{"bitsandbytes 4-bit", Options{}, map[string]string{
			"x.weight":                               "x/weight",
			"x.weight.absmax":                        "x/weight.absmax",
			"x.weight.quant_map":                     "x/weight.quant_map",
			"x.weight.quant_state.bitsandbytes__nf4": "x/weight.quant_state/bitsandbytes__nf4",
			"x.bias":                                 "x/bias",
		}},
		{"prefix tensors chained", Options{}, map[string]string{
			"a":     "a",
			"a.b":   "a.b",
			"a.b.c": "a.b.c",
			"a/b/d": "a%2Fb%2Fd", // "a/b" is the same prefix as "a.b": a tensor
		}},
		{"prefix compared by segment path", Options{}, map[string]string{
			"m/w":        "m/w",
			"m.w.absmax": "m/w.absmax",
		}},
		{"unicode", Options{}, map[string]string{
			"模型.层.权重":  "模型/层/权重",
			"🤗.ω.ü":    "🤗/ω/ü",
			"emoji.😀😃": "emoji/😀😃",
		}},
		{"spaces", Options{}, map[string]string{
			"my layer.w 1": "my layer/w 1",
		}},
		{"empty segments", Options{}, map[string]string{
			"a..b":   "a..b",
			".a":     ".a",
			"a.":     "a.",
			".":      "%2E",
			"..":     "%2E%2E",
			"":       "%",
			"...":    "...",
			".c.d":   ".c/d",
			"c.d.":   "c/d.",
			"e//f":   "e%2F%2Ff",
			"/g":     "%2Fg",
			"h./i.j": "h.%2Fi/j",
		}},
		{"long segment", Options{}, map[string]string{
			"w." + long:       "w/" + longName,
			long + ".kernel":  longName + "/kernel",
			"w." + long + "!": "w/" + strings.Repeat("x", 246) + "~" + hash8(long+"!"),
		}},
		{"NUL", Options{}, map[string]string{
			"a\x00b.c": "a%00b/c",
			"\x00":     "%00",
		}},
		{"reserved root name", reserved, map[string]string{
			"__metadata__.x": "__metadata__~1/x",
			"a.__metadata__": "a/__metadata__", // only the root is affected
		}},
		{"reserved root name, suffix taken", reserved, map[string]string{
			"__metadata__.x":   "__metadata__~2/x", // ~1 is another entry's wanted name
			"__metadata__~1.y": "__metadata__~1/y",
		}},
		{"reserved root file", reserved, map[string]string{
			"__metadata__": "__metadata__~1",
		}},
		{"not reserved without option", Options{}, map[string]string{
			"__metadata__.x": "__metadata__/x",
		}},
		{"same segment path", Options{}, map[string]string{
			"a.b": "a/b", // '.' < '/': a.b claims first
			"a/b": "a/b~1",
		}},
		{"suffix skips wanted names", Options{}, map[string]string{
			"a.b":   "a/b",
			"a/b":   "a/b~2",
			"a.b~1": "a/b~1",
		}},
		{"escape look-alike", Options{}, map[string]string{
			"%2E":   "%2E", // "%2E" < "." in byte order
			".":     "%2E~1",
			"%":     "%~1",
			"":      "%",
			"50%.x": "50%/x",
		}},
		{"dir keeps its name over a file", Options{}, map[string]string{
			"%2E.x": "%2E/x",
			".":     "%2E~1",
		}},
		{"two dirs want one name", Options{}, map[string]string{
			"a%2F%2Fb.d": "a%2F%2Fb/d",   // dir Key "a%2F%2Fb" < "a//b" claims first
			"a//b.c":     "a%2F%2Fb~1/c", // dir Key "a//b"
		}},
		{"mixed separators share directories", Options{}, map[string]string{
			"a.b.c": "a/b/c",
			"a/b/d": "a/b/d",
		}},
		{"Sep /", Options{Sep: "/"}, map[string]string{
			"a.b/c": "a.b/c",
		}},
		{"multi-byte Sep", Options{Sep: "::"}, map[string]string{
			"a::b::c": "a/b/c",
			"a:::e":   "a/:e",
			"a::.x":   "a/.x",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keys := slices.Sorted(maps.Keys(tc.want))
			tr := mustBuild(t, keys, tc.opt)
			files := tr.Files()
			if len(files) != len(keys) {
				t.Fatalf("%d files for %d keys:\n%s", len(files), len(keys), layout(tr))
			}
			for _, f := range files {
				if keys[f.Tensor] != f.Key {
					t.Errorf("file %q: Tensor %d is key %q, Key is %q", f.Path(), f.Tensor, keys[f.Tensor], f.Key)
				}
				if want := tc.want[f.Key]; f.Path() != want {
					t.Errorf("key %q: path %q, want %q", f.Key, f.Path(), want)
				}
				if tr.Find(f.Path()) != f {
					t.Errorf("Find(%q) does not return the file", f.Path())
				}
			}
			if t.Failed() {
				t.Logf("tree:\n%s", layout(tr))
			}
		})
	}
}

// Directory Keys name the key prefix a directory stands for.
func TestDirKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		keys []string
		opt  Options
		want map[string]string // dir path -> Key
	}{
		{[]string{"params.Dense_0.kernel"}, Options{}, map[string]string{
			"params": "params", "params/Dense_0": "params.Dense_0"}},
		{[]string{"res_net50/~/initial_conv.w"}, Options{}, map[string]string{
			"res_net50": "res_net50", "res_net50/~": "res_net50/~", "res_net50/~/initial_conv": "res_net50/~/initial_conv"}},
		{[]string{"x.weight", "x.weight.quant_state.nf4"}, Options{}, map[string]string{
			"x": "x", "x/weight.quant_state": "x.weight.quant_state"}},
		{[]string{"__metadata__.x"}, Options{Reserved: []string{"__metadata__"}}, map[string]string{
			"__metadata__~1": "__metadata__"}},
		// Mixed separators: the first key (by segment path, then bytes) names
		// the directory; every Key extends its parent's.
		{[]string{"a/b/d", "a.b.c", "a/b.e.f"}, Options{}, map[string]string{
			"a": "a", "a/b": "a.b", "a/b/e": "a.b.e"}},
	}
	for _, tc := range tests {
		tr := mustBuild(t, tc.keys, tc.opt)
		for path, key := range tc.want {
			n := tr.Find(path)
			if n == nil || !n.IsDir() {
				t.Errorf("%q: no directory %q:\n%s", tc.keys, path, layout(tr))
				continue
			}
			if n.Key != key {
				t.Errorf("%q: directory %q has Key %q, want %q", tc.keys, path, n.Key, key)
			}
		}
	}
}

func TestDuplicateKeys(t *testing.T) {
	t.Parallel()
	keys := []string{"a.b", "a.b", "a.b", "c"}
	tr := mustBuild(t, keys, Options{})
	var got []string
	seen := map[int]bool{}
	for _, f := range tr.Files() {
		got = append(got, f.Path())
		seen[f.Tensor] = true
	}
	want := []string{"a/b", "a/b~1", "a/b~2", "c"}
	if !slices.Equal(got, want) || len(seen) != 4 {
		t.Errorf("paths %q (tensors %v), want %q", got, seen, want)
	}
}

// IDs: the root 0, each directory's children consecutive in name order,
// directories depth first in name order.
func TestIDs(t *testing.T) {
	t.Parallel()
	tr := mustBuild(t, []string{"b.y", "a", "b.x.z", "c.w", "b.x.v"}, Options{})
	want := []string{"", "a", "b", "c", "b/x", "b/y", "b/x/v", "b/x/z", "c/w"}
	for id, path := range want {
		n := tr.Find(path)
		if n == nil || n.ID != uint64(id) {
			t.Errorf("node %q: %+v, want ID %d", path, n, id)
		}
	}
	if tr.next != uint64(len(want)) {
		t.Errorf("next ID %d, want %d", tr.next, len(want))
	}
}

func TestBuildEmpty(t *testing.T) {
	t.Parallel()
	for _, keys := range [][]string{nil, {}} {
		tr := mustBuild(t, keys, Options{})
		if tr.Root.Len() != 0 || len(tr.Files()) != 0 || tr.Find("") != tr.Root {
			t.Errorf("Build(%v): not an empty root", keys)
		}
	}
}

func TestOptions(t *testing.T) {
	t.Parallel()
	bad := []Options{
		{Sep: "\x00"},
		{Sep: ".\x00"},
		{Reserved: []string{""}},
		{Reserved: []string{"a/b"}},
		{Reserved: []string{".."}},
	}
	for _, o := range bad {
		if _, err := Build([]string{"a"}, o); !errors.Is(err, ErrOptions) {
			t.Errorf("Build with %+v: err %v, want ErrOptions", o, err)
		}
	}
	tr := mustBuild(t, []string{"a.b"}, Options{})
	if tr.Sep() != "." {
		t.Errorf("default Sep %q", tr.Sep())
	}
	tr = mustBuild(t, []string{"a::b"}, Options{Sep: "::"})
	if tr.Sep() != "::" || tr.Find("a/b") == nil {
		t.Errorf("Sep :: not used: %q\n%s", tr.Sep(), layout(tr))
	}
	// The caller's Reserved slice is copied, not kept.
	res := []string{"x"}
	tr = mustBuild(t, nil, Options{Reserved: res})
	res[0] = "y"
	if _, err := tr.AddFile(tr.Root, "x", "x", 0); !errors.Is(err, ErrReserved) {
		t.Errorf("reserved name changed by the caller's slice: %v", err)
	}
}

func TestFind(t *testing.T) {
	t.Parallel()
	tr := mustBuild(t, []string{"a.b.c"}, Options{})
	for path, want := range map[string]string{
		"": "", "a": "a", "a/b/c": "a/b/c", "/a/b/": "a/b", "a//b": "a/b",
	} {
		if n := tr.Find(path); n == nil || n.Path() != want {
			t.Errorf("Find(%q) = %v, want %q", path, n, want)
		}
	}
	for _, path := range []string{"b", "a/c", "a/b/c/d"} {
		if n := tr.Find(path); n != nil {
			t.Errorf("Find(%q) = %q, want nil", path, n.Path())
		}
	}
}

func TestChildrenIsFresh(t *testing.T) {
	t.Parallel()
	tr := mustBuild(t, []string{"a", "b"}, Options{})
	c := tr.Root.Children()
	c[0] = nil
	if tr.Root.Children()[0] == nil {
		t.Fatal("Children returned the internal slice")
	}
}

// A key with very many segments must not overflow the stack.
func TestDeepKey(t *testing.T) {
	t.Parallel()
	key := strings.Repeat("a.", 100000) + "w"
	tr := mustBuild(t, []string{key, "a.b"}, Options{})
	f := tr.Files() // sorted by key: the deep one first
	if len(f) != 2 || strings.Count(f[0].Path(), "/") != 100000 || f[1].Path() != "a/b" {
		t.Fatalf("got %d files", len(f))
	}
}
