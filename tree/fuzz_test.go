package tree

import (
	"slices"
	"strings"
	"testing"
)

// FuzzBuild: any keys (NUL-separated in the input) and any separator give a
// well-formed tree with every key once, independent of key order.
func FuzzBuild(f *testing.F) {
	f.Add("params.Dense_0.kernel\x00x.weight\x00x.weight.absmax", ".")
	f.Add("a..b\x00.a\x00a.\x00.\x00..\x00\x00...\x00a.b\x00a/b", ".")
	f.Add("res_net50/~/initial_conv.w\x00a::b", "::")
	f.Add("__metadata__.x\x00%2E\x00.\x00%", "/~/")
	f.Fuzz(func(t *testing.T, joined, sep string) {
		if strings.IndexByte(sep, 0) >= 0 {
			return // refused as Options, tested elsewhere
		}
		keys := strings.Split(joined, "\x00")
		opt := Options{Sep: sep, Reserved: []string{"__metadata__", "%"}}
		tr := mustBuild(t, keys, opt)
		files := tr.Files()
		if len(files) != len(keys) {
			t.Fatalf("%d files for %d keys", len(files), len(keys))
		}
		for _, fl := range files {
			if keys[fl.Tensor] != fl.Key {
				t.Fatalf("file %q: Tensor %d is not key %q", fl.Path(), fl.Tensor, fl.Key)
			}
		}
		rev := slices.Clone(keys)
		slices.Reverse(rev)
		if a, b := shape(tr), shape(mustBuild(t, rev, opt)); a != b {
			t.Fatalf("reversed keys give another tree:\n%s\nvs\n%s", a, b)
		}
	})
}
