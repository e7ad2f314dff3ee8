package checkpoint

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/internal/race"
	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Crash tests of Checkpoint: a persist dies at every crash point it passes
// (the hook returns an error and the Checkpoint is abandoned without Close,
// as a killed process would leave it), the checkpoint is opened again (which
// replays or cleans up), and the file must be exactly the state before the
// persist or exactly the state after it: never a mix, never invalid, and
// never older than what the last successful Sync acknowledged.

var errCkCrash = errors.New("simulated crash (checkpoint test)")

// ckAbandon emulates the death of the process holding c: its descriptors
// are closed (which drops the flock, as the kernel does at exit) and its
// mappings unmapped; nothing is persisted, no cleanup runs.
func ckAbandon(c *Checkpoint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.releaseAll()
}

// ckCrashAt crashes at the nth time (1-based) point is reached.
func ckCrashAt(point string, nth int) *crashHooks {
	seen := 0
	return &crashHooks{at: func(p string) error {
		if p == point {
			if seen++; seen == nth {
				return errCkCrash
			}
		}
		return nil
	}}
}

// ckVersion rewrites every byte of the tensors in keys with a pattern of
// their key and version v (so a tensor half of one version and half of
// another shows).
func ckVersion(t *testing.T, c *Checkpoint, m *ckModel, v int, keys ...string) {
	t.Helper()
	for _, k := range keys {
		p := ctPattern(uint64(v)<<32|uint64(len(k))<<16|uint64(k[0]), len(m.tensors[k].data))
		if err := c.WriteAt(ckID(t, c, k), p, 0); err != nil {
			t.Fatal(err)
		}
		m.tensors[k] = ckTensor{m.tensors[k].dtype, m.tensors[k].shape, p}
	}
}

// crashScenario is a persist to crash in: before sets up state v1 and
// makes it durable; edit makes the v2 edits the crashing Sync persists.
type crashScenario struct {
	name string
	edit func(t *testing.T, c *Checkpoint, m *ckModel)
}

var crashScenarios = []crashScenario{
	{"in place", func(t *testing.T, c *Checkpoint, m *ckModel) {
		// Several tensors apart from each other in the file (several
		// runs), and a partial edit.
		ckVersion(t, c, m, 2, "embed", "step", "params.b")
		p := ctPattern(77, 1000)
		if err := c.WriteAt(ckID(t, c, "params.w"), p, 64_000); err != nil {
			t.Fatal(err)
		}
		m.write("params.w", p, 64_000)
	}},
	{"rewrite", func(t *testing.T, c *Checkpoint, m *ckModel) {
		ckVersion(t, c, m, 2, "embed", "params.w")
		ckLayoutChanges[1].apply(t, c, m) // new tensor
		ckLayoutChanges[3].apply(t, c, m) // rename
		ckLayoutChanges[7].apply(t, c, m) // metadata
	}},
}

// ckPoints records the crash points the scenario's Sync passes, in order,
// with how many times each was reached so far.
func ckPoints(t *testing.T, sc crashScenario) []struct {
	point string
	nth   int
} {
	t.Helper()
	m := ckDefault()
	path := ckFile(t, m)
	rec := &ckRecorder{}
	c := ckOpen(t, path, Options{})
	defer c.Close()
	ckVersion(t, c, m, 1, "embed", "step", "params.b", "params.w")
	if err := c.Compact(); err != nil {
		t.Fatal(err)
	}
	sc.edit(t, c, m)
	c.hooks = rec.hooks()
	if err := c.Compact(); err != nil {
		t.Fatal(err)
	}
	var out []struct {
		point string
		nth   int
	}
	seen := map[string]int{}
	for _, p := range rec.take() {
		seen[p]++
		out = append(out, struct {
			point string
			nth   int
		}{p, seen[p]})
	}
	if len(out) == 0 {
		t.Fatalf("%s: the Sync passed no crash point", sc.name)
	}
	return out
}

func TestCrashAtEveryPoint(t *testing.T) {
	t.Parallel()
	for _, sc := range crashScenarios {
		t.Run(sc.name, func(t *testing.T) {
			points := ckPoints(t, sc)
			t.Logf("crash points: %v", points)
			sawNew := false
			for i, cp := range points {
				if !race.Sample(i, len(points)) {
					continue
				}
				name := fmt.Sprintf("%s#%d", cp.point, cp.nth)
				var got string
				t.Run(name, func(t *testing.T) {
					got = ckCrashOnce(t, sc, cp.point, cp.nth)
				})
				// The persist has one commit point: once a crash leaves
				// the new state, every later one does too.
				switch {
				case got == "new":
					sawNew = true
				case got == "old" && sawNew:
					t.Errorf("%s: a crash at %s left the old state, but an earlier point already left the new one", sc.name, name)
				}
			}
			if !sawNew {
				t.Errorf("%s: no crash point left the new state, not even the last", sc.name)
			}
		})
	}
}

// ckCrashOnce runs the scenario, crashes at point, reopens, and returns
// which state the checkpoint holds: "old" or "new".
func ckCrashOnce(t *testing.T, sc crashScenario, point string, nth int) string {
	t.Helper()
	m := ckDefault()
	path := ckFile(t, m)
	c := ckOpen(t, path, Options{})
	ckVersion(t, c, m, 1, "embed", "step", "params.b", "params.w")
	if err := c.Compact(); err != nil { // acknowledged: must survive
		t.Fatal(err)
	}
	old := m.clone()
	sc.edit(t, c, m)
	c.hooks = ckCrashAt(point, nth)
	if err := c.Compact(); !errors.Is(err, errCkCrash) {
		t.Fatalf("Sync returned %v, want the simulated crash", err)
	}
	ckAbandon(c)

	oldFile, newFile := old.canonical(t), m.canonical(t)
	// Right after the crash the file may be mid-patch only if a log
	// says so: then a read-only open must refuse it.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, oldFile) && !bytes.Equal(raw, newFile) {
		if _, pending := Pending(path); !pending {
			t.Fatalf("after the crash the file is neither state (first difference from old at %d) and no log is pending", firstDiff(raw, oldFile))
		}
	}
	if _, pending := Pending(path); pending {
		if ro, err := Open(path, Options{ReadOnly: true}); err == nil {
			ro.Close()
			t.Error("a read-only open accepted a checkpoint with a pending log")
		}
	}

	// The next read-write open finishes or discards the write-back.
	c = ckOpen(t, path, Options{})
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var state string
	var want *ckModel
	switch {
	case bytes.Equal(got, newFile):
		state, want = "new", m
	case bytes.Equal(got, oldFile):
		state, want = "old", old
	default:
		ckAbandon(c)
		t.Fatalf("after reopening, the file is neither the state before the Sync nor after it (first difference from old at %d, from new at %d)",
			firstDiff(got, oldFile), firstDiff(got, newFile))
	}
	if f, err := safetensors.Open(path); err != nil {
		t.Fatalf("after reopening: %v", err)
	} else {
		f.Close()
	}
	if s := ckSideFiles(t, path); len(s) != 0 {
		t.Errorf("after reopening, left behind: %v", s)
	}
	ckCheckState(t, c, want, "reopened after the crash")

	// Life goes on: more edits persist normally.
	ckVersion(t, c, want, 3, "params.w", "params.b")
	if err := c.Compact(); err != nil {
		t.Fatal(err)
	}
	ckLayoutChanges[0].apply(t, c, want)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	ckCheckFile(t, path, want, "edits after recovering from the crash")
	if s := ckSideFiles(t, path); len(s) != 0 {
		t.Errorf("left behind: %v", s)
	}
	return state
}

// A persist that fails at a crash point but whose process lives on (an I/O
// error there) must not lose the edits: the next Sync writes them, and the
// file ends up exactly the new state.
func TestFailedSyncRetried(t *testing.T) {
	t.Parallel()
	for _, sc := range crashScenarios {
		t.Run(sc.name, func(t *testing.T) {
			for _, cp := range ckPoints(t, sc) {
				t.Run(fmt.Sprintf("%s#%d", cp.point, cp.nth), func(t *testing.T) {
					m := ckDefault()
					path := ckFile(t, m)
					c := ckOpen(t, path, Options{})
					defer c.Close()
					ckVersion(t, c, m, 1, "embed", "step", "params.b", "params.w")
					if err := c.Compact(); err != nil {
						t.Fatal(err)
					}
					sc.edit(t, c, m)
					c.hooks = ckCrashAt(cp.point, cp.nth)
					if err := c.Compact(); !errors.Is(err, errCkCrash) {
						t.Fatalf("Sync returned %v, want the simulated failure", err)
					}
					c.hooks = nil
					ckCheckState(t, c, m, "after the failed Sync")
					if err := c.Compact(); err != nil {
						// Past the compaction's commit point only the log
						// can finish it: this mount says so, the next
						// read-write open does it.
						if !strings.Contains(err.Error(), "the next read-write mount finishes it") {
							t.Fatalf("Sync after a failed one: %v", err)
						}
						if err := c.Close(); err == nil {
							t.Error("Close of a stuck mount reported success")
						}
						r := ckOpen(t, path, Options{})
						ckCheckState(t, r, m, "reopened after a failure past the commit point")
						if err := r.Close(); err != nil {
							t.Fatal(err)
						}
						ckCheckFile(t, path, m, "reopened after a failure past the commit point")
						if s := ckSideFiles(t, path); len(s) != 0 {
							t.Errorf("left behind: %v", s)
						}
						return
					}
					ckCheckFile(t, path, m, "after the retried Sync")
					if err := c.Close(); err != nil {
						t.Fatal(err)
					}
					ckCheckFile(t, path, m, "after Close")
					// A simulated crash point leaves its temp file, as a
					// crash would; the next open removes it.
					ckOpen(t, path, Options{}).Close()
					if s := ckSideFiles(t, path); len(s) != 0 {
						t.Errorf("left behind: %v", s)
					}
				})
			}
		})
	}
}
