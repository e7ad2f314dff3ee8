package npy

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that its errors are consistent
// (a ShortError asks for more than it got; other errors come without an
// Info, except ErrAmbiguousVoid), that the result depends only on the header
// bytes, and that whatever parses comes back identically through Header.
func FuzzParse(f *testing.F) {
	if raw, err := os.ReadFile(goldenPath); err == nil {
		var g goldenFile
		if json.Unmarshal(raw, &g) == nil {
			for _, e := range g.Cases {
				if b, err := hex.DecodeString(e.Hex); err == nil && e.Hex != "" {
					f.Add(b)
				}
			}
		}
	}
	for _, d := range []string{
		`{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }`,
		`{"shape":(2,3,),"descr":"<u1","fortran_order":True}`,
		`{'descr': '|V1', 'fortran_order': False, 'shape': (3, 4), }`,
		`{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }`,
		`{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615,), }`,
	} {
		for _, major := range []byte{1, 2, 3} {
			f.Add(npyFile(major, d))
		}
	}
	f.Add([]byte{})
	f.Add([]byte("\x93NUMPY\x01\x00"))

	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := Parse(b)
		if err != nil {
			var se *ShortError
			if errors.As(err, &se) {
				if info != nil || se.Have != len(b) || se.Need <= len(b) || se.Need > magicLen+4+MaxHeaderLen {
					t.Fatalf("bad ShortError %+v for %d bytes (info %+v)", se, len(b), info)
				}
				return
			}
			if err != ErrAmbiguousVoid {
				if info != nil {
					t.Fatalf("error %v with Info %+v", err, info)
				}
				return
			}
			if info == nil || info.DType != "" {
				t.Fatalf("ErrAmbiguousVoid with Info %+v", info)
			}
		}
		if info.DataOffset > len(b) || info.DataOffset < magicLen+2 || info.Shape == nil {
			t.Fatalf("Info %+v for %d bytes", info, len(b))
		}

		// Only the header decides: the exact header parses the same, one
		// byte less asks for more.
		again, err2 := Parse(b[:info.DataOffset])
		if err2 != err || !sameInfo(again, info) {
			t.Fatalf("header alone: %+v, %v; whole input: %+v, %v", again, err2, info, err)
		}
		if _, err := Parse(b[:info.DataOffset-1]); !errors.Is(err, ErrShort) {
			t.Fatalf("header cut by one byte: %v", err)
		}

		dtype := info.DType
		if dtype == "" {
			dtype = "F8_E4M3" // any 8-bit float writes the same '|V1'
		}
		h, herr := Header(dtype, info.Shape)
		if herr != nil {
			// The input may spell the shape more compactly ("1,1," vs
			// "1, 1, ") than Header; nothing else may fail.
			if strings.Contains(herr.Error(), "MaxHeaderLen") {
				return
			}
			t.Fatalf("Header(%s, %v) of a parsed header: %v", dtype, info.Shape, herr)
		}
		back, err3 := Parse(h)
		if err3 != err || back == nil || back.DType != info.DType || !slices.Equal(back.Shape, info.Shape) ||
			back.Fortran || back.DataOffset != len(h) {
			t.Fatalf("Parse(Header(%+v)) = %+v, %v", info, back, err3)
		}
	})
}

func sameInfo(a, b *Info) bool {
	return a != nil && b != nil && a.DType == b.DType && slices.Equal(a.Shape, b.Shape) &&
		a.Fortran == b.Fortran && a.DataOffset == b.DataOffset && a.Version == b.Version
}
