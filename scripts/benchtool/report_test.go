package main

import (
	"strings"
	"testing"
	"time"
)

// The verdicts the table prints: a rate passes at or above its bar, a cost
// at or below, an absolute bound bounds the figure itself, and a row
// without a bar has no verdict.
func TestVerdicts(t *testing.T) {
	for _, c := range []struct {
		r    row
		want string
	}{
		{row{ours: 50, ref: 100, kind: rate, barMin: 0.5}, "PASS"},
		{row{ours: 49, ref: 100, kind: rate, barMin: 0.5}, "MISS"},
		{row{ours: 150, ref: 100, kind: cost, barMax: 1.5}, "PASS"},
		{row{ours: 151, ref: 100, kind: cost, barMax: 1.5}, "MISS"},
		{row{ours: 64, unit: "MB", absMax: 64}, "PASS"},
		{row{ours: 65, unit: "MB", absMax: 64, ref: 1000}, "MISS"},
		{row{ours: 1, ref: 2}, ""},
	} {
		if got := c.r.verdict(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.r, got, c.want)
		}
	}
	if (row{ours: 3}).ratio() != 0 {
		t.Error("a row without a reference has a ratio")
	}
}

func TestNumAndMedian(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 1234.5: "1234", 12.34: "12.3", 1.234: "1.23", 0.01234: "0.012", 0.001234: "0.0012", -2.5: "-2.50"} {
		if got := num(v); got != want {
			t.Errorf("num(%v) = %q, want %q", v, got, want)
		}
	}
	if median(nil) != 0 || median([]float64{3, 1, 2}) != 2 || median([]float64{4, 1, 3, 2}) != 2.5 {
		t.Error("median")
	}
	if got := medianDur([]time.Duration{time.Second, 3 * time.Second, 2 * time.Second}); got != 2 {
		t.Errorf("medianDur = %v", got)
	}
}

// The summary line counts only rows with a bar.
func TestReportCounts(t *testing.T) {
	b := &bench{cfg: config{reps: 3}}
	b.add(row{section: "1", what: "a", ours: 1, ref: 1, barMin: 0.5})
	b.add(row{section: "1", what: "b", ours: 1, ref: 4, barMin: 0.5})
	b.add(row{section: "2", what: "c", ours: 1, ref: 4})
	var w strings.Builder
	b.printReport(&w, 2*time.Second)
	if !strings.Contains(w.String(), "3 rows, 2 with a bar: 1 PASS, 1 MISS.") || b.misses() != 1 {
		t.Errorf("report:\n%s", w.String())
	}
}
