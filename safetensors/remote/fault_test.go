package remote

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
)

// faultProxy stands between the client and nginx and breaks chosen
// responses the ways networks and servers do.
type faultProxy struct {
	t    *testing.T
	up   string
	srv  *httptest.Server
	tr   *http.Transport
	rule func(n int, r *http.Request) fault

	mu    sync.Mutex
	n     int
	times []time.Time
	rngs  []string
}

type fault int

const (
	pass         fault = iota
	dropMidBody        // half the body, then the connection closes
	stallBody          // half the body, then nothing
	stallHeaders       // no response at all
	unavailable        // 503 with Retry-After: 1
	retryLater         // 503 with Retry-After: 120
	serverError        // 500
	tooMany            // 429 without Retry-After
	shortBody          // a well-formed response with half the bytes it should have
	otherETag          // the ETag of another version (a server that ignores If-Match)
)

func startFaultProxy(t *testing.T, upstream string, rule func(n int, r *http.Request) fault) *faultProxy {
	p := &faultProxy{t: t, up: upstream, rule: rule, tr: &http.Transport{DisableCompression: true}}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(func() {
		p.srv.CloseClientConnections()
		p.srv.Close()
		p.tr.CloseIdleConnections()
	})
	return p
}

func (p *faultProxy) requests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

func (p *faultProxy) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.n++
	n := p.n
	p.times = append(p.times, time.Now())
	p.rngs = append(p.rngs, r.Header.Get("Range"))
	p.mu.Unlock()
	f := p.rule(n, r)
	switch f {
	case unavailable, retryLater:
		w.Header().Set("Retry-After", map[fault]string{unavailable: "1", retryLater: "120"}[f])
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	case serverError:
		w.WriteHeader(http.StatusInternalServerError)
		return
	case tooMany:
		w.WriteHeader(http.StatusTooManyRequests)
		return
	case stallHeaders:
		<-r.Context().Done() // until the client gives up
		return
	}
	req, _ := http.NewRequestWithContext(r.Context(), r.Method, p.up+r.URL.RequestURI(), nil)
	req.Header = r.Header.Clone()
	req.Host = r.Host // S3 signatures cover the Host the client sent
	resp, err := p.tr.RoundTrip(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	body := resp.ContentLength
	switch f {
	case otherETag:
		w.Header().Set("ETag", `"another-version"`)
	case shortBody:
		body /= 2
		w.Header().Set("Content-Length", fmt.Sprint(body))
	}
	w.WriteHeader(resp.StatusCode)
	switch f {
	case dropMidBody, stallBody:
		io.CopyN(w, resp.Body, body/2)
		w.(http.Flusher).Flush()
		if f == stallBody {
			<-r.Context().Done()
		}
		panic(http.ErrAbortHandler) // closes the connection mid-body
	default:
		io.CopyN(w, resp.Body, body)
	}
}

// Each fault on the way: the read either returns exactly the source's
// bytes or fails with a clear error, and nothing hangs.
func TestFaults(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	want := genCheckpoint(t, filepath.Join(root, "m.safetensors"), 20, "w", 1_500_000) // ~6 MiB
	_, ports := testsrv.StartNginx(t, testsrv.StaticServer(root))
	upstream := fmt.Sprintf("http://127.0.0.1:%d", ports[0])

	// every returns a rule that applies f to every k-th request after the
	// first (the probe), and passes the rest.
	every := func(k int, f fault) func(int, *http.Request) fault {
		return func(n int, _ *http.Request) fault {
			if n > 1 && n%k == 0 {
				return f
			}
			return pass
		}
	}
	from := func(k int, f fault) func(int, *http.Request) fault {
		return func(n int, _ *http.Request) fault {
			if n >= k {
				return f
			}
			return pass
		}
	}
	cases := []struct {
		name string
		rule func(int, *http.Request) fault
		// want is "" when the read must succeed, else what the error says.
		want   string
		wantIs error
		check  func(t *testing.T, p *faultProxy, logs string)
		stalls bool // the rule stalls responses: the client must time them out
	}{
		{name: "dropped connections mid-body", rule: every(2, dropMidBody)},
		{name: "dropped probe", rule: func(n int, _ *http.Request) fault {
			if n == 1 {
				return dropMidBody
			}
			return pass
		}},
		{name: "stalled body", rule: every(3, stallBody), stalls: true},
		{name: "stalled headers", rule: every(4, stallHeaders), stalls: true},
		{name: "short bodies", rule: every(2, shortBody)},
		{name: "503 with Retry-After", rule: every(3, unavailable), check: func(t *testing.T, p *faultProxy, logs string) {
			// The retry of the 503 (request 3: the next request for its
			// range) waited the second it asked.
			p.mu.Lock()
			defer p.mu.Unlock()
			i := 3
			for i < len(p.rngs) && p.rngs[i] != p.rngs[2] {
				i++
			}
			if i == len(p.rngs) {
				t.Fatalf("the 503'd range %s was never asked again", p.rngs[2])
			}
			if gap := p.times[i].Sub(p.times[2]); gap < 900*time.Millisecond {
				t.Fatalf("retried %v after a 503 with Retry-After: 1", gap)
			}
			if !strings.Contains(logs, "503") {
				t.Fatalf("503 not logged: %s", logs)
			}
		}},
		{name: "429 Too Many Requests", rule: every(2, tooMany), check: func(t *testing.T, _ *faultProxy, logs string) {
			if !strings.Contains(logs, "429 Too Many Requests") {
				t.Fatalf("429 not logged: %s", logs)
			}
		}},
		{name: "Retry-After too long", rule: from(2, retryLater), want: "retry after 2m0s", check: func(t *testing.T, p *faultProxy, _ string) {
			if p.requests() != 2 {
				t.Fatalf("%d requests: a Retry-After above the limit must fail at once", p.requests())
			}
		}},
		{name: "persistent 500", rule: from(2, serverError), want: "500 Internal Server Error", check: func(t *testing.T, p *faultProxy, logs string) {
			if p.requests() != 1+3 {
				t.Fatalf("%d requests, want the probe and 3 attempts", p.requests())
			}
			if !strings.Contains(logs, "/m.safetensors bytes=0-1048575: 500") {
				t.Fatalf("log does not name the URL, range and status: %s", logs)
			}
		}},
		{name: "always dropped", rule: from(2, dropMidBody), want: "gave up after 3 attempts"},
		{name: "server ignores If-Match", rule: from(3, otherETag), wantIs: ErrChanged, want: `ETag "another-version"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := startFaultProxy(t, upstream, tc.rule)
			opt, logs := testOpts(t)
			if tc.stalls {
				// Short, so the stalled requests are retried quickly;
				// a request a loaded machine is slow to answer is
				// retried too, harmlessly: these cases count none.
				opt.StallTimeout = 300 * time.Millisecond
			}
			opt.Retries = 2
			if tc.want == "" {
				opt.Retries = 8
			}
			opt.MaxRetryAfter = 2 * time.Second
			url := p.srv.URL + "/m.safetensors"
			o, err := Open(ctxT(t), url, opt)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer o.Close()
			got := make([]byte, o.Size())
			var rerr error
			for off := int64(0); off < o.Size() && rerr == nil; off += 1 << 20 {
				end := min(off+1<<20, o.Size())
				var n int
				n, rerr = o.ReadAt(got[off:end], off)
				if rerr == io.EOF {
					rerr = nil
				}
				if rerr == nil {
					// No wrong byte, ever: whatever a read returns is the source's.
					sameBytes(t, fmt.Sprintf("read at %d", off), got[off:off+int64(n)], want[off:off+int64(n)])
				}
			}
			switch {
			case tc.want == "" && tc.wantIs == nil && rerr != nil:
				t.Fatalf("read failed: %v", rerr)
			case tc.want != "":
				var e *Error
				if !errors.As(rerr, &e) || !strings.Contains(rerr.Error(), tc.want) || !strings.Contains(rerr.Error(), url) {
					t.Fatalf("read error %v, want an *Error naming %s and saying %q", rerr, url, tc.want)
				}
				if tc.wantIs != nil && !errors.Is(rerr, tc.wantIs) {
					t.Fatalf("read error %v is not %v", rerr, tc.wantIs)
				}
			}
			if tc.check != nil {
				tc.check(t, p, logs.String())
			}
		})
	}
}
