package fs

import (
	"sync"

	"github.com/hanwen/go-fuse/v2/fs"
)

// Kernel cache invalidations go through one ordered queue per mount
// (notifier), delivered by one worker goroutine, never a goroutine per
// event.
//
// Why a queue: an invalidation is a write to /dev/fuse that the kernel
// serves under its own locks. An entry invalidation locks the directory,
// a content invalidation locks the file's pages; a request the kernel is
// serving holds some of those locks until the daemon replies (a rename or
// unlink holds its directories, a write holds the pages it writes). A
// request that invalidated such an inode itself would wait for a lock
// that waits for its own reply. So requests only queue their
// invalidations; the worker delivers them in the order they were queued.
//
// When: an invalidation that needs a lock the causing request holds (the
// directory of a rename or unlink) carries that request's gate and is
// delivered after the request has returned (gate.end). Others are
// delivered as soon as the worker reaches them.
//
// Where a request must not return before its invalidations are delivered
// (close: a tensor written through one name and closed must read back
// through its other names; setfattr: the views' sizes follow the new
// dtype), it waits for the queue (settle) at its very end, holding no
// lock of the daemon: a queued invalidation may wait for a kernel lock
// whose holder's request waits for a daemon lock, and nothing the worker
// waits for may wait for a request that waits for the worker. The kernel
// holds no lock of the closed file while it waits for FLUSH, nor of the
// file's directory while it waits for SETXATTR. Writes never wait: the
// kernel holds the written pages meanwhile, and the worker may be about
// to invalidate them.
//
// Invalidations are idempotent and never wrong: delivered late they only
// cost the kernel a lookup or a read it would not have needed.
//
// Names whose meaning changes behind the kernel's back are not left to the
// queue alone when a request must see the change: views are looked up
// again at every use (entry timeout 0, see viewEntriesFS), and a node that
// no longer stands for its name answers ESTALE, which makes the kernel
// look the name up again (see staleNode).
type notifier struct {
	mu sync.Mutex
	// cond is signalled when delivered advances or a gate ends.
	cond    sync.Cond
	queue   []notice
	running bool
	// queued and delivered count notices: settle waits until delivered
	// reaches the queued count it saw.
	queued, delivered uint64
	// deliver sends one notice to the kernel (tests replace it).
	deliver func(notice)
}

type noticeKind uint8

const (
	noticeContent noticeKind = iota // NotifyContent(off, n): pages [off, off+n), n 0: to the end; off < 0: attributes only
	noticeEntry                     // NotifyEntry(name)
)

// notice is one invalidation of node.
type notice struct {
	kind   noticeKind
	node   *fs.Inode
	name   string
	off, n int64
	gate   *gate // nil: deliver when reached
}

// gate is held by a request whose invalidations need a lock the kernel
// holds for it: they wait in the queue until it ends.
type gate struct {
	q    *notifier
	done bool // guarded by q.mu
}

// begin opens a gate for the request being served; end it when the
// request returns (defer g.end() first in the handler, so it runs last).
func (q *notifier) begin() *gate { return &gate{q: q} }

// end lets the request's invalidations go.
func (g *gate) end() {
	q := g.q
	q.mu.Lock()
	g.done = true
	q.mu.Unlock()
	q.cond.Broadcast()
}

// push queues invalidations, in order, after every one queued before.
func (q *notifier) push(ns ...notice) {
	if len(ns) == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.cond.L == nil {
		q.cond.L = &q.mu
	}
	q.queue = append(q.queue, ns...)
	q.queued += uint64(len(ns))
	if !q.running {
		// One worker at a time; it exits when the queue is empty, so an
		// idle mount (or an FS that is never mounted) holds no goroutine.
		q.running = true
		go q.work()
	}
}

// content queues an invalidation of node's pages [off, off+n) (n 0: to
// the end) and attributes.
func (q *notifier) content(node *fs.Inode, off, n int64) {
	q.push(notice{kind: noticeContent, node: node, off: off, n: n})
}

// entries queues invalidations of dir's entries names (and, with them,
// dir's cached listing: see entryChanged), after g ends (nil: at once).
func (q *notifier) entries(g *gate, dir *fs.Inode, names ...string) {
	if dir == nil {
		return
	}
	ns := make([]notice, len(names))
	for i, name := range names {
		ns[i] = notice{kind: noticeEntry, node: dir, name: name, gate: g}
	}
	q.push(ns...)
}

func (q *notifier) work() {
	q.mu.Lock()
	for len(q.queue) > 0 {
		n := q.queue[0]
		for n.gate != nil && !n.gate.done {
			q.cond.Wait()
		}
		deliver := q.deliver
		q.mu.Unlock()
		if deliver == nil {
			deliver = toKernel
		}
		deliver(n)
		q.mu.Lock()
		q.queue[0] = notice{} // no reference kept to the node
		q.queue = q.queue[1:]
		q.delivered++
		q.cond.Broadcast()
	}
	q.queue = nil
	q.running = false
	q.mu.Unlock()
}

// toKernel delivers a notice. ENOENT (the kernel holds nothing of it, so
// has nothing cached) is the common answer and fine; there is no other
// that could be acted on.
func toKernel(n notice) {
	switch n.kind {
	case noticeContent:
		n.node.NotifyContent(n.off, n.n)
	case noticeEntry:
		n.node.NotifyEntry(n.name)
	}
}

// settle waits until every invalidation queued before it is delivered.
// Never call it holding a lock of the daemon, nor from a request the
// kernel serves holding a lock a queued invalidation needs (see above).
func (q *notifier) settle() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.cond.L == nil {
		q.cond.L = &q.mu
	}
	for want := q.queued; q.delivered < want; {
		q.cond.Wait()
	}
}

// pending is the number of invalidations queued and not yet delivered.
func (q *notifier) pending() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.queued - q.delivered
}
