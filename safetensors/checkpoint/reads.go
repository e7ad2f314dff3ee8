package checkpoint

import (
	"sync"
	"time"
)

// readTracker lets an in-place persist wait for the reads in flight: they
// may hold slices of the mapping over bytes about to be overwritten while a
// FUSE reply is still being copied from them. Reads that start later see
// those bytes as edit chunks in memory until the file holds them, so only
// reads that started before the wait matter: each wait opens a new epoch
// and waits for the previous one to empty.
//
// The wait is bounded. A reader releases when go-fuse has sent its reply,
// which takes microseconds; a release that never comes (a reply go-fuse
// suppressed on a dying connection) must not hang every later persist.
type readTracker struct {
	mu  sync.Mutex
	cur *readEpoch
}

type readEpoch struct {
	n       int
	retired bool
	empty   chan struct{} // closed when retired with no reads left
}

// maxReadWait bounds how long a persist waits for earlier reads.
var maxReadWait = 5 * time.Second

// enter registers a read; the returned func releases it (once).
func (t *readTracker) enter() func() {
	t.mu.Lock()
	if t.cur == nil {
		t.cur = &readEpoch{empty: make(chan struct{})}
	}
	e := t.cur
	e.n++
	t.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			t.mu.Lock()
			e.n--
			if e.n == 0 && e.retired {
				close(e.empty)
			}
			t.mu.Unlock()
		})
	}
}

// wait returns once every read registered before the call has released,
// or after maxReadWait (reporting false).
func (t *readTracker) wait() bool {
	t.mu.Lock()
	e := t.cur
	t.cur = &readEpoch{empty: make(chan struct{})}
	if e == nil || e.n == 0 {
		t.mu.Unlock()
		return true
	}
	e.retired = true
	t.mu.Unlock()
	select {
	case <-e.empty:
		return true
	case <-time.After(maxReadWait):
		return false
	}
}
