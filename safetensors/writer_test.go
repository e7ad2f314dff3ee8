package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func f32le(vals ...float32) []byte {
	var b []byte
	for _, v := range vals {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

func writeBytes(t *testing.T, sources []Source, meta map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := Write(&buf, sources, meta)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("Write returned %d, wrote %d", n, buf.Len())
	}
	return buf.Bytes()
}

// Golden vectors: the exact bytes the reference test suite
// (safetensors/src/tensor.rs) asserts its serializer produces.
func TestWriteGolden(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		sources []Source
		meta    map[string]string
		want    []byte
	}{
		{"test_serialization",
			[]Source{{Key: "attn.0", DType: F32, Shape: []uint64{1, 2, 3}, Data: Bytes(f32le(0, 1, 2, 3, 4, 5))}}, nil,
			[]byte{
				64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100,
				116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34,
				58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115,
				101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
				0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
			}},
		{"test_serialization_forced_alignement",
			[]Source{{Key: "attn0", DType: F32, Shape: []uint64{1, 1, 2, 3}, Data: Bytes(f32le(0, 1, 2, 3, 4, 5))}}, nil,
			[]byte{
				72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34, 58, 123, 34, 100, 116,
				121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58,
				91, 49, 44, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102,
				115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 32, 32, 32, 32, 32,
				32, 32, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0,
				160, 64,
			}},
		{"test_serialization_fp4",
			[]Source{{Key: "attn.0", DType: F4, Shape: []uint64{1, 2}, Data: Bytes{0}}}, nil,
			[]byte{
				64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100,
				116, 121, 112, 101, 34, 58, 34, 70, 52, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58,
				91, 49, 44, 50, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115, 101, 116,
				115, 34, 58, 91, 48, 44, 49, 93, 125, 125, 32, 32, 32, 32, 0,
			}},
		{"test_empty", nil, nil,
			[]byte{8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32}},
		{"test_empty with metadata", nil, map[string]string{"framework": "pt"},
			[]byte{
				40, 0, 0, 0, 0, 0, 0, 0, 123, 34, 95, 95, 109, 101, 116, 97, 100, 97, 116, 97, 95,
				95, 34, 58, 123, 34, 102, 114, 97, 109, 101, 119, 111, 114, 107, 34, 58, 34, 112,
				116, 34, 125, 125, 32, 32, 32, 32, 32,
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := writeBytes(t, c.sources, c.meta)
			if !bytes.Equal(got, c.want) {
				t.Fatalf("got  %q\nwant %q", got, c.want)
			}
			if _, err := readBytes(got); err != nil {
				t.Fatalf("own output refused: %v", err)
			}
		})
	}
}

func TestWriteHeaderJSON(t *testing.T) {
	t.Parallel()
	u8 := func(key string) Source { return Source{Key: key, DType: U8, Shape: []uint64{1}, Data: Bytes{7}} }
	cases := []struct {
		name    string
		sources []Source
		meta    map[string]string
		want    string // JSON without padding
	}{
		{"sorted by dtype descending, then key bytewise",
			[]Source{
				{Key: "b", DType: BF16, Shape: []uint64{1}, Data: Bytes{0, 0}},
				{Key: "Z", DType: U8, Shape: []uint64{}, Data: Bytes{0}},
				{Key: "a", DType: F32, Shape: []uint64{1}, Data: Bytes{0, 0, 0, 0}},
				{Key: "é", DType: U8, Shape: []uint64{2}, Data: Bytes{0, 0}},
			}, nil,
			`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[4,6]},"Z":{"dtype":"U8","shape":[],"data_offsets":[6,7]},"é":{"dtype":"U8","shape":[2],"data_offsets":[7,9]}}`},
		{"metadata first, keys sorted, nothing HTML-escaped",
			[]Source{u8("<b>&")}, map[string]string{"z": "1", "a": "</script>", "m": "&amp;"},
			`{"__metadata__":{"a":"</script>","m":"&amp;","z":"1"},"<b>&":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`},
		{"empty metadata is written", nil, map[string]string{}, `{"__metadata__":{}}`},
		{"serde_json escapes",
			[]Source{u8("\"\\\b\f\n\r\t\x00\x01\x1f\x7f/é\u2028\u2029😀")}, nil,
			`{"\"\\\b\f\n\r\t\u0000\u0001\u001f` + "\x7f/é\u2028\u2029😀" + `":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`},
		{"zero-size and scalar tensors",
			[]Source{
				{Key: "s", DType: I64, Shape: []uint64{}, Data: Bytes(zeros(8))},
				{Key: "e", DType: I64, Shape: []uint64{0, 5}, Data: Bytes{}},
				{Key: "f", DType: F4, Shape: []uint64{4}, Data: Bytes{1, 2}},
			}, nil,
			`{"e":{"dtype":"I64","shape":[0,5],"data_offsets":[0,0]},"s":{"dtype":"I64","shape":[],"data_offsets":[0,8]},"f":{"dtype":"F4","shape":[4],"data_offsets":[8,10]}}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, err := Plan(c.sources, c.meta)
			if err != nil {
				t.Fatal(err)
			}
			n := binary.LittleEndian.Uint64(l.Header)
			if n != uint64(len(l.Header)-8) || n%8 != 0 {
				t.Fatalf("N = %d for a %d-byte header", n, len(l.Header)-8)
			}
			js := string(l.Header[8:])
			if got := strings.TrimRight(js, " "); got != c.want {
				t.Fatalf("got  %s\nwant %s", got, c.want)
			}
			if pad := len(js) - len(c.want); pad < 0 || pad > 7 {
				t.Fatalf("padding %d", pad)
			}
			out := writeBytes(t, c.sources, c.meta)
			h, err := readBytes(out)
			if err != nil {
				t.Fatalf("own output refused: %v", err)
			}
			if len(h.Tensors) != len(c.sources) {
				t.Fatalf("read back %d tensors, wrote %d", len(h.Tensors), len(c.sources))
			}
		})
	}
}

func TestPlanOrder(t *testing.T) {
	t.Parallel()
	sources := []Source{
		{Key: "c", DType: U8, Shape: []uint64{1}},
		{Key: "b", DType: F64, Shape: []uint64{1}},
		{Key: "a", DType: U8, Shape: []uint64{1}},
	}
	l, err := Plan(sources, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 2, 0}; !slices.Equal(l.Order, want) {
		t.Fatalf("Order = %v, want %v", l.Order, want)
	}
	if l.Tensors[1].Key != "a" || l.Tensors[1].Begin != 8 || l.DataSize() != 10 {
		t.Fatalf("Tensors = %+v", l.Tensors)
	}
}

func TestPlanRejects(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		sources []Source
		meta    map[string]string
		rule    error
		key     string
	}{
		{"duplicate key", []Source{{Key: "w", DType: U8, Shape: []uint64{1}}, {Key: "w", DType: F32, Shape: []uint64{1}}}, nil, ErrDuplicateKey, "w"},
		{"__metadata__ as a tensor key", []Source{{Key: "__metadata__", DType: U8, Shape: []uint64{1}}}, nil, ErrMetadata, "__metadata__"},
		{"key not UTF-8", []Source{{Key: "a\xff", DType: U8, Shape: []uint64{1}}}, nil, ErrHeaderUTF8, "a\xff"},
		{"metadata not UTF-8", nil, map[string]string{"k": "\xc3"}, ErrHeaderUTF8, ""},
		{"unknown dtype", []Source{{Key: "w", DType: 99, Shape: []uint64{1}}}, nil, ErrUnknownDType, "w"},
		{"shape overflow", []Source{{Key: "w", DType: F32, Shape: []uint64{1 << 32, 1 << 31}}}, nil, ErrShapeOverflow, "w"},
		{"sub-byte", []Source{{Key: "w", DType: F6_E2M3, Shape: []uint64{3}}}, nil, ErrSubByte, "w"},
		{"total size overflow", hugeSources(9), nil, ErrShapeOverflow, "i"},
		{"header too large", nil, map[string]string{"k": strings.Repeat("a", MaxHeaderSize)}, ErrHeaderTooLarge, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Plan(c.sources, c.meta)
			if !errors.Is(err, c.rule) {
				t.Fatalf("err = %v, want %v", err, c.rule)
			}
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Key != c.key {
				t.Fatalf("err = %#v, want a *FormatError for key %q", err, c.key)
			}
			if _, err := Write(io.Discard, c.sources, c.meta); !errors.Is(err, c.rule) {
				t.Fatalf("Write err = %v, want %v", err, c.rule)
			}
		})
	}
}

// Every file the reference library wrote must come back byte for byte, from
// each kind of source the writer has a path for.
func TestRoundTripTestdata(t *testing.T) {
	t.Parallel()
	for _, name := range testdataFiles {
		t.Run(name, func(t *testing.T) {
			orig := readTestdata(t, name)
			f, err := Open(testdataPath(name))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if len(f.Tensors) == 0 {
				t.Fatal("no tensors")
			}
			kinds := map[string]func(i int, ts *Tensor) Source{
				"fd": func(i int, ts *Tensor) Source {
					return Source{Data: f.Fd(), Off: f.DataOffset() + int64(ts.Begin)}
				},
				"Bytes of the mmap": func(i int, ts *Tensor) Source {
					return Source{Data: Bytes(f.Bytes(i))}
				},
				"File": func(i int, ts *Tensor) Source {
					return Source{Data: f, Off: f.DataOffset() + int64(ts.Begin)}
				},
				"plain ReaderAt": func(i int, ts *Tensor) Source {
					return Source{Data: bytes.NewReader(orig), Off: f.DataOffset() + int64(ts.Begin)}
				},
			}
			for kind, mk := range kinds {
				sources := make([]Source, len(f.Tensors))
				// Reversed, so the writer's sort has work to do.
				for i := range f.Tensors {
					ts := &f.Tensors[i]
					s := mk(i, ts)
					s.Key, s.DType, s.Shape = ts.Key, ts.DType, ts.Shape
					sources[len(sources)-1-i] = s
				}
				var buf bytes.Buffer
				if _, err := Write(&buf, sources, f.Metadata); err != nil {
					t.Fatalf("%s: %v", kind, err)
				}
				if !bytes.Equal(buf.Bytes(), orig) {
					t.Fatalf("%s: rewrite differs from the original (%d vs %d bytes)", kind, buf.Len(), len(orig))
				}
				// And to a file, where *os.File sources take copy_file_range.
				out := filepath.Join(t.TempDir(), "out.safetensors")
				of, err := os.Create(out)
				if err != nil {
					t.Fatal(err)
				}
				n, err := Write(of, sources, f.Metadata)
				if cerr := of.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					t.Fatalf("%s to a file: %v", kind, err)
				}
				got, _ := os.ReadFile(out)
				if n != int64(len(got)) || !bytes.Equal(got, orig) {
					t.Fatalf("%s to a file: rewrite differs (returned %d, %d bytes)", kind, n, len(got))
				}
			}
		})
	}
}

// bigSources makes a checkpoint whose tensors are large enough for the
// direct-write and copy_file_range paths, with distinct bytes everywhere.
func bigSources(data []byte, src io.ReaderAt, base int64) []Source {
	sizes := []uint64{3 << 20, 100, 200 << 10, 4, 1 << 20}
	var out []Source
	off := base
	for i, s := range sizes {
		out = append(out, Source{Key: string(rune('a' + i)), DType: U8, Shape: []uint64{s}, Data: src, Off: off})
		off += int64(s)
	}
	return out
}

func patterned(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>11)
	}
	return b
}

func TestWriteFileToFile(t *testing.T) {
	t.Parallel()
	data := patterned(5<<20 + 1024)
	srcPath := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(srcPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(srcPath)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	want := writeBytes(t, bigSources(data, Bytes(data), 17), map[string]string{"k": "v"})

	for _, flags := range []int{os.O_WRONLY | os.O_CREATE | os.O_TRUNC, os.O_WRONLY | os.O_CREATE | os.O_TRUNC | os.O_APPEND} {
		out := filepath.Join(t.TempDir(), "out")
		dst, err := os.OpenFile(out, flags, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		n, err := Write(dst, bigSources(data, src, 17), map[string]string{"k": "v"})
		dst.Close()
		if err != nil {
			t.Fatalf("flags %#x: %v", flags, err)
		}
		got, _ := os.ReadFile(out)
		if n != int64(len(want)) || !bytes.Equal(got, want) {
			t.Fatalf("flags %#x: file differs from the in-memory write (n=%d, %d vs %d bytes)", flags, n, len(got), len(want))
		}
	}
	// Through a generic ReaderAt into a non-file writer as well.
	got := writeBytes(t, bigSources(data, io.NewSectionReader(src, 0, int64(len(data))), 17), map[string]string{"k": "v"})
	if !bytes.Equal(got, want) {
		t.Fatal("ReaderAt path differs")
	}
}

func TestWriteShortSource(t *testing.T) {
	t.Parallel()
	data := patterned(300 << 10)
	srcPath := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(srcPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(srcPath)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	for _, size := range []uint64{10, 200 << 10} {
		for name, d := range map[string]io.ReaderAt{"Bytes": Bytes(data), "file": src, "ReaderAt": bytes.NewReader(data)} {
			for _, w := range []io.Writer{io.Discard, dst} {
				s := []Source{{Key: "w", DType: U8, Shape: []uint64{size}, Data: d, Off: int64(len(data)) - int64(size) + 1}}
				_, err := Write(w, s, nil)
				if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), `"w"`) {
					t.Errorf("%s size %d to %T: err = %v, want ErrUnexpectedEOF naming the tensor", name, size, w, err)
				}
			}
		}
	}
}

type failWriter struct{ after int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.after <= 0 {
		return 0, errors.New("disk full")
	}
	w.after--
	return len(p), nil
}

func TestWriteDstError(t *testing.T) {
	t.Parallel()
	data := patterned(5<<20 + 1024)
	for after := range 4 {
		_, err := Write(&failWriter{after: after}, bigSources(data, Bytes(data), 0), nil)
		if err == nil || !strings.Contains(err.Error(), "disk full") {
			t.Errorf("after %d writes: err = %v", after, err)
		}
	}
}

func TestBytesReaderAt(t *testing.T) {
	t.Parallel()
	b := Bytes("hello")
	p := make([]byte, 3)
	if n, err := b.ReadAt(p, 3); n != 2 || err != io.EOF || string(p[:2]) != "lo" {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if n, err := b.ReadAt(p, 1); n != 3 || err != nil || string(p) != "ell" {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if s := b.Slice(1, 10); string(s) != "ello" || cap(s) != 4 {
		t.Fatalf("Slice = %q cap %d", s, cap(s))
	}
	if s := b.Slice(1, math.MaxInt64); string(s) != "ello" {
		t.Fatalf("Slice with huge n = %q", s)
	}
	if s := b.Slice(6, 1); s != nil {
		t.Fatalf("Slice past the end = %q", s)
	}
}

// hugeSources are n tensors of 2^61-1 bytes each: eight fit in 64 bits, nine
// do not.
func hugeSources(n int) []Source {
	var s []Source
	for i := range n {
		s = append(s, Source{Key: string(rune('a' + i)), DType: U8, Shape: []uint64{1<<61 - 1}})
	}
	return s
}

func TestWriteBadSources(t *testing.T) {
	t.Parallel()
	if _, err := Write(io.Discard, []Source{{Key: "w", DType: U8, Shape: []uint64{1}}}, nil); err == nil || !strings.Contains(err.Error(), `"w"`) {
		t.Errorf("nil Data: %v", err)
	}
	if _, err := Write(io.Discard, []Source{{Key: "w", DType: U8, Shape: []uint64{1}, Data: Bytes{1}, Off: -1}}, nil); err == nil {
		t.Error("negative Off accepted")
	}
	// Zero-size tensors need no data at all.
	if _, err := Write(io.Discard, []Source{{Key: "e", DType: F32, Shape: []uint64{0}}}, nil); err != nil {
		t.Errorf("zero-size tensor without Data: %v", err)
	}
	l, err := Plan([]Source{{Key: "w", DType: U8, Shape: []uint64{1}, Data: Bytes{1}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Write(io.Discard, nil); err == nil {
		t.Error("Layout.Write with the wrong sources accepted")
	}
}

func TestFormatErrorMessage(t *testing.T) {
	t.Parallel()
	cases := []struct {
		e    *FormatError
		want string
	}{
		{&FormatError{Rule: ErrTooSmall}, "safetensors: file shorter than the 8-byte header length"},
		{&FormatError{Key: "a b", Rule: ErrOffsets}, `safetensors: tensor "a b": data_offsets not contiguous from 0`},
		{&FormatError{Key: "k", Rule: ErrSizeMismatch, Detail: "why"}, `safetensors: tensor "k": why`},
	}
	for _, c := range cases {
		if got := c.e.Error(); got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
		if !errors.Is(c.e, c.e.Rule) {
			t.Errorf("%v does not unwrap to its rule", c.e)
		}
	}
}
