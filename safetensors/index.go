package safetensors

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"math/big"
	"path"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// A sharded checkpoint is several safetensors files tied together by a
// Hugging Face index, "<stem>.safetensors.index.json":
//
//	{"metadata": {"total_size": N, ...}, "weight_map": {"<key>": "<shard file>", ...}}
//
// written by huggingface_hub and transformers' save_pretrained.

// IndexSuffix ends the name of every index file.
const IndexSuffix = ".safetensors.index.json"

// MaxIndexSize bounds the index file read into memory: 64 MiB. The largest
// real indexes are a few MB (DeepSeek-V3's, 92k keys, is about 9 MB;
// Llama-3.1-405B's 94 KB), and parsing one costs a few times its size, so
// a hostile index cannot make verify or a mount hold more than a few
// hundred MB. Bigger ones are refused before a byte is read.
const MaxIndexSize = 64 << 20

// Rules an index can break (wrapped by *IndexError).
var (
	ErrIndexJSON      = errors.New("index is not JSON of the shape {\"metadata\": {...}, \"weight_map\": {key: shard}}")
	ErrIndexShardName = errors.New("shard name must be a relative path inside the index's directory")
	ErrIndexTooLarge  = errors.New("index file is too large")
)

// IndexError says what is wrong with an index file, naming the key when
// the rule is about one.
type IndexError struct {
	Key    string
	Rule   error
	Detail string
}

func (e *IndexError) Error() string {
	var b strings.Builder
	b.WriteString("safetensors index: ")
	if e.Key != "" {
		b.WriteString("key " + strconv.Quote(e.Key) + ": ")
	}
	if e.Detail != "" {
		b.WriteString(e.Detail)
	} else {
		b.WriteString(e.Rule.Error())
	}
	return b.String()
}

func (e *IndexError) Unwrap() error { return e.Rule }

// IndexTooLarge is the error for an index of size bytes, above
// MaxIndexSize.
func IndexTooLarge(size int64) error {
	return &IndexError{Rule: ErrIndexTooLarge, Detail: fmt.Sprintf("index is %d bytes, above the limit of %d bytes (%d MiB; real indexes are a few MB)", size, MaxIndexSize, MaxIndexSize>>20)}
}

// Index is a parsed index file. Metadata values and any top-level members
// other than "metadata" and "weight_map" are kept as raw JSON, so a rewrite
// keeps what other tools put there.
type Index struct {
	// Metadata is nil when the file has no "metadata" member.
	Metadata  map[string]json.RawMessage
	WeightMap map[string]string
	Extra     map[string]json.RawMessage
}

// ParseIndex parses and checks an index: one JSON object, "weight_map" an
// object of strings naming shards by safe relative paths, "metadata" (if
// present) an object, no member twice at any level we interpret.
func ParseIndex(b []byte) (*Index, error) {
	if len(b) > MaxIndexSize {
		return nil, IndexTooLarge(int64(len(b)))
	}
	if !utf8.Valid(b) {
		return nil, &IndexError{Rule: ErrIndexJSON, Detail: "index is not valid UTF-8"}
	}
	if idx, ok := fastIndex(b); ok {
		return idx, nil // see index_fast.go
	}
	return parseIndexCareful(b)
}

// parseIndexCareful is ParseIndex member by member, naming the rule an
// index breaks (fastIndex only accepts).
func parseIndexCareful(b []byte) (*Index, error) {
	bad := func(key, format string, args ...any) error {
		return &IndexError{Key: key, Rule: ErrIndexJSON, Detail: fmt.Sprintf(format, args...)}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var top map[string]json.RawMessage
	if err := decodeObject(dec, func(k string, v json.RawMessage) error {
		if top == nil {
			top = map[string]json.RawMessage{}
		}
		if _, dup := top[k]; dup {
			return bad("", "member %q appears twice", k)
		}
		top[k] = v
		return nil
	}); err != nil {
		return nil, wrapJSON(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, bad("", "more than one JSON value in the index")
	}
	idx := &Index{WeightMap: map[string]string{}}
	wm, ok := top["weight_map"]
	if !ok {
		return nil, bad("", "no \"weight_map\" member")
	}
	wdec := json.NewDecoder(bytes.NewReader(wm))
	if err := decodeObject(wdec, func(k string, v json.RawMessage) error {
		var shard string
		if err := json.Unmarshal(v, &shard); err != nil {
			return bad(k, "weight_map value %s is not a string", truncateJSON(v))
		}
		if _, dup := idx.WeightMap[k]; dup {
			return bad(k, "listed twice in weight_map")
		}
		if err := CheckShardName(shard); err != nil {
			return &IndexError{Key: k, Rule: ErrIndexShardName, Detail: err.Error()}
		}
		idx.WeightMap[k] = shard
		return nil
	}); err != nil {
		return nil, wrapJSON(err)
	}
	if md, ok := top["metadata"]; ok {
		idx.Metadata = map[string]json.RawMessage{}
		mdec := json.NewDecoder(bytes.NewReader(md))
		if err := decodeObject(mdec, func(k string, v json.RawMessage) error {
			if _, dup := idx.Metadata[k]; dup {
				return bad("", "metadata member %q appears twice", k)
			}
			idx.Metadata[k] = v
			return nil
		}); err != nil {
			return nil, wrapJSON(err)
		}
	}
	for k, v := range top {
		if k != "metadata" && k != "weight_map" {
			if idx.Extra == nil {
				idx.Extra = map[string]json.RawMessage{}
			}
			idx.Extra[k] = v
		}
	}
	return idx, nil
}

// decodeObject reads one JSON object from dec, calling fn for each member
// in order (duplicates included: fn decides).
func decodeObject(dec *json.Decoder, fn func(k string, v json.RawMessage) error) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return &IndexError{Rule: ErrIndexJSON, Detail: fmt.Sprintf("expected a JSON object, found %v", tok)}
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		k := tok.(string) // object keys are always strings
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return err
		}
		if err := fn(k, v); err != nil {
			return err
		}
	}
	_, err = dec.Token() // '}'
	return err
}

func wrapJSON(err error) error {
	var ie *IndexError
	if errors.As(err, &ie) {
		return err
	}
	return &IndexError{Rule: ErrIndexJSON, Detail: "not valid JSON: " + err.Error()}
}

func truncateJSON(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// CheckShardName accepts a shard name that stays inside the index's
// directory: relative, clean, no "..", no empty or NUL, not a directory.
// The check is on the name only: a shard that is a symlink to elsewhere
// (the Hugging Face cache links snapshots to blobs) is fine.
func CheckShardName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("shard name is empty")
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("shard name %q contains NUL", name)
	case strings.HasPrefix(name, "/"):
		return fmt.Errorf("shard %q is an absolute path", name)
	case path.Clean(name) != name || strings.HasSuffix(name, "/"):
		return fmt.Errorf("shard %q is not a clean relative path", name)
	case name == ".." || strings.HasPrefix(name, "../"):
		return fmt.Errorf("shard %q escapes the index's directory", name)
	}
	return nil
}

// Shards returns the distinct shard names the weight map uses, sorted.
func (x *Index) Shards() []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range x.WeightMap {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// Marshal renders the index as transformers' save_pretrained writes it:
// Python's json.dumps(index, indent=2, sort_keys=True) plus a newline, so
// every level's keys are sorted, non-ASCII is escaped as \uXXXX, and a
// rewrite of an index transformers wrote changes only what changed.
// Numbers keep the text they were read with.
func (x *Index) Marshal() ([]byte, error) {
	top := map[string]any{}
	for k, v := range x.Extra {
		g, err := decodeGeneric(v)
		if err != nil {
			return nil, err
		}
		top[k] = g
	}
	if x.Metadata != nil {
		md := map[string]any{}
		for k, v := range x.Metadata {
			g, err := decodeGeneric(v)
			if err != nil {
				return nil, err
			}
			md[k] = g
		}
		top["metadata"] = md
	}
	wm := make(map[string]any, len(x.WeightMap))
	for k, v := range x.WeightMap {
		wm[k] = v
	}
	top["weight_map"] = wm
	return append(appendPy(nil, top, 0), '\n'), nil
}

func decodeGeneric(raw json.RawMessage) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var g any
	if err := dec.Decode(&g); err != nil {
		return nil, fmt.Errorf("safetensors index: %w", err)
	}
	return g, nil
}

// appendPy appends g (as decoded with UseNumber) the way Python's
// json.dumps(indent=2, sort_keys=True, ensure_ascii=True) renders it.
func appendPy(b []byte, g any, depth int) []byte {
	switch g := g.(type) {
	case nil:
		return append(b, "null"...)
	case bool:
		return strconv.AppendBool(b, g)
	case json.Number:
		return appendPyNumber(b, string(g))
	case string:
		return appendPyString(b, g)
	case []any:
		if len(g) == 0 {
			return append(b, "[]"...)
		}
		b = append(b, '[')
		for i, e := range g {
			if i > 0 {
				b = append(b, ',')
			}
			b = pyIndent(b, depth+1)
			b = appendPy(b, e, depth+1)
		}
		return append(pyIndent(b, depth), ']')
	case map[string]any:
		if len(g) == 0 {
			return append(b, "{}"...)
		}
		// Python sorts str by code point: for valid UTF-8, byte order.
		keys := slices.Sorted(maps.Keys(g))
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = pyIndent(b, depth+1)
			b = appendPyString(b, k)
			b = append(b, ": "...)
			b = appendPy(b, g[k], depth+1)
		}
		return append(pyIndent(b, depth), '}')
	}
	panic(fmt.Sprintf("safetensors index: cannot render %T", g))
}

// appendPyNumber renders a JSON number as Python does after json.loads: an
// integer as the int it is, anything with a fraction or exponent as
// repr(float) (shortest round-trip digits, fixed notation for decimal
// exponents in [-4, 16) with at least one digit after the point,
// exponent notation otherwise).
func appendPyNumber(b []byte, s string) []byte {
	if !strings.ContainsAny(s, ".eE") {
		if n, ok := new(big.Int).SetString(s, 10); ok {
			return n.Append(b, 10)
		}
		return append(b, s...)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(f, 0) {
		return append(b, s...) // Python would write Infinity: keep the text
	}
	e := strconv.FormatFloat(f, 'e', -1, 64)
	exp, _ := strconv.Atoi(e[strings.IndexByte(e, 'e')+1:])
	if exp < -4 || exp >= 16 {
		return append(b, e...)
	}
	fixed := strconv.FormatFloat(f, 'f', -1, 64)
	b = append(b, fixed...)
	if !strings.Contains(fixed, ".") {
		b = append(b, ".0"...)
	}
	return b
}

func pyIndent(b []byte, depth int) []byte {
	b = append(b, '\n')
	for range depth {
		b = append(b, "  "...)
	}
	return b
}

// appendPyString escapes like Python's json with ensure_ascii: the usual
// short escapes, \u00XX for other control characters and DEL, \uXXXX (with
// surrogate pairs above the BMP) for everything outside printable ASCII.
func appendPyString(b []byte, s string) []byte {
	b = append(b, '"')
	for _, r := range s {
		switch {
		case r == '"':
			b = append(b, `\"`...)
		case r == '\\':
			b = append(b, `\\`...)
		case r == '\n':
			b = append(b, `\n`...)
		case r == '\r':
			b = append(b, `\r`...)
		case r == '\t':
			b = append(b, `\t`...)
		case r == '\b':
			b = append(b, `\b`...)
		case r == '\f':
			b = append(b, `\f`...)
		case r >= 0x20 && r < 0x7f:
			b = append(b, byte(r))
		case r > 0xffff:
			r1, r2 := utf16.EncodeRune(r)
			b = fmt.Appendf(b, `\u%04x\u%04x`, r1, r2)
		default:
			b = fmt.Appendf(b, `\u%04x`, r)
		}
	}
	return append(b, '"')
}
