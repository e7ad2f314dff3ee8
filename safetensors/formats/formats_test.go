package formats

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/formats/msgpack"
	"github.com/safejaxfs/safejaxfs/safetensors/formats/pickle"
)

func writeFile(t testing.TB, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSniff(t *testing.T) {
	st := append(binary.LittleEndian.AppendUint64(nil, 2), "{}"...)
	for _, c := range []struct {
		head []byte
		want Format
	}{
		{st, Safetensors},
		{append(binary.LittleEndian.AppendUint64(nil, 4), "  {}"...), Safetensors},
		{[]byte("PK\x03\x04rest"), Zip},
		{[]byte("GGUF\x03\x00\x00\x00"), GGUF},
		{[]byte("\x93NUMPY\x01\x00"), NPY},
		{[]byte("\x89HDF\r\n\x1a\nxx"), HDF5},
		{[]byte{0x1f, 0x8b, 8, 0}, Gzip},
		{[]byte{0x28, 0xb5, 0x2f, 0xfd, 0}, Zstd},
		{[]byte("version https://git-lfs.github.com/spec/v1\n"), LFSPointer},
		{[]byte("  <!DOCTYPE html><html>"), HTML},
		{[]byte("<html><body>"), HTML},
		{[]byte(`{"error": "not found"}`), JSON},
		// 0x80 0x02: a pickle's PROTO 2, not a msgpack map...
		{[]byte{0x80, 0x02, 0x7d, 0x71, 0x00, 0x2e}, Pickle},
		{append([]byte{0x80, 0x02}, legacyMagic...), TorchLegacy},
		{append([]byte{0x80, 0x04, 0x95, 1, 0, 0, 0, 0, 0, 0, 0}, legacyMagic...), TorchLegacy},
		// ...whereas a fixmap is followed by its first key, a string.
		{[]byte{0x82, 0xa6, 'p', 'a', 'r', 'a', 'm', 's'}, Msgpack},
		{[]byte{0x81, 0xd9, 3, 'a', 'b', 'c'}, Msgpack},
		{[]byte{0xde, 0, 20, 0xa1, 'a'}, Msgpack},
		{[]byte{0x82, 0x02}, Unknown},          // a map whose first key is an int: not Flax
		{[]byte("tjgg\x01\x00\x00\x00"), GGML}, // u32 0x67676a74, little-endian
		{[]byte("hello"), Unknown},
	} {
		if got := Sniff(c.head, int64(len(c.head))+100); got != c.want {
			t.Errorf("Sniff(% x) = %v, want %v", c.head[:min(len(c.head), 12)], got, c.want)
		}
	}
	if got := Sniff([]byte{0x80}, 1); got != Msgpack {
		t.Errorf("a lone 0x80 (an empty msgpack map) is %v", got)
	}
}

// hostile inputs are refused with the rule broken, quickly and without
// allocating what their counts claim.
func TestHostileMsgpack(t *testing.T) {
	cases := map[string][]byte{
		"map32 of 2^32-1 entries":  {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'a'},
		"bin32 of 4 GB":            {0x81, 0xa1, 'a', 0xc6, 0xff, 0xff, 0xff, 0xff},
		"ext32 of 4 GB":            {0x81, 0xa1, 'a', 0xc9, 0xff, 0xff, 0xff, 0xff, 1},
		"deep":                     append([]byte{0x81, 0xa1, 'a'}, bytes.Repeat([]byte{0x91}, 100000)...),
		"invalid byte":             {0x81, 0xa1, 'a', 0xc1},
		"bad utf-8 key":            {0x81, 0xa2, 0xff, 0xfe, 0xc0},
		"trailing":                 {0x81, 0xa1, 'a', 0xc0, 0xc0},
		"duplicate key":            {0x82, 0xa1, 'a', 0x01, 0xa1, 'a', 0x02},
		"ext type 7":               {0x81, 0xa1, 'a', 0xd4, 7, 0},
		"array payload not a list": append([]byte{0x81, 0xa1, 'a', 0xc7, 3, 1}, 0x01, 0x02, 0x03),
		"size mismatch":            flaxArray([]uint64{4}, "float32", make([]byte, 15)),
		"unknown dtype":            flaxArray([]uint64{1}, "object", make([]byte, 8)),
	}
	// A million tiny entries: refused by the tensor bound, not slowly.
	big := []byte{0xdf, 0, 0x10, 0, 0}
	for i := 0; i < 1<<20; i++ {
		big = append(big, 0xa3, byte('a'+i%26), byte('a'+i/26%26), byte('a'+i/676%26), 0x01)
	}
	cases["1M entries"] = big
	for name, b := range cases {
		_, err := Open(writeFile(t, "x.msgpack", b))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		t.Logf("%s: %v", name, err)
	}
}

func flaxArray(shape []uint64, dtype string, data []byte) []byte {
	p := msgpack.AppendArrayHeader(nil, 3)
	p = msgpack.AppendArrayHeader(p, uint32(len(shape)))
	for _, d := range shape {
		p = msgpack.AppendUint(p, d)
	}
	p = msgpack.AppendStr(p, dtype)
	p = append(msgpack.AppendBinHeader(p, uint64(len(data))), data...)
	b := msgpack.AppendMapHeader(nil, 1)
	b = msgpack.AppendStr(b, "a")
	b = msgpack.AppendExtHeader(b, 1, uint64(len(p)))
	return append(b, p...)
}

func torchZip(t testing.TB, pkl []byte, members map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	add := func(name string, b []byte) {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(b)
	}
	add("archive/data.pkl", pkl)
	for n, b := range members {
		add("archive/data/"+n, b)
	}
	zw.Close()
	return buf.Bytes()
}

func TestHostilePickle(t *testing.T) {
	global := func(mod, name string) []byte { return []byte("c" + mod + "\n" + name + "\n") }
	cases := map[string]struct {
		pkl  []byte
		want string
	}{
		"os.system":                   {append(append([]byte{0x80, 2}, global("os", "system")...), ')', 'R', '.'), `refused global "os.system"`},
		"builtins.eval":               {append(append([]byte{0x80, 2}, global("builtins", "eval")...), '.'), `refused global "builtins.eval"`},
		"subprocess via STACK_GLOBAL": {[]byte("\x80\x04\x8c\nsubprocess\x8c\x05Popen\x93."), `refused global "subprocess.Popen"`},
		"INST":                        {[]byte("\x80\x02(ios\nsystem\n."), "INST"},
		"protocol 0 text int":         {[]byte("I1\n."), "INT"},
		"sparse tensor":               {append(append([]byte{0x80, 2}, global("torch._utils", "_rebuild_sparse_tensor")...), ')', 'R', '.'), "sparse tensors are not supported"},
		"memo miss":                   {[]byte("\x80\x02h\x05."), "never stored"},
		"huge LONG4":                  {[]byte("\x80\x02\x8b\xff\xff\xff\x7f."), "ends inside"},
		"huge BINUNICODE8":            {[]byte("\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f."), "ends inside"},
		"stack underflow":             {[]byte("\x80\x02R."), "underflow"},
		"deep marks":                  {append([]byte{0x80, 2}, bytes.Repeat([]byte{'('}, 100000)...), "MARKs open"},
		"no STOP":                     {[]byte("\x80\x02}"), "before STOP"},
		"self-containing list":        {[]byte("\x80\x02}X\x01\x00\x00\x00a]q\x00h\x00as."), "contains itself"},
		"deep tuples":                 {append(append([]byte{0x80, 2, ')'}, bytes.Repeat([]byte{0x85}, 100000)...), '.'), "levels deep"},
	}
	for name, c := range cases {
		_, err := Open(writeFile(t, "x.pt", torchZip(t, c.pkl, nil)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, c.want)
		}
	}
	// Containers shared many times over (a "billion laughs"): the walk is
	// bounded, not exponential.
	lists := []byte{0x80, 2, ']', 'q', 0, 'N', 'a'}
	for i := 1; i < 60; i++ {
		lists = append(lists, '0', ']', 'q', byte(i), '(', 'h', byte(i-1), 'h', byte(i-1), 'e')
	}
	lists = append(lists, '.')
	_, err := Open(writeFile(t, "x.pt", torchZip(t, lists, nil)))
	if err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("shared containers: %v, want the walk's bound", err)
	}
}

// The memo counts with the values: a run of MEMOIZE (one byte each) cannot
// grow it past the limit.
func TestPickleMemoBounded(t *testing.T) {
	pkl := append(append([]byte{0x80, 4, 'N'}, bytes.Repeat([]byte{0x94}, 5000)...), '.')
	_, _, err := pickle.Load(pkl, &torchHooks{storages: map[string]*storage{}}, pickle.Limits{MaxItems: 1000, MaxMarks: 16})
	if err == nil || !strings.Contains(err.Error(), "more than 1000 values") {
		t.Fatalf("err = %v", err)
	}
}

func TestPickleRefusedNamesGlobal(t *testing.T) {
	_, _, err := pickle.Load([]byte("\x80\x02cposix\nsystem\n."), &torchHooks{storages: map[string]*storage{}}, pickle.DefaultLimits)
	if !errors.Is(err, ErrRefusedGlobal) || !strings.Contains(err.Error(), "posix.system") {
		t.Fatalf("err = %v", err)
	}
}

func TestHostileGGUF(t *testing.T) {
	hdr := func(version uint32, nt, nkv uint64) []byte {
		b := []byte("GGUF")
		b = binary.LittleEndian.AppendUint32(b, version)
		b = binary.LittleEndian.AppendUint64(b, nt)
		return binary.LittleEndian.AppendUint64(b, nkv)
	}
	str := func(b []byte, s string) []byte {
		return append(binary.LittleEndian.AppendUint64(b, uint64(len(s))), s...)
	}
	cases := map[string][]byte{
		"2^63 tensors":   hdr(3, 1<<63, 0),
		"2^40 kvs":       hdr(3, 0, 1<<40),
		"huge string":    binary.LittleEndian.AppendUint64(hdr(3, 0, 1), 1<<62),
		"huge array":     binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(str(hdr(3, 0, 1), "k"), 9), 4), 1<<60),
		"version 1":      hdr(1, 0, 0),
		"big-endian":     hdr(0x03000000, 0, 0),
		"5 dims":         binary.LittleEndian.AppendUint32(str(hdr(3, 1, 0), "t"), 5),
		"partial block":  append(binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint32(str(hdr(3, 1, 0), "t"), 1), 31), 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
		"past the end":   append(binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint32(str(hdr(3, 1, 0), "t"), 1), 1<<40), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
		"unknown type":   append(binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint32(str(hdr(3, 1, 0), "t"), 1), 4), 99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
		"alignment 3":    binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(str(hdr(3, 0, 1), "general.alignment"), 4), 3),
		"duplicate keys": binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(str(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(str(hdr(3, 0, 2), "k"), 4), 1), "k"), 4), 1),
	}
	for name, b := range cases {
		if _, err := Open(writeFile(t, "x.gguf", b)); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

func TestHostileNPY(t *testing.T) {
	npy := func(dict string, data []byte) []byte {
		b := []byte("\x93NUMPY\x01\x00")
		b = binary.LittleEndian.AppendUint16(b, uint16(len(dict)))
		return append(append(b, dict...), data...)
	}
	cases := map[string][]byte{
		"object":      npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", make([]byte, 8)),
		"string":      npy("{'descr': '<U3', 'fortran_order': False, 'shape': (1,), }", make([]byte, 12)),
		"structured":  npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", make([]byte, 4)),
		"short data":  npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", make([]byte, 8)),
		"long data":   npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", make([]byte, 8)),
		"overflow":    npy("{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", nil),
		"code":        npy("{'descr': __import__('os').system('x'), 'fortran_order': False, 'shape': (1,), }", nil),
		"missing key": npy("{'descr': '<f4', 'shape': (1,), }", make([]byte, 4)),
		"huge dim":    npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 18446744073709551615), }", nil),
		"65 dims":     npy("{'descr': '<f4', 'fortran_order': False, 'shape': ("+strings.Repeat("1, ", 65)+"), }", make([]byte, 4)),
		"header len":  []byte("\x93NUMPY\x02\x00\xff\xff\xff\x7f{"),
	}
	for name, b := range cases {
		if _, err := Open(writeFile(t, "x.npy", b)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestGather checks strided views against a direct index computation.
func TestGather(t *testing.T) {
	src := make([]byte, 4*60)
	for i := range 60 {
		binary.LittleEndian.PutUint32(src[4*i:], uint32(i))
	}
	for _, c := range []struct {
		shape   []uint64
		strides []int64
		offset  int64
	}{
		{[]uint64{4, 5}, []int64{1, 4}, 0},       // a transpose
		{[]uint64{3, 2}, []int64{10, 3}, 7},      // gaps, an offset
		{[]uint64{2, 3, 4}, []int64{1, 2, 6}, 0}, // Fortran order
		{[]uint64{5}, []int64{0}, 3},             // a broadcast
		{[]uint64{}, []int64{}, 9},               // a scalar
		{[]uint64{0, 3}, []int64{3, 1}, 59},      // empty
	} {
		start, err := checkView(c.shape, c.strides, c.offset, 4, int64(len(src)))
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := gather(&out, src, &layout{start: start, elem: 4, shape: c.shape, strides: c.strides}); err != nil {
			t.Fatal(err)
		}
		var want []byte
		n, _ := numel(c.shape)
		idx := make([]uint64, len(c.shape))
		for k := uint64(0); k < n; k++ {
			rem := k
			for d := len(c.shape) - 1; d >= 0; d-- {
				idx[d] = rem % c.shape[d]
				rem /= c.shape[d]
			}
			e := c.offset
			for d := range idx {
				e += int64(idx[d]) * c.strides[d]
			}
			want = append(want, src[4*e:4*e+4]...)
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Errorf("shape %v strides %v offset %d: got % x, want % x", c.shape, c.strides, c.offset, out.Bytes(), want)
		}
	}
	if _, err := checkView([]uint64{4, 5}, []int64{1, 4}, 41, 4, 240); err == nil {
		t.Error("a view past the storage's end is accepted")
	}
	if _, err := checkView([]uint64{2}, []int64{-1}, 1, 4, 240); err == nil {
		t.Error("a negative stride is accepted")
	}
	if _, err := checkView([]uint64{1 << 62, 4}, []int64{1 << 62, 1}, 0, 4, 240); err == nil {
		t.Error("overflowing strides are accepted")
	}
}

func TestDTypeNames(t *testing.T) {
	for _, d := range []safetensors.DType{safetensors.F32, safetensors.BF16, safetensors.F8_E4M3, safetensors.BOOL, safetensors.C64} {
		name := MsgpackName(d)
		if et, err := numpyType(name); err != nil || et.dtype != d || et.foreign != "" {
			t.Errorf("%s -> %q -> %v, %v", d, name, et, err)
		}
	}
	if MsgpackName(safetensors.F4) != "" {
		t.Error("F4 has a msgpack name, though ml_dtypes stores a byte per element")
	}
}
