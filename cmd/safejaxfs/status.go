package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	safefs "github.com/safejaxfs/safejaxfs/fs"
)

// safejaxfs status: every safejaxfs mount of this user (of every user, as
// root), from the daemons' status files (status_file.go) and the mount
// table. It never waits on a mount: each is probed with a statfs bounded
// by statusProbe (from a child process, probe.go), and one that does not
// answer is said to.

// statusProbe bounds the wait for each mount's answer.
var statusProbe = 2 * time.Second

// mountReport is one entry of safejaxfs status --json.
type mountReport struct {
	mountStatus
	// Answering: the mount answered the probe (nil when it could not be
	// asked: root cannot reach another user's mount without allow_other,
	// and the kernel answers for it).
	Answering *bool `json:"answering"`
	// Problem says what is wrong, if anything: the daemon is gone, the
	// mount does not answer, no status was found.
	Problem string `json:"problem,omitempty"`
}

func runStatus(args []string) error {
	fl := newFlags("status", "[--json] [MOUNTPOINT...]",
		"List the safejaxfs mounts of this user (every user's, as root): mountpoint, source,\n"+
			"daemon pid, read-only or read-write, state (mounted, writing back), edits not yet\n"+
			"written back into the checkpoint and the size of its log, the remote chunk cache's\n"+
			"use, the last error, and the daemon's log file. A mount that does not answer within\n"+
			"2 seconds is listed as not answering, and one whose daemon is gone as dead.\n"+
			"Given mountpoints, only those (each must be a safejaxfs mount).")
	asJSON := fl.Bool("json", false, "print a JSON array, one object per mount")
	rest, err := parseFlags(fl, args, 0, math.MaxInt)
	if err != nil {
		return err
	}
	only, err := statusMountpoints(rest)
	if err != nil {
		return err
	}
	reports, err := collectStatus(only)
	if err != nil {
		return fail(exitMount, "%v", err)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		return enc.Encode(reports)
	}
	printStatus(os.Stdout, reports)
	return nil
}

// statusMountpoints resolves the mountpoints status was given (nil: all),
// refusing a path that is not a safejaxfs mount as unmount does.
func statusMountpoints(args []string) (map[string]bool, error) {
	if len(args) == 0 {
		return nil, nil
	}
	only := map[string]bool{}
	for _, a := range args {
		mnt, _, err := safejaxfsMount(a)
		if err != nil {
			return nil, err
		}
		only[mnt] = true
	}
	return only, nil
}

// collectStatus gathers the reports, sorted by mountpoint: of the
// mountpoints in only, or of all when only is nil. Only those are probed:
// a probe waits on a hung mount (up to statusProbe), and while it runs it
// holds the mount, so that an unmount of it at that instant finds it busy.
func collectStatus(only map[string]bool) ([]mountReport, error) {
	mounts, err := safejaxfsMounts()
	if err != nil {
		return nil, err
	}
	statuses := readStatuses()
	root := os.Geteuid() == 0
	var reports []mountReport
	seen := map[string]bool{}
	for _, st := range statuses {
		if only != nil && !only[st.Mountpoint] || !pidAlive(st.PID, st.Start) {
			continue
		}
		m, mounted := mounts[st.Mountpoint]
		if mounted && m.uid != st.UID {
			continue // a status claiming someone else's mount
		}
		r := mountReport{mountStatus: st}
		if !mounted && st.State != stateFinishing && st.State != stateRetrying && st.State != stateMounting {
			r.Problem = "not in the mount table"
		}
		seen[st.Mountpoint] = seen[st.Mountpoint] || mounted
		reports = append(reports, r)
	}
	for mnt, m := range mounts {
		if seen[mnt] || (!root && m.uid != os.Geteuid()) || only != nil && !only[mnt] {
			continue
		}
		reports = append(reports, mountReport{mountStatus: mountStatus{Format: statusFormat, UID: m.uid, Source: m.source, Mountpoint: mnt, State: "unknown", Options: []string{}},
			Problem: "no status published (a daemon of an older safejaxfs, or one whose state directory is not this user's)"})
	}
	probeAll(reports, mounts)
	slices.SortFunc(reports, func(a, b mountReport) int { return strings.Compare(a.Mountpoint, b.Mountpoint) })
	if reports == nil {
		reports = []mountReport{}
	}
	return reports, nil
}

// probeAll asks every listed mount for an answer, concurrently, for at
// most statusProbe in all (probeMounts: from a child process, which a
// mount that never answers may keep). The question makes each daemon
// publish its status first (probeStatus): what a daemon that answered
// published then replaces what was read before, so an edit made a moment
// ago is in the report, not only after the daemon's next periodic update.
func probeAll(reports []mountReport, mounts map[string]tableMount) {
	var idx []int
	var mnts []string
	for i := range reports {
		r := &reports[i]
		if _, ok := mounts[r.Mountpoint]; !ok {
			continue
		}
		if os.Geteuid() == 0 && r.UID != 0 && !slices.Contains(r.Options, "allow_other") && !slices.Contains(r.Options, "allow_root") && r.State != "unknown" {
			// The kernel answers root's statfs of another user's
			// private mount itself: it would say nothing.
			continue
		}
		idx = append(idx, i)
		mnts = append(mnts, r.Mountpoint)
	}
	if len(idx) == 0 {
		return
	}
	kinds := make([]probeKind, len(mnts))
	for j := range kinds {
		kinds[j] = probeStatus
	}
	answers := probeMounts(mnts, kinds, statusProbe)
	published := map[string]mountStatus{}
	for _, st := range readStatuses() {
		published[st.Mountpoint+"\x00"+strconv.Itoa(st.PID)] = st
	}
	for j, i := range idx {
		r := &reports[i]
		a, answered := answers[j]
		if r.PID == 0 {
			// No status: the daemon's pid, from the mount itself.
			r.PID = a.pid
		} else if st, ok := published[r.Mountpoint+"\x00"+strconv.Itoa(r.PID)]; ok && answered && a.pid == r.PID {
			r.mountStatus = st
		}
		yes := answered && !a.dead
		r.Answering = &yes
		switch {
		case a.dead:
			r.Problem = "dead: its daemon is gone (safejaxfs unmount " + shellQuote(r.Mountpoint) + " detaches it and writes back what its log holds)"
		case !answered:
			r.Problem = fmt.Sprintf("not answering (no reply within %v)", statusProbe)
		}
	}
}

// tableMount is a safejaxfs mount in the mount table.
type tableMount struct {
	source string
	uid    int // user_id=, who mounted it
}

// safejaxfsMounts lists the mount table's safejaxfs mounts by mountpoint
// (the top one where several are stacked).
func safejaxfsMounts() (map[string]tableMount, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	out := map[string]tableMount{}
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Split(line, " ")
		for i := 6; i < len(fields)-1; i++ {
			if fields[i] != "-" {
				continue
			}
			if fields[i+1] == "fuse.safejaxfs" && i+3 < len(fields) {
				m := tableMount{source: safefs.UnescapeMountinfo(fields[i+2]), uid: -1}
				for _, o := range strings.Split(fields[i+3], ",") {
					if v, ok := strings.CutPrefix(o, "user_id="); ok {
						m.uid, _ = strconv.Atoi(v)
					}
				}
				out[safefs.UnescapeMountinfo(fields[4])] = m
			}
			break
		}
	}
	return out, nil
}

// statusDirs are the state directories whose status files to read: this
// user's candidates; as root, every user's too. Another user's directory
// is read only if it is a real directory that user owns.
func statusDirs() []string {
	dirs := stateDirCandidates()
	if os.Geteuid() == 0 {
		dirs = append(dirs, "/run/safejaxfs")
		more, _ := filepath.Glob("/run/user/*/safejaxfs")
		dirs = append(dirs, more...)
		more, _ = filepath.Glob(filepath.Join(os.TempDir(), "safejaxfs-*"))
		dirs = append(dirs, more...)
	}
	slices.Sort(dirs)
	return slices.Compact(dirs)
}

// maxStatusSize bounds a status file read (another user may have written
// it: root reads theirs).
const maxStatusSize = 1 << 20

// readStatuses reads every status file of statusDirs. A status file is
// trusted only as far as its owner: its uid must be the file's and the
// directory's owner (root may read other users' files, which they wrote).
func readStatuses() []mountStatus {
	var out []mountStatus
	for _, d := range statusDirs() {
		var dst unix.Stat_t
		if err := unix.Lstat(d, &dst); err != nil || dst.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		names, _ := filepath.Glob(filepath.Join(d, "*"+statusSuffix))
		for _, p := range names {
			st, err := readStatusFile(p)
			if err != nil {
				continue
			}
			owner, err := statusOwner(p)
			if err != nil || int(owner) != st.UID || dst.Uid != owner {
				continue
			}
			out = append(out, st)
		}
	}
	return out
}

func readStatusFile(p string) (mountStatus, error) {
	var st mountStatus
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return st, err
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStatusSize+1))
	if err != nil {
		return st, err
	}
	if len(b) > maxStatusSize {
		return st, errors.New("status file too large")
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, err
	}
	if st.Format != statusFormat {
		return st, fmt.Errorf("status format %d", st.Format)
	}
	return st, nil
}

// statusOf returns the status of the live daemon with this pid, if it
// publishes one.
func statusOf(pid int) (mountStatus, bool) {
	for _, st := range readStatuses() {
		if st.PID == pid && pidAlive(st.PID, st.Start) {
			return st, true
		}
	}
	return mountStatus{}, false
}

// printStatus prints one block per mount.
func printStatus(w io.Writer, reports []mountReport) {
	if len(reports) == 0 {
		fmt.Fprintln(w, "no safejaxfs mounts")
		return
	}
	for i, r := range reports {
		if i > 0 {
			fmt.Fprintln(w)
		}
		e := escapeControl
		fmt.Fprintf(w, "%s\n", e(r.Mountpoint))
		mode := "read-write"
		if r.ReadOnly {
			mode = "read-only"
		}
		if r.State == "unknown" {
			mode = "?"
		}
		fmt.Fprintf(w, "  source      %s (%s)\n", e(r.Source), mode)
		if r.PID > 0 {
			line := fmt.Sprintf("pid %d, %s", r.PID, r.State)
			if !r.Since.IsZero() {
				line += " since " + r.Since.Local().Format("2006-01-02 15:04:05")
			}
			if r.Answering != nil && *r.Answering {
				line += ", answering"
			}
			fmt.Fprintf(w, "  daemon      %s\n", e(line))
		}
		if r.Problem != "" {
			fmt.Fprintf(w, "  problem     %s\n", e(r.Problem))
		}
		if len(r.Options) > 0 {
			fmt.Fprintf(w, "  options     %s\n", e(strings.Join(r.Options, ",")))
		}
		if p := r.Pending; p != nil {
			line := "none"
			if p.Changed+p.Removed > 0 || p.Files > 0 {
				line = fmt.Sprintf("%s changed, %d removed, in %s", plural(p.Changed, "tensor"), p.Removed, plural(p.Files, "file"))
			}
			if p.Log != "" {
				line += fmt.Sprintf("; log %s (%s)", humanBytes(p.LogBytes), p.Log)
			}
			fmt.Fprintf(w, "  unwritten   %s\n", e(line))
		}
		if r.UntypedCount > 0 {
			named := r.Untyped[:min(len(r.Untyped), maxNoteUntyped)]
			line := fmt.Sprintf("%s created without a dtype, saved as 1-D U8 (setfattr -n user.safetensors.dtype to give one): %s", plural(r.UntypedCount, "tensor"), strings.Join(named, ", "))
			if r.UntypedCount > len(named) {
				line += fmt.Sprintf(", and %d more", r.UntypedCount-len(named))
			}
			fmt.Fprintf(w, "  untyped     %s\n", e(line))
		}
		if b := r.WriteBack; b != nil {
			fmt.Fprintf(w, "  write-back  %s of %s\n", humanBytes(b.Done), humanBytes(b.Total))
		}
		if c := r.Cache; c != nil {
			fmt.Fprintf(w, "  cache       %s of %s in %s\n", humanBytes(c.Used), humanBytes(c.Limit), e(c.Dir))
		}
		if r.LastError != "" {
			fmt.Fprintf(w, "  last error  %s\n", e(r.LastError))
		}
		if r.LogFile != "" {
			fmt.Fprintf(w, "  log file    %s\n", e(r.LogFile))
		}
	}
}

// plural is "1 tensor", "2 tensors".
func plural(n int, noun string) string { return nouns(n, noun, noun+"s") }

// nouns is "1 metadata entry", "2 metadata entries".
func nouns(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
