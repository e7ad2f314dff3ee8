package fs

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/hanwen/go-fuse/v2/fs"
)

// recorder is a notifier whose deliveries are recorded, not sent.
func recorder() (*notifier, func() []string) {
	var mu sync.Mutex
	var got []string
	q := &notifier{}
	q.deliver = func(n notice) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, n.name)
	}
	return q, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}

// TestNotifierOrder: notices are delivered in the order they were queued,
// from any number of goroutines, and settle returns only once every notice
// queued before it is delivered.
func TestNotifierOrder(t *testing.T) {
	q, got := recorder()
	dir := &fs.Inode{}
	var want []string
	for i := range 1000 {
		name := fmt.Sprint(i)
		want = append(want, name)
		q.entries(nil, dir, name)
		if i%100 == 0 {
			q.settle()
			if g := got(); len(g) != i+1 {
				t.Fatalf("settle returned with %d of %d delivered", len(g), i+1)
			}
		}
	}
	q.settle()
	if g := got(); !slices.Equal(g, want) {
		t.Fatalf("delivered out of order: %v", g[:min(len(g), 20)])
	}
	if q.pending() != 0 {
		t.Errorf("%d pending after settle", q.pending())
	}
}

// TestNotifierGate: a notice behind a gate waits for it to end, and so do
// the notices queued after it (order is kept); those queued before go.
func TestNotifierGate(t *testing.T) {
	q, got := recorder()
	dir := &fs.Inode{}
	q.entries(nil, dir, "before")
	q.settle()
	g := q.begin()
	q.entries(g, dir, "gated")
	q.entries(nil, dir, "after")
	// Nothing lets "gated" go but g.end: a settle would wait forever, so
	// the test waits for "before" only and checks nothing else went.
	if g := got(); !slices.Equal(g, []string{"before"}) {
		t.Fatalf("delivered before the gate ended: %v", g)
	}
	settleWaitsFor(t, q, g)
	if g := got(); !slices.Equal(g, []string{"before", "gated", "after"}) {
		t.Fatalf("after the gate: %v", g)
	}
}

// TestNotifierLanes: a page or attribute invalidation never waits behind
// one that waits for a directory (here, a gate that has not ended), and
// settleFiles (fsync, setxattr) returns without waiting for the
// directory's; settle (close) still waits for both.
func TestNotifierLanes(t *testing.T) {
	q, got := recorder()
	dir, file := &fs.Inode{}, &fs.Inode{}
	g := q.begin()
	q.entries(g, dir, "gated")
	q.push(notice{kind: noticeContent, node: dir, name: "listing", gate: g})
	q.push(notice{kind: noticeContent, node: file, name: "pages"})
	q.settleFiles()
	if g := got(); !slices.Equal(g, []string{"pages"}) {
		t.Fatalf("settleFiles returned with %v delivered, want the pages only", g)
	}
	settleWaitsFor(t, q, g)
	if g := got(); !slices.Equal(g, []string{"pages", "gated", "listing"}) {
		t.Fatalf("after the gate: %v", g)
	}
	if q.pending() != 0 {
		t.Errorf("%d pending after settle", q.pending())
	}
}

// settleWaitsFor checks that settle has not returned while gate g is
// open, then ends g and waits for settle.
func settleWaitsFor(t *testing.T, q *notifier, g *gate) {
	t.Helper()
	done := make(chan struct{})
	go func() { q.settle(); close(done) }()
	select {
	case <-done:
		t.Fatal("settle returned while a gated notice waits")
	default:
	}
	g.end()
	<-done
}
