// Package formats reads checkpoints that are not safetensors files (Flax
// msgpack, PyTorch zip and legacy pickle, numpy .npy/.npz, GGUF) without
// trusting them, and describes each as safetensors would: keys, dtypes,
// shapes outermost first, and where every tensor's little-endian C-order
// bytes are. Nothing in a file is ever executed; a pickle is read by a
// restricted machine that knows only what torch.load(weights_only=True)
// allows.
//
// A format is recognised by its first bytes (Sniff), whatever the file is
// called. Files that are recognisably something else (HDF5, a compressed
// file, an HTML page, a Git LFS pointer) get an error that says what they
// are and what to do (Explain).
package formats

import (
	"bytes"
	"encoding/binary"
)

// Format is what a file's first bytes say it is.
type Format int

const (
	Unknown     Format = iota
	Safetensors        // u64 header length + '{'
	JSON               // a JSON document (an index, or an error a server sent)
	Msgpack            // Flax msgpack: a map with string keys
	TorchZip           // torch.save >= 1.6: a zip with <name>/data.pkl
	TorchLegacy        // torch.save(_use_new_zipfile_serialization=False)
	NPZ                // numpy np.savez / np.savez_compressed
	NPY                // numpy np.save
	GGUF               // llama.cpp
	// Not mountable: recognised only to say so.
	Zip    // a zip that is neither torch nor npz
	Keras  // a Keras 3 .keras zip
	Pickle // a pickle that is no torch checkpoint
	HDF5
	Gzip
	Zstd
	Bzip2
	XZ
	Tar
	HTML
	LFSPointer
	GGML // llama.cpp's formats before GGUF
)

var formatNames = [...]string{
	Unknown:     "unknown",
	Safetensors: "safetensors",
	JSON:        "a JSON document",
	Msgpack:     "Flax msgpack",
	TorchZip:    "PyTorch (zip)",
	TorchLegacy: "PyTorch (legacy pickle)",
	NPZ:         "numpy .npz",
	NPY:         "numpy .npy",
	GGUF:        "GGUF",
	Zip:         "a zip archive",
	Keras:       "a Keras 3 .keras archive",
	Pickle:      "a Python pickle",
	HDF5:        "HDF5",
	Gzip:        "gzip-compressed",
	Zstd:        "zstd-compressed",
	Bzip2:       "bzip2-compressed",
	XZ:          "xz-compressed",
	Tar:         "a tar archive",
	HTML:        "an HTML page",
	LFSPointer:  "a Git LFS pointer",
	GGML:        "a pre-GGUF llama.cpp file (GGML/GGJT)",
}

func (f Format) String() string {
	if f < 0 || int(f) >= len(formatNames) {
		return "unknown"
	}
	return formatNames[f]
}

// Mountable reports whether this package reads the format (safetensors
// itself is read by the safetensors package).
func (f Format) Mountable() bool {
	switch f {
	case Msgpack, TorchZip, TorchLegacy, NPZ, NPY, GGUF:
		return true
	}
	return false
}

// SniffLen is how many leading bytes Sniff looks at (a tar header's magic
// is at 257, an HDF5 superblock may follow a 512-byte user block).
const SniffLen = 1024

// Sniff names the format of a file of the given size from its first bytes
// (up to SniffLen). A zip comes back as Zip: which kind it is takes its
// member names (see sniffZip).
func Sniff(head []byte, size int64) Format {
	switch {
	case isSafetensors(head, size):
		return Safetensors
	case bytes.HasPrefix(head, []byte("PK\x03\x04")), bytes.HasPrefix(head, []byte("PK\x05\x06")):
		return Zip
	case bytes.HasPrefix(head, []byte("GGUF")):
		return GGUF
	case bytes.HasPrefix(head, []byte("\x93NUMPY")):
		return NPY
	case isHDF5(head):
		return HDF5
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return Gzip
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return Zstd
	case bytes.HasPrefix(head, []byte("BZh")) && len(head) > 3 && head[3] >= '1' && head[3] <= '9':
		return Bzip2
	case bytes.HasPrefix(head, []byte("\xfd7zXZ\x00")):
		return XZ
	case bytes.HasPrefix(head, []byte("version https://git-lfs.github.com/spec/")):
		return LFSPointer
	case isGGML(head):
		return GGML
	case len(head) >= 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5 && size > 2:
		// A pickle's PROTO opcode. An empty msgpack map is the single
		// byte 0x80, so anything after it means a pickle.
		if isTorchLegacy(head) {
			return TorchLegacy
		}
		return Pickle
	case isMsgpackMap(head, size):
		return Msgpack
	case len(head) > 262 && bytes.Equal(head[257:262], []byte("ustar")):
		return Tar
	}
	t := bytes.TrimLeft(head, "\xef\xbb\xbf \t\r\n")
	switch {
	case hasPrefixFold(t, "<!doctype html"), hasPrefixFold(t, "<html"), hasPrefixFold(t, "<head"), hasPrefixFold(t, "<?xml"):
		return HTML
	case len(t) > 0 && (t[0] == '{' || t[0] == '['):
		return JSON
	}
	return Unknown
}

// isSafetensors: a header length that fits in the file, then the JSON
// object (after whitespace, which the reference reader allows).
func isSafetensors(head []byte, size int64) bool {
	if len(head) < 9 || size < 10 {
		return false
	}
	n := binary.LittleEndian.Uint64(head)
	if n < 2 || n > uint64(size-8) {
		return false
	}
	for _, c := range head[8:min(len(head), 8+int(min(n, SniffLen)))] {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '{':
			return true
		}
		return false
	}
	return false
}

func isHDF5(head []byte) bool {
	sig := []byte("\x89HDF\r\n\x1a\n")
	// The superblock is at 0, or after a user block of 512, 1024, ... bytes.
	for _, off := range []int{0, 512} {
		if len(head) >= off+len(sig) && bytes.Equal(head[off:off+len(sig)], sig) {
			return true
		}
	}
	return false
}

func isGGML(head []byte) bool {
	if len(head) < 4 {
		return false
	}
	switch binary.LittleEndian.Uint32(head) {
	case 0x67676d6c, 0x67676d66, 0x67676a74, 0x6767736c: // ggml, ggmf, ggjt, ggsl
		return true
	}
	return false
}

// legacyMagic is torch's MAGIC_NUMBER pickled by protocol 2 as LONG1:
// the first pickle of a legacy checkpoint.
var legacyMagic = []byte{0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e}

func isTorchLegacy(head []byte) bool {
	p := head[2:]
	if head[1] >= 4 && len(p) >= 9 && p[0] == 0x95 { // a FRAME opcode first
		p = p[9:]
	}
	return bytes.HasPrefix(p, legacyMagic)
}

// isMsgpackMap: a map (fixmap, map16, map32) whose first key is a string,
// as every Flax state dict is. A lone 0x80 (an empty map) is one too.
func isMsgpackMap(head []byte, size int64) bool {
	if len(head) == 0 {
		return false
	}
	c := head[0]
	var rest []byte
	switch {
	case c == 0x80:
		return size == 1
	case c > 0x80 && c <= 0x8f:
		rest = head[1:]
	case c == 0xde && len(head) >= 3:
		if binary.BigEndian.Uint16(head[1:]) == 0 {
			return size == 3
		}
		rest = head[3:]
	case c == 0xdf && len(head) >= 5:
		if binary.BigEndian.Uint32(head[1:]) == 0 {
			return size == 5
		}
		rest = head[5:]
	default:
		return false
	}
	if len(rest) == 0 {
		return false
	}
	k := rest[0]
	return k >= 0xa0 && k <= 0xbf || k == 0xd9 || k == 0xda || k == 0xdb
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && bytes.EqualFold(b[:len(prefix)], []byte(prefix))
}
