package remote

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
)

// An https:// (here http://) checkpoint on nginx: size, version, header in
// one request, every byte, and a repeat read (same Object, and a new Object
// sharing the cache) served without range requests.
func TestHTTPSingle(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	want := genCheckpoint(t, filepath.Join(root, "m", "model.safetensors"), 1, "params", 300_000, 1000, 500_001, 7)
	ng, ports := testsrv.StartNginx(t, testsrv.StaticServer(root))
	url := fmt.Sprintf("http://127.0.0.1:%d/m/model.safetensors", ports[0])
	opt, _ := testOpts(t)

	o := mustOpen(t, url, opt)
	if o.Size() != int64(len(want)) || o.IsIndex() || o.String() != url {
		t.Fatalf("Size %d IsIndex %v String %q", o.Size(), o.IsIndex(), o.String())
	}
	if v := o.Version(); !strings.HasPrefix(v, `"`) {
		t.Fatalf("Version %q is not nginx's ETag", v)
	}
	h, err := o.Header(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "header", h, want[:headerLen(want)])
	if l := ng.Log(t); len(l) != 1 || l[0].Range != "bytes=0-131071" {
		t.Fatalf("Open+Header sent %v, want one ranged GET", l)
	}
	sameBytes(t, "first read", readAllAt(t, o, 100_000), want)
	// Every chunk request carries If-Match with the ETag Open saw.
	for _, l := range ng.Since(t, 1) {
		if l.IfMatch != o.Version() || l.Status != "206" {
			t.Fatalf("request %+v: want If-Match %s and 206", l, o.Version())
		}
	}
	k := len(ng.Log(t))
	sameBytes(t, "second read", readAllAt(t, o, 1<<20), want)
	if l := ng.Since(t, k); len(l) != 0 {
		t.Fatalf("a repeat read sent %d requests: %v", len(l), l)
	}
	o2 := mustOpen(t, url, opt) // another "mount" of the same object and cache
	sameBytes(t, "read by a new Object", readAllAt(t, o2, 3<<20), want)
	if l := ng.Since(t, k); len(l) != 1 {
		t.Fatalf("a new Object over a warm cache sent %v, want only its probe", l)
	}
	// ReadAt past the end behaves like io.ReaderAt.
	p := make([]byte, 10)
	if n, err := o.ReadAt(p, o.Size()-4); n != 4 || err == nil || !bytes.Equal(p[:4], want[len(want)-4:]) {
		t.Fatalf("ReadAt over the end: %d, %v", n, err)
	}
	if n, err := o.ReadAt(p, o.Size()); n != 0 || err == nil {
		t.Fatalf("ReadAt at the end: %d, %v", n, err)
	}
}

// A header longer than the probe costs exactly one more request.
func TestHTTPLongHeader(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	want := genCheckpoint(t, filepath.Join(root, "long.safetensors"), 2, "a.rather.long.key.prefix.to.grow.the.header", manyTensors(3000)...)
	if headerLen(want) <= 128<<10 {
		t.Fatalf("header is only %d bytes", headerLen(want))
	}
	ng, ports := testsrv.StartNginx(t, testsrv.StaticServer(root))
	opt, _ := testOpts(t)
	o := mustOpen(t, fmt.Sprintf("http://127.0.0.1:%d/long.safetensors", ports[0]), opt)
	h, err := o.Header(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "header", h, want[:headerLen(want)])
	l := ng.Log(t)
	if len(l) != 2 || l[1].Range != fmt.Sprintf("bytes=%d-%d", 128<<10, headerLen(want)-1) {
		t.Fatalf("want the probe and one request for the rest of the header, got %v", l)
	}
}

// An index URL: ReadAll without another request, and each shard through
// Sibling with one request (its probe, which holds its header).
func TestHTTPSharded(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	shards, idx := genSharded(t, filepath.Join(root, "sharded"), 3, 200_000, 70_000, 3)
	ng, ports := testsrv.StartNginx(t, testsrv.StaticServer(root))
	opt, _ := testOpts(t)
	for _, url := range []string{
		fmt.Sprintf("http://127.0.0.1:%d/sharded/model.safetensors.index.json", ports[0]),
		fmt.Sprintf("http://127.0.0.1:%d/sharded/", ports[0]), // a directory resolves to its index
	} {
		k := len(ng.Log(t))
		o := mustOpen(t, url, opt)
		if !o.IsIndex() {
			t.Fatalf("%s: IsIndex false", url)
		}
		b, err := o.ReadAll(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		sameBytes(t, "index", b, idx)
		names := shardNames(t, b)
		for _, name := range names {
			s, err := o.Sibling(ctxT(t), name)
			if err != nil {
				t.Fatal(err)
			}
			h, err := s.Header(ctxT(t))
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, name+" header", h, shards[name][:headerLen(shards[name])])
			sameBytes(t, name, readAllAt(t, s, 1<<20), shards[name])
			s.Close()
		}
		var probes int
		for _, l := range ng.Since(t, k) {
			if l.Range == "bytes=0-131071" {
				probes++
			}
		}
		if probes != 1+len(names) {
			t.Fatalf("%d probes for an index and %d shards: %v", probes, len(names), ng.Since(t, k))
		}
		for _, bad := range []string{"../sharded/x.safetensors", "/etc/passwd", "a/../../b", "", "a//b", `a\b`} {
			if _, err := o.Sibling(ctxT(t), bad); err == nil || !errors.Is(err, ErrBadURL) {
				t.Fatalf("Sibling(%q) = %v, want ErrBadURL", bad, err)
			}
		}
	}
	// A directory with no index but a model.safetensors opens that; one
	// with neither says so.
	want := genCheckpoint(t, filepath.Join(root, "single", "model.safetensors"), 3, "x", 10)
	opt2, _ := testOpts(t)
	o := mustOpen(t, fmt.Sprintf("http://127.0.0.1:%d/single/", ports[0]), opt2)
	if o.IsIndex() || o.Size() != int64(len(want)) {
		t.Fatalf("single/: IsIndex %v size %d", o.IsIndex(), o.Size())
	}
	os.MkdirAll(filepath.Join(root, "empty"), 0o755)
	_, err := Open(ctxT(t), fmt.Sprintf("http://127.0.0.1:%d/empty/", ports[0]), opt2)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "model.safetensors.index.json") {
		t.Fatalf("empty dir: %v", err)
	}
}

// Sequential reads get a doubling read-ahead window in part-sized
// requests and fetch no byte twice; random reads fetch only the chunks
// they touch.
func TestReadAheadAndRandomReads(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	want := genCheckpoint(t, filepath.Join(root, "big.safetensors"), 4, "w", 10<<20) // 40 MiB
	ng, ports := testsrv.StartNginx(t, testsrv.StaticServer(root))
	url := fmt.Sprintf("http://127.0.0.1:%d/big.safetensors", ports[0])
	opt, _ := testOpts(t)
	o := mustOpen(t, url, opt)
	sameBytes(t, "sequential read", readAllAt(t, o, 128<<10), want)
	l := gets(ng.Since(t, 1))
	var fetched, largest int64
	for _, x := range l {
		a, b := parseRange(t, x.Range)
		fetched += b - a + 1
		largest = max(largest, b-a+1)
	}
	if fetched != int64(len(want)) {
		t.Fatalf("fetched %d bytes for a %d-byte object: %v", fetched, len(want), l)
	}
	if largest != 8<<20 || len(l) > 10 {
		t.Fatalf("want read-ahead in 8 MiB parts, %d requests at most: largest %d, %d requests", 10, largest, len(l))
	}

	opt2, _ := testOpts(t)
	o2 := mustOpen(t, url, opt2)
	k := len(ng.Log(t))
	r := rand.New(rand.NewPCG(1, 2))
	chunks := r.Perm(int(o2.Size()>>20) / 8) // every 8th chunk, shuffled: never sequential
	for _, c := range chunks {
		off := int64(c)*8<<20 + int64(r.IntN(1<<20-4096))
		p := make([]byte, 4096)
		if _, err := o2.ReadAt(p, off); err != nil {
			t.Fatal(err)
		}
		sameBytes(t, "random read", p, want[off:off+4096])
	}
	for _, x := range gets(ng.Since(t, k)) {
		a, b := parseRange(t, x.Range)
		if a%(1<<20) != 0 || b-a+1 != 1<<20 {
			t.Fatalf("a random 4 KiB read fetched %s, want its one aligned 1 MiB chunk", x.Range)
		}
	}
	if n := len(ng.Since(t, k)); n != len(chunks) {
		t.Fatalf("%d random reads sent %d requests", len(chunks), n)
	}
}

func parseRange(t *testing.T, r string) (int64, int64) {
	t.Helper()
	a, b, ok := strings.Cut(strings.TrimPrefix(r, "bytes="), "-")
	x, err1 := strconv.ParseInt(a, 10, 64)
	y, err2 := strconv.ParseInt(b, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		t.Fatalf("bad range %q", r)
	}
	return x, y
}

// An object replaced on the server: reads of the old Object fail with
// ErrChanged (nginx answers If-Match with 412), and a new Object reads the
// new bytes, never the old version's cached chunks.
func TestChangedObject(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	p := filepath.Join(root, "m.safetensors")
	old := genCheckpoint(t, p, 5, "w", 1<<20) // 4 MiB
	ng, ports := testsrv.StartNginx(t, testsrv.StaticServer(root))
	url := fmt.Sprintf("http://127.0.0.1:%d/m.safetensors", ports[0])
	opt, logs := testOpts(t)
	o := mustOpen(t, url, opt)
	buf := make([]byte, 1<<20)
	if _, err := o.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "before the change", buf, old[:1<<20])

	nw := genCheckpoint(t, p, 6, "w", 1<<20) // same size, other bytes
	os.Chtimes(p, time.Now().Add(time.Hour), time.Now().Add(time.Hour))
	_, err := o.ReadAt(buf, 3<<20)
	if !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), url) {
		t.Fatalf("read after the change: %v, want ErrChanged naming %s", err, url)
	}
	if !strings.Contains(logs.String(), "412") {
		t.Fatalf("the log does not show the 412: %s", logs)
	}
	o2 := mustOpen(t, url, opt)
	if o2.Version() == o.Version() {
		t.Fatal("the new Object has the old version")
	}
	sameBytes(t, "after the change", readAllAt(t, o2, 1<<20), nw)
	_ = ng
}

// Memory stays bounded while streaming: fetched bytes go to cache files,
// not the heap.
func TestStreamingMemoryBounded(t *testing.T) {
	// Not parallel: it measures the heap of the whole test process.
	root := t.TempDir()
	want := genCheckpoint(t, filepath.Join(root, "big.safetensors"), 7, "w", 16<<20) // 64 MiB
	_, ports := testsrv.StartNginx(t, testsrv.StaticServer(root))
	opt, _ := testOpts(t)
	opt.ChunkSize = 0 // the default
	o := mustOpen(t, fmt.Sprintf("http://127.0.0.1:%d/big.safetensors", ports[0]), opt)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapInuse, ms.HeapInuse
	p := make([]byte, 1<<20)
	for off := int64(0); off < o.Size(); off += int64(len(p)) {
		n, err := o.ReadAt(p, off)
		if err != nil && n != int(o.Size()-off) {
			t.Fatal(err)
		}
		sameBytes(t, "stream", p[:n], want[off:off+int64(n)])
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
	}
	if grew := int64(peak) - int64(base); grew > 24<<20 {
		t.Fatalf("heap grew by %d MiB streaming a 64 MiB object", grew>>20)
	}
}
