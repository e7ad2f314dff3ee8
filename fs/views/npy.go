package views

import (
	"fmt"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/npy"
)

// NPY returns the .npy header of tensor id and what it read of the
// tensor; a nil header when numpy has no form for its dtype (the sub-byte
// floats) or the tensor is gone. A removed tensor a file still has open
// has one.
func NPY(ck *checkpoint.Checkpoint, id checkpoint.ID) ([]byte, checkpoint.Info) {
	info, ok := ck.Attr(id)
	if !ok {
		return nil, info
	}
	h, err := npy.Header(info.DType.String(), info.Shape)
	if err != nil {
		return nil, info
	}
	return h, info
}

// NPYBytes copies the whole .npy view of tensor id: header and bytes.
func NPYBytes(ck *checkpoint.Checkpoint, id checkpoint.ID) ([]byte, error) {
	h, info := NPY(ck, id)
	if h == nil {
		return nil, fmt.Errorf("tensor %d: no .npy view: %w", id, checkpoint.ErrNotFound)
	}
	b := make([]byte, len(h), len(h)+int(info.Size))
	copy(b, h)
	segs, release, err := ck.Read(id, 0, int(info.Size))
	defer release()
	if err != nil {
		return nil, err
	}
	for _, s := range segs {
		b = append(b, s...)
	}
	return b, nil
}
