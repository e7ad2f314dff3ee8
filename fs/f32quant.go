package fs

import (
	"context"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/formats"
	"github.com/safejaxfs/safejaxfs/safetensors/npy"
)

// The float32 view of a GGUF tensor of a quantized type (Q4_K, Q8_0, ...):
// a .npy of float32 of the tensor's logical shape, the blocks dequantized
// on the fly as llama.cpp's dequantize_row_* does. Read-only, as the
// checkpoint is.

// quantView is the decoder of tensor id's type and its logical shape;
// nil when it has none (not a foreign type, or one with no decoder).
func (f *FS) quantView(id checkpoint.ID) (*formats.Decoder, []uint64) {
	t, ok := f.ck.Foreign(id)
	if !ok || !t.Foreign() {
		return nil, nil
	}
	d, ok := formats.DecoderFor(t.Type)
	if !ok {
		return nil, nil
	}
	return d, t.TypeShape
}

// quantF32View is f32View for a quantized tensor.
func (f *FS) quantF32View(id checkpoint.ID, info checkpoint.Info, d *formats.Decoder, shape []uint64) ([]byte, checkpoint.Info, int64) {
	h, err := npy.Header("F32", shape)
	if err != nil {
		return nil, info, 0
	}
	return h, info, info.Size / int64(d.BlockBytes) * int64(d.BlockElems)
}

// readQuantF32 is readF32 for a quantized tensor: whole blocks are read
// and dequantized, the bytes asked for copied out.
func (f *FS) readQuantF32(ctx context.Context, id checkpoint.ID, d *formats.Decoder, dst []byte, off int64) (int, error) {
	info, ok := f.ck.Attr(id)
	if !ok {
		return 0, nil
	}
	be, bb := int64(d.BlockElems), int64(d.BlockBytes)
	elems := info.Size / bb * be
	e0 := off / 4 / be * be
	e1 := min((off+int64(len(dst))+3)/4, elems)
	e1 = min((e1+be-1)/be*be, elems)
	done := 0
	step := max(f32Step/be, 1) * be
	tmp := make([]float32, step)
	conv := make([]byte, 4*step)
	for e0 < e1 && done < len(dst) {
		n := min(e1-e0, step)
		src, release, err := f.packed(ctx, id, e0/be*bb, int(n/be*bb))
		if err != nil {
			return done, err
		}
		got := int64(d.Decode(conv, src, tmp))
		release()
		if got == 0 {
			break
		}
		skip := max(off-4*e0, 0)
		done += copy(dst[done:], conv[skip:4*got])
		e0 += got
	}
	return done, nil
}
