package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	safefs "github.com/safejaxfs/safejaxfs/fs"
)

// Probes of mounts that may not answer, in a process status can leave
// behind.
//
// A FUSE request the daemon has read but not answered can only end with
// the answer or the connection: a thread waiting on it is unkillable, and
// a process keeps its pipes open and its parent waiting until every thread
// has left the kernel. A daemon that is deadlocked (its readers still take
// requests) or was stopped just as it read one would keep status hung and
// unkillable, with the user's shell or pipeline. So status asks a child
// process (this program again, probeCommand) and waits for its answers up
// to statusProbe; a child that is still waiting then stays, stuck in the
// kernel until the mount answers or is aborted (safejaxfs unmount does
// that to a hung mount), and status goes on without it.

// probeCommand is the hidden command a probe child runs: "statfs" or "pid"
// then a mountpoint, for each mount; one line per answer on stdout.
const probeCommand = "__probe"

// probeKind is what a probe asks: probeStatfs (is anyone there), probePID
// (the daemon's pid), probeStatus (the daemon's pid, after it published
// its status: fs.XattrStatus).
type probeKind string

const (
	probeStatfs probeKind = "statfs"
	probePID    probeKind = "pid"
	probeStatus probeKind = "status"
)

// probeAnswer is what a mount said to a probe.
type probeAnswer struct {
	dead bool // ENOTCONN: its daemon is gone
	pid  int  // the daemon's pid, for a probePID or probeStatus
}

// probeMounts probes each mountpoint (a statfs or a getxattr, as kinds
// says) in a child process and returns the answers that came
// within d, by index. Without a child (none could be started) it probes in
// this process, as before: a mount that never answers then holds status at
// exit.
//
// A mount that a probe child of this user, older than d, still waits on is
// not asked again (it is not answering): status run in a loop leaves one
// child per hung mount, not one per run.
func probeMounts(mnts []string, kinds []probeKind, d time.Duration) map[int]probeAnswer {
	deadline := time.Now().Add(d)
	stuck := stuckProbes(d)
	var ask []int // the indices of the mounts to ask
	for i, m := range mnts {
		if !stuck[m] {
			ask = append(ask, i)
		}
	}
	out := map[int]probeAnswer{}
	if len(ask) == 0 {
		return out
	}
	askMnts, askKinds := make([]string, len(ask)), make([]probeKind, len(ask))
	for j, i := range ask {
		askMnts[j], askKinds[j] = mnts[i], kinds[i]
	}
	for j, a := range probeChild(askMnts, askKinds, deadline) {
		out[ask[j]] = a
	}
	return out
}

// probeChild is probeMounts' child: it asks every mount of mnts, and
// returns what came by deadline.
func probeChild(mnts []string, kinds []probeKind, deadline time.Time) map[int]probeAnswer {
	args := []string{probeCommand}
	for i, m := range mnts {
		args = append(args, string(kinds[i]), m)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return probeHere(mnts, kinds, time.Until(deadline))
	}
	defer r.Close()
	// /proc/self/exe: this very program, even if its file was replaced
	// since it started (stuckProbes knows its children by it).
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Stdout = w // stdin and stderr: /dev/null, never the user's terminal
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return probeHere(mnts, kinds, time.Until(deadline))
	}
	w.Close()
	answers := make(chan indexedAnswer, len(mnts))
	go func() {
		defer close(answers)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			var a indexedAnswer
			if _, err := fmt.Sscanf(sc.Text(), "%d %t %d", &a.i, &a.dead, &a.pid); err == nil && a.i >= 0 && a.i < len(mnts) {
				answers <- a
			}
		}
	}()
	out := collect(answers, len(mnts), time.Until(deadline))
	if len(out) < len(mnts) {
		// Left to finish (or not) on its own: its answers go to a
		// closed pipe, which ends it.
		cmd.Process.Release()
		return out
	}
	cmd.Wait()
	return out
}

// stuckProbes returns the mountpoints that a probe child of this user
// started more than d ago still asks: their mounts are not answering. A
// younger child may be another status's, still within its time.
func stuckProbes(d time.Duration) map[string]bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	up, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return nil
	}
	var upSec float64
	if _, err := fmt.Sscanf(string(up), "%f", &upSec); err != nil {
		return nil
	}
	// Start times are in clock ticks since boot: 100 a second (USER_HZ,
	// fixed on Linux).
	before := uint64((upSec - d.Seconds()) * 100)
	uid := os.Geteuid()
	prefix := "/proc/self/exe\x00" + probeCommand + "\x00"
	stuck := map[string]bool{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat("/proc/"+e.Name(), &st) != nil || int(st.Uid) != uid {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !strings.HasPrefix(string(b), prefix) {
			continue
		}
		if start, err := processStart(pid); err != nil || start > before || exited(pid) {
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(b[len(prefix):]), "\x00"), "\x00")
		for i := 1; i < len(args); i += 2 {
			stuck[args[i]] = true
		}
	}
	return stuck
}

// runProbe is the probe child: args are pairs of kind and mountpoint. Each
// is probed at once; answers are written as they come.
func runProbe(args []string) int {
	if len(args)%2 != 0 {
		return exitUsage
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < len(args); i += 2 {
		kind, mnt := args[i], args[i+1]
		wg.Go(func() {
			a := probeOne(mnt, probeKind(kind))
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(os.Stdout, "%d %t %d\n", i/2, a.dead, a.pid)
		})
	}
	wg.Wait()
	return exitOK
}

// probeOne asks mnt once and waits for the answer, however long.
func probeOne(mnt string, kind probeKind) probeAnswer {
	if kind != probePID && kind != probeStatus {
		var st unix.Statfs_t
		return probeAnswer{dead: deadConn(unix.Statfs(mnt, &st))}
	}
	attr := safefs.XattrPID
	if kind == probeStatus {
		attr = safefs.XattrStatus
	}
	buf := make([]byte, 32)
	n, err := unix.Getxattr(mnt, attr, buf)
	if kind == probeStatus && err == unix.ENODATA {
		// A daemon of a safejaxfs before XattrStatus: its pid only.
		n, err = unix.Getxattr(mnt, safefs.XattrPID, buf)
	}
	a := probeAnswer{dead: deadConn(err)}
	if err == nil {
		a.pid, _ = strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	}
	return a
}

// probeHere is probeMounts without a child: each probe in a goroutine of
// its own, which a mount that never answers keeps.
func probeHere(mnts []string, kinds []probeKind, d time.Duration) map[int]probeAnswer {
	answers := make(chan indexedAnswer, len(mnts))
	for i, m := range mnts {
		go func() { answers <- indexedAnswer{i, probeOne(m, kinds[i])} }()
	}
	return collect(answers, len(mnts), d)
}

// indexedAnswer is the answer of the i-th mount asked.
type indexedAnswer struct {
	i int
	probeAnswer
}

// collect takes answers until there are n, answers is closed, or d has
// passed, whichever comes first.
func collect(answers <-chan indexedAnswer, n int, d time.Duration) map[int]probeAnswer {
	out := map[int]probeAnswer{}
	timer := time.NewTimer(d)
	defer timer.Stop()
	for len(out) < n {
		select {
		case a, ok := <-answers:
			if !ok {
				return out
			}
			out[a.i] = a.probeAnswer
		case <-timer.C:
			return out
		}
	}
	return out
}
