package main

import (
	"fmt"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cached reads path so it is in the page cache, as every row assumes, and
// returns the fraction of its pages that were resident before. The
// re-read matters on machines that reclaim idle page cache behind our back
// (DAMON pageout in VMs): without it a "page cache" reference would read
// from disk.
func cached(path string) (before float64, err error) {
	if before, err = resident(path); err != nil {
		return 0, err
	}
	if before < 1 {
		err = warm(path)
	}
	return before, err
}

// resident is the fraction of a file's pages in the page cache (mincore).
func resident(path string) (float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return 1, err
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(m)
	vec := make([]byte, (len(m)+pageSize-1)/pageSize)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		return 0, e
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return float64(n) / float64(len(vec)), nil
}

// ensureCached is cached for a measurement: it records how much had been
// evicted since the last time, for the notes.
func (b *bench) ensureCached(path string) error {
	before, err := cached(path)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if before < 0.99 {
		b.evictions++
	}
	return nil
}

// damonPageout reports whether a DAMON scheme that pages out idle memory is
// running (it reclaims page cache we rely on, hence ensureCached).
func damonPageout() bool {
	const dir = "/sys/kernel/mm/damon/admin/kdamonds"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		state, err := os.ReadFile(fmt.Sprintf("%s/%s/state", dir, e.Name()))
		if err != nil || strings.TrimSpace(string(state)) != "on" {
			continue
		}
		schemes, _ := os.ReadDir(fmt.Sprintf("%s/%s/contexts/0/schemes", dir, e.Name()))
		for _, s := range schemes {
			a, _ := os.ReadFile(fmt.Sprintf("%s/%s/contexts/0/schemes/%s/action", dir, e.Name(), s.Name()))
			if strings.TrimSpace(string(a)) == "pageout" {
				return true
			}
		}
	}
	return false
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// setReadAhead sets the read_ahead_kb of a mount's FUSE bdi (--read-ahead-kb,
// root only): the knob that decides how big the kernel's FUSE read requests
// are.
func setReadAhead(mnt string, kb int) error {
	var st unix.Stat_t
	if err := unix.Stat(mnt, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(fmt.Sprint(kb)), 0o644)
}
