package safetensors

import (
	"bytes"
	"errors"
	"maps"
	"os"
	"slices"
	"testing"
)

// FuzzReadHeader feeds arbitrary bytes as a whole file. ReadHeader must not
// panic and must explain every refusal with a *FormatError; whatever it
// accepts must survive a canonical rewrite: the same metadata, keys, dtypes,
// shapes and bytes, canonical offsets, and a second rewrite that changes
// nothing.
func FuzzReadHeader(f *testing.F) {
	// Seeds stay small: when the fuzzer finds new coverage it minimizes the
	// input byte by byte for up to a minute, and a 35 KB fixture would eat a
	// whole CI fuzzing run. The real files become their first few tensors,
	// rewritten canonically, which keeps their keys, dtypes and layout.
	for _, name := range append(testdataFiles, "abuse_attempt_1.safetensors") {
		b, err := os.ReadFile(testdataPath(name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(shrinkSeed(f, b))
	}
	for _, c := range badCases {
		if len(c.file) <= 1024 {
			f.Add(c.file)
		}
	}
	f.Add(file(`{"__metadata__":{"a":"\u00e9\n","":""},"\ud83d\ude00<&>":{"dtype":"F4","shape":[2,1],"data_offsets":[0,1]},"s":{"dtype":"C64","shape":[],"data_offsets":[1,9]},"z":{"dtype":"BF16","shape":[0],"data_offsets":[9,9],"x":[{}]}}`, []byte("012345678")))

	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ReadHeader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Rule == nil {
				t.Fatalf("refusal is not a *FormatError with a rule: %v", err)
			}
			return
		}
		if got := h.DataOffset() + int64(h.DataSize()); got != int64(len(data)) {
			t.Fatalf("accepted a header describing %d bytes for a %d-byte file", got, len(data))
		}
		sources := make([]Source, len(h.Tensors))
		for i, ts := range h.Tensors {
			sources[i] = Source{Key: ts.Key, DType: ts.DType, Shape: ts.Shape, Data: Bytes(data), Off: h.DataOffset() + int64(ts.Begin)}
		}
		var out bytes.Buffer
		if _, err := Write(&out, sources, h.Metadata); err != nil {
			t.Fatalf("rewrite of an accepted file failed: %v", err)
		}
		h2, err := readBytes(out.Bytes())
		if err != nil {
			t.Fatalf("rewrite refused: %v", err)
		}
		if (h.Metadata == nil) != (h2.Metadata == nil) || !maps.Equal(h.Metadata, h2.Metadata) {
			t.Fatalf("metadata changed: %#v -> %#v", h.Metadata, h2.Metadata)
		}
		if len(h2.Tensors) != len(h.Tensors) {
			t.Fatalf("%d tensors became %d", len(h.Tensors), len(h2.Tensors))
		}
		l, err := Plan(sources, h.Metadata)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(l.Header, out.Bytes()[:len(l.Header)]) {
			t.Fatal("Write's header differs from Plan's")
		}
		// Canonical offsets: Plan's, which are in the reference's order.
		for j := range l.Tensors {
			want := l.Tensors[j]
			i, ok := findTensor(h2, want.Key)
			if !ok {
				t.Fatalf("tensor %q lost", want.Key)
			}
			got := h2.Tensors[i]
			if got.DType != want.DType || !slices.Equal(got.Shape, want.Shape) || got.Begin != want.Begin || got.End != want.End {
				t.Fatalf("tensor %q: %+v, want %+v", want.Key, got, want)
			}
			src := sources[l.Order[j]]
			orig := data[src.Off : src.Off+int64(want.Size())]
			o := h2.DataOffset()
			if !bytes.Equal(out.Bytes()[o+int64(got.Begin):o+int64(got.End)], orig) {
				t.Fatalf("tensor %q: bytes changed", want.Key)
			}
		}
		// A canonical file rewrites to itself.
		sources2 := make([]Source, len(h2.Tensors))
		for i, ts := range h2.Tensors {
			sources2[i] = Source{Key: ts.Key, DType: ts.DType, Shape: ts.Shape, Data: Bytes(out.Bytes()), Off: h2.DataOffset() + int64(ts.Begin)}
		}
		var out2 bytes.Buffer
		if _, err := Write(&out2, sources2, h2.Metadata); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), out2.Bytes()) {
			t.Fatal("rewriting a canonical file changed it")
		}
	})
}

func findTensor(h *Header, key string) (int, bool) {
	for i := range h.Tensors {
		if h.Tensors[i].Key == key {
			return i, true
		}
	}
	return 0, false
}

// shrinkSeed returns b if it is small or invalid, and otherwise a canonical
// file holding the first tensors of b that fit in about 600 bytes.
func shrinkSeed(f *testing.F, b []byte) []byte {
	h, err := readBytes(b)
	if err != nil || len(b) <= 1024 {
		return b
	}
	var sources []Source
	var size uint64
	for _, ts := range h.Tensors {
		if size+ts.Size() > 600 {
			break
		}
		size += ts.Size()
		sources = append(sources, Source{Key: ts.Key, DType: ts.DType, Shape: ts.Shape, Data: Bytes(b), Off: h.DataOffset() + int64(ts.Begin)})
	}
	var out bytes.Buffer
	if _, err := Write(&out, sources, h.Metadata); err != nil {
		f.Fatal(err)
	}
	return out.Bytes()
}
