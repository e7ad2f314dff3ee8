package remote

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
	"github.com/safejaxfs/safejaxfs/safetensors"
)

// What a server may do that retrying cannot fix or that would serve wrong
// bytes: each is refused at once, naming what the server did.

// objectServer serves one object with byte ranges through http.ServeContent
// (ETag and Last-Modified as given), after hook has had its say; hook
// returns true when it answered the request itself.
type objectServer struct {
	body    []byte
	etag    string
	lastMod time.Time
	hook    func(n int, w http.ResponseWriter, r *http.Request) bool

	n       atomic.Int32
	mu      sync.Mutex
	encs    []string // Accept-Encoding of every request
	srv     *httptest.Server
	baseURL string
}

func startObjectServer(t *testing.T, o *objectServer) string {
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(o.n.Add(1))
		o.mu.Lock()
		o.encs = append(o.encs, r.Header.Get("Accept-Encoding"))
		o.mu.Unlock()
		if o.hook != nil && o.hook(n, w, r) {
			return
		}
		if o.etag != "" {
			w.Header().Set("ETag", o.etag)
		}
		http.ServeContent(w, r, "", o.lastMod, bytes.NewReader(o.body))
	}))
	t.Cleanup(func() {
		o.srv.CloseClientConnections()
		o.srv.Close()
	})
	return o.srv.URL + "/m/model.safetensors"
}

func testBody(t *testing.T) []byte {
	return genCheckpoint(t, filepath.Join(t.TempDir(), "model.safetensors"), 3, "p", 300_000, 100)
}

// TestAcceptIdentity: every request asks for the bytes as they are; nginx
// configured to gzip (which drops ranges for it) then serves them raw.
func TestAcceptIdentity(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	want := genCheckpoint(t, filepath.Join(root, "model.safetensors"), 1, "p", 300_000, 1000)
	_, ports := testsrv.StartNginx(t, testsrv.StaticServer(root)+"\n    gzip on; gzip_types *; gzip_min_length 1; gzip_proxied any;")
	url := fmt.Sprintf("http://127.0.0.1:%d/model.safetensors", ports[0])
	// The server does compress for a client that accepts gzip.
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("nginx does not gzip here (Content-Encoding %q): the test proves nothing", resp.Header.Get("Content-Encoding"))
	}
	// Asked for identity it sends ranges of raw bytes (a gzipped 200
	// would fail the reads).
	opt, _ := testOpts(t)
	o := mustOpen(t, url, opt)
	sameBytes(t, "object", readAllAt(t, o, 1<<20), want)

	srv := &objectServer{body: want, etag: `"v1"`}
	u := startObjectServer(t, srv)
	sameBytes(t, "object", readAllAt(t, mustOpen(t, u, opt), 1<<20), want)
	for i, e := range srv.encs {
		if e != "identity" {
			t.Errorf("request %d: Accept-Encoding %q, want identity", i+1, e)
		}
	}
}

func gzipped(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// TestEncodedBodyRefused: a server that compresses anyway is refused,
// naming the encoding, at Open or at the read it happens on; nothing it
// sent is served as the file's bytes.
func TestEncodedBodyRefused(t *testing.T) {
	t.Parallel()
	body := testBody(t)
	gz := gzipped(t, body)
	encode := func(from int) func(int, http.ResponseWriter, *http.Request) bool {
		return func(n int, w http.ResponseWriter, r *http.Request) bool {
			if n < from {
				return false
			}
			w.Header().Set("ETag", `"v1"`)
			w.Header().Set("Content-Encoding", "gzip")
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(gz)-1, len(body)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(gz)
			return true
		}
	}
	opt, _ := testOpts(t)
	srv := &objectServer{body: body, etag: `"v1"`, hook: encode(1)}
	_, err := Open(ctxT(t), startObjectServer(t, srv), opt)
	if !errors.Is(err, ErrEncoded) || !strings.Contains(err.Error(), "gzip") || srv.n.Load() != 1 {
		t.Errorf("Open from a gzipping server: %v after %d requests; want ErrEncoded naming gzip at once", err, srv.n.Load())
	}
	srv = &objectServer{body: body, etag: `"v1"`, hook: encode(2)} // the probe is plain
	o := mustOpen(t, startObjectServer(t, srv), opt)
	buf := make([]byte, 1<<20)
	_, err = o.ReadAt(buf, 0)
	if !errors.Is(err, ErrEncoded) || !strings.Contains(err.Error(), "gzip") || srv.n.Load() != 2 {
		t.Errorf("read from a server that gzips later: %v after %d requests; want ErrEncoded naming gzip at once", err, srv.n.Load())
	}
}

// TestUnversionedRefused: a server that sends neither ETag nor
// Last-Modified is refused unless allowed; allowed, it is read, the log
// says versions can mix, and a later Open does not reuse its chunks.
func TestUnversionedRefused(t *testing.T) {
	t.Parallel()
	body := testBody(t)
	srv := &objectServer{body: body}
	url := startObjectServer(t, srv)
	opt, logs := testOpts(t)
	if _, err := Open(ctxT(t), url, opt); !errors.Is(err, ErrUnversioned) || srv.n.Load() != 1 {
		t.Fatalf("Open without ETag or Last-Modified: %v after %d requests, want ErrUnversioned at once", err, srv.n.Load())
	}
	// Either validator alone is enough.
	for _, s := range []*objectServer{{body: body, etag: `"v"`}, {body: body, lastMod: time.Now().Add(-time.Hour)}} {
		mustOpen(t, startObjectServer(t, s), opt)
	}
	opt.AllowUnversioned = true
	o := mustOpen(t, url, opt)
	sameBytes(t, "unversioned object", readAllAt(t, o, 1<<20), body)
	if !strings.Contains(logs.String(), "may mix versions") {
		t.Errorf("the log does not warn that versions can mix:\n%s", logs)
	}
	k := srv.n.Load()
	o2 := mustOpen(t, url, opt)
	sameBytes(t, "second open", readAllAt(t, o2, 1<<20), body)
	if srv.n.Load()-k < 2 {
		t.Errorf("a second Open of an unversioned object read chunks cached by the first (%d requests)", srv.n.Load()-k)
	}
}

// TestPermanentStatuses: answers that retrying cannot fix fail the first
// attempt, naming the status or the S3 error code, even when a gateway
// sends the code with a 5xx.
func TestPermanentStatuses(t *testing.T) {
	t.Parallel()
	body := testBody(t)
	s3err := func(status int, code string) func(int, http.ResponseWriter, *http.Request) bool {
		return func(n int, w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(status)
			fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>the %s message</Message></Error>`, code, code)
			return true
		}
	}
	status := func(s int) func(int, http.ResponseWriter, *http.Request) bool {
		return func(n int, w http.ResponseWriter, r *http.Request) bool {
			w.WriteHeader(s)
			return true
		}
	}
	for _, c := range []struct {
		name string
		hook func(int, http.ResponseWriter, *http.Request) bool
		is   error
		says string
	}{
		{"401", status(401), ErrDenied, "401 Unauthorized"},
		{"403", status(403), ErrDenied, "403 Forbidden"},
		{"404", status(404), ErrNotFound, "404 Not Found"},
		{"416", status(416), ErrBadResponse, "416"},
		{"AccessDenied 403", s3err(403, "AccessDenied"), ErrDenied, "AccessDenied"},
		{"AccessDenied 500", s3err(500, "AccessDenied"), ErrDenied, "AccessDenied"},
		{"NoSuchKey 503", s3err(503, "NoSuchKey"), ErrNotFound, "NoSuchKey"},
		{"NoSuchBucket 404", s3err(404, "NoSuchBucket"), ErrNotFound, "NoSuchBucket"},
		{"InvalidAccessKeyId 500", s3err(500, "InvalidAccessKeyId"), ErrDenied, "InvalidAccessKeyId"},
		{"SignatureDoesNotMatch 400", s3err(400, "SignatureDoesNotMatch"), ErrDenied, "SignatureDoesNotMatch"},
	} {
		t.Run(c.name, func(t *testing.T) {
			opt, _ := testOpts(t)
			srv := &objectServer{body: body, etag: `"v1"`, hook: c.hook}
			_, err := Open(ctxT(t), startObjectServer(t, srv), opt)
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.says) || srv.n.Load() != 1 {
				t.Errorf("Open: %v after %d requests; want %v naming %q at once", err, srv.n.Load(), c.is, c.says)
			}
			// The same answer to a read after a good Open.
			srv = &objectServer{body: body, etag: `"v1"`, hook: func(n int, w http.ResponseWriter, r *http.Request) bool {
				return n > 1 && c.hook(n, w, r)
			}}
			o := mustOpen(t, startObjectServer(t, srv), opt)
			_, err = o.ReadAt(make([]byte, 1<<20), 0)
			if c.name == "416" {
				c.is = ErrChanged // mid-mount, a 416 means the file shrank
			}
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.says) || srv.n.Load() != 2 {
				t.Errorf("read: %v after %d requests; want %v naming %q at once", err, srv.n.Load(), c.is, c.says)
			}
		})
	}
	// A code that retrying may fix is retried.
	opt, _ := testOpts(t)
	srv := &objectServer{body: body, etag: `"v1"`, hook: func(n int, w http.ResponseWriter, r *http.Request) bool {
		return n == 1 && s3err(503, "SlowDown")(n, w, r)
	}}
	mustOpen(t, startObjectServer(t, srv), opt)
}

// TestReadCancelled: a reader that gives up (its context ends: a FUSE
// read interrupted by Ctrl-C) returns at once, and the fetch it was
// waiting for, which no one else waits for, is cancelled: the server sees
// its request go away.
func TestReadCancelled(t *testing.T) {
	t.Parallel()
	body := testBody(t)
	asked := make(chan struct{})
	gone := make(chan struct{})
	srv := &objectServer{body: body, etag: `"v1"`, hook: func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n == 1 {
			return false // the probe
		}
		// A data request: headers, then nothing until the client leaves.
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Content-Range", strings.Replace(r.Header.Get("Range"), "=", " ", 1)+fmt.Sprintf("/%d", len(body)))
		w.WriteHeader(http.StatusPartialContent)
		w.(http.Flusher).Flush()
		if n == 2 {
			close(asked)
		}
		<-r.Context().Done()
		if n == 2 {
			close(gone)
		}
		return true
	}}
	opt, _ := testOpts(t)
	opt.StallTimeout = time.Hour // only the cancel may end the request
	o := mustOpen(t, startObjectServer(t, srv), opt)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := o.ReadAtContext(ctx, make([]byte, 4096), 200_000)
		done <- err
	}()
	<-asked
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled read: %v, want context.Canceled", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the cancelled read did not return")
	}
	select {
	case <-gone:
	case <-time.After(20 * time.Second):
		t.Fatal("the fetch nobody waits for any more was not cancelled")
	}
}

// sparseBody is a ReadSeeker of size bytes: prefix, then zeros, made as
// they are read (a 65 MiB test object costs no memory).
type sparseBody struct {
	prefix []byte
	size   int64
	off    int64
}

func (s *sparseBody) Read(p []byte) (int, error) {
	if s.off >= s.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), s.size-s.off))
	clear(p[:n])
	if s.off < int64(len(s.prefix)) {
		copy(p[:n], s.prefix[s.off:])
	}
	s.off += int64(n)
	return n, nil
}

func (s *sparseBody) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		s.off = off
	case io.SeekCurrent:
		s.off += off
	case io.SeekEnd:
		s.off = s.size + off
	}
	return s.off, nil
}

// TestHugeRemoteIndexRefused: an index URL above the 64 MiB limit is
// refused on the size its probe gives, before it is fetched.
func TestHugeRemoteIndexRefused(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "", time.Time{}, &sparseBody{prefix: []byte(`{"weight_map": {`), size: 65 << 20})
	}))
	t.Cleanup(srv.Close)
	opt, _ := testOpts(t)
	_, err := OpenSet(ctxT(t), srv.URL+"/model.safetensors.index.json", opt)
	if !errors.Is(err, safetensors.ErrIndexTooLarge) || !strings.Contains(err.Error(), "64 MiB") || n.Load() != 1 {
		t.Errorf("OpenSet of a 65 MiB index: %v after %d requests; want ErrIndexTooLarge naming 64 MiB after the probe alone", err, n.Load())
	}
}
