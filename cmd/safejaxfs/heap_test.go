package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"testing"
)

// heapSettings are the collector's settings now: GOGC (-1 when off) and
// the memory limit.
func heapSettings() (gogc int64, limit int64) {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/gomemlimit:bytes"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64()), int64(s[1].Value.Uint64())
}

// waitSettings waits for the collector's settings to become gogc and a
// limit of at least limit (exactly, if exact): the pacer sets them from
// its own goroutine.
func waitSettings(t *testing.T, gogc, limit int64, exact bool, when string) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%s: GOGC %d and a memory limit of %d (exactly: %v)", when, gogc, limit, exact), func() bool {
		g, l := heapSettings()
		return g == gogc && (l == limit || !exact && l > limit)
	})
}

func pacerTest(t *testing.T) bool {
	t.Helper()
	if !isolated(t) { // the settings are the process's
		return false
	}
	for _, v := range []string{"GOGC", "GOMEMLIMIT"} {
		if _, set := os.LookupEnv(v); set {
			t.Skipf("%s is set: the pacer leaves the collector to it", v)
		}
	}
	return true
}

var sink []byte

// While the daemon starts, garbage does not make the collector run; once
// the mount answers it is paced as before (GOGC 100, the serving memory
// limit).
func TestHeapPacerWaitsForStart(t *testing.T) {
	if !pacerTest(t) {
		return
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	p := paceHeap()
	waitSettings(t, -1, startupLimit, true, "starting")
	for range 64 { // 64 MiB of garbage: past a 4 MiB heap's target many times over
		sink = make([]byte, 1<<20)
	}
	runtime.ReadMemStats(&after)
	if n := after.NumGC - before.NumGC; n != 0 {
		t.Errorf("the collector ran %d times while starting", n)
	}
	p.started()
	waitSettings(t, 100, memoryLimit, true, "started")
}

// A checkpoint whose records outgrow half the start-up limit gets the
// steady pacing before the mount answers: the collector does not run each
// time the heap touches the limit.
func TestHeapPacerLargeHeap(t *testing.T) {
	if !pacerTest(t) {
		return
	}
	p := paceHeap()
	defer p.started()
	live := make([][]byte, 0, 160)
	for range cap(live) { // 160 MiB live
		live = append(live, make([]byte, 1<<20))
	}
	for range 128 { // and garbage past the limit: the collector runs, finds 160 MiB
		sink = make([]byte, 1<<20)
	}
	// Paced as when serving: the limit a quarter above what is live.
	waitSettings(t, 100, 200<<20, false, "with 160 MiB live")
	runtime.KeepAlive(live)
}
