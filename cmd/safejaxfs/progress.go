package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
)

// The progress line of long work, as rsync and huggingface-cli show one:
// what is done of how much, the rate, the time left. One line on stderr,
// redrawn in place at most every progressEvery and erased at the end; only
// on a terminal unless --progress asks for it, never with --quiet. Used by
// stats and diff (bytes read), verify, ls and mount of a remote checkpoint
// (headers fetched), and unmount and wait (a daemon's write-back, from its
// status file).

// progressFrom is the tensor data from which stats and diff show progress
// on their own: below it they take about a second. A variable only so that
// a test can lower it for its children (reading 256 MiB twice under the
// race detector costs half a minute of CPU).
var progressFrom int64 = 256 << 20

// progressEvery bounds how often the line is redrawn.
const progressEvery = 200 * time.Millisecond

// progressFlags are --progress and --quiet.
type progressFlags struct {
	quiet, force bool
}

// addProgressFlags adds --progress, and --quiet/-q unless the command has
// a -q of its own (diff's, which silences everything, progress included).
func addProgressFlags(fl *pflag.FlagSet, pf *progressFlags, withQuiet bool) {
	fl.BoolVar(&pf.force, "progress", false, "show progress on stderr even when it is not a terminal")
	if withQuiet {
		fl.BoolVarP(&pf.quiet, "quiet", "q", false, "no progress line (shown on a terminal for long work)")
	}
}

// show reports whether to show progress for work that is long (big) or
// not: --quiet never, --progress always, else on a terminal for long work.
func (pf progressFlags) show(big bool) bool {
	switch {
	case pf.quiet:
		return false
	case pf.force:
		return true
	}
	return big && isTerminal(os.Stderr)
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// unit is what a progress counts.
type unit int

const (
	unitBytes unit = iota
	unitCount
)

// progress is one progress line. A nil *progress does nothing, so callers
// need no checks. Safe for concurrent use (headers arrive concurrently).
type progress struct {
	mu       sync.Mutex
	w        io.Writer
	verb     string
	unit     unit
	noun     string // counted things, for unitCount ("headers")
	done     int64
	total    int64 // 0: unknown
	item, of int   // "tensor 3 of 12", when of > 0
	note     string
	start    time.Time
	last     time.Time
	drawn    int64 // done as last drawn
	shown    bool
}

// progressOut is where progress lines go (tests look at them).
var progressOut io.Writer = os.Stderr

// newProgress starts a progress line when on; total 0 means unknown; a
// note goes in parentheses at the end.
func newProgress(on bool, verb string, u unit, total int64, note ...string) *progress {
	if !on {
		return nil
	}
	p := &progress{w: progressOut, verb: verb, unit: u, total: total, start: time.Now(), note: strings.Join(note, ", ")}
	p.mu.Lock()
	p.draw(p.start) // at once: a slow first step (a remote read) shows too
	p.mu.Unlock()
	return p
}

// items names what is counted ("shards"), or makes a byte count say
// "<noun> i of n" (set with next).
func (p *progress) items(noun string, n int) *progress {
	if p != nil {
		p.mu.Lock()
		p.noun, p.of = noun, n
		p.draw(time.Now())
		p.mu.Unlock()
	}
	return p
}

// next starts item i (1-based).
func (p *progress) next(i int) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.item = i
	p.mu.Unlock()
}

// add counts n more done.
func (p *progress) add(n int) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += int64(n)
	p.maybeDraw()
}

// set sets what is done and of how much (total 0: unknown), and a note.
func (p *progress) set(done, total int64, note string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if done < p.done || total != p.total {
		// Another phase (a second file, a restarted write-back): the rate
		// starts over with it.
		p.start = time.Now()
	}
	p.done, p.total, p.note = done, total, note
	p.maybeDraw()
}

// maybeDraw redraws at most every progressEvery, but always for the first
// figures and the last (so the line ends on what was done).
func (p *progress) maybeDraw() {
	if now := time.Now(); now.Sub(p.last) >= progressEvery || p.drawn == 0 || p.done == p.total {
		p.draw(now)
	}
}

// draw writes the line: "verb: done of total (pct%), item i of n, rate,
// time left".
func (p *progress) draw(now time.Time) {
	p.last = now
	p.shown = true
	p.drawn = p.done
	amount := func(n int64) string {
		if p.unit == unitBytes {
			return humanBytes(n)
		}
		return fmt.Sprint(n)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", p.verb, amount(p.done))
	if p.total > 0 {
		fmt.Fprintf(&b, " of %s", amount(p.total))
	}
	if p.unit == unitCount && p.noun != "" {
		fmt.Fprintf(&b, " %s", p.noun)
	}
	if p.total > 0 {
		fmt.Fprintf(&b, " (%d%%)", min(p.done*100/p.total, 100))
	}
	if p.unit == unitBytes && p.of > 0 {
		fmt.Fprintf(&b, ", %s %d of %d", p.noun, max(p.item, 1), p.of)
	}
	if d := now.Sub(p.start).Seconds(); d >= 0.5 && p.done > 0 {
		rate := float64(p.done) / d
		if p.unit == unitBytes {
			fmt.Fprintf(&b, ", %s/s", humanBytes(int64(rate)))
		} else {
			fmt.Fprintf(&b, ", %.0f/s", rate)
		}
		if p.total > p.done {
			fmt.Fprintf(&b, ", %s left", clock(time.Duration(float64(p.total-p.done)/rate*float64(time.Second))))
		}
	}
	if p.note != "" {
		fmt.Fprintf(&b, " (%s)", p.note)
	}
	fmt.Fprintf(p.w, "\r\033[K%s", escapeControl(b.String()))
}

// finish erases the line.
func (p *progress) finish() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		fmt.Fprint(p.w, "\r\033[K")
		p.shown = false
	}
}

// clock renders a duration as rsync does: 0:07, 12:30, 1:02:03.
func clock(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n), -1
	for f >= unit && i < 4 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", f, "KMGTP"[i])
}
