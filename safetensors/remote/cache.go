package remote

import (
	"container/list"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The chunk cache: one file per chunk, at DIR/chunks-v1/KK/KEY/INDEX, KEY
// being the object's identity+version hash (so another version of an object
// never finds these chunks), INDEX the chunk number in hex. A file holds the
// chunk's bytes then their CRC-32C: a chunk whose rename survived a crash
// but whose data did not (no fsync is spent on a cache) reads as a miss,
// never as wrong bytes.
//
// Two processes may share the directory. Chunks are written to a temp file
// and renamed into place, so a reader sees a whole chunk or none. Eviction
// (least recently used by mtime, which a hit refreshes at most once a
// minute) runs in one process at a time under an flock; a chunk evicted
// under a reader is either already open (the open file keeps its bytes) or
// a miss that is fetched again. Each process counts what it writes and
// rescans the directory when that passes the limit, so several writers
// overshoot the bound by at most a tenth of it each.
type cache struct {
	dir   string
	limit int64
	log   *slog.Logger

	added   atomic.Int64 // bytes written since the last scan
	used    atomic.Int64 // bytes at the last scan, -1 before the first
	scaning atomic.Bool
	warned  atomic.Bool
	scans   sync.WaitGroup

	mu    sync.Mutex
	open  map[string]*list.Element // path -> open, verified chunk file
	order list.List                // of *openChunk, most recently used first
}

type openChunk struct {
	path string
	f    *os.File
}

const (
	maxOpenChunks = 256 // more than a full read-ahead window, so chunks fetched ahead are still open when read
	touchEvery    = time.Minute
	staleTemp     = time.Hour
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func newCache(dir string, limit int64, lg *slog.Logger) (*cache, error) {
	d := filepath.Join(dir, "chunks-v1")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return nil, fmt.Errorf("remote: cache directory: %w", err)
	}
	c := &cache{dir: d, limit: limit, log: lg, open: map[string]*list.Element{}}
	c.used.Store(-1)
	return c, nil
}

func (c *cache) objDir(key string) string { return filepath.Join(c.dir, key[:2], key) }

func (c *cache) path(key string, idx int64) string {
	return filepath.Join(c.objDir(key), fmt.Sprintf("%x", idx))
}

// get returns the open file of a cached chunk of n bytes, verified, or nil.
func (c *cache) get(key string, idx, n int64) *os.File {
	p := c.path(key, idx)
	c.mu.Lock()
	if e, ok := c.open[p]; ok {
		c.order.MoveToFront(e)
		f := e.Value.(*openChunk).f
		c.mu.Unlock()
		return f
	}
	c.mu.Unlock()
	f, err := os.Open(p)
	if err != nil {
		return nil
	}
	if !verifyChunk(f, n) {
		f.Close()
		os.Remove(p) // a torn chunk from a crash; whoever fetches it next rewrites it
		return nil
	}
	if st, err := f.Stat(); err == nil && time.Since(st.ModTime()) > touchEvery {
		now := time.Now()
		os.Chtimes(p, now, now)
	}
	return c.adopt(p, f)
}

// adopt makes f the open, verified file of chunk path p (or returns the
// one another reader adopted first).
func (c *cache) adopt(p string, f *os.File) *os.File {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.open[p]; ok {
		f.Close()
		c.order.MoveToFront(e)
		return e.Value.(*openChunk).f
	}
	c.open[p] = c.order.PushFront(&openChunk{path: p, f: f})
	for c.order.Len() > maxOpenChunks {
		// Closing under a concurrent ReadAt would fail it; the reader
		// retries (see Object.readChunk), so this only costs a reopen.
		e := c.order.Back()
		oc := c.order.Remove(e).(*openChunk)
		delete(c.open, oc.path)
		oc.f.Close()
	}
	return f
}

// has says a chunk file exists (without verifying it).
func (c *cache) has(key string, idx int64) bool {
	p := c.path(key, idx)
	c.mu.Lock()
	_, ok := c.open[p]
	c.mu.Unlock()
	if ok {
		return true
	}
	_, err := os.Stat(p)
	return err == nil
}

func verifyChunk(f *os.File, n int64) bool {
	st, err := f.Stat()
	if err != nil || st.Size() != n+4 {
		return false
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	sum := uint32(0)
	for off := int64(0); off < n; {
		k, err := f.ReadAt(buf[:min(int64(len(buf)), n-off)], off)
		if k == 0 || (err != nil && off+int64(k) < n) {
			return false
		}
		sum = crc32.Update(sum, castagnoli, buf[:k])
		off += int64(k)
	}
	var t [4]byte
	if _, err := f.ReadAt(t[:], n); err != nil {
		return false
	}
	return binary.LittleEndian.Uint32(t[:]) == sum
}

// chunkWriter writes one chunk to a temp file and renames it into place.
type chunkWriter struct {
	c    *cache
	f    *os.File
	path string
	sum  uint32
	n    int64
}

func (c *cache) create(key string, idx int64) (*chunkWriter, error) {
	d := c.objDir(key)
	var f *os.File
	var err error
	for range 2 { // eviction in another process may remove the empty dir in between
		if err = os.MkdirAll(d, 0o700); err != nil {
			break
		}
		if f, err = os.CreateTemp(d, ".tmp-*"); err == nil {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	return &chunkWriter{c: c, f: f, path: c.path(key, idx)}, nil
}

func (w *chunkWriter) Write(p []byte) error {
	if _, err := w.f.Write(p); err != nil {
		return err
	}
	w.sum = crc32.Update(w.sum, castagnoli, p)
	w.n += int64(len(p))
	return nil
}

func (w *chunkWriter) commit() error {
	var t [4]byte
	binary.LittleEndian.PutUint32(t[:], w.sum)
	_, err := w.f.Write(t[:])
	if err == nil {
		err = os.Rename(w.f.Name(), w.path)
	}
	if err != nil {
		w.f.Close()
		os.Remove(w.f.Name())
		return err
	}
	// The temp file stays open as the chunk's file: its bytes were
	// checksummed on the way in, so its readers skip a verifying read.
	w.c.adopt(w.path, w.f)
	if w.c.added.Add(w.n+4) > w.c.limit/10 || w.c.used.Load() < 0 {
		w.c.scans.Go(w.c.scan)
	}
	return nil
}

func (w *chunkWriter) abort() {
	w.f.Close()
	os.Remove(w.f.Name())
}

// warn logs a cache failure once per client (a full disk would log per
// chunk otherwise); reads go on without the cache.
func (c *cache) warn(err error) {
	if !c.warned.Swap(true) {
		c.log.Warn(fmt.Sprintf("remote: chunk cache %s: %v; reading without it", c.dir, err))
	}
}

// scan measures the cache and, above the limit, removes the least
// recently used chunks down to 90% of it.
func (c *cache) scan() {
	if !c.scaning.CompareAndSwap(false, true) {
		return
	}
	defer c.scaning.Store(false)
	lock, err := os.OpenFile(filepath.Join(c.dir, ".evict.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return
	}
	defer lock.Close()
	if syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return // another process is scanning
	}
	type entry struct {
		path  string
		size  int64
		mtime time.Time
	}
	var all []entry
	var total int64
	added := c.added.Load()
	filepath.WalkDir(c.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == ".evict.lock" {
			return nil // entries vanish under concurrent eviction
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".tmp-") {
			if time.Since(info.ModTime()) > staleTemp {
				os.Remove(p) // left by a process that died mid-write
				return nil
			}
		} else {
			all = append(all, entry{p, info.Size(), info.ModTime()})
		}
		total += info.Size()
		return nil
	})
	if total > c.limit {
		slices.SortFunc(all, func(a, b entry) int { return a.mtime.Compare(b.mtime) })
		for _, e := range all {
			if total <= c.limit/10*9 {
				break
			}
			if err := os.Remove(e.path); err == nil || errors.Is(err, fs.ErrNotExist) {
				total -= e.size
				c.forget(e.path)
				os.Remove(filepath.Dir(e.path)) // fails unless empty
			}
		}
	}
	c.used.Store(total)
	c.added.Add(-added)
}

// forget closes the open file of an evicted chunk.
func (c *cache) forget(p string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.open[p]; ok {
		oc := c.order.Remove(e).(*openChunk)
		delete(c.open, oc.path)
		oc.f.Close()
	}
}

func (c *cache) close() {
	c.scans.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.open {
		e.Value.(*openChunk).f.Close()
	}
	c.open = map[string]*list.Element{}
	c.order.Init()
}
