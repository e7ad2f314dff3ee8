package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// vmFlagsOver returns the VmFlags of every mapping of this process that
// overlaps [start, end), from /proc/self/smaps.
func vmFlagsOver(t *testing.T, start, end uintptr) []string {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var flags []string
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if lo, hi, ok := strings.Cut(strings.Fields(line)[0], "-"); ok && !strings.HasSuffix(line, ":") && !strings.Contains(lo, ":") {
			a, err1 := strconv.ParseUint(lo, 16, 64)
			b, err2 := strconv.ParseUint(hi, 16, 64)
			in = err1 == nil && err2 == nil && uintptr(a) < end && uintptr(b) > start
			continue
		}
		if v, ok := strings.CutPrefix(line, "VmFlags:"); ok && in {
			flags = append(flags, strings.TrimSpace(v))
		}
	}
	return flags
}

// TestAdviseHeap: the range adviseHeap reports is heap the kernel now
// has marked for huge pages ("hg" in every mapping over it), and taking
// the advice back marks it "nh". Unless huge pages come by advice (the
// "madvise" policy) it advises nothing.
func TestAdviseHeap(t *testing.T) {
	start, end := adviseHeap(16 << 20)
	if hugePageSize() == 0 {
		if end != start {
			t.Fatalf("no huge pages here, yet [%#x, %#x) was advised", start, end)
		}
		t.Skip("transparent huge pages are not given by advice here (policy always or never)")
	}
	if end-start < 8<<20 {
		t.Fatalf("advised [%#x, %#x): less than half of the 16 MiB asked", start, end)
	}
	flags := vmFlagsOver(t, start, end)
	if len(flags) == 0 {
		t.Fatalf("no mapping over [%#x, %#x)", start, end)
	}
	for _, f := range flags {
		if !strings.Contains(" "+f+" ", " hg ") {
			t.Errorf("a mapping over the advised range has flags %q, no hg", f)
		}
	}
	if err := madvise(start, end, unix.MADV_NOHUGEPAGE); err != nil {
		t.Fatal(err)
	}
	for _, f := range vmFlagsOver(t, start, end) {
		if !strings.Contains(" "+f+" ", " nh ") || strings.Contains(" "+f+" ", " hg ") {
			t.Errorf("after MADV_NOHUGEPAGE a mapping over the range has flags %q", f)
		}
	}
}

// TestReserveFree: the heap is advised only where reserving address space
// costs nothing: overcommit not strict, no ulimit -v or -d.
func TestReserveFree(t *testing.T) {
	inf := uint64(unix.RLIM_INFINITY)
	for _, c := range []struct {
		overcommit string
		as, data   uint64
		want       bool
	}{
		{"0", inf, inf, true},
		{"1", inf, inf, true},
		{"2", inf, inf, false},
		{"0", 4 << 30, inf, false},
		{"0", inf, 1 << 30, false},
	} {
		if got := reserveFree(c.overcommit, c.as, c.data); got != c.want {
			t.Errorf("reserveFree(%q, %d, %d) = %v, want %v", c.overcommit, c.as, c.data, got, c.want)
		}
	}
}
