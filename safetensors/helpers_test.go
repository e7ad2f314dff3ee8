package safetensors

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// file builds a safetensors file from a raw header (no padding added) and
// data bytes, so tests can say exactly which bytes a case has.
func file(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	return append(b, data...)
}

// fileN is file with an explicit (possibly lying) header length.
func fileN(n uint64, rest string) []byte {
	return append(binary.LittleEndian.AppendUint64(nil, n), rest...)
}

func zeros(n int) []byte { return make([]byte, n) }

// testdataFiles are the valid checkpoints written by the reference library.
var testdataFiles = []string{
	"fixtures.safetensors",
	"safetensors_fixtures.safetensors",
	"vandermonde.safetensors",
	"model_f64.safetensors",
}

func testdataPath(name string) string { return filepath.Join("..", "testdata", name) }

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(testdataPath(name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeTemp(t testing.TB, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "x.safetensors")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// badCase is a malformed file and the rule it must be refused for; key is
// the tensor the error must name ("" for file-level rules).
type badCase struct {
	name string
	file []byte
	rule error
	key  string
}

const w16 = `"dtype":"I32","shape":[2,2],"data_offsets":[0,16]`

var badCases = []badCase{
	{"too small: empty", nil, ErrTooSmall, ""},
	{"too small: 7 bytes", []byte{2, 0, 0, 0, 0, 0, 0}, ErrTooSmall, ""},
	{"header too large: 1e8+1", fileN(100_000_001, "{}"), ErrHeaderTooLarge, ""},
	{"header too large: reference vector", append([]byte("<\x00\x00\x00\x00\xff\xff\xff"), `{"test":{`+w16+`}}`+string(zeros(16))...), ErrHeaderTooLarge, ""},
	{"header too large: max u64", fileN(1<<64-1, "{}"), ErrHeaderTooLarge, ""},
	{"header past EOF: length only", fileN(60, ""), ErrHeaderTruncated, ""},
	{"header past EOF: one byte short", fileN(3, "{}"), ErrHeaderTruncated, ""},
	{"invalid UTF-8: lone byte", file("\xff", nil), ErrHeaderUTF8, ""},
	{"invalid UTF-8: in a key", file("{\"a\xc3\":{"+w16+"}}", zeros(16)), ErrHeaderUTF8, ""},
	{"invalid UTF-8: surrogate encoded raw", file("{\"\xed\xa0\x80\":{"+w16+"}}", zeros(16)), ErrHeaderUTF8, ""},
	{"not JSON: open brace", file("{", nil), ErrHeaderJSON, ""},
	{"not JSON: empty header", file("", nil), ErrHeaderJSON, ""},
	{"not JSON: trailing garbage", file(`{} x`, nil), ErrHeaderJSON, ""},
	{"not JSON: trailing comma", file(`{"w":{`+w16+`},}`, zeros(16)), ErrHeaderJSON, ""},
	{"not JSON: single quotes", file(`{'w':{}}`, nil), ErrHeaderJSON, ""},
	{"not JSON: raw control char in key", file("{\"a\x01\":{"+w16+"}}", zeros(16)), ErrHeaderJSON, ""},
	{"not JSON: lone leading surrogate", file(`{"\ud800":{`+w16+`}}`, zeros(16)), ErrHeaderJSON, ""},
	{"not JSON: lone trailing surrogate", file(`{"\udc00":{`+w16+`}}`, zeros(16)), ErrHeaderJSON, ""},
	{"not JSON: bad escape", file(`{"\x":{`+w16+`}}`, zeros(16)), ErrHeaderJSON, ""},
	{"not JSON: leading zero", file(`{"w":{"dtype":"I32","shape":[02],"data_offsets":[0,8]}}`, zeros(8)), ErrHeaderJSON, "w"},
	{"schema: header is an array", file(`[]`, nil), ErrHeaderJSON, ""},
	{"schema: entry is an array", file(`{"w":["I32",[2,2],[0,16]]}`, zeros(16)), ErrHeaderJSON, "w"},
	{"schema: entry is a number", file(`{"w":5}`, nil), ErrHeaderJSON, "w"},
	{"schema: missing data_offsets", file(`{"w":{"dtype":"I32","shape":[2,2]}}`, zeros(16)), ErrHeaderJSON, "w"},
	{"schema: missing dtype", file(`{"w":{"shape":[2,2],"data_offsets":[0,16]}}`, zeros(16)), ErrHeaderJSON, "w"},
	{"schema: missing shape", file(`{"w":{"dtype":"I32","data_offsets":[0,16]}}`, zeros(16)), ErrHeaderJSON, "w"},
	{"schema: empty entry", file(`{"w":{}}`, nil), ErrHeaderJSON, "w"},
	{"schema: dtype not a string", file(`{"w":{"dtype":32,"shape":[2,2],"data_offsets":[0,16]}}`, zeros(16)), ErrHeaderJSON, "w"},
	{"schema: shape not an array", file(`{"w":{"dtype":"I32","shape":4,"data_offsets":[0,16]}}`, zeros(16)), ErrHeaderJSON, "w"},
	{"schema: shape float", file(`{"w":{"dtype":"I32","shape":[2.0,2],"data_offsets":[0,16]}}`, zeros(16)), ErrHeaderJSON, "w"},
	{"schema: shape exponent", file(`{"w":{"dtype":"I32","shape":[2e0,2],"data_offsets":[0,16]}}`, zeros(16)), ErrHeaderJSON, "w"},
	{"schema: shape negative", file(`{"w":{"dtype":"I32","shape":[-2,-2],"data_offsets":[0,16]}}`, zeros(16)), ErrHeaderJSON, "w"},
	{"schema: shape null", file(`{"w":{"dtype":"I32","shape":[null],"data_offsets":[0,16]}}`, zeros(16)), ErrHeaderJSON, "w"},
	{"schema: dim above u64", file(`{"w":{"dtype":"I32","shape":[18446744073709551616],"data_offsets":[0,16]}}`, zeros(16)), ErrHeaderJSON, "w"},
	{"schema: three offsets", file(`{"w":{"dtype":"I32","shape":[2,2],"data_offsets":[0,8,16]}}`, zeros(16)), ErrHeaderJSON, "w"},
	{"schema: one offset", file(`{"w":{"dtype":"I32","shape":[2,2],"data_offsets":[16]}}`, zeros(16)), ErrHeaderJSON, "w"},
	{"schema: bad unknown-field value", file(`{"w":{`+w16+`,"x":[1,}}}`, zeros(16)), ErrHeaderJSON, "w"},
	{"schema: unknown field nested too deep", file(`{"w":{`+w16+`,"x":`+deep(200)+`}}`, zeros(16)), ErrHeaderJSON, "w"},
	{"unknown dtype", file(`{"w":{"dtype":"F128","shape":[2,2],"data_offsets":[0,16]}}`, zeros(16)), ErrUnknownDType, "w"},
	{"unknown dtype: lowercase", file(`{"w":{"dtype":"i32","shape":[2,2],"data_offsets":[0,16]}}`, zeros(16)), ErrUnknownDType, "w"},
	{"unknown dtype: empty", file(`{"w":{"dtype":"","shape":[2,2],"data_offsets":[0,16]}}`, zeros(16)), ErrUnknownDType, "w"},
	{"metadata: number value", file(`{"__metadata__":{"format":"pt","epoch":3}}`, nil), ErrMetadata, ""},
	{"metadata: null value", file(`{"__metadata__":{"note":null}}`, nil), ErrMetadata, ""},
	{"metadata: nested object value", file(`{"__metadata__":{"cfg":{"a":"b"}}}`, nil), ErrMetadata, ""},
	{"metadata: not an object", file(`{"__metadata__":"pt"}`, nil), ErrMetadata, ""},
	{"metadata: null", file(`{"__metadata__":null}`, nil), ErrMetadata, ""},
	{"metadata: tensor-shaped", file(`{"__metadata__":{`+w16+`}}`, zeros(16)), ErrMetadata, ""},
	{"duplicate key", file(`{"w":{`+w16+`},"w":{"dtype":"I32","shape":[2,2],"data_offsets":[16,32]}}`, zeros(32)), ErrDuplicateKey, "w"},
	{"duplicate key: identical entries", file(`{"w":{`+w16+`},"w":{`+w16+`}}`, zeros(16)), ErrDuplicateKey, "w"},
	{"duplicate key: escaped spelling", file(`{"w":{`+w16+`},"\u0077":{"dtype":"I32","shape":[2,2],"data_offsets":[16,32]}}`, zeros(32)), ErrDuplicateKey, "w"},
	{"duplicate key: __metadata__ twice", file(`{"__metadata__":{},"__metadata__":{}}`, nil), ErrDuplicateKey, ""},
	{"duplicate key: in __metadata__", file(`{"__metadata__":{"a":"1","a":"2"}}`, nil), ErrDuplicateKey, ""},
	{"duplicate key: field in entry", file(`{"w":{`+w16+`,"dtype":"I32"}}`, zeros(16)), ErrDuplicateKey, "w"},
	{"offsets: gap", file(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}}`, zeros(12)), ErrOffsets, "b"},
	{"offsets: not from 0", file(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}`, zeros(8)), ErrOffsets, "a"},
	{"offsets: overlap", file(`{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}}`, zeros(12)), ErrOffsets, "b"},
	{"offsets: same range twice", file(`{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}`, zeros(8)), ErrOffsets, "b"},
	{"offsets: end before begin", file(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}`, zeros(4)), ErrOffsets, "b"},
	{"offsets: reference json attack", file(`{"weight_0":{`+w16+`},"weight_1":{`+w16+`}}`, zeros(16)), ErrOffsets, "weight_1"},
	{"shape overflow: product", file(`{"test":{"dtype":"I32","shape":[2,18446744073709551614],"data_offsets":[0,16]}}`, zeros(16)), ErrShapeOverflow, "test"},
	{"shape overflow: times bits", file(`{"test":{"dtype":"I32","shape":[2,9223372036854775807],"data_offsets":[0,16]}}`, zeros(16)), ErrShapeOverflow, "test"},
	{"shape overflow: before a zero dim", file(`{"z":{"dtype":"U8","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}`, nil), ErrShapeOverflow, "z"},
	{"sub-byte: F4 x3", file(`{"q":{"dtype":"F4","shape":[1,3],"data_offsets":[0,2]}}`, zeros(2)), ErrSubByte, "q"},
	{"sub-byte: F6 x1", file(`{"q":{"dtype":"F6_E2M3","shape":[1],"data_offsets":[0,1]}}`, zeros(1)), ErrSubByte, "q"},
	{"size mismatch", file(`{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,4]}}`, zeros(4)), ErrSizeMismatch, "test"},
	{"size mismatch: F4 wrong bytes", file(`{"q":{"dtype":"F4","shape":[1,2],"data_offsets":[0,2]}}`, zeros(2)), ErrSizeMismatch, "q"},
	{"trailing data", file(`{"test":{`+w16+`}}`, append(zeros(16), "extra_bogus_data_for_polyglot_file"...)), ErrTrailingData, "test"},
	{"trailing data: empty header", file(`{}`, zeros(1)), ErrTrailingData, ""},
	{"truncated data", file(`{"test":{`+w16+`}}`, zeros(14)), ErrTruncatedData, "test"},
	{"truncated data: names the first tensor cut", file(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},"c":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}}`, zeros(6)), ErrTruncatedData, "b"},
}

func deep(n int) string {
	b := make([]byte, 0, 2*n)
	for range n {
		b = append(b, '[')
	}
	for range n {
		b = append(b, ']')
	}
	return string(b)
}

func readFileQuiet(p string) ([]byte, error) { return os.ReadFile(p) }
