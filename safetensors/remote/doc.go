// Package remote reads safetensors checkpoints where they are stored: on a
// web server (https://, http://), on the Hugging Face Hub (hf://) or in an
// S3-compatible object store (s3://), lazily and through a local chunk
// cache. It knows nothing of FUSE: a mount calls it.
//
// A mount opens a whole checkpoint with OpenSet: the file, or the index
// and every shard it names, validated from their headers alone by the same
// rules as a local checkpoint (safetensors.ReadHeader, CheckSet), shards
// opened concurrently within MaxConns. Underneath, one file:
//
//	o, err := remote.Open(ctx, url, remote.Options{CacheDir: ..., CacheSize: ...})
//	o.String()      // URL for errors, logs and /proc/mounts, never credentials
//	o.Size()        // bytes
//	o.Version()     // what it is pinned to: the hf commit, else the ETag
//	o.IsIndex()     // a *.safetensors.index.json (Open of a directory or repo
//	                // root resolves to the index, else model.safetensors)
//	o.Header(ctx)   // the first 8+N bytes, to hand to safetensors' parser
//	o.ReadAll(ctx)  // a small file (the index), bounded
//	o.ReadAt(p, off)            // tensor bytes, cached, with read-ahead
//	o.Sibling(ctx, "model-00001-of-00002.safetensors") // a shard, same commit
//	o.Close()
//
// # Requests
//
// Open sends one ranged GET for the first Options.HeaderProbe bytes
// (128 KiB); its answer gives the size, the version and, for Header, the
// header of almost every real checkpoint (huggingface_hub reads 100,000
// bytes for the same reason). A longer header costs one more request for
// the rest. Every later request is a ranged GET of whole chunks
// (Options.ChunkSize, 4 MiB, aligned), sent with If-Match and checked
// against the version Open saw, so an object that changes under a mount
// fails its reads with ErrChanged instead of mixing two versions. For hf://
// every request names the commit Open resolved (X-Repo-Commit), so a push
// to the branch cannot mix versions either.
//
// Requests for an Object and its siblings share Options.MaxConns
// connections, so a sharded mount may call Sibling and Header for all its
// shards at once and still send at most MaxConns requests at a time. All
// methods are safe for concurrent use. Failed attempts (connection errors, 5xx, 429, bodies that
// break off or stall for Options.StallTimeout) are retried with a doubling
// backoff or after the server's Retry-After, resuming where the body broke
// off; a read that still fails returns an *Error, which the mount turns
// into EIO, and the Logger gets the URL, range and status of every failed
// attempt.
//
// # Credentials
//
// hf:// sends HF_TOKEN (or the token file huggingface_hub writes) to the
// HF_ENDPOINT host only; the Hub's 302 to its CDN is followed without it.
// s3:// signs with SigV4 (minio-go's signer) using AWS_ACCESS_KEY_ID and
// friends, else the shared config and credentials files (AWS_PROFILE),
// else sends anonymous requests; AWS_ENDPOINT_URL or Options.S3Endpoint
// selects an S3-compatible store, addressed path-style. http(s):// URLs
// may carry user:password, sent as Basic auth to that host only. None of
// these appear in String, errors or logs; a URL's query string is shown as
// "?…".
//
// # Cache
//
// Fetched chunks live in files under Options.CacheDir, keyed by the
// object's identity and version, bounded by Options.CacheSize with LRU
// eviction, and shareable by several processes (see cache.go). Memory use
// does not grow with the object: bodies are copied through one 256 KiB
// buffer per connection into cache files, and readers read those files.
//
// Lock order: an Object's read-ahead window (readahead.mu), then the
// Object's fetches in flight (Object.mu), then the chunk cache's index
// (cache.mu); the S3 credentials' mutex is a leaf. No lock is held across
// a network request: fetches run in their own goroutines and readers wait
// on channels.
package remote
