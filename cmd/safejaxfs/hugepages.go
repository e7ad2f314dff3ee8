package main

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"github.com/safejaxfs/safejaxfs/internal/race"
	"golang.org/x/sys/unix"
)

// Opening a large checkpoint is a burst of allocation: for DeepSeek-V3's
// 94k tensors in 163 shards, the index, the headers, the checkpoint's
// records and the tree take about 140 MB of heap in a quarter of a second.
// The machine's default transparent huge page policy is usually "madvise"
// (only advised memory gets 2 MiB pages), so every fresh 4 KiB page of
// that heap costs a page fault: 32,000 of them, most of the mount's time
// on a virtual machine, where a fault is dearer. The Go runtime advises
// none of the heap, so the process does, for the range it is about to
// grow into: measured, the mount takes 0.24 s instead of 0.59 s, with the
// same peak RSS.
//
// How: one large allocation makes the runtime map fresh address space
// (never touched, so never faulted in), which is advised MADV_HUGEPAGE and
// freed at once; the runtime's page allocator hands out the lowest free
// addresses first, so the heap grows into it. A collection right after
// forgets the allocation, so the collector paces by what is really live.
// If the runtime placed things otherwise the advice would only be wasted:
// nothing depends on it but speed.
//
// A daemon lives for days: once mounted it takes the advice back
// (MADV_NOHUGEPAGE), so that khugepaged does not later fill the holes the
// runtime's scavenger returns to the system (the RSS growth of
// golang/go#64332, one reason the Go runtime stopped advising huge pages
// itself). Pages already huge stay so until freed. The other reason,
// golang/go#61718: with the usual defrag policy a fault in advised memory
// may compact memory first when no huge page is free, a stall. Here that
// is bounded to the startup burst (a few dozen faults instead of tens of
// thousands), and an administrator who wants no such stall sets defrag to
// "defer" (the fault then takes 4 KiB pages, khugepaged collapses later).
//
// Only under the "madvise" policy: with "always" every anonymous page is
// huge-page backed already (and MADV_NOHUGEPAGE, which cannot be undone to
// the default, would take that away), with "never" there are none. And
// only where reserving 256 MiB of address space costs nothing: not under
// strict overcommit (vm.overcommit_memory 2, where it counts against the
// commit limit) nor under a limit on address space or data (ulimit -v,
// -d, as batch schedulers set them), where the allocation could be the
// one that fails, and a failed allocation ends a Go program.

// hugeSpan is how much heap is advised: more than a 94k-tensor mount's
// peak. Address space only: what is never used is never backed.
const hugeSpan = 256 << 20

var huge struct {
	once       sync.Once
	start, end uintptr
}

// preferHugePages advises huge pages for the heap this process is about
// to grow into (once per process; see above).
func preferHugePages() {
	huge.once.Do(func() {
		// Under the race detector the allocation's shadow memory costs
		// far more than the advice saves.
		if !race.Enabled {
			huge.start, huge.end = adviseHeap(hugeSpan)
		}
	})
}

// normalPages takes the advice back (a daemon, once mounted).
func normalPages() {
	if huge.end > huge.start {
		madvise(huge.start, huge.end, unix.MADV_NOHUGEPAGE)
	}
}

// adviseHeap makes the runtime map span bytes of fresh heap and advises
// the huge pages within them; it returns the range advised (empty when
// nothing was).
func adviseHeap(span int) (start, end uintptr) {
	page := hugePageSize()
	if page == 0 || !reserveIsFree() {
		return 0, 0
	}
	b := make([]byte, span)
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	start, end = (p+page-1)&^(page-1), (p+uintptr(span))&^(page-1)
	if end <= start || madvise(start, end, unix.MADV_HUGEPAGE) != nil {
		start, end = 0, 0
	}
	runtime.KeepAlive(b)
	b = nil
	runtime.GC()
	return start, end
}

// madvise advises [start, end) by address: the range is the runtime's
// memory, not a Go object this package holds.
func madvise(start, end uintptr, advice int) error {
	if _, _, e := unix.Syscall(unix.SYS_MADVISE, start, end-start, uintptr(advice)); e != 0 {
		return e
	}
	return nil
}

// hugePageSize is the size of a transparent huge page where advice is
// what gets them (the policy is "madvise"), else 0 (always given, never
// given, or not built into the kernel).
func hugePageSize() uintptr {
	if b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled"); err != nil || !strings.Contains(string(b), "[madvise]") {
		return 0
	}
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
	if err != nil {
		return 0
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n == 0 || n&(n-1) != 0 {
		return 0
	}
	return uintptr(n)
}

// reserveIsFree reports whether address space the process never touches
// costs nothing here (see above).
func reserveIsFree() bool {
	b, err := os.ReadFile("/proc/sys/vm/overcommit_memory")
	if err != nil {
		return false
	}
	var as, data unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_AS, &as) != nil || unix.Getrlimit(unix.RLIMIT_DATA, &data) != nil {
		return false
	}
	return reserveFree(strings.TrimSpace(string(b)), as.Cur, data.Cur)
}

// reserveFree is reserveIsFree's rule: overcommit is not strict, and
// neither the address space nor the data segment is limited.
func reserveFree(overcommit string, as, data uint64) bool {
	return overcommit != "2" && as == unix.RLIM_INFINITY && data == unix.RLIM_INFINITY
}
