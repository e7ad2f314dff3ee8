package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// deepseekShape sizes the DeepSeek-V3-shaped set of section 6: the real
// checkpoint has 61 layers of 256 routed experts with three FP8 projections
// each (an F8_E4M3 weight plus its F32 weight_scale_inv), spread over 163
// shards. Tensor shapes are tiny: the section measures the namespace, not
// the bytes.
type deepseekShape struct {
	layers, experts, shards int
}

// deepseekSet is the generated set: the shards with their index, and the
// same tensors in one file (what can be measured before sharded mounts
// exist).
type deepseekSet struct {
	dir     string // the shards and model.safetensors.index.json
	index   string
	single  string // every tensor in one file
	tensors int
	shards  []string // shard file names, in order
}

// deepseekSources lists the tensors in the order they are spread over the
// shards (embeddings first, then layer by layer, the head last), with real
// DeepSeek-V3 names.
func deepseekSources(s deepseekShape) []safetensors.Source {
	var src []safetensors.Source
	seed := uint64(1000)
	add := func(key string, dt safetensors.DType, shape ...uint64) {
		seed++
		src = append(src, safetensors.Source{Key: key, DType: dt, Shape: shape, Data: noise{seed}})
	}
	fp8 := func(key string) {
		add(key+".weight", safetensors.F8_E4M3, 4, 4)
		add(key+".weight_scale_inv", safetensors.F32, 1, 1)
	}
	add("model.embed_tokens.weight", safetensors.BF16, 4, 4)
	for l := range s.layers {
		p := fmt.Sprintf("model.layers.%d.", l)
		add(p+"input_layernorm.weight", safetensors.BF16, 4)
		add(p+"post_attention_layernorm.weight", safetensors.BF16, 4)
		for _, a := range []string{"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"} {
			fp8(p + "self_attn." + a)
		}
		add(p+"self_attn.q_a_layernorm.weight", safetensors.BF16, 4)
		add(p+"self_attn.kv_a_layernorm.weight", safetensors.BF16, 4)
		for e := range s.experts {
			for _, proj := range []string{"gate_proj", "up_proj", "down_proj"} {
				fp8(fmt.Sprintf("%smlp.experts.%d.%s", p, e, proj))
			}
		}
	}
	add("model.norm.weight", safetensors.BF16, 4)
	add("lm_head.weight", safetensors.BF16, 4, 4)
	return src
}

// generateDeepseek writes the shards (contiguous runs of the tensor list,
// as save_pretrained makes them), the Hugging Face index, and the
// single-file variant, all with the project's own writer.
func (b *bench) generateDeepseek() error {
	s := b.cfg.deepseek
	src := deepseekSources(s)
	ds := &deepseekSet{
		dir:     filepath.Join(b.work, "deepseek"),
		single:  filepath.Join(b.work, "deepseek.safetensors"),
		tensors: len(src),
	}
	if err := os.MkdirAll(ds.dir, 0o755); err != nil {
		return err
	}
	type index struct {
		Metadata  map[string]any    `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	idx := index{WeightMap: make(map[string]string, len(src))}
	var total int64
	per := (len(src) + s.shards - 1) / s.shards
	for i := range s.shards {
		lo, hi := min(i*per, len(src)), min((i+1)*per, len(src))
		// DeepSeek-V3's own names: five digits, then six for the count.
		name := fmt.Sprintf("model-%05d-of-%06d.safetensors", i+1, s.shards)
		for _, t := range src[lo:hi] {
			idx.WeightMap[t.Key] = name
			n, err := safetensors.ByteSize(t.DType, t.Shape)
			if err != nil {
				return err
			}
			total += int64(n)
		}
		if err := writeCheckpoint(filepath.Join(ds.dir, name), src[lo:hi], map[string]string{"format": "pt"}); err != nil {
			return err
		}
		ds.shards = append(ds.shards, name)
	}
	idx.Metadata = map[string]any{"total_size": total}
	js, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return err
	}
	ds.index = filepath.Join(ds.dir, "model.safetensors.index.json")
	if err := os.WriteFile(ds.index, append(js, '\n'), 0o644); err != nil {
		return err
	}
	if err := writeCheckpoint(ds.single, src, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	b.deepseek = ds
	return nil
}
