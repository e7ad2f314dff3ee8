package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
)

// logSink collects the package's log lines (to check what they say and
// that they hold no credentials) and forwards them to the test log.
type logSink struct {
	t  *testing.T
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Write(p)
	s.t.Logf("log: %s", bytes.TrimRight(p, "\n"))
	return len(p), nil
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testOpts: a fresh cache, short backoffs so fault tests finish quickly,
// and a log the test can read. The stall timeout is the default (30 s): a
// shorter one would retry a response a loaded machine is merely slow to
// send, and the tests that count requests would count the retry. The fault
// tests that stall set their own.
func testOpts(t *testing.T) (Options, *logSink) {
	ls := &logSink{t: t}
	return Options{
		CacheDir:  t.TempDir(),
		Logger:    slog.New(slog.NewTextHandler(ls, nil)),
		RetryBase: 5 * time.Millisecond,
		// 1 MiB chunks keep test objects small; TestStreamingMemoryBounded
		// runs the default.
		ChunkSize: 1 << 20,
	}, ls
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustOpen(t *testing.T, url string, opt Options) *Object {
	t.Helper()
	o, err := Open(ctxT(t), url, opt)
	if err != nil {
		t.Fatalf("Open(%s): %v", url, err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// readAllAt reads the whole object with ReadAt in pieces of size step and
// returns the bytes; any error fails the test.
func readAllAt(t *testing.T, o *Object, step int) []byte {
	t.Helper()
	out := make([]byte, o.Size())
	for off := 0; off < len(out); off += step {
		end := min(off+step, len(out))
		n, err := o.ReadAt(out[off:end], int64(off))
		if n != end-off || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", end-off, off, n, err)
		}
	}
	return out
}

// sameBytes fails with the first differing offset rather than dumping
// megabytes.
func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
	if bytes.Equal(got, want) {
		return
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: byte %d is %#x, want %#x", what, i, got[i], want[i])
		}
	}
}

func headerLen(b []byte) int {
	n := 0
	for i := 7; i >= 0; i-- {
		n = n<<8 | int(b[i])
	}
	return 8 + n
}

type index struct {
	WeightMap map[string]string `json:"weight_map"`
}

func shardNames(t *testing.T, idx []byte) []string {
	t.Helper()
	var ix index
	if err := json.Unmarshal(idx, &ix); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var out []string
	for _, v := range ix.WeightMap {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// ranges returns the GET lines of log l (with a Range).
func gets(l []testsrv.LogLine) []testsrv.LogLine {
	var out []testsrv.LogLine
	for _, x := range l {
		if x.Method == "GET" {
			out = append(out, x)
		}
	}
	return out
}

func bgCtx() context.Context { return context.Background() }
