package remote

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Object is one remote file pinned to the version Open found (an ETag, or
// for hf:// the commit). It is safe for concurrent use.
type Object struct {
	c       *client
	loc     location
	display string
	size    int64
	version string // what String and Version report

	// etag is the validator every later response must carry when it
	// carries one; strong ETags are also sent as If-Match, so a server
	// that honours it refuses to serve another version at all.
	etag    string
	ifMatch bool
	lastMod string
	// modTime is the response's Last-Modified (zero when it had none),
	// for the mtime a mount shows.
	modTime time.Time

	// probe holds the first bytes of the object, read by Open; whole says
	// they are all of it.
	probe []byte
	whole bool

	// key names the object's chunks in the cache: a hash of its identity
	// and version, so another version never reads them.
	key string

	mu       sync.Mutex
	direct   *url.URL           // redirect target to use instead of the origin
	origin   *url.URL           // http, hf: where requests go (hf: pinned to the commit)
	inflight map[int64]*pending // chunk index -> fetch under way

	ra     readahead
	ctx    context.Context // ends at Close; fetches run under it
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
}

// Open resolves rawURL to one remote file pinned to its current version:
//
//	https://HOST/PATH, http://HOST/PATH   (userinfo becomes Basic auth for HOST)
//	hf://ORG/REPO[@REV][/PATH]            (also hf://datasets/..., hf://spaces/...)
//	s3://BUCKET/KEY
//
// A URL naming a directory (an hf:// repo root, a path or key ending in /)
// resolves as transformers does: model.safetensors.index.json there, else
// model.safetensors. Open sends one request (a ranged GET of the first
// HeaderProbe bytes, whose answer also gives the size and version) per file
// it tries.
func Open(ctx context.Context, rawURL string, opt Options) (*Object, error) {
	l, err := parseLocation(rawURL)
	if err != nil {
		return nil, err
	}
	if opt, err = opt.withDefaults(); err != nil {
		return nil, err
	}
	c, err := newClient(opt, l.kind)
	if err != nil {
		return nil, err
	}
	o, err := openLocation(ctx, c, l, "")
	if err != nil {
		c.release()
		return nil, err
	}
	return o, nil
}

// openLocation opens l, or the checkpoint in l when it is a directory. rev
// is the commit an hf:// sibling is pinned to ("" for a first Open).
func openLocation(ctx context.Context, c *client, l location, rev string) (*Object, error) {
	if !l.isDir() {
		return openFile(ctx, c, l, rev)
	}
	for _, name := range []string{"model.safetensors.index.json", "model.safetensors"} {
		s, err := l.sibling(name)
		if err != nil {
			return nil, err
		}
		o, err := openFile(ctx, c, s, rev)
		if err == nil || !errors.Is(err, ErrNotFound) {
			return o, err
		}
	}
	return nil, &Error{Op: "open", URL: l.display(rev), Err: fmt.Errorf("%w: no model.safetensors.index.json or model.safetensors there", ErrNotFound)}
}

func openFile(ctx context.Context, c *client, l location, rev string) (*Object, error) {
	o := &Object{c: c, loc: l, inflight: map[int64]*pending{}}
	o.display = l.display(rev)
	switch l.kind {
	case "http":
		o.origin = l.u
	case "hf":
		r := rev
		if r == "" {
			r = l.rev
		}
		if r == "" {
			r = "main"
		}
		o.origin = hfResolveURL(l, r)
	}
	if err := o.open(ctx, rev); err != nil {
		return nil, err
	}
	if l.kind == "hf" {
		// Every later request names the commit, so a push to the branch
		// during the mount cannot mix versions.
		o.origin = hfResolveURL(l, o.version)
	}
	id := o.display
	switch l.kind {
	case "http":
		// The query stays (it may name a version); the credentials do not
		// change what the object is, so another user's mount shares it.
		u := *l.u
		u.User = nil
		id = u.String()
	case "hf":
		id = l.endpoint.String() + "|" + l.display(o.version)
	case "s3":
		if e := c.s3.endpoint; e != nil {
			id = e.String() + "|" + id
		}
	}
	version := o.version
	if version == "" {
		// Nothing tells this version from the next: its chunks are this
		// Open's alone, never read by a later one.
		c.opt.Logger.Warn(fmt.Sprintf("remote: %s: %v; opened anyway (allowed): if it changes during the mount, reads may mix versions", o.display, ErrUnversioned))
		version = "unversioned:" + rand.Text()
	}
	sum := sha256.Sum256([]byte(id + "\x00" + version + "\x00" + o.etag + "\x00" + strconv.FormatInt(o.size, 10)))
	o.key = hex.EncodeToString(sum[:16])
	o.ctx, o.cancel = context.WithCancel(context.Background())
	o.ra.init(&c.opt)
	return o, nil
}

func (o *Object) originURL() *url.URL {
	if o.loc.kind == "s3" {
		return o.c.s3.objectURL(o.loc.bucket, o.loc.key)
	}
	return o.origin
}

// open sends the probe: a ranged GET of the first HeaderProbe bytes. From
// its answer come the size (Content-Range total, X-Linked-Size), the
// version (X-Repo-Commit, X-Linked-Etag, ETag, Last-Modified) and the
// first bytes, which Header and ReadAll reuse.
func (o *Object) open(ctx context.Context, pinned string) error {
	probe := o.c.opt.HeaderProbe
	rng := fmt.Sprintf("bytes=0-%d", probe-1)
	return o.withRetries(ctx, "GET", func() string { return rng }, func() attempt {
		return o.probeOnce(ctx, rng, probe, pinned)
	})
}

func (o *Object) probeOnce(ctx context.Context, rng string, probe int64, pinned string) attempt {
	if err := acquire(ctx, o.c.sem); err != nil {
		return fail(0, err)
	}
	defer func() { <-o.c.sem }()
	ctx, guard, cancel := newStallGuard(ctx, o.c.opt.StallTimeout)
	defer cancel(nil)
	defer guard.stop()
	resp, first, err := o.roundTrip(ctx, "GET", http.Header{"Range": {rng}})
	if err != nil {
		return netErr(ctx, err)
	}
	defer drain(resp)
	if o.loc.kind == "s3" && o.c.s3.fixRegion(resp) {
		return attempt{retry: true, wait: 1, err: errors.New("bucket is in another region")}
	}
	a := classify(resp)
	if (a.status == 401 || a.status == 403) && o.loc.kind != "s3" && o.forgetDirect() {
		return transient(a.status, errors.New("the redirect target refused the request; asking the origin again"))
	}
	if a.err != nil {
		return a
	}
	s := resp.StatusCode
	if err := encodedBody(resp); err != nil {
		return fail(s, err)
	}
	var total int64
	switch s {
	case http.StatusPartialContent:
		start, end, t, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != 0 || t < 0 || end >= t || end >= probe {
			return fail(s, fmt.Errorf("%w: Content-Range %q for %s", ErrBadResponse, resp.Header.Get("Content-Range"), rng))
		}
		total = t
	case http.StatusOK:
		// The server ignored Range. Fine for a file that fits in the
		// probe; anything larger cannot be read lazily.
		total = resp.ContentLength
		if total < 0 || total > probe {
			return fail(s, fmt.Errorf("%w (answered 200 with the whole %s instead of %s)", ErrNoRanges, sizeText(total), rng))
		}
	case http.StatusRequestedRangeNotSatisfiable:
		// An empty object has no byte 0.
		if _, _, t, ok := parseContentRange(resp.Header.Get("Content-Range")); ok && t == 0 || o.loc.kind == "s3" {
			total = 0
			break
		}
		return fail(s, fmt.Errorf("%w: 416 for %s", ErrBadResponse, rng))
	default:
		return fail(s, fmt.Errorf("%w: status %d", ErrBadResponse, s))
	}
	switch o.loc.kind {
	case "hf":
		commit := first.Get("X-Repo-Commit")
		if commit == "" {
			return fail(s, fmt.Errorf("%w: no X-Repo-Commit header: %s does not answer like the Hugging Face Hub (HF_ENDPOINT)", ErrBadResponse, o.loc.endpoint.Host))
		}
		if pinned != "" && commit != pinned {
			return fail(s, fmt.Errorf("%w: commit %s, not %s", ErrChanged, commit, pinned))
		}
		o.version = commit
		o.etag = first.Get("X-Linked-Etag")
		if o.etag == "" {
			o.etag = first.Get("ETag")
		}
		if ls := first.Get("X-Linked-Size"); ls != "" {
			if n, err := strconv.ParseInt(ls, 10, 64); err != nil || n != total {
				return fail(s, fmt.Errorf("%w: X-Linked-Size %s but the file has %d bytes", ErrBadResponse, ls, total))
			}
		}
	default:
		o.etag = resp.Header.Get("ETag")
		o.lastMod = resp.Header.Get("Last-Modified")
		o.ifMatch = o.etag != "" && !strings.HasPrefix(o.etag, "W/")
		o.version = o.etag
		if o.version == "" {
			o.version = o.lastMod
		}
		if o.version == "" && !o.c.opt.AllowUnversioned {
			return fail(s, ErrUnversioned)
		}
	}
	if t, err := http.ParseTime(resp.Header.Get("Last-Modified")); err == nil {
		o.modTime = t
	}
	want := min(total, probe)
	buf := make([]byte, want)
	n, err := readFullGuarded(resp.Body, buf, guard)
	if int64(n) < want {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return transient(s, fmt.Errorf("short body: %d of %d bytes: %w", n, want, err))
	}
	o.size, o.probe, o.whole = total, buf, want == total
	return attempt{}
}

func readFullGuarded(r io.Reader, b []byte, g *stallGuard) (int, error) {
	n := 0
	for n < len(b) {
		k, err := r.Read(b[n:])
		n += k
		if k > 0 {
			g.poke()
		}
		if err != nil {
			if err == io.EOF && n == len(b) {
				return n, nil
			}
			return n, err
		}
	}
	return n, nil
}

func sizeText(n int64) string {
	if n < 0 {
		return "body of unknown length"
	}
	return strconv.FormatInt(n, 10) + "-byte body"
}

// acquire takes a slot of s, or gives up when ctx ends.
func acquire(ctx context.Context, s chan struct{}) error {
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// String is the URL without credentials or signed query strings, for
// errors, logs and /proc/mounts.
func (o *Object) String() string { return o.display }

// Size is the object's length in bytes.
func (o *Object) Size() int64 { return o.size }

// Version is what the object is pinned to: for hf:// the commit, else the
// ETag (or Last-Modified when the server sends no ETag).
func (o *Object) Version() string { return o.version }

// Name is the file's name: the last segment of its path or key.
func (o *Object) Name() string { return o.loc.name() }

// ModTime is the Last-Modified the server sent when the object was opened;
// zero when it sent none.
func (o *Object) ModTime() time.Time { return o.modTime }

// IsIndex says the object is a sharded checkpoint's index
// (*.safetensors.index.json).
func (o *Object) IsIndex() bool { return strings.HasSuffix(o.Name(), safetensors.IndexSuffix) }

// Sibling opens name (a relative path, typically a shard from an index's
// weight_map) in the same directory, from the same store with the same
// connections and cache, and for hf:// at the same commit. Names that would
// leave the directory are refused.
func (o *Object) Sibling(ctx context.Context, name string) (*Object, error) {
	if o.closed.Load() {
		return nil, &Error{Op: "sibling", URL: o.display, Err: ErrClosed}
	}
	l, err := o.loc.sibling(name)
	if err != nil {
		return nil, err
	}
	rev := ""
	if l.kind == "hf" {
		rev = o.version
	}
	o.c.refs.Add(1)
	s, err := openFile(ctx, o.c, l, rev)
	if err != nil {
		o.c.release()
		return nil, err
	}
	return s, nil
}

// Close stops the object's read-ahead and releases it; the connections and
// cache go when the last of an Object and its siblings is closed. Reads
// after Close fail with ErrClosed.
func (o *Object) Close() error {
	if o.closed.Swap(true) {
		return nil
	}
	o.cancel()
	o.wg.Wait()
	o.c.release()
	return nil
}
