// Package ggml knows llama.cpp's tensor types: their block sizes (to size
// a GGUF tensor) and, for the common ones, their dequantization to
// float32, written to give exactly what ggml-quants.c's dequantize_row_*
// gives (the same operations, in float32, in the same order).
package ggml

// Type is a ggml_type.
type Type uint32

// TypeInfo is a type's name and block: Elems elements take Bytes bytes.
type TypeInfo struct {
	Name  string
	Elems int
	Bytes int
}

// Types are the ggml_type values GGUF files use (ggml.h); the holes are
// types llama.cpp removed.
var Types = map[Type]TypeInfo{
	0:  {"F32", 1, 4},
	1:  {"F16", 1, 2},
	2:  {"Q4_0", 32, 18},
	3:  {"Q4_1", 32, 20},
	6:  {"Q5_0", 32, 22},
	7:  {"Q5_1", 32, 24},
	8:  {"Q8_0", 32, 34},
	9:  {"Q8_1", 32, 36},
	10: {"Q2_K", 256, 84},
	11: {"Q3_K", 256, 110},
	12: {"Q4_K", 256, 144},
	13: {"Q5_K", 256, 176},
	14: {"Q6_K", 256, 210},
	15: {"Q8_K", 256, 292},
	16: {"IQ2_XXS", 256, 66},
	17: {"IQ2_XS", 256, 74},
	18: {"IQ3_XXS", 256, 98},
	19: {"IQ1_S", 256, 50},
	20: {"IQ4_NL", 32, 18},
	21: {"IQ3_S", 256, 110},
	22: {"IQ2_S", 256, 82},
	23: {"IQ4_XS", 256, 136},
	24: {"I8", 1, 1},
	25: {"I16", 1, 2},
	26: {"I32", 1, 4},
	27: {"I64", 1, 8},
	28: {"F64", 1, 8},
	29: {"IQ1_M", 256, 56},
	30: {"BF16", 1, 2},
	34: {"TQ1_0", 256, 54},
	35: {"TQ2_0", 256, 66},
	39: {"MXFP4", 32, 17},
}

// Dequantizer converts whole blocks of a type to float32: len(src) is a
// multiple of the block's bytes, dst holds the blocks' elements.
type Dequantizer func(dst []float32, src []byte)

// Dequantizers are the types whose values this package gives.
var Dequantizers = map[string]Dequantizer{
	"Q4_0": Q4_0,
	"Q4_1": Q4_1,
	"Q5_0": Q5_0,
	"Q5_1": Q5_1,
	"Q8_0": Q8_0,
	"Q2_K": Q2K,
	"Q3_K": Q3K,
	"Q4_K": Q4K,
	"Q5_K": Q5K,
	"Q6_K": Q6K,
}

// Info returns a type by name.
func Info(name string) (TypeInfo, bool) {
	for _, t := range Types {
		if t.Name == name {
			return t, true
		}
	}
	return TypeInfo{}, false
}
