package tree

import (
	"fmt"
	"math/rand"
	"slices"
	"testing"
)

// realKeys returns n keys shaped like a transformers checkpoint: per layer
// attention and MLP projections with weights and biases, layer norms, and a
// few top-level tensors; bitsandbytes-style quantization state on some so
// that rule 2 is exercised too.
func realKeys(n int) []string {
	per := []string{
		"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
		"self_attn.o_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.bias",
		"mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
		"mlp.down_proj.weight.absmax", "mlp.down_proj.weight.quant_map",
		"mlp.down_proj.weight.quant_state.bitsandbytes__nf4",
		"input_layernorm.weight", "post_attention_layernorm.weight",
	}
	keys := []string{"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
	for layer := 0; len(keys) < n; layer++ {
		for _, p := range per {
			if len(keys) == n {
				break
			}
			keys = append(keys, fmt.Sprintf("model.layers.%d.%s", layer, p))
		}
	}
	return keys
}

// BenchmarkBuild builds trees from keys in byte order (the reference
// writer's order within a dtype, so what a parser that keeps header order
// sees), in the order realKeys makes them, and in random order (a parser
// that goes through a map; also scatters the keys' memory).
func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		made := realKeys(n)
		sorted := slices.Clone(made)
		slices.Sort(sorted)
		shuffled := slices.Clone(made)
		rand.New(rand.NewSource(1)).Shuffle(n, func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		for _, in := range []struct {
			name string
			keys []string
		}{{"sorted", sorted}, {"made", made}, {"shuffled", shuffled}} {
			b.Run(fmt.Sprintf("%d/%s", n, in.name), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := Build(in.keys, Options{Reserved: []string{"__metadata__"}}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkLookup resolves every file's path component by component, as a
// FUSE LOOKUP sequence would.
func BenchmarkLookup(b *testing.B) {
	tr, _ := Build(realKeys(100000), Options{})
	files := tr.Files()
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = f.Path()
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if tr.Find(paths[i%len(paths)]) == nil {
			b.Fatal("not found")
		}
	}
}
