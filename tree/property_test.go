package tree

import (
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"
)

// alphabets the random keys are made of. The adversarial ones are mostly
// separators and the characters the escaping and collision rules use.
var alphabets = []struct {
	name   string
	tokens []string
	sep    string
}{
	{"adversarial", []string{"a", "b", ".", "/", "%", "~"}, "."},
	{"escapes", []string{"a", ".", "/", "%", "2E", "2F", "00", "\x00", "~", "1"}, "."},
	{"multi-byte sep", []string{"a", "b", ":", "::", "/", "."}, "::"},
	{"slash sep", []string{"a", "b", ".", "/", "~"}, "/"},
	{"realistic", []string{"model", "layers", "0", "1", "10", "weight", "bias", ".", ".", ".", "/", "~", "模型", "🤗"}, "."},
	{"long", []string{"a", ".", strings.Repeat("x", 130), strings.Repeat("é", 70), "/"}, "."},
}

func randomKeys(r *rand.Rand, tokens []string, dups bool) []string {
	n := 1 + r.Intn(40)
	seen := map[string]bool{}
	var keys []string
	for len(keys) < n {
		var b strings.Builder
		for range r.Intn(9) {
			b.WriteString(tokens[r.Intn(len(tokens))])
		}
		k := b.String()
		if seen[k] && !dups {
			continue
		}
		seen[k] = true
		keys = append(keys, k)
		if dups && r.Intn(5) == 0 {
			keys = append(keys, k)
		}
	}
	return keys
}

// shape renders every node as ID, path, kind and key; for files the key
// stands in for Tensor, which differs between shuffled inputs.
func shape(tr *Tree) string {
	var b strings.Builder
	var walk func(n *Node)
	walk = func(n *Node) {
		fmt.Fprintf(&b, "%d %q dir=%v key=%q\n", n.ID, n.Path(), n.IsDir(), n.Key)
		for _, c := range n.Children() {
			walk(c)
		}
	}
	walk(tr.Root)
	return b.String()
}

func TestRandomKeySets(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewSource(1))
	for _, ab := range alphabets {
		for _, dups := range []bool{false, true} {
			for iter := range 400 {
				keys := randomKeys(r, ab.tokens, dups)
				opt := Options{Sep: ab.sep}
				if iter%3 == 0 {
					opt.Reserved = []string{"a", "%", "__metadata__"}
				}
				tr := mustBuild(t, keys, opt)
				ctx := fmt.Sprintf("%s dups=%v keys %q", ab.name, dups, keys)

				// Every key exactly once, as the tensor given.
				files := tr.Files()
				if len(files) != len(keys) {
					t.Fatalf("%s: %d files", ctx, len(files))
				}
				used := make([]bool, len(keys))
				for i, f := range files {
					if f.Tensor < 0 || f.Tensor >= len(keys) || used[f.Tensor] || keys[f.Tensor] != f.Key {
						t.Fatalf("%s: file %q has Tensor %d, Key %q", ctx, f.Path(), f.Tensor, f.Key)
					}
					used[f.Tensor] = true
					if i > 0 && files[i-1].Key > f.Key {
						t.Fatalf("%s: Files not sorted by Key", ctx)
					}
				}

				// Input order does not matter.
				shuffled := append([]string(nil), keys...)
				r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
				tr2 := mustBuild(t, shuffled, opt)
				if a, b := shape(tr), shape(tr2); a != b {
					t.Fatalf("%s: shuffled input gives another tree:\n%s\nvs\n%s", ctx, a, b)
				}
				for _, f := range tr2.Files() {
					if shuffled[f.Tensor] != f.Key {
						t.Fatalf("%s: shuffled: Tensor %d is not key %q", ctx, f.Tensor, f.Key)
					}
				}
			}
		}
	}
}

// Rule 2 in the large: no tensor's segment path is a directory.
func TestRandomNoTensorIsADirectory(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewSource(2))
	for range 2000 {
		keys := randomKeys(r, []string{"a", "b", ".", "/"}, false)
		tr := mustBuild(t, keys, Options{})
		for _, f := range tr.Files() {
			// Splitting the key's own text at the file's path boundaries
			// must never meet a directory whose Key is another tensor.
			for d := f.Parent; d != tr.Root; d = d.Parent {
				for _, k := range keys {
					if samePath(k, d.Key) {
						t.Fatalf("keys %q: tensor %q is the directory %q", keys, k, d.Path())
					}
				}
			}
		}
	}
}

// samePath compares keys by segment path (rule 1, Sep ".").
func samePath(a, b string) bool {
	return slices.Equal(segments(a, "."), segments(b, "."))
}

// The node bound prepare computes must hold, or Build falls back to small
// slabs: every node made comes out of the first slab.
func TestNodeBound(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewSource(6))
	for _, ab := range alphabets {
		for range 300 {
			keys := randomKeys(r, ab.tokens, true)
			opt, _ := Options{Sep: ab.sep}.normalize()
			b := &builder{t: &Tree{opt: opt}, keys: keys, sep: opt.Sep}
			b.prepare()
			bound := b.nodes
			b.run()
			if int(b.t.next) > bound || cap(b.slab) != bound {
				t.Fatalf("keys %q: %d nodes, bound %d, slab cap %d", keys, b.t.next, bound, cap(b.slab))
			}
		}
	}
}
