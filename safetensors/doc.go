// Package safetensors reads, validates and writes safetensors checkpoints
// exactly as the reference implementation (huggingface/safetensors) does,
// and is stricter where the reference is silently lossy.
//
// It knows nothing about FUSE: it is a codec over io.ReaderAt and io.Writer
// plus a read-only mmap'd File, so it can be tested and fuzzed alone.
//
// # Reading
//
// ReadHeader and Open refuse every file the reference reader refuses, and
// also these, which the reference accepts but which cannot be mounted or
// rewritten faithfully:
//
//   - a key that appears twice, at the top level, inside "__metadata__" or
//     as a field of one tensor entry (serde keeps the last one, so the
//     reference silently drops a tensor);
//   - a tensor entry written as a JSON array instead of an object, and
//     "__metadata__": null (serde's derived deserializers take both; no
//     writer produces them);
//   - "-0" as a shape dimension or offset.
//
// Like the reference, it ignores unknown fields inside a tensor entry (its
// TensorInfo has no deny_unknown_fields), accepts JSON whitespace around the
// header object, zero-size tensors and shape [] for scalars.
//
// When a file breaks several rules, the one reported is: the first JSON or
// schema problem in document order; else a duplicate key; else, walking the
// tensors in offset order, the first one's offsets, then its size (overflow,
// sub-byte, mismatch), as the reference's validate() does; else the length of
// the data buffer.
//
// # Writing
//
// Plan and Write produce the reference writer's bytes; see Plan for the one
// place (metadata order) where the reference is not deterministic.
package safetensors
