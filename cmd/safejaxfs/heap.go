package main

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// The daemon's heap, in two phases.
//
// Starting: opening a large checkpoint is a burst of allocation (see
// hugepages.go), about half of it garbage by the end (read buffers, the
// parsed index). Paced from a 4 MiB heap, the collector ran five or six
// times during it, on one of the two cores the parsing of shards wants,
// and the memory limit added a run while the tree was built. So the
// collector waits for the burst: collection is off and the heap may grow
// to startupLimit before it runs anyway. A checkpoint whose records alone
// outgrow half of that (from about 150k tensors) gets the steady pacing at
// once, instead of a collector that runs every time the heap touches the
// limit. Measured on the DeepSeek-V3-shaped set (94k tensors, 163 shards),
// 12 mounts each, alternating: median 319 ms with the collector paced as
// before, 258 ms with it waiting; the peak RSS 140 -> 166 MB, given back
// once mounted (the collection after ready).
//
// Serving: memoryLimit, raised a quarter above the live heap when that
// outgrows it (followLiveHeap).
//
// A GOGC or GOMEMLIMIT the user set wins: the collector then never waits,
// and with GOMEMLIMIT the limit is theirs.

// memoryLimit is the daemon's soft Go memory limit while little is live.
// Without one the heap may grow to twice what is live before a
// collection: a find over a 100k-tensor mount peaked at 260 MB of RSS for
// about 120 MB live, 166 MB with this limit.
const memoryLimit = 160 << 20

// startupLimit bounds the heap while the collector waits for the start-up
// burst: above a 94k-tensor mount's peak.
const startupLimit = 256 << 20

// heapPacer is the daemon's pacing; started ends the start-up phase.
type heapPacer struct {
	done chan struct{}
}

// paceHeap begins the start-up phase, and the serving one after it.
func paceHeap() *heapPacer {
	p := &heapPacer{done: make(chan struct{})}
	_, gogc := os.LookupEnv("GOGC")
	_, limit := os.LookupEnv("GOMEMLIMIT")
	if !gogc && !limit {
		debug.SetGCPercent(-1)
		debug.SetMemoryLimit(startupLimit)
	}
	go func() {
		if !gogc && !limit {
			waitForStart(p.done)
			debug.SetGCPercent(100)
		}
		if !limit {
			followLiveHeap(memoryLimit)
		}
	}()
	return p
}

// started ends the start-up phase (the mount answers).
func (p *heapPacer) started() { close(p.done) }

// waitForStart returns once done is closed, or once the live heap outgrows
// half the start-up limit (then the collector would run each time the heap
// touched the limit).
func waitForStart(done <-chan struct{}) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
			if liveHeap() > startupLimit/2 {
				return
			}
		}
	}
}

// liveHeap is what the last collection found live.
func liveHeap() int64 {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	return int64(sample[0].Value.Uint64())
}

// followLiveHeap keeps the soft limit a quarter above the live heap once
// that outgrows the base: a large .npy upload or edit held in memory must
// not make the collector run back to back (a 256 MiB np.save took 1.7x as
// long under a fixed limit).
func followLiveHeap(base int64) {
	set := int64(-1)
	for {
		live := liveHeap()
		if limit := max(base, live+live/4); limit != set {
			debug.SetMemoryLimit(limit)
			set = limit
		}
		time.Sleep(100 * time.Millisecond)
	}
}
