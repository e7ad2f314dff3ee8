package fs

import (
	"sync"

	"github.com/hanwen/go-fuse/v2/fs"
)

// Kernel cache invalidations go through one notifier per mount: two
// ordered queues (lanes, see laneFiles), each delivered by one worker
// goroutine, never a goroutine per event.
//
// Why a queue: an invalidation is a write to /dev/fuse that the kernel
// serves under its own locks. An entry invalidation locks the directory,
// a content invalidation locks the file's pages; a request the kernel is
// serving holds some of those locks until the daemon replies (a rename or
// unlink holds its directories, a write holds the pages it writes). A
// request that invalidated such an inode itself would wait for a lock
// that waits for its own reply. So requests only queue their
// invalidations; the workers deliver them in the order they were queued.
//
// When: an invalidation that needs a lock the causing request holds (the
// directory of a rename or unlink) carries that request's gate and is
// delivered after the request has returned (gate.end). Others are
// delivered as soon as their lane's worker reaches them.
//
// Where a request must not return before its invalidations are delivered
// (close: a tensor written through one name and closed must read back
// through its other names; setfattr: the views' sizes follow the new
// dtype), it waits for the queue (settle) at its very end, holding no
// lock of the daemon: a queued invalidation may wait for a kernel lock
// whose holder's request waits for a daemon lock, and nothing the worker
// waits for may wait for a request that waits for the worker. The kernel
// holds no lock of the closed file while it waits for FLUSH; it holds the
// file's inode (not its directory) while it waits for FSYNC or SETXATTR,
// which therefore wait for page and attribute invalidations only
// (settleFiles), never for a directory's. Writes never wait: the
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
	// cond is signalled when a lane's delivered count advances or a gate
	// ends.
	cond  sync.Cond
	lanes [2]lane // laneFiles, laneDirs
	// deliver sends one notice to the kernel (tests replace it).
	deliver func(notice)
}

// Two lanes, each delivered in order by its own worker. A notice that may
// wait for a directory's lock (an entry invalidation) or for a request to
// end (a gated one) goes to laneDirs; the others invalidate pages and
// attributes only, and go to laneFiles, so they never wait behind one
// that is stuck on a directory. fsync and setxattr wait for laneFiles
// only (settleFiles): the kernel holds the file's inode lock while it
// waits for them, and an unlink or rename of that file holds its
// directory while it waits for the same lock, so a wait on laneDirs
// could close a cycle through three requests: the fsync waits for the
// worker, the worker for the directory, the unlink for the fsync.
const (
	laneFiles = iota
	laneDirs
)

// lane is one ordered queue of notices.
type lane struct {
	queue   []notice
	running bool
	// queued and delivered count notices: a settle waits until
	// delivered reaches the queued count it saw.
	queued, delivered uint64
}

// laneOf is the lane notice n goes to.
func laneOf(n notice) int {
	if n.kind == noticeEntry || n.gate != nil {
		return laneDirs
	}
	return laneFiles
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

// push queues invalidations, each after every one queued before it in
// its lane.
func (q *notifier) push(ns ...notice) {
	if len(ns) == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.cond.L == nil {
		q.cond.L = &q.mu
	}
	for _, n := range ns {
		l := &q.lanes[laneOf(n)]
		l.queue = append(l.queue, n)
		l.queued++
		if !l.running {
			// One worker per lane at a time; it exits when the lane is
			// empty, so an idle mount (or an FS that is never mounted)
			// holds no goroutine.
			l.running = true
			go q.work(l)
		}
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

func (q *notifier) work(l *lane) {
	q.mu.Lock()
	for len(l.queue) > 0 {
		n := l.queue[0]
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
		l.queue[0] = notice{} // no reference kept to the node
		l.queue = l.queue[1:]
		l.delivered++
		q.cond.Broadcast()
	}
	l.queue = nil
	l.running = false
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
// kernel serves holding a lock a queued invalidation needs (see above):
// a close holds none.
func (q *notifier) settle() { q.wait(laneFiles, laneDirs) }

// settleFiles waits until every invalidation of pages and attributes
// queued before it is delivered, not for those of directory entries: for
// requests the kernel serves holding the file's inode lock (fsync,
// setxattr; see laneFiles).
func (q *notifier) settleFiles() { q.wait(laneFiles) }

func (q *notifier) wait(lanes ...int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.cond.L == nil {
		q.cond.L = &q.mu
	}
	for _, i := range lanes {
		l := &q.lanes[i]
		for want := l.queued; l.delivered < want; {
			q.cond.Wait()
		}
	}
}

// pending is the number of invalidations queued and not yet delivered.
func (q *notifier) pending() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	var n uint64
	for _, l := range q.lanes {
		n += l.queued - l.delivered
	}
	return n
}
