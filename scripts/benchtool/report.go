package main

import (
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// bench is one run: its configuration, the files it made, the mounts it
// holds, and the rows measured so far.
type bench struct {
	cfg  config
	cli  string
	repo string
	work string
	only map[string]bool // sections to run; empty: all
	raKB int             // --read-ahead-kb: set on every mount's FUSE bdi; 0: leave it

	machine string

	// Files made by generate.
	bigPath, bigKey string // the large tensor's checkpoint and key
	bigOff          int64  // its file offset in the checkpoint
	manyPath        string
	manyKeys        []string
	manyOffs        []int64
	scalePaths      map[int]string
	deepseek        *deepseekSet // section 6
	bigRSSAt        float64      // daemon RssAnon peak during the numpy reads

	mu        sync.Mutex
	mountSeq  int
	mounts    map[string]bool // live mounts, for unmountAll
	rows      []row
	notes     []string
	evictions int // times a file a row needs cached had been partly evicted
}

// kind says how a row's ratio reads: for a rate higher is better, for a time
// or a size lower is.
type kind int

const (
	rate kind = iota // MB/s, ops/s: ratio = ours / reference
	cost             // seconds, MB: ratio = ours / reference
)

// row is one line of the table. ref may be 0 when the row has no
// reference of its own (it then shows a bar only).
type row struct {
	section string
	what    string
	ours    float64
	unit    string
	refWhat string
	ref     float64
	kind    kind
	// bar: the ratio must be >= barMin (rates) or <= barMax (costs);
	// absMax instead bounds ours itself (memory, in unit).
	barMin, barMax, absMax float64
}

func (r row) ratio() float64 {
	if r.ref == 0 {
		return 0
	}
	return r.ours / r.ref
}

// verdict is PASS, MISS, or "" when the issue sets no bar for the row.
func (r row) verdict() string {
	ok := true
	switch {
	case r.absMax > 0:
		ok = r.ours <= r.absMax
	case r.barMin > 0:
		ok = r.ratio() >= r.barMin
	case r.barMax > 0:
		ok = r.ratio() <= r.barMax
	default:
		return ""
	}
	if ok {
		return "PASS"
	}
	return "MISS"
}

func (r row) bar() string {
	switch {
	case r.absMax > 0:
		return fmt.Sprintf("<= %s %s", num(r.absMax), r.unit)
	case r.barMin > 0:
		return fmt.Sprintf(">= %gx", r.barMin)
	case r.barMax > 0:
		return fmt.Sprintf("<= %gx", r.barMax)
	}
	return "—"
}

func (b *bench) add(r row) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rows = append(b.rows, r)
}

func (b *bench) note(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.notes = append(b.notes, fmt.Sprintf(format, args...))
}

func (b *bench) misses() int {
	n := 0
	for _, r := range b.rows {
		if r.verdict() == "MISS" {
			n++
		}
	}
	return n
}

// num prints a figure with three significant digits, without exponent.
func num(v float64) string {
	switch a := abs(v); {
	case a == 0:
		return "0"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	case a >= 0.01:
		return fmt.Sprintf("%.3f", v)
	}
	return fmt.Sprintf("%.2g", v)
}

func abs(v float64) float64 {
	if v < 0 {
		return -v
	}
	return v
}

func (b *bench) printReport(w io.Writer, took time.Duration) {
	mode := "full"
	if b.cfg.smoke {
		mode = "smoke (tiny sizes: figures mean nothing, only that every row runs)"
	}
	fmt.Fprintf(w, "## safejaxfs benchmark — %s\n\n", mode)
	fmt.Fprintf(w, "machine: %s\n\n", b.machine)
	fmt.Fprintf(w, "| # | measurement | safejaxfs | reference | ratio | bar | verdict |\n")
	fmt.Fprintf(w, "|---|---|---:|---|---:|---|---|\n")
	for _, r := range b.rows {
		ref := r.refWhat
		if r.ref != 0 {
			ref = fmt.Sprintf("%s %s: %s", num(r.ref), r.unit, r.refWhat)
		}
		ratio := "—"
		if r.ref != 0 {
			ratio = num(r.ratio()) + "x"
		}
		v := r.verdict()
		if v == "" {
			v = "—"
		}
		fmt.Fprintf(w, "| %s | %s | %s %s | %s | %s | %s | %s |\n",
			r.section, r.what, num(r.ours), r.unit, ref, ratio, r.bar(), v)
	}
	fmt.Fprintf(w, "\nratio = safejaxfs / reference in the row's unit: for MB/s and ops/s higher is better, for s, ms and MB lower is. ")
	fmt.Fprintf(w, "Each figure is the median of %d runs unless the row says otherwise; all measured in this run.\n", b.cfg.reps)
	if len(b.notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range b.notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
	pass, miss := 0, 0
	for _, r := range b.rows {
		switch r.verdict() {
		case "PASS":
			pass++
		case "MISS":
			miss++
		}
	}
	fmt.Fprintf(w, "\n%d rows, %d with a bar: %d PASS, %d MISS. Run took %.0f s.\n", len(b.rows), pass+miss, pass, miss, took.Seconds())
}

// median of a sample; the sample is sorted in place.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

func medianDur(ds []time.Duration) float64 {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = d.Seconds()
	}
	return median(xs)
}

// mbps is a rate in MB/s (10^6 bytes), the unit go test -bench uses too.
func mbps(bytes int64, secs float64) float64 { return float64(bytes) / secs / 1e6 }

func sizeName(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

func countName(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}
