package remote

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Set is a remote checkpoint opened from its headers alone: one file, or
// an index and every shard its weight map names, validated by the same
// rules as a local checkpoint (safetensors.ReadHeader for each file,
// safetensors.CheckSet across them). No tensor byte has been fetched.
type Set struct {
	// URL is what was opened, in display form (no credentials): the
	// index of a sharded checkpoint, else the file.
	URL string
	// Index is the parsed index; nil for a single file. IndexName and
	// IndexBytes are its file name and bytes as fetched (a mount shows
	// them as they are).
	Index      *safetensors.Index
	IndexName  string
	IndexBytes []byte
	// Names are the files as the index names them, sorted (for a single
	// file, its name); Objects and Headers are in the same order.
	Names   []string
	Objects []*Object
	Headers []*safetensors.Header
	// ModTime is the latest Last-Modified of the files and the index (zero
	// when no server sent one).
	ModTime time.Time
}

// Sharded reports whether the set is an index over shards.
func (s *Set) Sharded() bool { return s.Index != nil }

// Size is the bytes of all its files (the index not included).
func (s *Set) Size() int64 {
	var n int64
	for _, o := range s.Objects {
		n += o.Size()
	}
	return n
}

// Close closes every file.
func (s *Set) Close() error {
	for _, o := range s.Objects {
		o.Close()
	}
	return nil
}

// OpenSet opens the checkpoint rawURL names (see Open: a file, an index,
// or a directory holding one) and validates it from headers only. For an
// index, every shard is opened and its header read concurrently; requests
// share Options.MaxConns, so a 163-shard checkpoint sends at most that
// many at a time. A shard that is missing or invalid, a key in no shard or
// in the wrong one, refuses the whole set with a *safetensors.SetError
// naming the shard and key, exactly as for a local set. Nothing is left
// open when it fails.
func OpenSet(ctx context.Context, rawURL string, opt Options) (*Set, error) {
	o, err := Open(ctx, rawURL, opt)
	if err != nil {
		return nil, err
	}
	// A .json is an index, as for a local path (safetensors.Locate).
	if !strings.HasSuffix(o.Name(), ".json") {
		h, err := validHeader(ctx, o)
		if err != nil {
			o.Close()
			return nil, err
		}
		return &Set{URL: o.String(), Names: []string{o.Name()}, Objects: []*Object{o}, Headers: []*safetensors.Header{h}, ModTime: o.ModTime()}, nil
	}
	defer o.Close() // the shards keep the connections and cache alive
	if o.Size() > safetensors.MaxIndexSize {
		// Refused on the size its probe gave, before it is fetched.
		return nil, &Error{Op: "open", URL: o.String(), Err: safetensors.IndexTooLarge(o.Size())}
	}
	b, err := o.ReadAll(ctx)
	if err != nil {
		return nil, err
	}
	idx, err := safetensors.ParseIndex(b)
	if err != nil {
		return nil, &Error{Op: "parse", URL: o.String(), Err: err}
	}
	s := &Set{URL: o.String(), Index: idx, IndexName: o.Name(), IndexBytes: b, Names: idx.Shards(), ModTime: o.ModTime()}
	s.Objects = make([]*Object, len(s.Names))
	s.Headers = make([]*safetensors.Header, len(s.Names))
	errs := make([]error, len(s.Names))
	var wg sync.WaitGroup
	var fetched atomic.Int64
	for i, name := range s.Names {
		wg.Go(func() {
			sh, err := o.Sibling(ctx, name)
			if err == nil {
				s.Objects[i] = sh
				s.Headers[i], err = validHeader(ctx, sh)
			}
			errs[i] = err
			if err == nil && opt.HeaderProgress != nil {
				opt.HeaderProgress(int(fetched.Add(1)), len(s.Names))
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err == nil {
			continue
		}
		s.closeOpened()
		return nil, safetensors.ShardOpenError(idx, s.Names[i], err, errors.Is(err, ErrNotFound))
	}
	if err := safetensors.CheckSet(idx, s.Names, s.Headers); err != nil {
		s.Close()
		return nil, err
	}
	for _, sh := range s.Objects {
		if t := sh.ModTime(); t.After(s.ModTime) {
			s.ModTime = t
		}
	}
	return s, nil
}

func (s *Set) closeOpened() {
	for _, o := range s.Objects {
		if o != nil {
			o.Close()
		}
	}
}

// validHeader fetches o's header (no request beyond Open's probe unless it
// is longer than the probe) and validates it against o's size: every rule
// of the reference reader, so the data the header describes fills the rest
// of the object exactly.
func validHeader(ctx context.Context, o *Object) (*safetensors.Header, error) {
	b, err := o.Header(ctx)
	if err != nil {
		return nil, err
	}
	h, err := safetensors.ReadHeader(bytes.NewReader(b), o.Size())
	if err != nil {
		return nil, &Error{Op: "header", URL: o.String(), Err: err}
	}
	o.trimProbe(int64(len(b)))
	return h, nil
}
