package npy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// Info describes a parsed .npy prefix.
type Info struct {
	// DType is the safetensors dtype name, or "" together with
	// ErrAmbiguousVoid for a '|V1' array.
	DType string
	// Shape is never nil; a scalar has an empty shape.
	Shape []uint64
	// Fortran is the header's fortran_order. Parse only lets it be true when
	// the Fortran layout is the same bytes as the C layout (at most one
	// dimension larger than 1, or no elements), so callers can ignore it.
	Fortran bool
	// DataOffset is where the array data starts: the length of the prefix.
	DataOffset int
	// Version is the format version, {1, 0}, {2, 0} or {3, 0}.
	Version [2]byte
}

var (
	// ErrShort is matched (errors.Is) by the *ShortError Parse returns when
	// the prefix ends before the header does.
	ErrShort = errors.New("npy: truncated header")

	// ErrAmbiguousVoid is returned, together with an otherwise complete
	// *Info whose DType is "", for a '|V1' array. That is how np.save writes
	// every 8-bit ml_dtypes float (F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ,
	// F8_E5M2FNUZ), so the file does not say which one it holds. Guessing
	// would silently reinterpret the bytes; a caller that is replacing the
	// data of an existing 8-bit float tensor should keep that tensor's dtype,
	// and any other caller should refuse the file.
	ErrAmbiguousVoid = errors.New("npy: descr '|V1' is one of the 8-bit float dtypes, the file does not say which")

	// ErrFortran is returned for fortran_order arrays whose bytes differ
	// from the C-order layout that safetensors stores.
	ErrFortran = errors.New("npy: fortran_order arrays are not supported")
)

// ShortError reports a prefix too short to finish parsing. Need is a total
// prefix length, not a count of extra bytes: read until the prefix holds at
// least Need bytes (more is fine, Parse ignores what follows the header) and
// call Parse again. Need can grow on the next call, because the header
// length is only known once the length field has been read.
type ShortError struct {
	Have int // len(prefix)
	Need int // minimum len(prefix) for the next attempt
}

func (e *ShortError) Error() string {
	return fmt.Sprintf("npy: truncated header: have %d bytes, need at least %d", e.Have, e.Need)
}

// Is makes errors.Is(err, ErrShort) true for every *ShortError.
func (e *ShortError) Is(target error) bool { return target == ErrShort }

// NeedMore is how many bytes must be appended to the prefix before the next
// attempt.
func (e *ShortError) NeedMore() int { return e.Need - e.Have }

// Parse reads the .npy prefix (format version 1.0, 2.0 or 3.0) at the start
// of prefix, which may extend into the data. It accepts what numpy writes on
// a little-endian machine for the dtypes safetensors has, and rejects the
// rest with an error naming the rule: big-endian or native-order multi-byte
// descrs, object, string and structured dtypes, fortran_order arrays whose
// layout differs from C order, and any dict literal other than the one numpy
// writes (keys 'descr', 'fortran_order' and 'shape' once each, in any order,
// quoted strings without escapes, True/False, a tuple of non-negative
// decimal ints, optional trailing commas, whitespace between tokens). The
// literal is parsed, never evaluated.
//
// A descr of '|V2' comes back as "BF16", which is what np.save writes for an
// ml_dtypes bfloat16 array. A descr of '|V1' returns the parsed *Info with
// DType "" and ErrAmbiguousVoid; see there. If prefix ends too early, Parse
// returns a *ShortError (errors.Is(err, ErrShort)) saying how long the
// prefix must be.
func Parse(prefix []byte) (*Info, error) {
	return parse(prefix, false)
}

// Fields is a .npy header as written: its dict literal's values, the
// descr not mapped to a dtype. It is for readers of any numpy file
// (package formats shows big-endian, complex and raw void arrays too);
// Parse and ParseAnyOrder are for arrays bound for safetensors.
type Fields struct {
	Descr   string
	Fortran bool
	// Shape is never nil; a scalar has an empty shape. Its product is not
	// checked: that needs the element size, which the descr gives.
	Shape []uint64
	// DataOffset is where the array data starts: the length of the prefix.
	DataOffset int
	// Version is the format version, {1, 0}, {2, 0} or {3, 0}.
	Version [2]byte
}

// ParseFields reads the .npy prefix at the start of prefix as Parse does
// (the magic, a version numpy writes, a header length of at most
// MaxHeaderLen, the one dict literal numpy writes, never evaluated; a
// *ShortError when prefix ends early) but leaves the descr and
// fortran_order for the caller to judge.
func ParseFields(prefix []byte) (*Fields, error) {
	// Compare the magic as far as it goes, so a file that is not .npy fails
	// at once instead of asking for more bytes.
	if n := min(len(prefix), len(magic)); !bytes.Equal(prefix[:n], []byte(magic[:n])) {
		return nil, errors.New("npy: not a .npy file (bad magic)")
	}
	if len(prefix) < magicLen {
		return nil, &ShortError{Have: len(prefix), Need: magicLen}
	}
	version := [2]byte{prefix[6], prefix[7]}
	var lenSize int
	switch version {
	case [2]byte{1, 0}:
		lenSize = 2
	case [2]byte{2, 0}, [2]byte{3, 0}:
		lenSize = 4
	default:
		return nil, fmt.Errorf("npy: unsupported format version %d.%d", version[0], version[1])
	}
	if len(prefix) < magicLen+lenSize {
		return nil, &ShortError{Have: len(prefix), Need: magicLen + lenSize}
	}
	var hlen uint64
	if lenSize == 2 {
		hlen = uint64(binary.LittleEndian.Uint16(prefix[magicLen:]))
	} else {
		hlen = uint64(binary.LittleEndian.Uint32(prefix[magicLen:]))
	}
	if hlen > MaxHeaderLen {
		return nil, fmt.Errorf("npy: header length %d exceeds MaxHeaderLen (%d)", hlen, MaxHeaderLen)
	}
	start := magicLen + lenSize
	end := start + int(hlen)
	if len(prefix) < end {
		return nil, &ShortError{Have: len(prefix), Need: end}
	}
	h, err := parseDict(prefix[start:end], version)
	if err != nil {
		return nil, err
	}
	return &Fields{Descr: h.descr, Fortran: h.fortran, Shape: h.shape, DataOffset: end, Version: version}, nil
}

// parse is Parse; anyOrder lets fortran_order arrays through (ParseAnyOrder).
func parse(prefix []byte, anyOrder bool) (*Info, error) {
	h, err := ParseFields(prefix)
	if err != nil {
		return nil, err
	}
	dtype, elemSize, err := parseDescr(h.Descr)
	if err != nil && err != ErrAmbiguousVoid {
		return nil, err
	}
	if _, ok := byteSize(h.Shape, elemSize); !ok {
		return nil, fmt.Errorf("npy: shape %v of descr %s overflows the addressable size", h.Shape, quote(h.Descr))
	}
	if h.Fortran && !layoutsAgree(h.Shape) && !anyOrder {
		return nil, ErrFortran
	}
	info := &Info{
		DType:      dtype,
		Shape:      h.Shape,
		Fortran:    h.Fortran,
		DataOffset: h.DataOffset,
		Version:    h.Version,
	}
	return info, err // nil or ErrAmbiguousVoid
}

// layoutsAgree reports whether C and Fortran order put the elements in the
// same sequence: true when the array is empty or at most one dimension is
// larger than 1. Other writers may set fortran_order for such arrays (numpy
// itself writes False for them), and the bytes are usable as they are.
func layoutsAgree(shape []uint64) bool {
	big := 0
	for _, d := range shape {
		if d == 0 {
			return true
		}
		if d > 1 {
			big++
		}
	}
	return big <= 1
}

// parseDescr maps a descr string to a safetensors dtype name and element
// size. The byte-order character matters only for multi-byte numeric types:
// numpy normalises 1-byte and void types to '|', but '<u1', '=i1' or 'V2'
// mean the same array, so they are accepted.
func parseDescr(descr string) (dtype string, size uint64, err error) {
	s := descr
	var order byte
	if s != "" && (s[0] == '<' || s[0] == '>' || s[0] == '|' || s[0] == '=') {
		order, s = s[0], s[1:]
	}
	if s != "" && s[0] == 'O' {
		return "", 0, fmt.Errorf("npy: object arrays are not supported (descr %s)", quote(descr))
	}
	for _, d := range dtypes {
		if d.descr[1:] != s {
			continue
		}
		if d.size > 1 && d.descr[1] != 'V' {
			switch order {
			case '<':
			case '>':
				return "", 0, fmt.Errorf("npy: big-endian descr %s is not supported", quote(descr))
			default:
				return "", 0, fmt.Errorf("npy: descr %s has no explicit byte order; numpy writes %s on little-endian machines", quote(descr), quote(d.descr))
			}
		}
		if d.descr == "|V1" {
			return "", d.size, ErrAmbiguousVoid
		}
		return d.name, d.size, nil
	}
	return "", 0, fmt.Errorf("npy: unknown descr %s", quote(descr))
}

// quote renders a descr for an error message the way it appears in the
// header when it is plain ASCII, and Go-quoted and truncated otherwise, so a
// hostile header cannot put control bytes or a megabyte into an error.
func quote(s string) string {
	const maxLen = 64
	plain := len(s) <= maxLen
	for i := 0; plain && i < len(s); i++ {
		plain = s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\''
	}
	if plain {
		return "'" + s + "'"
	}
	if len(s) > maxLen {
		return strconv.Quote(s[:maxLen]) + "..."
	}
	return strconv.Quote(s)
}

// header holds the three values of the dict literal.
type header struct {
	descr   string
	fortran bool
	shape   []uint64
}

// dictParser is a recursive-descent reader for the single literal form
// numpy writes. It works on bytes: v1.0/v2.0 headers are latin-1 and v3.0
// UTF-8, but every token it accepts is ASCII, so non-ASCII bytes can only
// end up inside a string, where they make an unknown key or descr.
type dictParser struct {
	s []byte
	i int
	// allowL accepts the "L" suffix Python 2 wrote after long ints; numpy
	// strips it (_filter_header) for versions 1.0 and 2.0 only.
	allowL bool
}

func parseDict(b []byte, version [2]byte) (header, error) {
	p := &dictParser{s: b, allowL: version != [2]byte{3, 0}}
	var h header
	var seenDescr, seenFortran, seenShape bool

	p.space()
	if err := p.expect('{'); err != nil {
		return h, err
	}
	for {
		p.space()
		if p.peek() == '}' {
			p.i++
			break
		}
		key, err := p.str()
		if err != nil {
			return h, err
		}
		p.space()
		if err := p.expect(':'); err != nil {
			return h, err
		}
		p.space()
		switch key {
		case "descr":
			if seenDescr {
				return h, p.errf("duplicate key 'descr'")
			}
			seenDescr = true
			if c := p.peek(); c == '[' || c == '(' {
				return h, errors.New("npy: structured dtypes are not supported")
			}
			if h.descr, err = p.str(); err != nil {
				return h, err
			}
		case "fortran_order":
			if seenFortran {
				return h, p.errf("duplicate key 'fortran_order'")
			}
			seenFortran = true
			switch p.ident() {
			case "True":
				h.fortran = true
			case "False":
			default:
				return h, p.errf("fortran_order is not True or False")
			}
		case "shape":
			if seenShape {
				return h, p.errf("duplicate key 'shape'")
			}
			seenShape = true
			if h.shape, err = p.tuple(); err != nil {
				return h, err
			}
		default:
			return h, p.errf("unexpected key %s", quote(key))
		}
		p.space()
		switch p.peek() {
		case ',':
			p.i++
			continue
		case '}':
			p.i++
		default:
			return h, p.errf("expected ',' or '}'")
		}
		break
	}
	p.space()
	if p.i != len(p.s) {
		return h, p.errf("unexpected data after the dict")
	}
	switch {
	case !seenDescr:
		return h, errors.New("npy: malformed header: missing key 'descr'")
	case !seenFortran:
		return h, errors.New("npy: malformed header: missing key 'fortran_order'")
	case !seenShape:
		return h, errors.New("npy: malformed header: missing key 'shape'")
	}
	return h, nil
}

func (p *dictParser) errf(format string, args ...any) error {
	return fmt.Errorf("npy: malformed header at byte %d: %s", p.i, fmt.Sprintf(format, args...))
}

// peek returns the next byte, or 0 at the end (0 is never valid there).
func (p *dictParser) peek() byte {
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

// space skips Python whitespace. Inside braces newlines are insignificant to
// Python, and numpy pads the end with spaces and a newline.
func (p *dictParser) space() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r', '\f':
			p.i++
		default:
			return
		}
	}
}

func (p *dictParser) expect(c byte) error {
	if p.peek() != c {
		return p.errf("expected '%c'", c)
	}
	p.i++
	return nil
}

// str reads a '...' or "..." string. Escapes, prefixes and triple quotes
// never occur in what numpy writes, so they are rejected rather than decoded.
func (p *dictParser) str() (string, error) {
	q := p.peek()
	if q != '\'' && q != '"' {
		return "", p.errf("expected a quoted string")
	}
	start := p.i + 1
	for j := start; j < len(p.s); j++ {
		switch p.s[j] {
		case q:
			p.i = j + 1
			return string(p.s[start:j]), nil
		case '\\':
			p.i = j
			return "", p.errf("escape sequences are not supported")
		case '\n', '\r':
			p.i = j
			return "", p.errf("unterminated string")
		}
	}
	p.i = len(p.s)
	return "", p.errf("unterminated string")
}

// ident reads a run of identifier characters, for True and False.
func (p *dictParser) ident() string {
	start := p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		if c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' {
			p.i++
			continue
		}
		break
	}
	return string(p.s[start:p.i])
}

// tuple reads a Python tuple of ints: "()", "(5,)", "(2, 3)", "(2, 3,)".
// "(5)" is an int in Python, not a tuple, and numpy rejects it.
func (p *dictParser) tuple() ([]uint64, error) {
	if p.peek() != '(' {
		return nil, p.errf("shape is not a tuple")
	}
	p.i++
	shape := []uint64{}
	p.space()
	if p.peek() == ')' {
		p.i++
		return shape, nil
	}
	for {
		n, err := p.uint()
		if err != nil {
			return nil, err
		}
		shape = append(shape, n)
		p.space()
		switch p.peek() {
		case ',':
			p.i++
			p.space()
			if p.peek() == ')' {
				p.i++
				return shape, nil
			}
		case ')':
			if len(shape) == 1 {
				return nil, p.errf("shape (n) is an int, not a tuple; a 1-tuple needs a trailing comma")
			}
			p.i++
			return shape, nil
		default:
			return nil, p.errf("expected ',' or ')' in shape")
		}
	}
}

// uint reads a decimal int literal as Python 3 spells it without
// underscores: no sign, no leading zeros (a SyntaxError in Python 3).
func (p *dictParser) uint() (uint64, error) {
	start := p.i
	for p.i < len(p.s) && '0' <= p.s[p.i] && p.s[p.i] <= '9' {
		p.i++
	}
	digits := p.s[start:p.i]
	switch {
	case len(digits) == 0:
		if p.peek() == '-' {
			return 0, p.errf("negative dimension in shape")
		}
		return 0, p.errf("expected a dimension in shape")
	case len(digits) > 1 && digits[0] == '0':
		p.i = start
		return 0, p.errf("dimension with a leading zero")
	}
	n, err := strconv.ParseUint(string(digits), 10, 64)
	if err != nil {
		p.i = start
		return 0, p.errf("dimension %s does not fit in 64 bits", quote(string(digits)))
	}
	if p.allowL && p.peek() == 'L' {
		p.i++
	}
	return n, nil
}
