package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// noise is a tensor source of pseudo-random bytes that depend only on the
// seed and the offset: non-zero data, generated as fast as it is written,
// never held in memory.
type noise struct{ seed uint64 }

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func (n noise) ReadAt(p []byte, off int64) (int, error) {
	i := 0
	for i < len(p) {
		pos := uint64(off) + uint64(i)
		v := splitmix(n.seed ^ bits.RotateLeft64(pos/8, 17))
		if pos%8 == 0 && len(p)-i >= 8 {
			binary.LittleEndian.PutUint64(p[i:], v)
			i += 8
			continue
		}
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], v)
		i += copy(p[i:], w[pos%8:])
	}
	return len(p), nil
}

func fill(p []byte, seed uint64) { noise{seed}.ReadAt(p, 0) }

// writeCheckpoint writes sources with the project's own serializer and
// fsyncs, so later timings do not pay for this file's writeback.
func writeCheckpoint(path string, sources []safetensors.Source, meta map[string]string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := safetensors.Write(f, sources, meta); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// transformerKeys names n tensors like a transformers checkpoint, so the
// mounted tree has the usual depth and fan-out (model/layers/N/mlp/...).
func transformerKeys(n int) []string {
	per := []string{
		"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
		"self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
		"mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
		"mlp.down_proj.weight.absmax",
	}
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("model.layers.%d.%s", i/len(per), per[i%len(per)])
	}
	return keys
}

func (b *bench) generate() error {
	cfg := b.cfg
	// Sections 3 and 6 need none of the large files: --only 3,6 skips
	// writing them.
	if b.want("1") || b.want("2") || b.want("4") || b.want(filesSection) {
		if err := b.generateReads(); err != nil {
			return err
		}
	}

	// 3: header-dominated checkpoints: many tiny tensors.
	b.scalePaths = map[int]string{}
	for _, n := range cfg.mountSizes {
		if !b.want("3") {
			break
		}
		keys := transformerKeys(n)
		src := make([]safetensors.Source, n)
		for i, k := range keys {
			src[i] = safetensors.Source{Key: k, DType: safetensors.F32, Shape: []uint64{2, 2}, Data: noise{uint64(i)}}
		}
		p := filepath.Join(b.work, fmt.Sprintf("scale%d.safetensors", n))
		if err := writeCheckpoint(p, src, map[string]string{"format": "pt"}); err != nil {
			return err
		}
		b.scalePaths[n] = p
	}

	return nil
}

// generateReads writes the checkpoints of the read and edit sections.
func (b *bench) generateReads() error {
	cfg := b.cfg
	// 1: one large F32 tensor between small ones, so its bytes start at a
	// non-trivial offset.
	b.bigKey = "model.embed_tokens.weight"
	big := []safetensors.Source{
		{Key: b.bigKey, DType: safetensors.F32, Shape: []uint64{uint64(cfg.bigBytes / 4)}, Data: noise{1}},
		{Key: "model.norm.weight", DType: safetensors.F32, Shape: []uint64{4096}, Data: noise{2}},
		{Key: "lm_head.bias", DType: safetensors.F32, Shape: []uint64{1000}, Data: noise{3}},
		{Key: "model.layers.0.input_layernorm.weight", DType: safetensors.BF16, Shape: []uint64{4096}, Data: noise{4}},
	}
	b.bigPath = filepath.Join(b.work, "big.safetensors")
	if err := writeCheckpoint(b.bigPath, big, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	f, err := safetensors.Open(b.bigPath)
	if err != nil {
		return err
	}
	i, _ := f.Index(b.bigKey)
	b.bigOff = f.DataOffset() + int64(f.Tensors[i].Begin)
	f.Close()

	// 2: many middle-sized tensors for random reads.
	many := make([]safetensors.Source, cfg.manyTensors)
	for i := range many {
		many[i] = safetensors.Source{
			Key:   fmt.Sprintf("layers.%d.w%d", i/8, i%8),
			DType: safetensors.F32, Shape: []uint64{uint64(cfg.manyBytes / 4)},
			Data: noise{uint64(100 + i)},
		}
	}
	b.manyPath = filepath.Join(b.work, "many.safetensors")
	if err := writeCheckpoint(b.manyPath, many, nil); err != nil {
		return err
	}
	f, err = safetensors.Open(b.manyPath)
	if err != nil {
		return err
	}
	b.manyKeys = b.manyKeys[:0]
	b.manyOffs = b.manyOffs[:0]
	for _, t := range f.Tensors {
		b.manyKeys = append(b.manyKeys, t.Key)
		b.manyOffs = append(b.manyOffs, f.DataOffset()+int64(t.Begin))
	}
	f.Close()

	// Every row is defined with the checkpoint in the page cache.
	for _, p := range []string{b.bigPath, b.manyPath} {
		if err := warm(p); err != nil {
			return err
		}
	}
	return nil
}

// warm reads a file once so its pages are cached.
func warm(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(io.Discard, f)
	return err
}
