package namespace

import (
	"strconv"
	"strings"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// The values users write into user.safetensors.dtype and .shape, read
// the way they write them: getfattr shows (and cp -a restores) the
// safetensors forms, and people paste what numpy or PyTorch printed.

// parseShape reads a shape the way users write one: the JSON array
// getfattr shows and cp -a restores ("[2, 2]", "[]" for a scalar),
// numpy's tuple, as print(a.shape) gives it ("(2, 2)", "(4,)", "()"), or
// the bare list ("2,2", "4"). Whitespace around the numbers does not
// matter. ok is false for anything else, an empty value included.
func parseShape(v []byte) (shape []uint64, ok bool) {
	s := strings.TrimSpace(string(v))
	switch {
	case s == "":
		return nil, false
	case s[0] == '[' && s[len(s)-1] == ']':
		s = s[1 : len(s)-1]
	case s[0] == '(' && s[len(s)-1] == ')':
		// A tuple of one ends in a comma; "(,)" is no tuple.
		s = strings.TrimSpace(s[1 : len(s)-1])
		if t := strings.TrimSuffix(s, ","); t != s && strings.TrimSpace(t) != "" {
			s = t
		}
	}
	shape = []uint64{}
	if strings.TrimSpace(s) == "" {
		return shape, true
	}
	for f := range strings.SplitSeq(s, ",") {
		// ParseUint takes decimal digits only: no sign, no 0x, no "2.0".
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 64)
		if err != nil {
			return nil, false
		}
		shape = append(shape, n)
	}
	return shape, true
}

// parseDType reads a dtype: a safetensors name as getfattr shows it
// ("F32", "BF16"), numpy's name or array-protocol string as str(a.dtype)
// and a.dtype.str print them ("float32", "<f4"; ml_dtypes' "bfloat16",
// "float8_e4m3fn"), or PyTorch's ("torch.float32"). Only names of one
// exact type: not "float" or "int", whose width depends on who says it,
// not big-endian strings, and safetensors names only as they are
// spelled: numpy's shorthand "f4", "i8", "u8" (float32, int64, uint64)
// read as safetensors names in another case would be F4, I8 and U8.
func parseDType(v []byte) (safetensors.DType, bool) {
	s := strings.TrimSpace(string(v))
	if d, ok := safetensors.ParseDType(s); ok {
		return d, true
	}
	d, ok := foreignDTypes[strings.TrimPrefix(s, "torch.")]
	return d, ok
}

// foreignDTypes are numpy's (with ml_dtypes) and PyTorch's names of the
// safetensors dtypes.
var foreignDTypes = map[string]safetensors.DType{
	"bool": safetensors.BOOL, "uint8": safetensors.U8, "int8": safetensors.I8,
	"int16": safetensors.I16, "uint16": safetensors.U16, "float16": safetensors.F16, "bfloat16": safetensors.BF16,
	"int32": safetensors.I32, "uint32": safetensors.U32, "float32": safetensors.F32,
	"int64": safetensors.I64, "uint64": safetensors.U64, "float64": safetensors.F64, "complex64": safetensors.C64,
	"float8_e5m2": safetensors.F8_E5M2, "float8_e4m3fn": safetensors.F8_E4M3, "float8_e8m0fnu": safetensors.F8_E8M0,
	"float8_e4m3fnuz": safetensors.F8_E4M3FNUZ, "float8_e5m2fnuz": safetensors.F8_E5M2FNUZ,
	"float4_e2m1fn": safetensors.F4, "float6_e2m3fn": safetensors.F6_E2M3, "float6_e3m2fn": safetensors.F6_E3M2,
	// a.dtype.str: little-endian, or '|' for one byte.
	"|b1": safetensors.BOOL, "|u1": safetensors.U8, "|i1": safetensors.I8,
	"<i2": safetensors.I16, "<u2": safetensors.U16, "<f2": safetensors.F16,
	"<i4": safetensors.I32, "<u4": safetensors.U32, "<f4": safetensors.F32,
	"<i8": safetensors.I64, "<u8": safetensors.U64, "<f8": safetensors.F64, "<c8": safetensors.C64,
}
