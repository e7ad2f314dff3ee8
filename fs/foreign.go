package fs

import "github.com/safejaxfs/safejaxfs/safetensors/checkpoint"

// A tensor of a foreign checkpoint whose element type safetensors has no
// dtype for (a GGUF Q4_K, numpy complex128) is served as its raw bytes
// (Info: U8 [bytes]); its dtype and shape attributes name the format's own
// type and the logical shape.

func (f *FS) foreignType(id checkpoint.ID, dtype string) string {
	if t, ok := f.ck.Foreign(id); ok && t.Foreign() {
		return t.Type
	}
	return dtype
}

func (f *FS) foreignShape(id checkpoint.ID, shape []uint64) []uint64 {
	if t, ok := f.ck.Foreign(id); ok && t.Foreign() {
		return t.TypeShape
	}
	return shape
}
