package checkpoint

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/internal/race"
)

// Faults other than a crash (issue 15): every system call a commit or a
// write-back makes is made to fail, one at a time, with each errno the
// kernel could answer there (ENOSPC, EIO; EBUSY and EXDEV for a rename: a
// bind-mounted file), through the hooks' fault seam. After each:
//
//   - the same mount goes on: the operation, tried again without the
//     fault, succeeds, and closing writes exactly the expected files;
//   - or the process dies right after the failure: the next read-write
//     open finishes or replays what the log holds, and the files are the
//     expected ones: every acknowledged edit is there, nothing half done.
//
// "Expected" is exact: after a failed commit, the state before its edits
// (they were not acknowledged) on a crash, the state after them once a
// retry acknowledged them; after a failed write-back, always the state
// after the edits (a Sync acknowledged them before it).

// fxScenario is a checkpoint and edits to make on it, and how to check
// the files and the state against what the edits call for.
type fxScenario struct {
	name string
	// make creates the files and returns their path, the edits, and
	// checks of the files for the state before (old) and after (new)
	// the edits.
	make func(t *testing.T) (path string, edit func(*testing.T, *Checkpoint), old, new func(t *testing.T, what string))
}

var fxScenarios = []fxScenario{
	{"in place", func(t *testing.T) (string, func(*testing.T, *Checkpoint), func(*testing.T, string), func(*testing.T, string)) {
		m := ckDefault()
		path := ckFile(t, m)
		old := m.clone()
		return path, func(t *testing.T, c *Checkpoint) { crashScenarios[0].edit(t, c, m) },
			func(t *testing.T, what string) { ckCheckFile(t, path, old, what) },
			func(t *testing.T, what string) { ckCheckFile(t, path, m, what) }
	}},
	{"rewrite", func(t *testing.T) (string, func(*testing.T, *Checkpoint), func(*testing.T, string), func(*testing.T, string)) {
		m := ckDefault()
		path := ckFile(t, m)
		old := m.clone()
		return path, func(t *testing.T, c *Checkpoint) { crashScenarios[1].edit(t, c, m) },
			func(t *testing.T, what string) { ckCheckFile(t, path, old, what) },
			func(t *testing.T, what string) { ckCheckFile(t, path, m, what) }
	}},
	{"sharded", func(t *testing.T) (string, func(*testing.T, *Checkpoint), func(*testing.T, string), func(*testing.T, string)) {
		m := shDefault()
		dir := shFiles(t, m)
		old := m.clone()
		return dir, func(t *testing.T, c *Checkpoint) { shScenario(t, c, m) },
			func(t *testing.T, what string) { shCheckFiles(t, dir, old, what) },
			func(t *testing.T, what string) { shCheckFiles(t, dir, m, what) }
	}},
}

// fxCalls records the system calls (op and name) fn makes through c.
func fxCalls(t *testing.T, c *Checkpoint, fn func() error) []string {
	t.Helper()
	var calls []string
	c.hooks = &crashHooks{fail: func(op, name string) error {
		calls = append(calls, op+" "+name)
		return nil
	}}
	if err := fn(); err != nil {
		t.Fatal(err)
	}
	c.hooks = nil
	return calls
}

// fxFailAt makes the kth system call (1-based) fail with errno.
func fxFailAt(k int, errno unix.Errno) *crashHooks {
	n := 0
	return &crashHooks{fail: func(op, name string) error {
		if n++; n == k {
			return errno
		}
		return nil
	}}
}

// fxErrnos is what the kernel may answer to op.
func fxErrnos(op string) []unix.Errno {
	switch op {
	case opRename:
		return []unix.Errno{unix.EIO, unix.EBUSY, unix.EXDEV}
	case opCreate, opWrite:
		return []unix.Errno{unix.ENOSPC, unix.EIO}
	case opRemove:
		return []unix.Errno{unix.EIO, unix.EBUSY}
	}
	return []unix.Errno{unix.EIO}
}

func TestFaultAtEverySystemCall(t *testing.T) {
	t.Parallel()
	for _, sc := range fxScenarios {
		for _, phase := range []string{"commit", "write-back"} {
			t.Run(sc.name+"/"+phase, func(t *testing.T) { fxPhase(t, sc, phase) })
		}
	}
}

func fxPhase(t *testing.T, sc fxScenario, phase string) {
	// op runs the operation under test; before makes what it starts from.
	op := func(c *Checkpoint) error {
		if phase == "commit" {
			return c.Sync()
		}
		return c.Compact()
	}
	start := func(t *testing.T) (string, *Checkpoint, func(*testing.T, string), func(*testing.T, string)) {
		path, edit, old, new := sc.make(t)
		c := ckOpen(t, path, Options{})
		edit(t, c)
		if phase == "write-back" {
			if err := c.Sync(); err != nil { // the edits are acknowledged
				t.Fatal(err)
			}
		}
		return path, c, old, new
	}
	_, c, _, _ := start(t)
	calls := fxCalls(t, c, func() error { return op(c) })
	c.Close()
	if len(calls) == 0 {
		t.Fatal("no system call went through the fault seam")
	}
	for k, call := range calls {
		if !race.Sample(k, len(calls)) {
			continue
		}
		opName, _, _ := strings.Cut(call, " ")
		for _, errno := range fxErrnos(opName) {
			name := fmt.Sprintf("%d %s %s", k+1, call, errno)
			// The same mount goes on.
			t.Run("retry/"+name, func(t *testing.T) {
				t.Parallel()
				_, c, _, new := start(t)
				c.hooks = fxFailAt(k+1, errno)
				err := op(c)
				if err != nil && !errors.Is(err, errno) {
					t.Errorf("the error does not carry %s: %v", errno, err)
				}
				c.hooks = nil
				if err := op(c); err != nil {
					t.Fatalf("tried again without the fault: %v", err)
				}
				if err := c.Close(); err != nil {
					t.Fatalf("Close: %v", err)
				}
				new(t, "after a retry and Close")
			})
			// The process dies right after the failure.
			t.Run("crash/"+name, func(t *testing.T) {
				t.Parallel()
				path, c, old, new := start(t)
				c.hooks = fxFailAt(k+1, errno)
				err := op(c)
				ckAbandon(c)
				c2, oerr := Open(path, Options{})
				if oerr != nil {
					t.Fatalf("reopening after a failed %s and a crash: %v", phase, oerr)
				}
				if err := c2.Close(); err != nil {
					t.Fatalf("Close after reopening: %v", err)
				}
				if phase == "commit" && err != nil {
					old(t, "the failed commit's edits are not there (they were not acknowledged)")
				} else {
					new(t, "every acknowledged edit is there")
				}
				if pending, ok := Pending(path); ok {
					t.Errorf("a log is left after a clean reopen: %s", pending)
				}
			})
		}
	}
}

// patchRuns checksums pages across patch boundaries as the patched file
// holds them, in runs shorter than one read block and in one that starts
// off a page boundary and spans several blocks.
func TestPatchRunsChecksums(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	orig := ctPattern(5, 400_000)
	f.Write(orig)
	ps := []patch{{5000, ctPattern(6, 3000)}, {8000, ctPattern(7, 100)}, {8100, ctPattern(8, 9000)}, {30_000, ctPattern(9, 1)},
		{31_000, ctPattern(10, 5*runBlock+123)}}
	runs, err := patchRuns(f, ps)
	if err != nil {
		t.Fatal(err)
	}
	after := bytes.Clone(orig)
	for _, p := range ps {
		copy(after[p.off:], p.data)
	}
	if len(runs) != 3 {
		t.Fatalf("%d runs, want 3", len(runs))
	}
	for _, run := range runs {
		i := 0
		pieces(run.Off, run.N, func(off, n int64) {
			if got, want := run.Old[i], crc32.Checksum(orig[off:off+n], castagnoliWAL); got != want {
				t.Errorf("old piece at %d: %x, want %x", off, got, want)
			}
			if got, want := run.New[i], crc32.Checksum(after[off:off+n], castagnoliWAL); got != want {
				t.Errorf("new piece at %d: %x, want %x", off, got, want)
			}
			i++
		})
		if i != len(run.Old) {
			t.Errorf("%d pieces checked, %d recorded", i, len(run.Old))
		}
	}
}
