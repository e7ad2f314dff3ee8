// Package views makes the bytes of a tensor's two derived files, without
// FUSE: <key>.npy (the header np.save would write, then the tensor's own
// bytes) and <key>.f32.npy (a .npy of float32 of the tensor's shape, for
// the dtypes numpy lacks or few tools read: BF16, F16, the 8-, 6- and
// 4-bit floats, converted as ml_dtypes converts them, and GGUF's quantized
// types, dequantized as llama.cpp does). Both are derived at every call
// from the checkpoint's current state: a view's header is a few dozen
// bytes of formatting, and the tensor's dtype and shape may change under a
// read-write mount. Which name is a view of which tensor is package
// namespace's; what a .npy written into a view becomes is too.
package views
