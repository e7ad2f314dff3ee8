package formats

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"

	"github.com/safejaxfs/safejaxfs/safetensors/formats/ggml"
)

// Decoder converts a type safetensors has no dtype for (a GGUF quantized
// type) to float32: BlockElems elements from each BlockBytes bytes.
type Decoder struct {
	Type       string
	BlockElems int
	BlockBytes int
	decode     ggml.Dequantizer
}

// DecoderFor returns the decoder of a foreign type, if there is one.
func DecoderFor(typ string) (*Decoder, bool) {
	fn, ok := ggml.Dequantizers[typ]
	if !ok {
		return nil, false
	}
	ti, _ := ggml.Info(typ)
	return &Decoder{Type: typ, BlockElems: ti.Elems, BlockBytes: ti.Bytes, decode: fn}, true
}

// Decode converts whole blocks of src into little-endian float32 bytes in
// dst (4 bytes per element) and returns the elements written. tmp, of at
// least as many elements, is scratch.
func (d *Decoder) Decode(dst []byte, src []byte, tmp []float32) int {
	blocks := len(src) / d.BlockBytes
	n := blocks * d.BlockElems
	d.decode(tmp[:n], src[:blocks*d.BlockBytes])
	for i, v := range tmp[:n] {
		binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(v))
	}
	return n
}

// Dequantize writes tensor i's values as little-endian float32, in chunks.
func (f *File) Dequantize(i int, d *Decoder, w io.Writer) error {
	t := &f.Tensors[i]
	src, err := f.Bytes(i)
	if err != nil {
		return err
	}
	if int64(len(src))%int64(d.BlockBytes) != 0 {
		return fmt.Errorf("tensor %q: %d bytes are not whole %s blocks", t.Key, len(src), d.Type)
	}
	const blocks = 4096
	tmp := make([]float32, blocks*d.BlockElems)
	out := make([]byte, 4*len(tmp))
	for len(src) > 0 {
		k := min(len(src), blocks*d.BlockBytes)
		n := d.Decode(out, src[:k], tmp)
		if _, err := w.Write(out[:4*n]); err != nil {
			return err
		}
		src = src[k:]
	}
	return nil
}
