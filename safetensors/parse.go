package safetensors

import (
	"bytes"
	"fmt"
	"unicode/utf8"
)

// A hand-written parser for the one JSON schema a header may have. It exists
// because the generic options are wrong or slow here: map decoding silently
// keeps the last of two duplicate keys, and json.Decoder.Token allocates an
// interface per token, which for a 100k-tensor header costs several times
// what this does. It accepts exactly the JSON (RFC 8259) that serde_json
// accepts for this schema, including escapes and surrogate pairs, and rejects
// the rest with an error that names the tensor being parsed.
type parser struct {
	b   []byte
	i   int
	key string // top-level key being parsed, for error messages

	meta    map[string]string
	tensors []Tensor

	scratch []byte   // decoded string, when it had escapes
	dims    []uint64 // shape being parsed
	arena   []uint64 // backing store for all shapes: a few allocations (keepShape)
}

// Unknown fields inside a tensor entry are skipped, not rejected: the
// reference's TensorInfo has no deny_unknown_fields. Their nesting is bounded
// like serde_json's recursion limit so a hostile header cannot blow the stack.
const maxDepth = 128

var emptyShape = []uint64{}

var dataOffsetsField = []byte(`"data_offsets"`)

func parseHeader(b []byte) (*parser, error) {
	p := &parser{b: b}
	if !utf8.Valid(b) {
		return nil, formatErr("", ErrHeaderUTF8, fmt.Sprintf("header is not valid UTF-8 (first bad byte at header offset %d)", firstInvalidUTF8(b)))
	}
	// Sized up front, the entries never regrow: counted by the one field
	// each has (a vectorised search), as a guess of 80 bytes an entry
	// over-reserved 1.6x for DeepSeek-V3's headers, memory the collector
	// then scans for as long as the file is open. A field spelled with
	// escapes only makes the slice grow; one named in a key or a metadata
	// value reserves an entry too many; the cap bounds both.
	p.tensors = make([]Tensor, 0, min(bytes.Count(b, dataOffsetsField), 1<<17))
	if err := p.object(); err != nil {
		return nil, err
	}
	return p, nil
}

func firstInvalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			return i
		}
		i += n
	}
	return len(b)
}

func (p *parser) ws() {
	b, i := p.b, p.i
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	p.i = i
}

func (p *parser) syntax(format string, args ...any) error {
	return formatErr(p.key, ErrHeaderJSON, fmt.Sprintf(format, args...)+fmt.Sprintf(" (header offset %d)", p.i))
}

func (p *parser) unexpected(what string) error {
	if p.i >= len(p.b) {
		return p.syntax("header ends where %s was expected", what)
	}
	return p.syntax("found %s where %s was expected", describe(p.b[p.i]), what)
}

// describe names the JSON value that starts with c, for schema errors.
func describe(c byte) string {
	switch {
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == '"':
		return "a string"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	case c == '-' || (c >= '0' && c <= '9'):
		return "a number"
	case c >= 0x20 && c < 0x7f:
		return fmt.Sprintf("%q", c)
	default:
		return fmt.Sprintf("byte 0x%02x", c)
	}
}

func (p *parser) expect(c byte, what string) error {
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		p.ws()
		return nil
	}
	return p.unexpected(what)
}

// next consumes the ',' or '}' (or ']') after a member and reports whether
// another member follows.
func (p *parser) next(close byte, what string) (bool, error) {
	p.ws()
	if p.i < len(p.b) {
		switch p.b[p.i] {
		case ',':
			p.i++
			p.ws()
			return true, nil
		case close:
			p.i++
			return false, nil
		}
	}
	return false, p.unexpected(what)
}

func (p *parser) object() error {
	p.ws()
	if p.i >= len(p.b) || p.b[p.i] != '{' {
		return p.unexpected("the header object")
	}
	p.i++
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
	} else {
		for more := true; more; {
			if p.i >= len(p.b) || p.b[p.i] != '"' {
				return p.unexpected("a tensor key")
			}
			kb, err := p.str()
			if err != nil {
				return err
			}
			if string(kb) == "__metadata__" {
				p.key = ""
				if err := p.expect(':', "':' after a key"); err != nil {
					return err
				}
				if p.meta != nil {
					return formatErr("", ErrDuplicateKey, `"__metadata__" appears twice`)
				}
				if err := p.metadata(); err != nil {
					return err
				}
			} else {
				p.key = string(kb)
				if err := p.expect(':', "':' after a key"); err != nil {
					return err
				}
				if err := p.tensor(); err != nil {
					return err
				}
				p.key = ""
			}
			if more, err = p.next('}', "',' or '}' after a header entry"); err != nil {
				return err
			}
		}
	}
	p.key = ""
	p.ws()
	if p.i != len(p.b) {
		return p.syntax("trailing characters after the header object")
	}
	return nil
}

func (p *parser) metadata() error {
	if p.i >= len(p.b) || p.b[p.i] != '{' {
		if p.i >= len(p.b) {
			return p.unexpected("the __metadata__ object")
		}
		return formatErr("", ErrMetadata, fmt.Sprintf("__metadata__ is %s, not an object of strings", describe(p.b[p.i])))
	}
	p.i++
	p.meta = make(map[string]string)
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
		return nil
	}
	for more := true; more; {
		if p.i >= len(p.b) || p.b[p.i] != '"' {
			return p.unexpected("a __metadata__ key")
		}
		kb, err := p.str()
		if err != nil {
			return err
		}
		k := string(kb)
		if err := p.expect(':', "':' after a __metadata__ key"); err != nil {
			return err
		}
		if p.i >= len(p.b) {
			return p.unexpected("a __metadata__ value")
		}
		if p.b[p.i] != '"' {
			return formatErr("", ErrMetadata, fmt.Sprintf("__metadata__ value for %q is %s, not a string", k, describe(p.b[p.i])))
		}
		vb, err := p.str()
		if err != nil {
			return err
		}
		if _, dup := p.meta[k]; dup {
			return formatErr("", ErrDuplicateKey, fmt.Sprintf("__metadata__ key %q appears twice", k))
		}
		p.meta[k] = string(vb)
		if more, err = p.next('}', "',' or '}' in __metadata__"); err != nil {
			return err
		}
	}
	return nil
}

func (p *parser) tensor() error {
	if p.i >= len(p.b) {
		return p.unexpected("a tensor entry")
	}
	if p.b[p.i] != '{' {
		// serde would also take a 3-element array here (derived structs
		// accept sequences); no writer produces that, so it is refused.
		return formatErr(p.key, ErrHeaderJSON, fmt.Sprintf("entry is %s, not an object with dtype, shape and data_offsets", describe(p.b[p.i])))
	}
	p.i++
	p.ws()
	t := Tensor{Key: p.key}
	var haveDType, haveShape, haveOffsets bool
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
	} else {
		for more := true; more; {
			if p.i >= len(p.b) || p.b[p.i] != '"' {
				return p.unexpected("a field name")
			}
			fb, err := p.str()
			if err != nil {
				return err
			}
			if err := p.expect(':', "':' after a field name"); err != nil {
				return err
			}
			switch string(fb) {
			case "dtype":
				if haveDType {
					return formatErr(p.key, ErrDuplicateKey, `field "dtype" appears twice`)
				}
				haveDType = true
				if p.i >= len(p.b) || p.b[p.i] != '"' {
					return p.schema("dtype", "a string")
				}
				db, err := p.str()
				if err != nil {
					return err
				}
				d, ok := parseDTypeBytes(db)
				if !ok {
					return formatErr(p.key, ErrUnknownDType, fmt.Sprintf("unknown dtype %q", db))
				}
				t.DType = d
			case "shape":
				if haveShape {
					return formatErr(p.key, ErrDuplicateKey, `field "shape" appears twice`)
				}
				haveShape = true
				if err := p.uints("shape"); err != nil {
					return err
				}
				t.Shape = p.keepShape()
			case "data_offsets":
				if haveOffsets {
					return formatErr(p.key, ErrDuplicateKey, `field "data_offsets" appears twice`)
				}
				haveOffsets = true
				if err := p.uints("data_offsets"); err != nil {
					return err
				}
				if len(p.dims) != 2 {
					return formatErr(p.key, ErrHeaderJSON, fmt.Sprintf("data_offsets has %d numbers, want [begin, end]", len(p.dims)))
				}
				t.Begin, t.End = p.dims[0], p.dims[1]
			default:
				if err := p.skip(2); err != nil {
					return err
				}
			}
			if more, err = p.next('}', "',' or '}' in a tensor entry"); err != nil {
				return err
			}
		}
	}
	switch {
	case !haveDType:
		return formatErr(p.key, ErrHeaderJSON, "missing field dtype")
	case !haveShape:
		return formatErr(p.key, ErrHeaderJSON, "missing field shape")
	case !haveOffsets:
		return formatErr(p.key, ErrHeaderJSON, "missing field data_offsets")
	}
	p.tensors = append(p.tensors, t)
	return nil
}

func (p *parser) schema(field, want string) error {
	if p.i >= len(p.b) {
		return p.unexpected(field)
	}
	return formatErr(p.key, ErrHeaderJSON, fmt.Sprintf("%s is %s, want %s", field, describe(p.b[p.i]), want))
}

// keepShape moves p.dims into the shared arena so a header of 100k tensors
// costs a handful of allocations for shapes rather than 100k. A new block
// is sized for two dimensions for each entry still to come (of those
// counted, see parseHeader), at most 4096: blocks of 4096 for every header
// held 3.7 MB that DeepSeek-V3's 163 headers, about 1,200 dimensions each,
// never used.
func (p *parser) keepShape() []uint64 {
	n := len(p.dims)
	if n == 0 {
		return emptyShape
	}
	if cap(p.arena)-len(p.arena) < n {
		toCome := cap(p.tensors) - len(p.tensors)
		p.arena = make([]uint64, 0, max(n, min(4096, 2*toCome)))
	}
	start := len(p.arena)
	p.arena = append(p.arena, p.dims...)
	return p.arena[start : start+n : start+n]
}

// uints parses an array of non-negative integers into p.dims.
func (p *parser) uints(field string) error {
	p.dims = p.dims[:0]
	if p.i >= len(p.b) || p.b[p.i] != '[' {
		return p.schema(field, "an array of non-negative integers")
	}
	p.i++
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == ']' {
		p.i++
		return nil
	}
	for more := true; more; {
		v, err := p.uint(field)
		if err != nil {
			return err
		}
		p.dims = append(p.dims, v)
		if more, err = p.next(']', "',' or ']'"); err != nil {
			return err
		}
	}
	return nil
}

func (p *parser) uint(field string) (uint64, error) {
	b, i := p.b, p.i
	if i >= len(b) || b[i] < '0' || b[i] > '9' {
		if i < len(b) && b[i] == '-' {
			// serde_json would accept "-0" as 0 for a usize; we refuse every
			// minus sign rather than carry that quirk.
			return 0, formatErr(p.key, ErrHeaderJSON, fmt.Sprintf("%s holds a negative number", field))
		}
		return 0, p.schema(field+" element", "a non-negative integer")
	}
	var v uint64
	if b[i] == '0' {
		i++
		if i < len(b) && b[i] >= '0' && b[i] <= '9' {
			p.i = i
			return 0, p.syntax("number with a leading zero")
		}
	} else {
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			d := uint64(b[i] - '0')
			if v > (1<<64-1-d)/10 {
				p.i = i
				return 0, formatErr(p.key, ErrHeaderJSON, fmt.Sprintf("%s holds a number that does not fit in 64 bits", field))
			}
			v = v*10 + d
			i++
		}
	}
	if i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
		p.i = i
		return 0, formatErr(p.key, ErrHeaderJSON, fmt.Sprintf("%s holds a number that is not an integer", field))
	}
	p.i = i
	return v, nil
}

// str parses a JSON string starting at the opening quote. The result aliases
// either the header or p.scratch, so it is only valid until the next call.
func (p *parser) str() ([]byte, error) {
	b := p.b
	start := p.i + 1
	for i := start; i < len(b); i++ {
		c := b[i]
		if c == '"' {
			p.i = i + 1
			return b[start:i], nil
		}
		if c == '\\' {
			p.scratch = append(p.scratch[:0], b[start:i]...)
			p.i = i
			return p.strSlow()
		}
		if c < 0x20 {
			p.i = i
			return nil, p.syntax("control character 0x%02x inside a string (it must be escaped)", c)
		}
	}
	p.i = len(b)
	return nil, p.syntax("unterminated string")
}

func (p *parser) strSlow() ([]byte, error) {
	b := p.b
	for i := p.i; i < len(b); {
		c := b[i]
		switch {
		case c == '"':
			p.i = i + 1
			return p.scratch, nil
		case c < 0x20:
			p.i = i
			return nil, p.syntax("control character 0x%02x inside a string (it must be escaped)", c)
		case c != '\\':
			p.scratch = append(p.scratch, c)
			i++
			continue
		}
		if i+1 >= len(b) {
			break
		}
		e := b[i+1]
		i += 2
		switch e {
		case '"', '\\', '/':
			p.scratch = append(p.scratch, e)
		case 'b':
			p.scratch = append(p.scratch, '\b')
		case 'f':
			p.scratch = append(p.scratch, '\f')
		case 'n':
			p.scratch = append(p.scratch, '\n')
		case 'r':
			p.scratch = append(p.scratch, '\r')
		case 't':
			p.scratch = append(p.scratch, '\t')
		case 'u':
			r, ok := hex4(b, i)
			if !ok {
				p.i = i
				return nil, p.syntax("invalid \\u escape")
			}
			i += 4
			switch {
			case r >= 0xD800 && r < 0xDC00:
				var lo rune
				if i+6 <= len(b) && b[i] == '\\' && b[i+1] == 'u' {
					lo, ok = hex4(b, i+2)
				} else {
					ok = false
				}
				if !ok || lo < 0xDC00 || lo >= 0xE000 {
					p.i = i
					return nil, p.syntax("lone leading surrogate in \\u escape")
				}
				i += 6
				r = 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00)
			case r >= 0xDC00 && r < 0xE000:
				p.i = i
				return nil, p.syntax("lone trailing surrogate in \\u escape")
			}
			p.scratch = utf8.AppendRune(p.scratch, r)
		default:
			p.i = i - 1
			return nil, p.syntax("invalid escape \\%c", e)
		}
	}
	p.i = len(b)
	return nil, p.syntax("unterminated string")
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// skip validates and steps over any JSON value (an unknown field's).
func (p *parser) skip(depth int) error {
	if depth > maxDepth {
		return p.syntax("nesting deeper than %d", maxDepth)
	}
	if p.i >= len(p.b) {
		return p.unexpected("a value")
	}
	switch c := p.b[p.i]; {
	case c == '"':
		_, err := p.str()
		return err
	case c == '{':
		p.i++
		p.ws()
		if p.i < len(p.b) && p.b[p.i] == '}' {
			p.i++
			return nil
		}
		for more := true; more; {
			if p.i >= len(p.b) || p.b[p.i] != '"' {
				return p.unexpected("an object key")
			}
			if _, err := p.str(); err != nil {
				return err
			}
			if err := p.expect(':', "':' after an object key"); err != nil {
				return err
			}
			if err := p.skip(depth + 1); err != nil {
				return err
			}
			var err error
			if more, err = p.next('}', "',' or '}' in an object"); err != nil {
				return err
			}
		}
		return nil
	case c == '[':
		p.i++
		p.ws()
		if p.i < len(p.b) && p.b[p.i] == ']' {
			p.i++
			return nil
		}
		for more := true; more; {
			if err := p.skip(depth + 1); err != nil {
				return err
			}
			var err error
			if more, err = p.next(']', "',' or ']' in an array"); err != nil {
				return err
			}
		}
		return nil
	case c == 't':
		return p.literal("true")
	case c == 'f':
		return p.literal("false")
	case c == 'n':
		return p.literal("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	}
	return p.unexpected("a value")
}

func (p *parser) literal(s string) error {
	if len(p.b)-p.i >= len(s) && string(p.b[p.i:p.i+len(s)]) == s {
		p.i += len(s)
		return nil
	}
	return p.syntax("invalid literal")
}

func (p *parser) number() error {
	b, i := p.b, p.i
	digits := func() bool {
		s := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i > s
	}
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case !digits():
		p.i = i
		return p.syntax("invalid number")
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !digits() {
			p.i = i
			return p.syntax("invalid number")
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			p.i = i
			return p.syntax("invalid number")
		}
	}
	p.i = i
	return nil
}
