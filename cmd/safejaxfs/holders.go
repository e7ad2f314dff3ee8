package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// holders names the processes that keep mnt busy, as fuser -m would: a
// working or root directory, an open file or a mapped file inside it. It
// reads /proc only (the link of a descriptor names its path without asking
// the file system), so a hung mount cannot hang it. A user sees their own
// processes only (root everyone's); at most limit are named, and more
// counts the others.
func holders(mnt string, limit int) (named []string, more int) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, 0
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		why := holds("/proc/"+e.Name(), mnt)
		if why == "" {
			continue
		}
		if len(named) == limit {
			more++
			continue
		}
		comm, _ := os.ReadFile("/proc/" + e.Name() + "/comm")
		named = append(named, fmt.Sprintf("pid %d (%s: %s)", pid, strings.TrimSpace(string(comm)), why))
	}
	return named, more
}

// holds says how the process whose /proc directory is dir holds mnt, or "".
func holds(dir, mnt string) string {
	inside := func(p string) bool { return p == mnt || strings.HasPrefix(p, mnt+"/") }
	if p, err := os.Readlink(dir + "/cwd"); err == nil && inside(p) {
		return "working directory"
	}
	if p, err := os.Readlink(dir + "/root"); err == nil && inside(p) {
		return "root directory"
	}
	if fds, err := os.ReadDir(dir + "/fd"); err == nil {
		for _, fd := range fds {
			if p, err := os.Readlink(dir + "/fd/" + fd.Name()); err == nil && inside(p) {
				return "open file " + p
			}
		}
	}
	f, err := os.Open(dir + "/maps")
	if err != nil {
		return ""
	}
	defer f.Close()
	// address perms offset dev inode, then the path (which starts with /).
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, " /"); i >= 0 {
			if p := strings.TrimSuffix(line[i+1:], " (deleted)"); inside(p) {
				return "mapped file " + p
			}
		}
	}
	return ""
}

// busyReason says why unmounting mnt failed with EBUSY, naming the
// processes that hold it when this user can see them.
func busyReason(mnt string) string {
	named, more := holders(mnt, 3)
	if len(named) == 0 {
		return "files are open or a process has its cwd inside"
	}
	s := "held by " + strings.Join(named, ", ")
	if more > 0 {
		s += fmt.Sprintf(" and %d more", more)
	}
	return s
}
