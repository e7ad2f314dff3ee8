package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// machineLine describes what the figures were measured on.
func machineLine(dir string) string {
	model := "?"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	var uts unix.Utsname
	kernel := "?"
	if unix.Uname(&uts) == nil {
		kernel = unix.ByteSliceToString(uts.Release[:])
	}
	mem := "?"
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		mem = fmt.Sprintf("%.1f GiB RAM", float64(si.Totalram)*float64(si.Unit)/(1<<30))
	}
	fstype, dev, _ := mountOf(dir)
	return fmt.Sprintf("nproc %d, %s, kernel %s, %s, bench dir %s on %s (%s), %s",
		runtime.NumCPU(), model, kernel, mem, dir, fstype, dev, runtime.Version())
}

// mountOf finds the file system holding dir: the longest mountpoint in
// /proc/self/mounts that is a prefix of it; opts are its mount options.
func mountOf(dir string) (fstype, dev, opts string) {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		real = dir
	}
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return "?", "?", ""
	}
	defer f.Close()
	best := -1
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		mp := fields[1]
		if (real == mp || strings.HasPrefix(real, strings.TrimSuffix(mp, "/")+"/")) && len(mp) >= best {
			best = len(mp)
			dev, fstype, opts = fields[0], fields[2], fields[3]
		}
	}
	return fstype, dev, opts
}

// checkSpace refuses to start a full run that would fill the disk.
func (b *bench) checkSpace() error {
	var st unix.Statfs_t
	if err := unix.Statfs(b.work, &st); err != nil {
		return err
	}
	// Checkpoints, the cp reference, a rewrite's temp file and slack.
	need := 4*b.cfg.bigBytes + 2*int64(b.cfg.manyTensors)*b.cfg.manyBytes + 256<<20
	if free := int64(st.Bavail) * st.Bsize; free < need {
		return fmt.Errorf("%s has %s free, the run needs %s: pass a directory on a bigger disk (BENCH_DIR=...)", b.work, sizeName(free>>20<<20), sizeName(need>>20<<20))
	}
	return nil
}

// bdiReadAhead returns the read_ahead_kb of the backing device of a mount
// (FUSE mounts get their own bdi, named by the device number).
func bdiReadAhead(mnt string) string {
	var st unix.Stat_t
	if err := unix.Stat(mnt, &st); err != nil {
		return "?"
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	v, err := os.ReadFile(p)
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(v))
}
