package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// get fetches bytes [off, off+n) with ranged GETs, retrying failed
// attempts, and hands them to sink in order, each byte exactly once: an
// attempt that breaks off mid-body is resumed from the first byte sink has
// not had. A sink error ends get with that error.
func (o *Object) get(ctx context.Context, off, n int64, sink func([]byte) error) error {
	done := int64(0)
	var sinkErr error
	rng := func() string { return fmt.Sprintf("bytes=%d-%d", off+done, off+n-1) }
	err := o.withRetries(ctx, "GET", rng, func() attempt {
		a := o.getOnce(ctx, off+done, n-done, rng(), func(p []byte) error {
			if err := sink(p); err != nil {
				sinkErr = err
				return err
			}
			done += int64(len(p))
			return nil
		})
		if sinkErr != nil {
			return attempt{err: sinkErr, quiet: true}
		}
		return a
	})
	if sinkErr != nil {
		return sinkErr
	}
	return err
}

// getOnce is one attempt of get.
func (o *Object) getOnce(ctx context.Context, off, n int64, rng string, sink func([]byte) error) attempt {
	if err := acquire(ctx, o.c.sem); err != nil {
		return fail(0, err)
	}
	defer func() { <-o.c.sem }()
	ctx, guard, cancel := newStallGuard(ctx, o.c.opt.StallTimeout)
	defer cancel(nil)
	defer guard.stop()
	h := http.Header{"Range": {rng}}
	if o.ifMatch {
		h.Set("If-Match", o.etag)
	}
	resp, _, err := o.roundTrip(ctx, "GET", h)
	if err != nil {
		return netErr(ctx, err)
	}
	defer resp.Body.Close()
	if o.loc.kind == "s3" && o.c.s3.fixRegion(resp) {
		return attempt{retry: true, wait: 1, err: errors.New("bucket is in another region")}
	}
	a := classify(resp)
	if (a.status == 401 || a.status == 403) && o.loc.kind != "s3" && o.forgetDirect() {
		return transient(a.status, errors.New("the redirect target refused the request (an expired signed URL?); asking the origin again"))
	}
	if a.err != nil {
		if a.err == ErrChanged {
			a.err = fmt.Errorf("%w (If-Match %s failed): remount to see the new version", ErrChanged, o.etag)
		}
		return a
	}
	s := resp.StatusCode
	if err := encodedBody(resp); err != nil {
		return fail(s, err)
	}
	switch s {
	case http.StatusPartialContent:
		start, end, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if ok && total >= 0 && total != o.size {
			return fail(s, fmt.Errorf("%w: its size is now %d bytes, was %d: remount to see the new version", ErrChanged, total, o.size))
		}
		if !ok || start != off || end != off+n-1 {
			return fail(s, fmt.Errorf("%w: Content-Range %q for %s", ErrBadResponse, resp.Header.Get("Content-Range"), rng))
		}
	case http.StatusOK:
		if off != 0 || n != o.size || resp.ContentLength != o.size {
			return fail(s, fmt.Errorf("%w (answered 200 with the whole %s instead of %s)", ErrNoRanges, sizeText(resp.ContentLength), rng))
		}
	case http.StatusRequestedRangeNotSatisfiable:
		return fail(s, fmt.Errorf("%w: it is now shorter than %d bytes: remount to see the new version", ErrChanged, off+n))
	default:
		return fail(s, fmt.Errorf("%w: status %d", ErrBadResponse, s))
	}
	if err := o.sameVersion(resp); err != nil {
		return fail(s, err)
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	left := n
	for left > 0 {
		k, err := resp.Body.Read(buf[:min(int64(len(buf)), left)])
		if k > 0 {
			guard.poke()
			if serr := sink(buf[:k]); serr != nil {
				return fail(s, serr)
			}
			left -= int64(k)
		}
		if err != nil {
			if left == 0 && err == io.EOF {
				break
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			if c := context.Cause(ctx); c != nil && errors.Is(c, errStalled) {
				err = c
			}
			return transient(s, fmt.Errorf("body broke off after %d of %d bytes: %w", n-left, n, err))
		}
	}
	return attempt{}
}

// sameVersion checks the validators a response carries against the ones
// Open saw, for servers that ignore If-Match. hf:// needs no check: every
// request names the commit, and the CDN's ETags are its own.
func (o *Object) sameVersion(resp *http.Response) error {
	if o.loc.kind == "hf" {
		return nil
	}
	if e := resp.Header.Get("ETag"); e != "" && o.etag != "" && strings.TrimPrefix(e, "W/") != strings.TrimPrefix(o.etag, "W/") {
		return fmt.Errorf("%w (ETag %s, was %s): remount to see the new version", ErrChanged, e, o.etag)
	}
	if o.etag == "" && o.lastMod != "" {
		if m := resp.Header.Get("Last-Modified"); m != "" && m != o.lastMod {
			return fmt.Errorf("%w (Last-Modified %s, was %s): remount to see the new version", ErrChanged, m, o.lastMod)
		}
	}
	return nil
}
