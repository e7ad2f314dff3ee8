package floats

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

func benchData(d safetensors.DType, n int) []byte {
	r := rand.New(rand.NewPCG(5, 6))
	b := make([]byte, n*d.Bits()/8)
	if d == safetensors.F32 {
		for i := range n {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(float32(r.NormFloat64())))
		}
		return b
	}
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

const benchElems = 1 << 20

func BenchmarkDecodeLE(b *testing.B) {
	for _, d := range []safetensors.DType{safetensors.BF16, safetensors.F16, safetensors.F8_E4M3, safetensors.F4, safetensors.F6_E3M2} {
		b.Run(d.String(), func(b *testing.B) {
			src, dst := benchData(d, benchElems), make([]byte, 4*benchElems)
			b.SetBytes(int64(len(dst)))
			for b.Loop() {
				DecodeLE(d, dst, src)
			}
		})
	}
}

func BenchmarkEncodeLE(b *testing.B) {
	for _, d := range []safetensors.DType{safetensors.BF16, safetensors.F16, safetensors.F8_E4M3, safetensors.F4} {
		b.Run(d.String(), func(b *testing.B) {
			src, dst := benchData(safetensors.F32, benchElems), make([]byte, benchElems*d.Bits()/8)
			b.SetBytes(int64(len(src)))
			for b.Loop() {
				EncodeLE(d, dst, src)
			}
		})
	}
}

func BenchmarkStats(b *testing.B) {
	for _, d := range []safetensors.DType{safetensors.F32, safetensors.BF16, safetensors.I32} {
		b.Run(d.String(), func(b *testing.B) {
			src := benchData(d, benchElems)
			b.SetBytes(int64(len(src)))
			for b.Loop() {
				NewStats(d).Add(src)
			}
		})
	}
}
