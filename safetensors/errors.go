package safetensors

import (
	"errors"
	"strconv"
)

// Rules a file can break. Every error this package returns for a malformed
// file or an invalid write request is a *FormatError whose Rule is one of
// these, so callers can test with errors.Is and still print a message that
// names the tensor.
var (
	ErrTooSmall        = errors.New("file shorter than the 8-byte header length")
	ErrHeaderTooLarge  = errors.New("header length above 100,000,000 bytes")
	ErrHeaderTruncated = errors.New("header extends past the end of the file")
	ErrHeaderUTF8      = errors.New("header is not valid UTF-8")
	ErrHeaderJSON      = errors.New("header is not JSON of the safetensors schema")
	ErrUnknownDType    = errors.New("unknown dtype")
	ErrMetadata        = errors.New("invalid __metadata__")
	ErrDuplicateKey    = errors.New("duplicate key")
	ErrOffsets         = errors.New("data_offsets not contiguous from 0")
	ErrShapeOverflow   = errors.New("shape size overflows 64 bits")
	ErrSubByte         = errors.New("sub-byte tensor is not a whole number of bytes")
	ErrSizeMismatch    = errors.New("data_offsets do not match dtype and shape")
	ErrTrailingData    = errors.New("bytes after the end of the last tensor")
	ErrTruncatedData   = errors.New("file ends before the last tensor does")
)

// FormatError says which rule a file (or a write request) broke and, when the
// rule is about one tensor, which one. Key is "" for file-level rules.
type FormatError struct {
	Key    string
	Rule   error
	Detail string
}

func (e *FormatError) Error() string {
	b := make([]byte, 0, 48+len(e.Key)+len(e.Detail))
	b = append(b, "safetensors: "...)
	if e.Key != "" {
		b = append(b, "tensor "...)
		// Quoted because keys may hold anything JSON allows, including
		// control characters and spaces that would make a log line ambiguous.
		b = strconv.AppendQuote(b, e.Key)
		b = append(b, ": "...)
	}
	if e.Detail != "" {
		b = append(b, e.Detail...)
	} else if e.Rule != nil {
		b = append(b, e.Rule.Error()...)
	}
	return string(b)
}

func (e *FormatError) Unwrap() error { return e.Rule }

func formatErr(key string, rule error, detail string) *FormatError {
	return &FormatError{Key: key, Rule: rule, Detail: detail}
}
