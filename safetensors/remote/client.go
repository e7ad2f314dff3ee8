package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// client is what an Object shares with its siblings: connections, the
// bound on concurrent requests, the cache and the credentials.
type client struct {
	opt   Options
	http  *http.Client
	sem   chan struct{} // one slot per request in flight
	cache *cache
	refs  atomic.Int32

	hfToken string  // hf: bearer token for the endpoint's host
	s3      *s3conf // s3: endpoint, region, credentials
}

// copyBufs hold the bytes of one body read between the network and the
// cache file: the only per-request memory, so MaxConns of them bound it.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func newClient(opt Options, kind string) (*client, error) {
	c, err := newCache(opt.CacheDir, opt.CacheSize, opt.Logger)
	if err != nil {
		return nil, err
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	// Ranges of raw bytes: a transparently gunzipped body would not be the
	// range asked for.
	t.DisableCompression = true
	t.MaxIdleConnsPerHost = opt.MaxConns
	t.ResponseHeaderTimeout = opt.StallTimeout
	cl := &client{
		opt:   opt,
		cache: c,
		sem:   make(chan struct{}, opt.MaxConns),
		http: &http.Client{
			Transport: t,
			// Redirects are followed by roundTrip, which decides per hop
			// whether credentials may go along.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	switch kind {
	case "hf":
		cl.hfToken = hfToken()
	case "s3":
		if cl.s3, err = newS3Conf(opt); err != nil {
			return nil, err
		}
	}
	cl.refs.Store(1)
	return cl, nil
}

func (c *client) release() {
	if c.refs.Add(-1) == 0 {
		c.cache.close()
		c.http.CloseIdleConnections()
	}
}

// attempt is the outcome of one request: retry says whether trying again
// may help, after wait (0: the backoff schedule decides).
type attempt struct {
	status int
	retry  bool
	quiet  bool // not a request failure (the caller's sink failed): not logged
	wait   time.Duration
	err    error
}

func fail(status int, err error) attempt      { return attempt{status: status, err: err} }
func transient(status int, err error) attempt { return attempt{status: status, err: err, retry: true} }

// withRetries runs fn until it succeeds, fails for good, or has been retried
// opt.Retries times, sleeping between attempts (doubling backoff with
// jitter, or the server's Retry-After). Every failed attempt is logged with
// the display URL and status.
func (o *Object) withRetries(ctx context.Context, op string, rng func() string, fn func() attempt) error {
	opt := &o.c.opt
	for i := 0; ; i++ {
		r := rng() // before fn, which may advance it
		a := fn()
		if a.err == nil {
			return nil
		}
		e := &Error{Op: op, URL: o.display, Range: r, Status: a.status, Err: a.err}
		if ctx.Err() != nil {
			e.Err = fmt.Errorf("%w (%w)", context.Cause(ctx), a.err)
			return e
		}
		if !a.retry || i >= opt.Retries {
			if a.retry {
				e.Err = fmt.Errorf("%w (gave up after %d attempts)", a.err, i+1)
			}
			if !a.quiet {
				opt.Logger.Warn(e.Error())
			}
			return e
		}
		wait := a.wait
		if wait > opt.MaxRetryAfter {
			e.Err = fmt.Errorf("%w (the server asks to retry after %v, more than the %v this client waits)", a.err, wait, opt.MaxRetryAfter)
			opt.Logger.Warn(e.Error())
			return e
		}
		if wait == 0 {
			wait = min(opt.RetryBase<<i, 30*time.Second)
			wait = wait/2 + rand.N(wait/2+1)
		}
		opt.Logger.Warn(fmt.Sprintf("%s; retry %d/%d in %v", e.Error(), i+1, opt.Retries, wait.Round(time.Millisecond)))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			e.Err = fmt.Errorf("%w (%w)", context.Cause(ctx), a.err)
			return e
		case <-t.C:
		}
	}
}

// classify turns a response status into an attempt outcome (err == nil for
// the statuses a caller handles itself). What retrying cannot fix fails at
// once, naming the status and the server's reason: 401, 403 and 404, and
// the S3 error codes that say the same whatever the status they come
// with (a gateway may answer AccessDenied with a 500).
func classify(resp *http.Response) attempt {
	s := resp.StatusCode
	if s < 400 {
		return attempt{status: s}
	}
	why := errorReason(resp)
	switch {
	case s == http.StatusNotFound || s3NotFound[why.code]:
		return fail(s, why.wrap(ErrNotFound))
	case s == http.StatusUnauthorized || s == http.StatusForbidden || s3Denied[why.code]:
		return fail(s, why.wrap(ErrDenied))
	case s == http.StatusPreconditionFailed:
		return fail(s, ErrChanged)
	case s == http.StatusRequestedRangeNotSatisfiable:
		return attempt{status: s} // an empty object, or one that shrank: the caller knows
	case s == http.StatusRequestTimeout || s == http.StatusTooManyRequests || (s >= 500 && s != http.StatusNotImplemented):
		a := transient(s, why.wrap(errors.New("temporary server failure")))
		a.wait = retryAfter(resp.Header.Get("Retry-After"))
		return a
	}
	return fail(s, why.wrap(fmt.Errorf("%w: status %d", ErrBadResponse, s)))
}

// encodedBody refuses a body sent with a Content-Encoding other than
// identity, naming it: its bytes are not the file's. aws-chunked is not
// one: it is how an upload was signed, which AWS drops when it stores the
// object and some S3-compatible stores (versitygw) echo back on GET over
// the object's plain bytes.
func encodedBody(resp *http.Response) error {
	for _, v := range resp.Header.Values("Content-Encoding") {
		for _, e := range strings.Split(v, ",") {
			e = strings.TrimSpace(e)
			if e != "" && !strings.EqualFold(e, "identity") && !strings.EqualFold(e, "aws-chunked") {
				return fmt.Errorf("%w (Content-Encoding: %s, though the request asked for identity)", ErrEncoded, e)
			}
		}
	}
	return nil
}

// S3 error codes retrying cannot fix.
var (
	s3NotFound = map[string]bool{"NoSuchKey": true, "NoSuchBucket": true}
	s3Denied   = map[string]bool{"AccessDenied": true, "InvalidAccessKeyId": true, "SignatureDoesNotMatch": true}
)

// reason is what a server said about an error: the Hub's X-Error-Message,
// or an S3 error document's Code and Message.
type reason struct {
	code string // S3 error code, e.g. SignatureDoesNotMatch
	msg  string
}

// errorReason reads (at most 4 KiB of) an error response's body for its
// reason. Servers do not echo credentials there.
func errorReason(resp *http.Response) reason {
	if msg := resp.Header.Get("X-Error-Message"); msg != "" {
		return reason{msg: msg}
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if !strings.Contains(resp.Header.Get("Content-Type"), "xml") && !strings.HasPrefix(strings.TrimSpace(string(b)), "<") {
		return reason{}
	}
	code := strings.TrimSpace(xmlField(b, "Code"))
	return reason{code: code, msg: strings.TrimSpace(code + " " + strings.TrimSpace(xmlField(b, "Message")))}
}

// wrap adds the reason to err.
func (r reason) wrap(err error) error {
	msg := r.msg
	if msg == "" {
		return err
	}
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	return fmt.Errorf("%w (%s)", err, msg)
}

func xmlField(b []byte, name string) string {
	_, rest, ok := strings.Cut(string(b), "<"+name+">")
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, "</"+name+">")
	return v
}

// retryAfter parses delay-seconds or an HTTP date; 0 when absent or bad.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		return max(time.Duration(n)*time.Second, time.Millisecond)
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), time.Millisecond)
	}
	return 0
}

// errStalled cancels a request whose bytes stopped arriving.
var errStalled = errors.New("no data arrived for the stall timeout")

// stallGuard cancels ctx when poke is not called for d.
type stallGuard struct {
	t *time.Timer
	d time.Duration
}

func newStallGuard(ctx context.Context, d time.Duration) (context.Context, *stallGuard, context.CancelCauseFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	g := &stallGuard{d: d, t: time.AfterFunc(d, func() { cancel(fmt.Errorf("%w (%v)", errStalled, d)) })}
	return ctx, g, cancel
}

func (g *stallGuard) poke() { g.t.Reset(g.d) }
func (g *stallGuard) stop() { g.t.Stop() }

// netErr is a transport error as an attempt: retried unless the caller's
// context ended.
func netErr(ctx context.Context, err error) attempt {
	if c := context.Cause(ctx); c != nil && errors.Is(c, errStalled) {
		return transient(0, c)
	}
	// A *url.Error quotes the whole request URL, which for a redirect
	// target holds its signature; the caller names the object instead.
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return transient(0, err)
}

// roundTrip sends one request for the object and follows redirects. Auth
// (hf token, Basic auth from the URL, S3 signature) goes only to the
// object's own host; a redirect to any other host (the Hub's CDN, a
// presigned store URL) is followed without it, and remembered so later
// requests go there directly. first is the header of the first response,
// which for the Hub carries X-Repo-Commit and X-Linked-* even when it is a
// redirect.
func (o *Object) roundTrip(ctx context.Context, method string, hdr http.Header) (resp *http.Response, first http.Header, err error) {
	origin := o.originURL()
	u := origin
	o.mu.Lock()
	if o.direct != nil {
		u = o.direct
	}
	o.mu.Unlock()
	for hop := 0; ; hop++ {
		req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
		if err != nil {
			return nil, nil, err
		}
		req.URL = u // keep RawPath exactly (S3 signatures cover it)
		for k, v := range hdr {
			req.Header[k] = v
		}
		req.Header.Set("User-Agent", "safejaxfs")
		// The file's bytes as they are: a compressed body would not be
		// the range asked for (encodedBody refuses one anyway).
		req.Header.Set("Accept-Encoding", "identity")
		if sameOrigin(u, origin) {
			if req, err = o.authorize(req); err != nil {
				return nil, nil, err
			}
		}
		resp, err := o.c.http.Do(req)
		if err != nil {
			return nil, first, err
		}
		if first == nil {
			first = resp.Header
		}
		loc := resp.Header.Get("Location")
		if !isRedirect(resp.StatusCode) || loc == "" {
			return resp, first, nil
		}
		drain(resp)
		if hop >= 5 {
			return nil, first, fmt.Errorf("%w: more than 5 redirects", ErrBadResponse)
		}
		next, err := u.Parse(loc)
		if err != nil || (next.Scheme != "http" && next.Scheme != "https") {
			return nil, first, fmt.Errorf("%w: redirect to a bad Location", ErrBadResponse)
		}
		if !sameOrigin(next, origin) {
			o.mu.Lock()
			o.direct = next
			o.mu.Unlock()
		}
		u = next
	}
}

func isRedirect(s int) bool {
	return s == 301 || s == 302 || s == 303 || s == 307 || s == 308
}

func sameOrigin(a, b *url.URL) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(a.Host, b.Host)
}

// authorize adds the credentials for the object's own host.
func (o *Object) authorize(req *http.Request) (*http.Request, error) {
	switch o.loc.kind {
	case "hf":
		if o.c.hfToken != "" {
			req.Header.Set("Authorization", "Bearer "+o.c.hfToken)
		}
	case "http":
		if ui := o.loc.u.User; ui != nil {
			p, _ := ui.Password()
			req.SetBasicAuth(ui.Username(), p)
		}
	case "s3":
		return o.c.s3.sign(req)
	}
	return req, nil
}

// forgetDirect drops a remembered redirect target (a signed CDN URL that
// expired), so the next request asks the origin again. It reports whether
// there was one.
func (o *Object) forgetDirect() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	had := o.direct != nil
	o.direct = nil
	return had
}

func drain(resp *http.Response) {
	io.CopyN(io.Discard, resp.Body, 64<<10)
	resp.Body.Close()
}

// parseContentRange reads "bytes START-END/TOTAL" (TOTAL may be *).
func parseContentRange(v string) (start, end, total int64, ok bool) {
	v, found := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	r, t, found := strings.Cut(v, "/")
	if !found {
		return 0, 0, 0, false
	}
	total = -1
	if t != "*" {
		n, err := strconv.ParseInt(t, 10, 64)
		if err != nil || n < 0 {
			return 0, 0, 0, false
		}
		total = n
	}
	if r == "*" {
		return -1, -1, total, true
	}
	a, b, found := strings.Cut(r, "-")
	if !found {
		return 0, 0, 0, false
	}
	s, err1 := strconv.ParseInt(a, 10, 64)
	e, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || s < 0 || e < s {
		return 0, 0, 0, false
	}
	return s, e, total, true
}
