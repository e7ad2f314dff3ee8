package npy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
)

func TestDescr(t *testing.T) {
	want := map[string]string{
		"BOOL": "|b1", "U8": "|u1", "I8": "|i1", "I16": "<i2", "U16": "<u2",
		"F16": "<f2", "I32": "<i4", "U32": "<u4", "F32": "<f4", "C64": "<c8",
		"F64": "<f8", "I64": "<i8", "U64": "<u8", "BF16": "|V2",
		"F8_E5M2": "|V1", "F8_E4M3": "|V1", "F8_E8M0": "|V1",
		"F8_E4M3FNUZ": "|V1", "F8_E5M2FNUZ": "|V1",
	}
	for name, w := range want {
		if got, ok := Descr(name); !ok || got != w {
			t.Errorf("Descr(%q) = %q, %v; want %q, true", name, got, ok, w)
		}
	}
	// Every safetensors dtype is either above or has no numpy form.
	for _, name := range []string{"F4", "F6_E2M3", "F6_E3M2", "", "f32", "F128", "BF16 "} {
		if got, ok := Descr(name); ok || got != "" {
			t.Errorf("Descr(%q) = %q, %v; want no numpy form", name, got, ok)
		}
	}
}

func TestHeaderErrors(t *testing.T) {
	for _, tc := range []struct {
		dtype string
		shape []uint64
		want  string
	}{
		{"F4", []uint64{2}, `dtype "F4" has no numpy form`},
		{"F6_E3M2", []uint64{4}, `dtype "F6_E3M2" has no numpy form`},
		{"float32", []uint64{2}, `dtype "float32" has no numpy form`},
		{"F32", []uint64{1 << 62}, "overflows"},
		{"U8", []uint64{1 << 32, 1 << 32}, "overflows"},
		{"U8", ones(MaxHeaderLen / 3), "MaxHeaderLen"},
	} {
		h, err := Header(tc.dtype, tc.shape)
		if err == nil || !strings.Contains(err.Error(), tc.want) || h != nil {
			t.Errorf("Header(%s, %d dims) = %d bytes, %v; want error containing %q", tc.dtype, len(tc.shape), len(h), err, tc.want)
		}
	}
	// Overflow is about the byte size: an empty array is fine however
	// large its other dimensions.
	if _, err := Header("F64", []uint64{math.MaxUint64, 0, math.MaxUint64}); err != nil {
		t.Errorf("empty array with huge dims: %v", err)
	}
}

// TestHeaderVersion pins the 1.0/2.0 switch at the rank numpy switches
// (also covered byte for byte by the golden table).
func TestHeaderVersion(t *testing.T) {
	for _, tc := range []struct {
		rank    int
		version byte
	}{{0, 1}, {32, 1}, {21817, 1}, {21818, 2}, {30000, 2}} {
		h, err := Header("U8", ones(tc.rank))
		if err != nil {
			t.Fatal(err)
		}
		if h[6] != tc.version || h[7] != 0 {
			t.Errorf("rank %d: version %d.%d, want %d.0", tc.rank, h[6], h[7], tc.version)
		}
		if len(h)%64 != 0 || h[len(h)-1] != '\n' {
			t.Errorf("rank %d: %d bytes, last %q", tc.rank, len(h), h[len(h)-1])
		}
	}
}

func TestRoundTrip(t *testing.T) {
	shapes := [][]uint64{nil, {}, {0}, {5}, {2, 3}, {1, 2, 3, 4}, {1 << 40}, ones(32), ones(21818),
		{math.MaxUint64}, {3, 0, math.MaxUint64}, {1e19}}
	for _, d := range dtypes {
		for _, s := range shapes {
			h, err := Header(d.name, s)
			if err != nil {
				// Only byte-size overflow may refuse, and Parse must agree.
				if _, ok := byteSize(s, d.size); ok {
					t.Errorf("Header(%s, %v): %v", d.name, shapeLabel(s), err)
				}
				continue
			}
			info, err := Parse(h)
			wantDType, wantErr := d.name, error(nil)
			if d.descr == "|V1" {
				wantDType, wantErr = "", ErrAmbiguousVoid
			}
			if err != wantErr {
				t.Errorf("Parse(Header(%s, %s)): err %v, want %v", d.name, shapeLabel(s), err, wantErr)
				continue
			}
			if info.DType != wantDType || !slices.Equal(info.Shape, s) || info.Shape == nil ||
				info.Fortran || info.DataOffset != len(h) || info.Version != [2]byte{h[6], 0} {
				t.Errorf("Parse(Header(%s, %s)) = %+v", d.name, shapeLabel(s), info)
			}
			// Trailing data is the array, not the header's business.
			if info2, _ := Parse(append(h, 1, 2, 3)); info2 == nil || info2.DataOffset != len(h) {
				t.Errorf("Parse with data after the header: %+v", info2)
			}
		}
	}
}

// TestParseShort plays the caller: start with nothing, read exactly what
// ShortError asks for, and expect success within three rounds. Every cut
// in between must ask for more, never fail.
func TestParseShort(t *testing.T) {
	for _, s := range [][]uint64{{2, 3}, ones(21818)} {
		h, err := Header("F32", s)
		if err != nil {
			t.Fatal(err)
		}
		n, rounds := 0, 0
		for {
			info, err := Parse(h[:n])
			if err == nil {
				if info.DataOffset != len(h) {
					t.Errorf("DataOffset %d, want %d", info.DataOffset, len(h))
				}
				break
			}
			var se *ShortError
			if !errors.As(err, &se) || !errors.Is(err, ErrShort) {
				t.Fatalf("Parse of %d bytes: %v, want a ShortError", n, err)
			}
			if se.Have != n || se.Need <= n || se.Need > len(h) || se.NeedMore() != se.Need-n {
				t.Fatalf("Parse of %d bytes: %+v", n, se)
			}
			n = se.Need
			if rounds++; rounds > 3 {
				t.Fatal("no progress")
			}
		}
		for k := range len(h) {
			if _, err := Parse(h[:k]); !errors.Is(err, ErrShort) {
				t.Fatalf("rank %d cut at %d: %v, want ErrShort", len(s), k, err)
			}
		}
	}
	// A prefix that cannot be .npy fails at once rather than asking for more.
	for _, p := range []string{"\x94", "\x93NUMPz", "PK\x03\x04"} {
		if _, err := Parse([]byte(p)); err == nil || errors.Is(err, ErrShort) {
			t.Errorf("Parse(%q) = %v, want bad magic", p, err)
		}
	}
}

// npyFile builds a .npy prefix around a dict literal the way numpy pads it,
// with any version, so hand-written variants can be parsed.
func npyFile(major byte, dict string) []byte {
	lenSize := 2
	if major > 1 {
		lenSize = 4
	}
	hlen := len(dict) + 1
	pad := 64 - (magicLen+lenSize+hlen)%64
	b := append([]byte(magic), major, 0)
	if lenSize == 2 {
		b = binary.LittleEndian.AppendUint16(b, uint16(hlen+pad))
	} else {
		b = binary.LittleEndian.AppendUint32(b, uint32(hlen+pad))
	}
	b = append(b, dict...)
	b = append(b, bytes.Repeat([]byte{' '}, pad)...)
	return append(b, '\n')
}

// TestParseAccepts covers spellings numpy does not write but reads the same
// way, which other writers (and older numpy) produce.
func TestParseAccepts(t *testing.T) {
	for _, tc := range []struct {
		major   byte
		dict    string
		dtype   string
		shape   []uint64
		fortran bool
	}{
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`, "F32", []uint64{2, 3}, false},
		{1, `{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}`, "F32", []uint64{2, 3}, false},
		{1, `{"descr":"<f4","fortran_order":False,"shape":(2,3)}`, "F32", []uint64{2, 3}, false},
		{1, "{\n\t'descr' : '<i8' ,\r\n 'fortran_order':False,'shape':( 2 , 3 , ) , }", "I64", []uint64{2, 3}, false},
		{1, `{'descr': '<u2', 'fortran_order': False, 'shape': (7,)}`, "U16", []uint64{7}, false},
		{1, `{'descr': '<c8', 'fortran_order': False, 'shape': ()}`, "C64", []uint64{}, false},
		{1, `{'descr': '<f8', 'fortran_order': False, 'shape': (0, 18446744073709551615)}`, "F64", []uint64{0, math.MaxUint64}, false},
		// Python 2 numpy wrote long ints with an L; numpy strips it in
		// versions 1.0 and 2.0.
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }`, "F32", []uint64{2, 3}, false},
		{2, `{'descr': '<f4', 'fortran_order': False, 'shape': (2L,), }`, "F32", []uint64{2}, false},
		// Byte order means nothing for 1-byte and void types.
		{1, `{'descr': '<u1', 'fortran_order': False, 'shape': (1,), }`, "U8", []uint64{1}, false},
		{1, `{'descr': '>i1', 'fortran_order': False, 'shape': (1,), }`, "I8", []uint64{1}, false},
		{1, `{'descr': '=b1', 'fortran_order': False, 'shape': (1,), }`, "BOOL", []uint64{1}, false},
		{1, `{'descr': 'u1', 'fortran_order': False, 'shape': (1,), }`, "U8", []uint64{1}, false},
		{1, `{'descr': '<V2', 'fortran_order': False, 'shape': (1,), }`, "BF16", []uint64{1}, false},
		{3, `{'descr': 'V2', 'fortran_order': False, 'shape': (1,), }`, "BF16", []uint64{1}, false},
		// Fortran order is the C layout when at most one dimension exceeds 1
		// or the array is empty.
		{1, `{'descr': '<f4', 'fortran_order': True, 'shape': (5,), }`, "F32", []uint64{5}, true},
		{1, `{'descr': '<f4', 'fortran_order': True, 'shape': (1, 5, 1), }`, "F32", []uint64{1, 5, 1}, true},
		{1, `{'descr': '<f4', 'fortran_order': True, 'shape': (0, 3, 4), }`, "F32", []uint64{0, 3, 4}, true},
		{1, `{'descr': '<f4', 'fortran_order': True, 'shape': (), }`, "F32", []uint64{}, true},
	} {
		b := npyFile(tc.major, tc.dict)
		info, err := Parse(b)
		if err != nil {
			t.Errorf("%s: %v", tc.dict, err)
			continue
		}
		if info.DType != tc.dtype || !slices.Equal(info.Shape, tc.shape) || info.Fortran != tc.fortran ||
			info.DataOffset != len(b) || info.Version != [2]byte{tc.major, 0} {
			t.Errorf("%s: got %+v", tc.dict, info)
		}
	}

	// numpy before 1.14 aligned the data to 16 bytes, not 64; the reader
	// never checked alignment, so neither does Parse.
	dict := `{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }`
	b := append([]byte(magic), 1, 0)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(dict)+2))
	b = append(append(b, dict...), ' ', '\n')
	if info, err := Parse(b); err != nil || info.DataOffset != len(b) {
		t.Errorf("16-byte aligned header: %+v, %v", info, err)
	}
}

func TestParseRejects(t *testing.T) {
	const ok = `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`
	for _, tc := range []struct {
		major byte
		dict  string
		want  string
	}{
		{1, `{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }`, "big-endian descr '>f4' is not supported"},
		{1, `{'descr': '>c8', 'fortran_order': False, 'shape': (2, 3), }`, "big-endian descr '>c8'"},
		{1, `{'descr': '=f4', 'fortran_order': False, 'shape': (2, 3), }`, "descr '=f4' has no explicit byte order; numpy writes '<f4'"},
		{1, `{'descr': '|i2', 'fortran_order': False, 'shape': (2, 3), }`, "descr '|i2' has no explicit byte order"},
		{1, `{'descr': 'f8', 'fortran_order': False, 'shape': (2, 3), }`, "descr 'f8' has no explicit byte order"},
		{1, `{'descr': '|O', 'fortran_order': False, 'shape': (2,), }`, "object arrays are not supported"},
		{1, `{'descr': '<U3', 'fortran_order': False, 'shape': (2,), }`, "unknown descr '<U3'"},
		{1, `{'descr': 'float32', 'fortran_order': False, 'shape': (2,), }`, "unknown descr 'float32'"},
		{1, `{'descr': '<f04', 'fortran_order': False, 'shape': (2,), }`, "unknown descr '<f04'"},
		{1, `{'descr': '', 'fortran_order': False, 'shape': (2,), }`, "unknown descr ''"},
		{1, `{'descr': '|V3', 'fortran_order': False, 'shape': (2,), }`, "unknown descr '|V3'"},
		{1, "{'descr': '<\x01f4', 'fortran_order': False, 'shape': (2,), }", `unknown descr "<\x01f4"`},
		{1, `{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }`, "structured dtypes are not supported"},
		{1, `{'descr': ('<f4', (2,)), 'fortran_order': False, 'shape': (2,), }`, "structured dtypes are not supported"},
		{1, `{'descr': 5, 'fortran_order': False, 'shape': (2,), }`, "expected a quoted string"},
		{1, `{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }`, "fortran_order arrays are not supported"},
		{1, `{'descr': '<f4', 'fortran_order': 1, 'shape': (2, 3), }`, "fortran_order is not True or False"},
		{1, `{'descr': '<f4', 'fortran_order': false, 'shape': (2, 3), }`, "fortran_order is not True or False"},
		{1, `{'descr': '<f4', 'fortran_order': Falsey, 'shape': (2, 3), }`, "fortran_order is not True or False"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (5), }`, "is an int, not a tuple"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3], }`, "shape is not a tuple"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': 6, }`, "shape is not a tuple"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }`, "negative dimension"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (+2,), }`, "expected a dimension"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (02,), }`, "leading zero"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (1_000,), }`, "expected ',' or ')'"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (0x10,), }`, "expected ',' or ')'"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (2.0,), }`, "expected ',' or ')'"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (,), }`, "expected a dimension"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (2,,), }`, "expected a dimension"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (2 3), }`, "expected ',' or ')'"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551616,), }`, "does not fit in 64 bits"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904,), }`, "overflows"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (2 L,), }`, "expected ',' or ')'"},
		{3, `{'descr': '<f4', 'fortran_order': False, 'shape': (2L,), }`, "expected ',' or ')'"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (2l,), }`, "expected ',' or ')'"},
		{1, `{'descr': '<f4', 'fortran_order': False, }`, "missing key 'shape'"},
		{1, `{'descr': '<f4', 'shape': (2,), }`, "missing key 'fortran_order'"},
		{1, `{'fortran_order': False, 'shape': (2,), }`, "missing key 'descr'"},
		{1, `{}`, "missing key 'descr'"},
		{1, `{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}`, "duplicate key 'descr'"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'fortran_order': False, 'shape': (2,)}`, "duplicate key 'fortran_order'"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'shape': (2,)}`, "duplicate key 'shape'"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}`, "unexpected key 'extra'"},
		{1, `{descr: '<f4', 'fortran_order': False, 'shape': (2,)}`, "expected a quoted string"},
		{1, `{'descr' '<f4', 'fortran_order': False, 'shape': (2,)}`, "expected ':'"},
		{1, `{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}`, "expected ',' or '}'"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (2,),, }`, "expected a quoted string"},
		{1, `{, }`, "expected a quoted string"},
		{1, `{'descr': '\x3cf4', 'fortran_order': False, 'shape': (2,)}`, "escape sequences are not supported"},
		{1, `{'descr': '<f4", 'fortran_order': False, 'shape': (2,)}`, "expected ',' or '}'"},
		{1, `{'descr': u'<f4', 'fortran_order': False, 'shape': (2,)}`, "expected a quoted string"},
		{1, "{'descr': '<f4\n', 'fortran_order': False, 'shape': (2,)}", "unterminated string"},
		{1, `{'descr': '<f4`, "unterminated string"},
		{1, `{'descr': '<f4', 'fortran_order': False, 'shape': (2,)`, "expected ',' or '}'"},
		{1, ok + ` x`, "unexpected data after the dict"},
		{1, ok + ` # comment`, "unexpected data after the dict"},
		{1, ok + "\x00\x00", "unexpected data after the dict"},
		{1, ok + `}`, "unexpected data after the dict"},
		{1, `[` + ok + `]`, "expected '{'"},
		{1, ``, "expected '{'"},
		{4, ok, "unsupported format version 4.0"},
		{0, ok, "unsupported format version 0.0"},
	} {
		b := npyFile(tc.major, tc.dict)
		if tc.major == 0 || tc.major > 3 {
			b = npyFile(1, tc.dict)
			b[6] = tc.major
		}
		info, err := Parse(b)
		if err == nil || !strings.Contains(err.Error(), tc.want) || info != nil {
			t.Errorf("%q: %+v, %v; want error containing %q", tc.dict, info, err, tc.want)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "npy: ") {
			t.Errorf("%q: error %q lacks the package prefix", tc.dict, err)
		}
	}
	// The version byte after the major must be 0.
	b := npyFile(1, ok)
	b[7] = 1
	if _, err := Parse(b); err == nil || !strings.Contains(err.Error(), "version 1.1") {
		t.Errorf("version 1.1: %v", err)
	}
	// A v2.0 length field past MaxHeaderLen is refused before any waiting.
	b = npyFile(2, ok)[:12]
	binary.LittleEndian.PutUint32(b[8:], MaxHeaderLen+1)
	if _, err := Parse(b); err == nil || errors.Is(err, ErrShort) || !strings.Contains(err.Error(), "MaxHeaderLen") {
		t.Errorf("huge header length: %v", err)
	}
	// A huge descr is not echoed whole into the error.
	long := strings.Repeat("x", 10000)
	_, err := Parse(npyFile(1, `{'descr': '`+long+`', 'fortran_order': False, 'shape': ()}`))
	if err == nil || len(err.Error()) > 200 {
		t.Errorf("long descr: error of %d bytes", len(err.Error()))
	}
}

// TestParseAmbiguousVoid: a '|V1' array parses completely, with the dtype
// left to the caller.
func TestParseAmbiguousVoid(t *testing.T) {
	b := npyFile(1, `{'descr': '|V1', 'fortran_order': False, 'shape': (3, 4), }`)
	info, err := Parse(b)
	if err != ErrAmbiguousVoid || info == nil {
		t.Fatalf("got %+v, %v", info, err)
	}
	if info.DType != "" || !slices.Equal(info.Shape, []uint64{3, 4}) || info.DataOffset != len(b) {
		t.Errorf("got %+v", info)
	}
	// Errors other than the ambiguity still win.
	b = npyFile(1, `{'descr': '|V1', 'fortran_order': True, 'shape': (3, 4), }`)
	if info, err := Parse(b); err != ErrFortran || info != nil {
		t.Errorf("fortran |V1: %+v, %v", info, err)
	}
}

// ParseFields reads the header Parse would, leaving the descr and
// fortran_order to the caller: what Parse refuses for safetensors (a
// big-endian descr, a Fortran layout) comes back as written, while what
// breaks the format is refused the same way.
func TestParseFields(t *testing.T) {
	npy := func(dict string) []byte {
		b := []byte("\x93NUMPY\x01\x00")
		b = binary.LittleEndian.AppendUint16(b, uint16(len(dict)))
		return append(b, dict...)
	}
	b := npy("{'descr': '>c16', 'fortran_order': True, 'shape': (2, 3), }")
	if _, err := Parse(b); err == nil {
		t.Fatal("Parse accepted a big-endian complex128 array")
	}
	f, err := ParseFields(b)
	if err != nil {
		t.Fatal(err)
	}
	if f.Descr != ">c16" || !f.Fortran || !slices.Equal(f.Shape, []uint64{2, 3}) || f.DataOffset != len(b) || f.Version != [2]byte{1, 0} {
		t.Errorf("ParseFields = %+v", f)
	}
	for _, bad := range [][]byte{
		npy("{'descr': '<f4', 'fortran_order': False, 'shape': (5), }"),
		npy("{'descr': '<f4', 'shape': (1,), }"),
		[]byte("\x93NUMPY\x01\x01\x00\x00"),
	} {
		if _, err := ParseFields(bad); err == nil {
			t.Errorf("ParseFields(%q) accepted", bad)
		}
	}
	var se *ShortError
	if _, err := ParseFields(b[:len(b)-1]); !errors.As(err, &se) || se.Need != len(b) {
		t.Errorf("ParseFields of a cut header: %v, want a ShortError needing %d", err, len(b))
	}
}
