package safetensors

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func readBytes(b []byte) (*Header, error) {
	return ReadHeader(bytes.NewReader(b), int64(len(b)))
}

func TestReadHeaderRejects(t *testing.T) {
	t.Parallel()
	for _, c := range badCases {
		t.Run(c.name, func(t *testing.T) {
			h, err := readBytes(c.file)
			if err == nil {
				t.Fatalf("accepted: %+v", h)
			}
			if !errors.Is(err, c.rule) {
				t.Fatalf("error %q is not %q", err, c.rule)
			}
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %T is not a *FormatError", err)
			}
			if fe.Key != c.key {
				t.Errorf("Key = %q, want %q (error %q)", fe.Key, c.key, err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "safetensors: ") {
				t.Errorf("message %q lacks the package prefix", msg)
			}
			if c.key != "" && !strings.Contains(msg, "tensor "+strconv.Quote(c.key)+": ") {
				t.Errorf("message %q does not name tensor %q", msg, c.key)
			}
		})
	}
}

// The rule each bad case breaks must be the only thing wrong with it where
// that is possible: these messages pin the details users will see.
func TestReadHeaderMessages(t *testing.T) {
	t.Parallel()
	cases := []struct {
		file []byte
		want string
	}{
		{file(`{"params.x":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}`, zeros(12)),
			`safetensors: tensor "params.x": data_offsets [0,12] hold 12 bytes but F32 [2,2] needs 16`},
		{readTestdataOrNil("abuse_attempt_1.safetensors"),
			`safetensors: header length 1000 runs past the end of the 88-byte file`},
		{file(`{"__metadata__":{"epoch":3}}`, nil),
			`safetensors: __metadata__ value for "epoch" is a number, not a string`},
		{file(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}}`, zeros(12)),
			`safetensors: tensor "b": data_offsets [8,12] leave a gap: the data before ends at 4`},
		{file(`{"w\n":{"dtype":"bf16","shape":[],"data_offsets":[0,2]}}`, zeros(2)),
			`safetensors: tensor "w\n": unknown dtype "bf16"`},
	}
	for _, c := range cases {
		_, err := readBytes(c.file)
		if err == nil || err.Error() != c.want {
			t.Errorf("got %v\nwant %s", err, c.want)
		}
	}
}

func readTestdataOrNil(name string) []byte {
	b, _ := readFileQuiet(testdataPath(name))
	return b
}

func TestReadHeaderAccepts(t *testing.T) {
	t.Parallel()
	i32 := func(key string, shape []uint64, b, e uint64) Tensor {
		return Tensor{Key: key, DType: I32, Shape: shape, Begin: b, End: e}
	}
	cases := []struct {
		name    string
		file    []byte
		meta    map[string]string
		tensors []Tensor
	}{
		{"reference test_deserialization", []byte("<\x00\x00\x00\x00\x00\x00\x00{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}" + string(zeros(16))),
			nil, []Tensor{i32("test", []uint64{2, 2}, 0, 16)}},
		{"scalar shape []", []byte("8\x00\x00\x00\x00\x00\x00\x00{\"test\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,4]}}\x00\x00\x00\x00"),
			nil, []Tensor{i32("test", []uint64{}, 0, 4)}},
		{"zero-size tensor, spaces in offsets", []byte("<\x00\x00\x00\x00\x00\x00\x00{\"test\":{\"dtype\":\"I32\",\"shape\":[2,0],\"data_offsets\":[0, 0]}}"),
			nil, []Tensor{i32("test", []uint64{2, 0}, 0, 0)}},
		{"zero-size tensors keep a stable order", file(`{"z2":{"dtype":"U8","shape":[0],"data_offsets":[4,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"z1":{"dtype":"U8","shape":[0],"data_offsets":[4,4]},"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}}`, zeros(4)),
			nil, []Tensor{
				{Key: "e", DType: F32, Shape: []uint64{0, 3}, Begin: 0, End: 0},
				{Key: "a", DType: U8, Shape: []uint64{4}, Begin: 0, End: 4},
				{Key: "z1", DType: U8, Shape: []uint64{0}, Begin: 4, End: 4},
				{Key: "z2", DType: U8, Shape: []uint64{0}, Begin: 4, End: 4},
			}},
		{"empty header", file("{}", nil), nil, []Tensor{}},
		{"empty header, padded", file("{}      ", nil), nil, []Tensor{}},
		{"reference whitespace-padded header", []byte("\x06\x00\x00\x00\x00\x00\x00\x00{}\x0D\x20\x09\x0A"), nil, []Tensor{}},
		{"whitespace before and inside", file("\t\r\n {\n \"w\" : { \"dtype\" : \"U8\" , \"shape\" : [ 2 ] , \"data_offsets\" : [ 0 , 2 ] } \n}\n", zeros(2)),
			nil, []Tensor{{Key: "w", DType: U8, Shape: []uint64{2}, Begin: 0, End: 2}}},
		{"empty metadata is kept non-nil", file(`{"__metadata__":{}}`, nil), map[string]string{}, []Tensor{}},
		{"metadata anywhere in the object", file(`{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"__metadata__":{"format":"pt","b":"<&>"}}`, zeros(1)),
			map[string]string{"format": "pt", "b": "<&>"}, []Tensor{{Key: "w", DType: U8, Shape: []uint64{1}, End: 1}}},
		{"non-ASCII keys", file(`{"层.权重":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"ключ/é~":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, zeros(2)),
			nil, []Tensor{{Key: "层.权重", DType: U8, Shape: []uint64{1}, End: 1}, {Key: "ключ/é~", DType: U8, Shape: []uint64{1}, Begin: 1, End: 2}}},
		{"html characters in keys", file(`{"<a>&b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, zeros(1)),
			nil, []Tensor{{Key: "<a>&b", DType: U8, Shape: []uint64{1}, End: 1}}},
		{"escapes and control characters in keys", file(`{"\u0001a\nb\"\\\/\b\f\r\t\u00e9\ud83d\ude00\u2028":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, zeros(1)),
			nil, []Tensor{{Key: "\x01a\nb\"\\/\b\f\r\té😀\u2028", DType: U8, Shape: []uint64{1}, End: 1}}},
		{"empty key and dotted keys", file(`{"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a..b.":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, zeros(2)),
			nil, []Tensor{{Key: "", DType: U8, Shape: []uint64{1}, End: 1}, {Key: "a..b.", DType: U8, Shape: []uint64{1}, Begin: 1, End: 2}}},
		{"escaped dtype and field names", file(`{"w":{"d\u0074ype":"F\u00332","sh\u0061pe":[1],"data_offsets":[0,4]}}`, zeros(4)),
			nil, []Tensor{{Key: "w", DType: F32, Shape: []uint64{1}, End: 4}}},
		{"unknown fields are ignored, like serde", file(`{"w":{"x":{"y":[1,-2.5e+3,true,false,null,"s"]},"dtype":"U8","shape":[1],"data_offsets":[0,1],"z":-0}}`, zeros(1)),
			nil, []Tensor{{Key: "w", DType: U8, Shape: []uint64{1}, End: 1}}},
		{"entries out of offset order", file(`{"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]},"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}`, zeros(5)),
			nil, []Tensor{{Key: "a", DType: U8, Shape: []uint64{3}, End: 3}, {Key: "b", DType: U8, Shape: []uint64{2}, Begin: 3, End: 5}}},
		{"sub-byte dtypes", file(`{"f4":{"dtype":"F4","shape":[1,2],"data_offsets":[0,1]},"f6":{"dtype":"F6_E3M2","shape":[4],"data_offsets":[1,4]}}`, zeros(4)),
			nil, []Tensor{{Key: "f4", DType: F4, Shape: []uint64{1, 2}, End: 1}, {Key: "f6", DType: F6_E3M2, Shape: []uint64{4}, Begin: 1, End: 4}}},
		{"largest header length", nil, nil, nil}, // filled in below
	}
	// A header of exactly MaxHeaderSize bytes is allowed.
	// Built in place: under -race every 100 MB copy costs a second.
	big := make([]byte, 8+MaxHeaderSize)
	copy(big, fileN(MaxHeaderSize, "{}"))
	spaces := big[10:]
	spaces[0] = ' '
	for n := 1; n < len(spaces); n *= 2 {
		copy(spaces[n:], spaces[:n])
	}
	cases[len(cases)-1].file = big
	cases[len(cases)-1].tensors = []Tensor{}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, err := readBytes(c.file)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(h.Metadata, c.meta) {
				t.Errorf("Metadata = %#v, want %#v", h.Metadata, c.meta)
			}
			if (h.Metadata == nil) != (c.meta == nil) {
				t.Errorf("Metadata nil = %v, want %v", h.Metadata == nil, c.meta == nil)
			}
			if !reflect.DeepEqual(h.Tensors, c.tensors) {
				t.Errorf("Tensors = %+v\nwant %+v", h.Tensors, c.tensors)
			}
			for _, ts := range h.Tensors {
				if ts.Shape == nil {
					t.Errorf("tensor %q has a nil shape", ts.Key)
				}
			}
			if got, want := h.DataOffset()+int64(h.DataSize()), int64(len(c.file)); got != want {
				t.Errorf("DataOffset+DataSize = %d, want the file size %d", got, want)
			}
		})
	}
}

// ReadHeader reads the header only: a reader that fails past 8+N proves the
// data is never touched.
func TestReadHeaderDoesNotReadData(t *testing.T) {
	t.Parallel()
	b := file(`{"w":{"dtype":"U8","shape":[1000000],"data_offsets":[0,1000000]}}`, nil)
	r := &limitedReaderAt{b: b}
	h, err := ReadHeader(r, int64(len(b))+1_000_000)
	if err != nil {
		t.Fatal(err)
	}
	if h.DataSize() != 1_000_000 || r.maxEnd > int64(len(b)) {
		t.Fatalf("DataSize %d, read up to %d of a %d-byte header", h.DataSize(), r.maxEnd, len(b))
	}
}

type limitedReaderAt struct {
	b      []byte
	maxEnd int64
}

func (r *limitedReaderAt) ReadAt(p []byte, off int64) (int, error) {
	r.maxEnd = max(r.maxEnd, off+int64(len(p)))
	if off+int64(len(p)) > int64(len(r.b)) {
		return 0, errors.New("read of the data region")
	}
	return copy(p, r.b[off:]), nil
}

func TestReadHeaderIOError(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	_, err := ReadHeader(errReaderAt{boom}, 100)
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want it to wrap %v", err, boom)
	}
	var fe *FormatError
	if errors.As(err, &fe) {
		t.Fatalf("an I/O error was reported as a format error: %v", err)
	}
}

type errReaderAt struct{ err error }

func (r errReaderAt) ReadAt([]byte, int64) (int, error) { return 0, r.err }

// TestEntriesSizedByCount checks that parsing reserves as many entries as
// the header has (long keys, as DeepSeek-V3's, once made it reserve 1.6x)
// and room for their shapes by that count, and still parses a header whose
// field names are spelled with escapes.
func TestEntriesSizedByCount(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("{")
	const n = 1000
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"model.layers.%d.mlp.experts.%d.down_proj.weight_scale_inv":{"dtype":"F32","shape":[1],"data_offsets":[%d,%d]}`, i, i, 4*i, 4*i+4)
	}
	b.WriteString("}")
	p, err := parseHeader([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.tensors) != n || cap(p.tensors) != n {
		t.Errorf("%d entries in a slice of %d, want %d in %d", len(p.tensors), cap(p.tensors), n, n)
	}
	// One dimension each: the shapes share one block sized for two an
	// entry, not a block of 4096 dimensions.
	if c := cap(p.arena); c != 2*n {
		t.Errorf("the shapes' block holds %d dimensions, want %d", c, 2*n)
	}
	esc := `{"a":{"dtype":"F32","shape":[1],"data\u005foffsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`
	if p, err := parseHeader([]byte(esc)); err != nil || len(p.tensors) != 2 {
		t.Errorf("escaped field names: %v", err)
	}
}
