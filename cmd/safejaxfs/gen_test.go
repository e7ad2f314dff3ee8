package main

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// genTensor is a tensor for a generated checkpoint.
type genTensor struct {
	key   string
	dtype safetensors.DType
	shape []uint64
	data  []byte
}

// f32 makes an F32 tensor whose values are start, start+1, ...
func f32(key string, start float32, shape ...uint64) genTensor {
	n := uint64(1)
	for _, d := range shape {
		n *= d
	}
	b := make([]byte, 4*n)
	for i := range n {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(start+float32(i)))
	}
	if shape == nil {
		shape = []uint64{}
	}
	return genTensor{key, safetensors.F32, shape, b}
}

func raw(key string, d safetensors.DType, data []byte, shape ...uint64) genTensor {
	if shape == nil {
		shape = []uint64{}
	}
	return genTensor{key, d, shape, data}
}

// writeCheckpoint writes tensors through the canonical writer.
func writeCheckpoint(t testing.TB, name string, meta map[string]string, tensors ...genTensor) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	src := make([]safetensors.Source, len(tensors))
	for i, g := range tensors {
		src[i] = safetensors.Source{Key: g.key, DType: g.dtype, Shape: g.shape, Data: safetensors.Bytes(g.data)}
	}
	if _, err := safetensors.Write(f, src, meta); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// flaxModel is a small Flax-style checkpoint: params and batch_stats.
func flaxModel(t testing.TB) string {
	return writeCheckpoint(t, "flax.safetensors", flaxMeta, flaxTensors()...)
}

func flaxTensors() []genTensor {
	return []genTensor{
		f32("params.Dense_0.kernel", 0, 3, 16),
		f32("params.Dense_0.bias", 100, 16),
		f32("params.Dense_1.kernel", 200, 16, 4),
		f32("params.Dense_1.bias", 300, 4),
		f32("batch_stats.BatchNorm_0.mean", 400, 16),
		f32("batch_stats.BatchNorm_0.var", 500, 16),
		f32("step_scale", 7),
	}
}

var flaxMeta = map[string]string{"framework": "flax", "step": "1200"}
