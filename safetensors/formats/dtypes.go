package formats

import (
	"fmt"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// elemType is an element type as a format names it: its safetensors dtype,
// or (foreign != "") none, and then the tensor is shown as raw bytes.
type elemType struct {
	dtype   safetensors.DType
	size    int // bytes per element
	foreign string
}

func native(d safetensors.DType) elemType {
	return elemType{dtype: d, size: d.Bits() / 8}
}

func raw(name string, size int) elemType {
	return elemType{dtype: safetensors.U8, size: size, foreign: name}
}

// numpyNames are dtype.name as numpy and ml_dtypes spell it (what Flax's
// msgpack stores). ml_dtypes' sub-byte types take a byte per element in
// an array's buffer, not safetensors' packed form, so they are raw here.
var numpyNames = map[string]elemType{
	"bool":               native(safetensors.BOOL),
	"int8":               native(safetensors.I8),
	"uint8":              native(safetensors.U8),
	"int16":              native(safetensors.I16),
	"uint16":             native(safetensors.U16),
	"int32":              native(safetensors.I32),
	"uint32":             native(safetensors.U32),
	"int64":              native(safetensors.I64),
	"uint64":             native(safetensors.U64),
	"float16":            native(safetensors.F16),
	"float32":            native(safetensors.F32),
	"float64":            native(safetensors.F64),
	"complex64":          native(safetensors.C64),
	"bfloat16":           native(safetensors.BF16),
	"float8_e4m3fn":      native(safetensors.F8_E4M3),
	"float8_e5m2":        native(safetensors.F8_E5M2),
	"float8_e4m3fnuz":    native(safetensors.F8_E4M3FNUZ),
	"float8_e5m2fnuz":    native(safetensors.F8_E5M2FNUZ),
	"float8_e8m0fnu":     native(safetensors.F8_E8M0),
	"complex128":         raw("complex128", 16),
	"complex256":         raw("complex256", 32),
	"float128":           raw("float128", 16),
	"float8_e4m3b11fnuz": raw("float8_e4m3b11fnuz", 1),
	"float8_e4m3":        raw("float8_e4m3", 1),
	"float8_e3m4":        raw("float8_e3m4", 1),
	"float6_e2m3fn":      raw("float6_e2m3fn", 1),
	"float6_e3m2fn":      raw("float6_e3m2fn", 1),
	"float4_e2m1fn":      raw("float4_e2m1fn", 1),
	"int4":               raw("int4", 1),
	"uint4":              raw("uint4", 1),
	"int2":               raw("int2", 1),
	"uint2":              raw("uint2", 1),
}

func numpyType(name string) (elemType, error) {
	t, ok := numpyNames[name]
	if !ok {
		return elemType{}, fmt.Errorf("dtype %q has no safetensors equivalent (object, string, structured and date types cannot be read)", printableName(name))
	}
	return t, nil
}

// MsgpackName is the dtype name Flax's msgpack stores for a safetensors
// dtype (numpy's or ml_dtypes'); "" for the packed sub-byte floats, whose
// ml_dtypes arrays take a byte per element.
func MsgpackName(d safetensors.DType) string {
	for name, t := range numpyNames {
		if t.foreign == "" && t.dtype == d {
			return name
		}
	}
	return ""
}

// printableName shortens and cleans a name from a file for a message.
func printableName(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	out := make([]rune, 0, len(s))
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			r = '?'
		}
		out = append(out, r)
	}
	return string(out)
}
