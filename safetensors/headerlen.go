package safetensors

import (
	"fmt"
	"unicode/utf8"
)

// Header sizes, counted without rendering: what a header the writer would
// write may grow to, so an edit that would take it past the reference
// reader's MaxHeaderSize can be refused when it is made, not discovered at
// write-back when nothing can be done any more.

// JSONStringLen is the length of s as the writer renders it, quotes
// included (see appendJSONString).
func JSONStringLen(s string) int64 {
	n := int64(len(s)) + 2
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t':
			n++ // \x
		case c < 0x20:
			n += 5 // \u00xx
		}
	}
	return n
}

// HeaderBase bounds what a header holds besides its entries: the braces
// and up to 7 bytes of padding.
const HeaderBase = 2 + 7

// EntryBound bounds the bytes one tensor's entry adds to a header,
// separating comma included: its key, dtype and shape exactly, its data
// offsets at their longest (20 digits each: they depend on every other
// tensor's size and place). The shape of a plain file still growing
// (growing) is counted with each dimension at its longest too, so its
// writes never change the bound.
func EntryBound(key string, d DType, shape []uint64, growing bool) int64 {
	n := JSONStringLen(key) + int64(len(`:{"dtype":"`)+len(d.String())+len(`","shape":[`)+len(`],"data_offsets":[`)+20+1+20+len(`]}`)) + 1
	for i, dim := range shape {
		if i > 0 {
			n++
		}
		if growing {
			n += 20
		} else {
			n += int64(len(fmt.Sprint(dim)))
		}
	}
	return n
}

// MetadataLen is the exact length __metadata__ adds to a header (with its
// separating comma); 0 for none (nil).
func MetadataLen(meta map[string]string) int64 {
	if meta == nil {
		return 0
	}
	n := int64(len(`"__metadata__":{}`)) + 1
	i := 0
	for k, v := range meta {
		if i > 0 {
			n++
		}
		n += JSONStringLen(k) + 1 + JSONStringLen(v)
		i++
	}
	return n
}

// ParseMetadata parses a __metadata__ document by the rules a header's
// __metadata__ is held to: exactly one JSON object whose values are
// strings, valid UTF-8, no key twice (serde would keep the last; we refuse
// rather than guess), JSON whitespace around it allowed. Errors are
// *FormatError.
func ParseMetadata(b []byte) (map[string]string, error) {
	if !utf8.Valid(b) {
		return nil, formatErr("", ErrHeaderUTF8, fmt.Sprintf("__metadata__ is not valid UTF-8 (first bad byte at offset %d)", firstInvalidUTF8(b)))
	}
	p := &parser{b: b}
	p.ws()
	if err := p.metadata(); err != nil {
		return nil, err
	}
	p.ws()
	if p.i != len(p.b) {
		return nil, p.syntax("more after the __metadata__ object")
	}
	return p.meta, nil
}

// IndexEntryLen is the length one weight_map entry adds to an index as
// Index.Marshal renders it (json.dumps with indent=2, sort_keys=True):
// its line break and indent, key, separator, shard name and comma.
func IndexEntryLen(key, shard string) int64 {
	var buf [64]byte
	return int64(1+4+len(appendPyString(buf[:0], key))+2+len(appendPyString(buf[:0], shard))) + 1
}
