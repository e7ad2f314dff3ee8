package remote

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// Options configure Open. The zero value is usable: every field has a
// default, listed next to it.
type Options struct {
	// CacheDir holds the on-disk chunk cache. "" means
	// $XDG_CACHE_HOME/safejaxfs, else ~/.cache/safejaxfs. Several processes
	// may share one directory.
	CacheDir string
	// CacheSize bounds the chunk cache in bytes (LRU eviction). 0 means
	// DefaultCacheSize; at least MinCacheSize. Read-ahead windows are capped
	// at a quarter of it, so chunks fetched ahead stay cached until the
	// reader gets to them.
	CacheSize int64
	// S3Endpoint overrides AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL and the
	// shared config's endpoint_url (an S3-compatible store). Requests to a
	// custom endpoint use path-style addressing.
	S3Endpoint string
	// Logger receives one record per failed request (display URL, range,
	// status, what happens next) and never credentials. nil discards them.
	Logger *slog.Logger

	// MaxConns bounds the concurrent requests of an Object and its
	// siblings. 0 means 8.
	MaxConns int
	// ChunkSize is the unit of range requests and of the cache, a power of
	// two. 0 means 4 MiB: a random read fetches only the chunks it touches
	// (one or two: FUSE reads are at most 1 MiB). Smaller chunks cost a
	// cache file create and rename each; measured here under load, 1 MiB
	// chunks halved sequential throughput against 4 MiB ones.
	ChunkSize int64
	// PartSize bounds one read-ahead request. 0 means 8 MiB.
	PartSize int64
	// MinWindow and MaxWindow bound the sequential read-ahead window, which
	// starts at MinWindow on the second sequential read and doubles up to
	// MaxWindow. 0 means 8 MiB and 128 MiB.
	MinWindow, MaxWindow int64
	// HeaderProbe is the length of the first range request, which Open
	// sends and Header reuses. 0 means 128 KiB; at least 4 KiB.
	HeaderProbe int64

	// Retries is how many times a failed request is retried (connection
	// errors, 5xx, 429, short bodies). 0 means 5; -1 means none.
	Retries int
	// RetryBase is the first backoff, doubled per retry up to 30 s, with
	// jitter; a Retry-After header replaces it. 0 means 250 ms.
	RetryBase time.Duration
	// MaxRetryAfter caps a server's Retry-After: a longer wait fails the
	// read instead of holding it. 0 means 60 s.
	MaxRetryAfter time.Duration
	// StallTimeout fails (and retries) a request whose response headers or
	// body bytes do not arrive for this long. 0 means 30 s.
	StallTimeout time.Duration

	// AllowUnversioned opens files from a server that sends neither ETag
	// nor Last-Modified (refused otherwise, ErrUnversioned): a change to
	// such a file during the mount goes unnoticed, so reads may mix two
	// versions; Open logs that it does. Its chunks are cached for this
	// Open only, never shared with a later one.
	AllowUnversioned bool

	// HeaderProgress, if set, is called by OpenSet each time a shard's
	// header has been fetched and validated, with how many are done of
	// how many (concurrently, from the fetching goroutines).
	HeaderProgress func(done, total int)
}

// Defaults.
const (
	DefaultCacheSize = 10 << 30
	MinCacheSize     = 16 << 20
	// MaxHeaderSize caps the header length Header accepts, as
	// huggingface_hub does for remote metadata: a header above it is refused
	// before it is fetched (the local limit is 100 MB).
	MaxHeaderSize = 25_000_000
	// MaxReadAllSize bounds ReadAll (an index.json of a 100k-tensor model
	// is a few MB).
	MaxReadAllSize = 64 << 20
)

// Cache returns the chunk cache directory and size limit Open uses for o,
// defaults applied (see CacheDir and CacheSize), so that a caller showing
// them (safejaxfs status) shows what Open does without repeating its rules.
func (o Options) Cache() (dir string, limit int64, err error) {
	dir = o.CacheDir
	if dir == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", 0, errors.New("remote: no cache directory: set --cache-dir, XDG_CACHE_HOME or HOME")
			}
			base = filepath.Join(home, ".cache")
		}
		dir = filepath.Join(base, "safejaxfs")
	}
	limit = o.CacheSize
	if limit == 0 {
		limit = DefaultCacheSize
	}
	return dir, max(limit, MinCacheSize), nil
}

func (o Options) withDefaults() (Options, error) {
	var err error
	if o.CacheDir, o.CacheSize, err = o.Cache(); err != nil {
		return o, err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(v *int64, d int64) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.ChunkSize, 4<<20)
	if o.ChunkSize&(o.ChunkSize-1) != 0 {
		return o, errors.New("remote: ChunkSize must be a power of two")
	}
	def(&o.PartSize, 8<<20)
	def(&o.MinWindow, 8<<20)
	def(&o.MaxWindow, 128<<20)
	def(&o.HeaderProbe, 128<<10)
	o.HeaderProbe = max(o.HeaderProbe, 4096)
	o.PartSize = max(o.PartSize, o.ChunkSize)
	o.MaxWindow = max(o.MaxWindow, o.MinWindow)
	if o.MaxConns <= 0 {
		o.MaxConns = 8
	}
	switch {
	case o.Retries == 0:
		o.Retries = 5
	case o.Retries < 0:
		o.Retries = 0
	}
	if o.RetryBase <= 0 {
		o.RetryBase = 250 * time.Millisecond
	}
	if o.MaxRetryAfter <= 0 {
		o.MaxRetryAfter = 60 * time.Second
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = 30 * time.Second
	}
	return o, nil
}
