package views

import (
	"context"
	"fmt"
	"sync"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/floats"
	"github.com/safejaxfs/safejaxfs/safetensors/formats"
	"github.com/safejaxfs/safejaxfs/safetensors/npy"
)

// HasF32 reports whether tensor id has a float32 view: its dtype converts
// (a float type, or a quantized GGUF type with a decoder).
func HasF32(ck *checkpoint.Checkpoint, id checkpoint.ID) bool {
	info, ok := ck.Info(id)
	if d, _ := quant(ck, id); d != nil {
		return ok
	}
	return ok && floats.Has(info.DType)
}

// F32 returns the float32 view's header, what it read of tensor id, and
// the view's number of elements; a nil header when the tensor is gone or
// its dtype (changed since) does not convert. The view is the header
// followed by 4 bytes per element.
func F32(ck *checkpoint.Checkpoint, id checkpoint.ID) ([]byte, checkpoint.Info, int64) {
	info, ok := ck.Attr(id) // a removed tensor a file still has open too
	if d, shape := quant(ck, id); ok && d != nil {
		h, err := npy.Header("F32", shape)
		if err != nil {
			return nil, info, 0
		}
		return h, info, info.Size / int64(d.BlockBytes) * int64(d.BlockElems)
	}
	if !ok || !floats.Has(info.DType) {
		return nil, info, 0
	}
	h, err := npy.Header("F32", info.Shape)
	if err != nil {
		return nil, info, 0
	}
	// Elements from the bytes, not the shape: the two differ only while a
	// rewrite of the raw file is under way.
	return h, info, info.Size * 8 / int64(info.DType.Bits())
}

// F32Bytes is the whole float32 view (for a read-write open); nil when
// there is none.
func F32Bytes(ck *checkpoint.Checkpoint, id checkpoint.ID) ([]byte, error) {
	h, _, n := F32(ck, id)
	if h == nil {
		return nil, nil
	}
	b := make([]byte, int64(len(h))+4*n)
	copy(b, h)
	k, err := ReadF32(context.Background(), ck, id, b[len(h):], 0)
	return b[:len(h)+k], err
}

// F32Changed maps a change of the tensor's bytes [off, off+n) to the part
// of its float32 view that changed: whole elements (whole groups of the
// sub-byte formats), 4 bytes each, after header h. n 0 (or no view) means
// all of it: 0, 0.
func F32Changed(h []byte, info checkpoint.Info, off, n int64) (int64, int64) {
	if h == nil || n <= 0 || !floats.Has(info.DType) {
		return 0, 0
	}
	bits, group := int64(info.DType.Bits()), int64(floats.Group(info.DType))
	e0 := off * 8 / bits / group * group
	e1 := ((off+n)*8/bits + group) / group * group
	return int64(len(h)) + 4*e0, 4 * (e1 - e0)
}

// Step is the elements converted per pass: 1 MiB of float32 (a FUSE
// read's most), from at most 512 KiB of source bytes (BF16, F16).
const Step = 256 << 10

// packedPool holds gathered source bytes, convPool converted ones.
var (
	packedPool = sync.Pool{New: func() any { b := make([]byte, 0, Step*2); return &b }}
	convPool   = sync.Pool{New: func() any { b := make([]byte, 4*Step); return &b }}
)

// ReadF32 fills dst with the float32 bytes of tensor id from byte off of
// the converted data (after the header), and returns how many it filled
// (fewer at the end). ctx ends an interrupted read of a remote tensor.
func ReadF32(ctx context.Context, ck *checkpoint.Checkpoint, id checkpoint.ID, dst []byte, off int64) (int, error) {
	if d, _ := quant(ck, id); d != nil {
		return readQuant(ctx, ck, id, d, dst, off)
	}
	info, ok := ck.Attr(id) // a removed tensor reads on while a file has it open
	if !ok {
		return 0, fmt.Errorf("tensor %d: %w", id, checkpoint.ErrNotFound)
	}
	d := info.DType
	bits, group := int64(d.Bits()), int64(floats.Group(d))
	elems := info.Size * 8 / bits
	// The elements the request touches, widened to whole groups (an F4
	// byte holds two, three F6 bytes hold four).
	e0 := off / 4 / group * group
	e1 := min((off+int64(len(dst))+3)/4, elems)
	e1 = min((e1+group-1)/group*group, elems)
	if e1 <= e0 {
		return 0, nil
	}
	dst = dst[:min(int64(len(dst)), 4*e1-off)]
	done := 0
	for e0 < e1 {
		step := min(e1-e0, Step) // a multiple of every group
		src, release, err := packed(ctx, ck, id, e0*bits/8, int(step*bits/8))
		if err != nil {
			return done, err
		}
		if skip := max(off-4*e0, 0); skip == 0 && int64(len(dst)-done) >= 4*step {
			// Aligned and whole (every read the kernel sends but the
			// last of a view): straight into the reply.
			n := floats.DecodeLE(d, dst[done:done+int(4*step)], src)
			release()
			done += 4 * n
			if int64(n) < step {
				break
			}
			e0 += step
			continue
		}
		cp := convPool.Get().(*[]byte)
		n := floats.DecodeLE(d, (*cp)[:4*step], src)
		release()
		done += copy(dst[done:], (*cp)[max(off-4*e0, 0):4*int64(n)])
		convPool.Put(cp)
		if int64(n) < step {
			break // the tensor shrank meanwhile
		}
		e0 += step
	}
	return done, nil
}

// packed returns n source bytes of tensor id at off as one slice: the
// checkpoint's own when it has them in one segment, else gathered.
func packed(ctx context.Context, ck *checkpoint.Checkpoint, id checkpoint.ID, off int64, n int) ([]byte, func(), error) {
	segs, release, err := ck.ReadContext(ctx, id, off, n)
	if err != nil {
		return nil, nop, err
	}
	if len(segs) == 1 {
		return segs[0], release, nil
	}
	bp := packedPool.Get().(*[]byte)
	b := (*bp)[:0]
	for _, s := range segs {
		b = append(b, s...)
	}
	release()
	*bp = b
	return b, func() { packedPool.Put(bp) }, nil
}

func nop() {}

// quant is the decoder of tensor id's quantized GGUF type and its logical
// shape; nil when it has none (not a foreign type, or one with no
// decoder). Read-only, as a GGUF checkpoint is.
func quant(ck *checkpoint.Checkpoint, id checkpoint.ID) (*formats.Decoder, []uint64) {
	t, ok := ck.Foreign(id)
	if !ok || !t.Foreign() {
		return nil, nil
	}
	d, ok := formats.DecoderFor(t.Type)
	if !ok {
		return nil, nil
	}
	return d, t.TypeShape
}

// readQuant is ReadF32 for a quantized tensor: whole blocks are read and
// dequantized, the bytes asked for copied out.
func readQuant(ctx context.Context, ck *checkpoint.Checkpoint, id checkpoint.ID, d *formats.Decoder, dst []byte, off int64) (int, error) {
	info, ok := ck.Attr(id)
	if !ok {
		return 0, nil
	}
	be, bb := int64(d.BlockElems), int64(d.BlockBytes)
	elems := info.Size / bb * be
	e0 := off / 4 / be * be
	e1 := min((off+int64(len(dst))+3)/4, elems)
	e1 = min((e1+be-1)/be*be, elems)
	done := 0
	step := max(Step/be, 1) * be
	tmp := make([]float32, step)
	conv := make([]byte, 4*step)
	for e0 < e1 && done < len(dst) {
		n := min(e1-e0, step)
		src, release, err := packed(ctx, ck, id, e0/be*bb, int(n/be*bb))
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
