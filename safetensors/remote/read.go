package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// pending is a chunk being fetched; done closes when it is in the cache
// (err == nil), failed (err), or could not be cached (errNotCached).
type pending struct {
	done  chan struct{}
	err   error
	chunk int64
	run   *run // the request fetching it (with the chunks after it)
	// waiters counts readers waiting for it (guarded by Object.mu): a
	// run no reader waits for any more may be cancelled (cancelIdle).
	waiters int
}

// run is one ranged GET of consecutive chunks, cancelled on its own when
// every reader that waited for it gave up.
type run struct {
	cancel context.CancelCauseFunc
	chunks []*pending
}

var (
	errNotCached = errors.New("chunk not cached")
	// errAbandoned ends a fetch whose readers were all interrupted.
	errAbandoned = errors.New("every reader waiting for these bytes was interrupted")
)

// ReadAt reads len(p) bytes at off, like io.ReaderAt (io.EOF at the end).
// Bytes come from the chunk cache; missing chunks are fetched by range
// (only those the read touches, on a random read), and a sequential reader
// gets read-ahead in a window that starts at MinWindow and doubles to
// MaxWindow, fetched in parallel requests of PartSize. Memory does not grow
// with the object: fetched bytes go straight to cache files. A read that
// fails after the retries returns an *Error (ErrChanged when the object
// changed); it never returns bytes of another version.
func (o *Object) ReadAt(p []byte, off int64) (int, error) {
	return o.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt for a reader that may give up: when ctx ends (a
// FUSE request interrupted by Ctrl-C) it returns at once with an *Error
// wrapping ctx's cause, and the fetches no other reader waits for, read-
// ahead included, are cancelled rather than left to run to the end.
func (o *Object) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if o.closed.Load() {
		return 0, &Error{Op: "read", URL: o.display, Err: ErrClosed}
	}
	if off < 0 {
		return 0, &Error{Op: "read", URL: o.display, Err: fmt.Errorf("negative offset %d", off)}
	}
	if off >= o.size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), o.size)
	var err error
	if o.whole {
		copy(p, o.probe[off:end])
	} else {
		err = o.readRange(ctx, p[:end-off], off)
	}
	if err != nil {
		return 0, err
	}
	if end < off+int64(len(p)) {
		return int(end - off), io.EOF
	}
	return len(p), nil
}

func (o *Object) readRange(ctx context.Context, p []byte, off int64) error {
	cs := o.c.opt.ChunkSize
	end := off + int64(len(p))
	first, last := off/cs, (end-1)/cs
	a, b := o.ra.observe(off, end, o.size)
	// The reader's own chunks first, so they get connections first; each
	// counted as waited for from the start, so that a fetch that fails
	// before the reader gets to it is still the one it waits on (its
	// error is not lost) and no cancellation takes it meanwhile.
	pds := o.wantWaiting(first, last+1)
	defer func() {
		for _, pd := range pds {
			if pd != nil {
				o.leave(pd, ctx.Err() != nil)
			}
		}
	}()
	if b > a {
		o.want(a/cs, (b+cs-1)/cs)
	}
	for c := first; c <= last; c++ {
		lo, hi := max(off, c*cs), min(end, (c+1)*cs)
		pd := pds[c-first]
		pds[c-first] = nil // readChunk leaves it
		if err := o.readChunk(ctx, c, p[lo-off:hi-off], lo-c*cs, pd); err != nil {
			return err
		}
	}
	return nil
}

func (o *Object) chunkLen(c int64) int64 {
	cs := o.c.opt.ChunkSize
	return min(cs, o.size-c*cs)
}

// readChunk copies chunk c's bytes [within, within+len(dst)) into dst. pd,
// if not nil, is the chunk's fetch, already counted as waited for by this
// reader.
func (o *Object) readChunk(ctx context.Context, c int64, dst []byte, within int64, pd *pending) error {
	for range 4 {
		if pd == nil {
			if f := o.c.cache.get(o.key, c, o.chunkLen(c)); f != nil {
				if n, err := f.ReadAt(dst, within); n == len(dst) {
					return nil
				} else if !errors.Is(err, os.ErrClosed) {
					o.c.cache.warn(err)
					break
				}
				continue // closed by the open-file LRU under us: reopen
			}
			if pd = o.waitFor(c); pd == nil {
				continue // landed in the cache meanwhile
			}
		}
		select {
		case <-pd.done:
			o.leave(pd, false)
		case <-ctx.Done():
			o.leave(pd, true)
			return &Error{Op: "read", URL: o.display, Err: context.Cause(ctx)}
		case <-o.ctx.Done():
			o.leave(pd, false)
			return &Error{Op: "read", URL: o.display, Err: ErrClosed}
		}
		err := pd.err
		pd = nil
		if err == errNotCached {
			break
		}
		if errors.Is(err, errAbandoned) {
			continue // others gave up on it after this reader asked: ask again
		}
		if err != nil {
			return err
		}
		// Cached: loop to read it (it may even have been evicted already,
		// in which case it is fetched again).
	}
	// The cache cannot hold the chunk (disk full, unwritable, or evicted
	// as fast as it is written): fetch just these bytes into dst, for as
	// long as this reader waits.
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	defer context.AfterFunc(o.ctx, func() { stop(ErrClosed) })()
	pos := 0
	return o.get(ctx, o.c.opt.ChunkSize*c+within, int64(len(dst)), func(b []byte) error {
		pos += copy(dst[pos:], b)
		return nil
	})
}

// waitFor makes sure chunk c is cached or being fetched and returns its
// pending fetch with this reader counted as waiting for it (nil if it is
// cached).
func (o *Object) waitFor(c int64) *pending {
	return o.wantWaiting(c, c+1)[0]
}

// wantWaiting is want, with a reader counted as waiting for each pending
// fetch it returns (in the same critical section, so none is cancelled
// or finished unseen in between).
func (o *Object) wantWaiting(a, b int64) []*pending {
	return o.wantFor(a, b, true)
}

// leave counts a reader out of waiting for pd. A reader that gave up
// (interrupted) also cancels every fetch of the object that no reader
// waits for any more.
func (o *Object) leave(pd *pending, gaveUp bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	pd.waiters--
	if gaveUp {
		o.cancelIdle()
	}
}

// cancelIdle cancels the runs in flight that no reader waits for: those
// an interrupted reader started, and read-ahead (which only a reader makes
// worth having). Their chunks leave inflight at once, so a reader that
// asks for one later starts a new fetch. Caller holds mu.
func (o *Object) cancelIdle() {
	idle := map[*run]bool{}
	for _, pd := range o.inflight {
		if _, seen := idle[pd.run]; !seen {
			idle[pd.run] = true
		}
		if pd.waiters > 0 {
			idle[pd.run] = false
		}
	}
	for r, ok := range idle {
		if !ok {
			continue
		}
		r.cancel(errAbandoned)
		for _, pd := range r.chunks {
			if o.inflight[pd.chunk] == pd {
				delete(o.inflight, pd.chunk)
			}
		}
	}
}

// want makes sure chunks [a, b) are cached or being fetched: missing ones
// are fetched in runs of consecutive chunks, at most PartSize per request.
// It returns each chunk's pending fetch (nil for chunks already cached).
func (o *Object) want(a, b int64) []*pending {
	return o.wantFor(a, b, false)
}

func (o *Object) wantFor(a, b int64, waiting bool) []*pending {
	cs := o.c.opt.ChunkSize
	b = min(b, (o.size+cs-1)/cs)
	per := o.c.opt.PartSize / cs
	out := make([]*pending, max(b-a, 0))
	o.mu.Lock()
	defer o.mu.Unlock()
	runStart := int64(-1)
	var run []*pending
	flush := func() {
		if len(run) > 0 {
			o.fetchRun(runStart, run)
		}
		runStart, run = -1, nil
	}
	for c := a; c < b; c++ {
		if pd, ok := o.inflight[c]; ok {
			out[c-a] = pd
			if waiting {
				pd.waiters++
			}
			flush()
			continue
		}
		if o.c.cache.has(o.key, c) {
			flush()
			continue
		}
		pd := &pending{done: make(chan struct{}), chunk: c}
		if waiting {
			pd.waiters = 1
		}
		o.inflight[c] = pd
		out[c-a] = pd
		if runStart < 0 {
			runStart = c
		}
		run = append(run, pd)
		if int64(len(run)) == per {
			flush()
		}
	}
	flush()
	return out
}

// fetchRun fetches chunks from, from+1, ... (one pending each) with one
// ranged GET, writing each chunk to the cache as its last byte arrives and
// waking its readers. Called with o.mu held.
func (o *Object) fetchRun(from int64, chunks []*pending) {
	ctx, cancel := context.WithCancelCause(o.ctx)
	r := &run{cancel: cancel, chunks: chunks}
	for _, pd := range chunks {
		pd.run = r
	}
	run := chunks
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		defer cancel(nil)
		cs := o.c.opt.ChunkSize
		c, i := from, 0
		var w *chunkWriter
		finish := func(err error) {
			o.mu.Lock()
			if o.inflight[c] == run[i] {
				delete(o.inflight, c)
			}
			o.mu.Unlock()
			run[i].err = err
			close(run[i].done)
			c, i = c+1, i+1
		}
		off := from * cs
		n := min(int64(len(run))*cs, o.size-off)
		err := o.get(ctx, off, n, func(p []byte) error {
			for len(p) > 0 {
				if w == nil {
					var err error
					if w, err = o.c.cache.create(o.key, c); err != nil {
						o.c.cache.warn(err)
						return errNotCached
					}
				}
				k := min(int64(len(p)), o.chunkLen(c)-w.n)
				if err := w.Write(p[:k]); err != nil {
					o.c.cache.warn(err)
					return errNotCached
				}
				p = p[k:]
				if w.n == o.chunkLen(c) {
					err := w.commit()
					w = nil
					if err != nil {
						o.c.cache.warn(err)
						return errNotCached
					}
					finish(nil)
				}
			}
			return nil
		})
		if w != nil {
			w.abort()
		}
		for i < len(run) {
			finish(err)
		}
	}()
}
