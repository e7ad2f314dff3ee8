package remote

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Header returns the first 8+N bytes of a safetensors file: the length and
// the JSON header, unvalidated (safetensors parses them). They come from
// Open's probe; only a header longer than the probe costs a second request,
// for the rest (huggingface_hub's metadata fetch does the same). Headers
// above MaxHeaderSize are refused before they are fetched.
func (o *Object) Header(ctx context.Context) ([]byte, error) {
	if o.closed.Load() {
		return nil, &Error{Op: "header", URL: o.display, Err: ErrClosed}
	}
	ferr := func(rule error, detail string) error {
		return &Error{Op: "header", URL: o.display, Err: &safetensors.FormatError{Rule: rule, Detail: detail}}
	}
	if o.size < 8 {
		return nil, ferr(safetensors.ErrTooSmall, fmt.Sprintf("file is %d bytes, shorter than the 8-byte header length", o.size))
	}
	n := binary.LittleEndian.Uint64(o.probeBytes()[:8])
	if n > MaxHeaderSize {
		return nil, ferr(safetensors.ErrHeaderTooLarge, fmt.Sprintf("header length %d is above the limit of %d bytes for a remote file", n, MaxHeaderSize))
	}
	if n > uint64(o.size-8) {
		return nil, ferr(safetensors.ErrHeaderTruncated, fmt.Sprintf("header length %d runs past the end of the %d-byte file", n, o.size))
	}
	return o.prefix(ctx, "header", 8+int64(n))
}

// ReadAll returns the whole object, for small files such as an
// index.json; objects above MaxReadAllSize are refused.
func (o *Object) ReadAll(ctx context.Context) ([]byte, error) {
	if o.closed.Load() {
		return nil, &Error{Op: "read", URL: o.display, Err: ErrClosed}
	}
	if o.size > MaxReadAllSize {
		return nil, &Error{Op: "read", URL: o.display, Err: fmt.Errorf("%d bytes is more than the %d ReadAll reads", o.size, MaxReadAllSize)}
	}
	return o.prefix(ctx, "read", o.size)
}

// prefix returns the first n bytes: the probe, then one request for the
// rest if there is a rest. Not cached: a mount reads these once.
func (o *Object) prefix(ctx context.Context, op string, n int64) ([]byte, error) {
	b := make([]byte, n)
	have := copy(b, o.probeBytes())
	if int64(have) == n {
		return b, nil
	}
	pos := have
	err := o.get(ctx, int64(have), n-int64(have), func(p []byte) error {
		pos += copy(b[pos:], p)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

func (o *Object) probeBytes() []byte {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.probe
}

// trimProbe keeps only the first n bytes of the probe (the header, once
// it is parsed) unless the probe is the whole object: the rest of its 128
// KiB would otherwise stay in memory for the life of a mount, per shard.
// ReadAt fetches those bytes like any others.
func (o *Object) trimProbe(n int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.whole && int64(len(o.probe)) > n {
		o.probe = slices.Clone(o.probe[:n])
	}
}
