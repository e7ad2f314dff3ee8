package safetensors

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// The bounds are checked against what the writer really renders.
func TestHeaderBoundsMatchTheWriter(t *testing.T) {
	t.Parallel()
	keys := []string{"a", "params.Dense_0.kernel", `q"uote\back`, "ctl\x01\x1f\n\t", "é<&>", strings.Repeat("x", 300)}
	metas := []map[string]string{nil, {}, {"format": "pt"}, {"a\"b": "c\nd", "é": "<&>", "\x00": ""}}
	for _, meta := range metas {
		var src []Source
		var bound int64 = HeaderBase + MetadataLen(meta)
		for i, k := range keys {
			shape := []uint64{uint64(i + 1), 12345}
			src = append(src, Source{Key: k, DType: F32, Shape: shape, Data: Bytes(make([]byte, 4*(i+1)*12345))})
			bound += EntryBound(k, F32, shape, false)
		}
		l, err := Plan(src, meta)
		if err != nil {
			t.Fatal(err)
		}
		n := int64(len(l.Header) - 8)
		if n > bound {
			t.Errorf("meta %v: header %d bytes above the bound %d", meta, n, bound)
		}
		// Only the offsets (at most 40 digits an entry) and the padding
		// separate the bound from the header.
		if slack := bound - n; slack > int64(len(keys))*40+7+1 {
			t.Errorf("meta %v: bound %d is %d above the header", meta, bound, slack)
		}
	}
	for _, k := range keys {
		var b []byte
		if got, want := JSONStringLen(k), int64(len(appendJSONString(b, k))); got != want {
			t.Errorf("JSONStringLen(%q) = %d, writer renders %d", k, got, want)
		}
	}
	for _, meta := range metas[1:] {
		l, err := Plan(nil, meta)
		if err != nil {
			t.Fatal(err)
		}
		// {"__metadata__":{...}} padded: MetadataLen counts a comma the
		// lone object has not.
		rendered := int64(len(bytes.TrimRight(l.Header[8:], " ")))
		if got := 2 + MetadataLen(meta) - 1; got != rendered {
			t.Errorf("MetadataLen(%v): %d, rendered %d", meta, got, rendered)
		}
	}
}

func TestParseMetadataStrict(t *testing.T) {
	t.Parallel()
	good := map[string]string{" {\"a\": \"b\", \"é\": \"\\u00e9\"} \n": "", "{}": ""}
	for in := range good {
		if _, err := ParseMetadata([]byte(in)); err != nil {
			t.Errorf("%q: %v", in, err)
		}
	}
	for in, want := range map[string]error{
		`{"a": "1", "a": "2"}`: ErrDuplicateKey,
		"{\"a\": \"\xff\"}":    ErrHeaderUTF8,
		`{"a": 1}`:             ErrMetadata,
		`{"a": "1"} {}`:        ErrHeaderJSON,
		`[]`:                   ErrMetadata,
		``:                     ErrHeaderJSON,
	} {
		_, err := ParseMetadata([]byte(in))
		if !errors.Is(err, want) {
			t.Errorf("%q: %v, want %v", in, err, want)
		}
	}
}
