package checkpoint

import (
	"runtime"
	"testing"
	"time"
)

func TestReadTrackerWaitsForEarlierReads(t *testing.T) {
	t.Parallel()
	var rt readTracker
	if !rt.wait() {
		t.Fatal("wait with no reads did not return at once")
	}
	release := rt.enter()
	rt.mu.Lock()
	first := rt.cur
	rt.mu.Unlock()
	done := make(chan bool, 1)
	go func() { done <- rt.wait() }()
	// The wait has begun once it retired the epoch of the first read.
	for {
		rt.mu.Lock()
		begun := first.retired
		rt.mu.Unlock()
		if begun {
			break
		}
		runtime.Gosched()
	}
	select {
	case <-done:
		t.Fatal("wait returned while an earlier read was in flight")
	case <-time.After(50 * time.Millisecond): // it may return wrongly; give it the chance
	}
	// A read that starts after the wait began is not waited for.
	later := rt.enter()
	defer later()
	release()
	release() // releasing twice is harmless
	if ok := <-done; !ok {
		t.Fatal("wait reported a timeout")
	}
}

func TestReadTrackerWaitIsBounded(t *testing.T) {
	// Not parallel: it lowers maxReadWait for the package (the parallel
	// tests wait until the sequential ones are done).
	old := maxReadWait
	maxReadWait = 20 * time.Millisecond
	defer func() { maxReadWait = old }()
	var rt readTracker
	rt.enter() // never released
	if rt.wait() {
		t.Fatal("wait claimed the unreleased read was done")
	}
	// The stuck read does not block the next epoch.
	if !rt.wait() {
		t.Fatal("the next wait inherited the stuck read")
	}
}
