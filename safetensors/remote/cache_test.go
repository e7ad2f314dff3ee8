package remote

import (
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
)

func cacheBytes(t *testing.T, dir string) (total int64, chunks []string) {
	t.Helper()
	filepath.WalkDir(filepath.Join(dir, "chunks-v1"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() != ".evict.lock" {
			if info, err := d.Info(); err == nil {
				total += info.Size()
				if !strings.HasPrefix(d.Name(), ".tmp-") {
					chunks = append(chunks, p)
				}
			}
		}
		return nil
	})
	return total, chunks
}

// A cache smaller than the object: reads stay correct and the cache stays
// near its bound (LRU eviction).
func TestCacheBounded(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	want := genCheckpoint(t, filepath.Join(root, "big.safetensors"), 40, "w", 10<<20) // 40 MiB
	_, ports := testsrv.StartNginx(t, testsrv.StaticServer(root))
	opt, _ := testOpts(t)
	opt.CacheSize = MinCacheSize
	o, err := Open(ctxT(t), fmt.Sprintf("http://127.0.0.1:%d/big.safetensors", ports[0]), opt)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "read through a small cache", readAllAt(t, o, 256<<10), want)
	o.Close() // waits for eviction scans
	if total, _ := cacheBytes(t, opt.CacheDir); total > MinCacheSize*5/4 {
		t.Fatalf("cache holds %d MiB, bound %d MiB", total>>20, MinCacheSize>>20)
	}
}

// A chunk file torn by a crash (truncated, or with bytes that do not match
// its checksum) reads as a miss and is fetched again: never wrong bytes.
func TestCacheTornChunks(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	want := genCheckpoint(t, filepath.Join(root, "m.safetensors"), 41, "w", 1<<20) // 4 MiB
	ng, ports := testsrv.StartNginx(t, testsrv.StaticServer(root))
	url := fmt.Sprintf("http://127.0.0.1:%d/m.safetensors", ports[0])
	opt, _ := testOpts(t)
	o, err := Open(ctxT(t), url, opt)
	if err != nil {
		t.Fatal(err)
	}
	readAllAt(t, o, 1<<20)
	o.Close()
	_, chunks := cacheBytes(t, opt.CacheDir)
	if len(chunks) != 5 { // 4 MiB of tensors plus the header
		t.Fatalf("%d chunk files, want 5", len(chunks))
	}
	b, _ := os.ReadFile(chunks[0])
	b[100] ^= 0xff
	os.WriteFile(chunks[0], b, 0o600)
	os.Truncate(chunks[1], 1000)
	k := len(ng.Log(t))
	o2 := mustOpen(t, url, opt)
	sameBytes(t, "read over torn chunks", readAllAt(t, o2, 1<<20), want)
	if n := len(ng.Since(t, k)); n != 1+2 {
		t.Fatalf("%d requests, want the probe and the two torn chunks", n)
	}
}

// A cache that cannot be written (here its directory became a file):
// reads go straight to the server, correct, with one warning.
func TestCacheUnwritable(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	want := genCheckpoint(t, filepath.Join(root, "m.safetensors"), 42, "w", 700_000)
	_, ports := testsrv.StartNginx(t, testsrv.StaticServer(root))
	opt, logs := testOpts(t)
	o := mustOpen(t, fmt.Sprintf("http://127.0.0.1:%d/m.safetensors", ports[0]), opt)
	d := filepath.Join(opt.CacheDir, "chunks-v1")
	if err := os.RemoveAll(d); err != nil {
		t.Fatal(err)
	}
	writeFile(t, d, []byte("not a directory"))
	sameBytes(t, "read without a cache", readAllAt(t, o, 300_000), want)
	if n := strings.Count(logs.String(), "reading without it"); n != 1 {
		t.Fatalf("%d cache warnings, want 1: %s", n, logs)
	}
}

// Processes sharing one small cache directory: each reads the object in
// its own random order while the others evict under it; every byte is
// right in every process. The other processes are this test binary run
// as TestCacheHelperProcess.
func TestCacheSharedByProcesses(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	src := filepath.Join(root, "big.safetensors")
	genCheckpoint(t, src, 43, "w", 8<<20) // 32 MiB, twice the cache
	_, ports := testsrv.StartNginx(t, testsrv.StaticServer(root))
	url := fmt.Sprintf("http://127.0.0.1:%d/big.safetensors", ports[0])
	cacheDir := t.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, 3)
	outs := make([][]byte, 3)
	for i := range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCacheHelperProcess$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "REMOTE_CACHE_HELPER="+strings.Join([]string{url, cacheDir, src, fmt.Sprint(i + 1)}, "|"))
		wg.Go(func() { outs[i], errs[i] = cmd.CombinedOutput() })
	}
	wg.Go(func() { errs[2] = readShuffled(url, cacheDir, src, 0) })
	wg.Wait()
	for i, err := range errs {
		if err != nil || (i < 2 && !strings.Contains(string(outs[i]), "--- PASS: TestCacheHelperProcess")) {
			t.Errorf("reader %d: %v\n%s", i, err, outs[i])
		}
	}
}

func TestCacheHelperProcess(t *testing.T) {
	v := os.Getenv("REMOTE_CACHE_HELPER")
	if v == "" {
		t.Skip("runs as a helper of TestCacheSharedByProcesses")
	}
	a := strings.Split(v, "|")
	var seed uint64
	fmt.Sscan(a[3], &seed)
	if err := readShuffled(a[0], a[1], a[2], seed); err != nil {
		t.Fatal(err)
	}
}

// readShuffled reads the object twice in 512 KiB pieces in a random order
// through a 16 MiB cache and compares every piece with the source file.
func readShuffled(url, cacheDir, src string, seed uint64) error {
	want, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	o, err := Open(bgCtx(), url, Options{CacheDir: cacheDir, CacheSize: MinCacheSize})
	if err != nil {
		return err
	}
	defer o.Close()
	const piece = 512 << 10
	r := rand.New(rand.NewPCG(seed, 9))
	p := make([]byte, piece)
	for range 2 {
		for _, i := range r.Perm(len(want) / piece) {
			off := int64(i) * piece
			if _, err := o.ReadAt(p, off); err != nil {
				return err
			}
			if string(p) != string(want[off:off+piece]) {
				return fmt.Errorf("wrong bytes at %d", off)
			}
		}
	}
	return nil
}
