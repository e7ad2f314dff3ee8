package checkpoint

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// The crash-hook tests stop at each step with the page cache intact, as a
// process crash would; they cannot show that each step was durable before
// the next began, which is what a power cut tests. This test checks that
// order on the system calls themselves: it runs commits and compactions in
// a helper process under strace and checks every sync comes before what
// depends on it, and that a commit costs one fdatasync of the log and
// touches nothing else.
//
// strace writes one file per thread (-ff), so a call is never split into
// "unfinished" and "resumed" lines by another thread's, and the files are
// merged by their microsecond timestamps.

const straceHelperEnv = "SAFEJAXFS_TEST_STRACE_HELPER"

// markerName is a file the helper writes a byte to after each step, so the
// trace shows where each step returned.
func markerName(ckpt string, step int) string {
	return filepath.Join(filepath.Dir(ckpt), fmt.Sprintf("returned-%d", step))
}

// TestStraceHelperProcess is not a test: it is the traced process. On the
// checkpoint named by the environment: 1. a byte edit and Sync (creates the
// log), 2. another and Sync, 3. a new tensor and Sync, 4. Compact (a
// rewrite), 5. a byte edit and Compact (in place). It writes a marker after
// each.
func TestStraceHelperProcess(t *testing.T) {
	t.Parallel()
	path := os.Getenv(straceHelperEnv)
	if path == "" {
		t.Skip("helper process for TestDurabilityOrder")
	}
	fail := func(err error) { fmt.Println(err); os.Exit(4) }
	c, err := Open(path, Options{})
	if err != nil {
		fail(err)
	}
	mark := func(step int) {
		if err := os.WriteFile(markerName(path, step), []byte{1}, 0o644); err != nil {
			fail(err)
		}
	}
	id := func(key string) ID {
		for i, k := range c.Keys() {
			if k == key {
				return ID(i)
			}
		}
		fail(fmt.Errorf("no %s", key))
		return 0
	}
	steps := []func() error{
		func() error { return c.WriteAt(id("embed"), pseudo(1, 100_000), 1000) },
		func() error { return c.WriteAt(id("params.Dense_0.kernel"), pseudo(2, 5000), 10) },
		func() error {
			_, err := c.Put("params.new", safetensors.U8, []uint64{7}, []byte("newbies"))
			return err
		},
	}
	for i, step := range steps {
		if err := step(); err != nil {
			fail(err)
		}
		if err := c.Sync(); err != nil {
			fail(err)
		}
		mark(i + 1)
	}
	if err := c.Compact(); err != nil {
		fail(err)
	}
	mark(4)
	if err := c.WriteAt(id("embed"), pseudo(3, 200), 5); err != nil {
		fail(err)
	}
	if err := c.Compact(); err != nil {
		fail(err)
	}
	mark(5)
	if err := c.Close(); err != nil {
		fail(err)
	}
	os.Exit(0)
}

type sysEvent struct {
	ts   float64
	call string
	args string
}

func TestDurabilityOrder(t *testing.T) {
	t.Parallel()
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace not installed")
	}
	c := defaultCkpt(t)
	dir := filepath.Dir(c.path)
	traceDir := t.TempDir()
	cmd := exec.Command(strace, "-ff", "-ttt", "-y", "-qq", "-o", filepath.Join(traceDir, "t"),
		"-e", "trace=fsync,fdatasync,sync_file_range,syncfs,rename,renameat,renameat2,unlink,unlinkat,link,linkat,pwrite64,pwritev,pwritev2,write,writev,copy_file_range,ftruncate,fallocate",
		os.Args[0], "-test.run=^TestStraceHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), straceHelperEnv+"="+c.path)
	if out, err := cmd.CombinedOutput(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && strings.Contains(string(out), "PTRACE") {
			t.Skipf("strace cannot trace here: %s", out)
		}
		t.Fatalf("traced helper: %v\n%s", err, out)
	}
	ev := readTraces(t, traceDir, dir)

	find := func(from, to int, what string, ok func(e sysEvent) bool) int {
		t.Helper()
		for i := from; i < to; i++ {
			if ok(ev[i]) {
				return i
			}
		}
		t.Fatalf("no %s in events [%d, %d); trace:\n%s", what, from, to, dump(ev))
		return -1
	}
	is := func(calls ...string) func(string) bool {
		return func(c string) bool { return slices.Contains(calls, c) }
	}
	isRename, isFsync := is("rename", "renameat", "renameat2"), is("fsync")
	isSync := is("fsync", "fdatasync", "sync_file_range", "syncfs")
	isWrite := is("pwrite64", "pwritev", "pwritev2", "write", "writev", "copy_file_range")
	isUnlink := func(c string) bool { return strings.HasPrefix(c, "unlink") }
	tmpFD := "safejaxfs-tmp-"
	lpath := walPathOf(c.path)
	logFD := "<" + lpath + ">"
	ckptFD := "<" + c.path + ">"
	dirFD := "<" + dir + ">"
	on := func(fd string, calls func(string) bool) func(sysEvent) bool {
		return func(e sysEvent) bool { return calls(e.call) && strings.Contains(e.args, fd) }
	}
	var marks []int
	for step := 1; step <= 5; step++ {
		from := 0
		if step > 1 {
			from = marks[step-2] + 1
		}
		marks = append(marks, find(from, len(ev), fmt.Sprintf("marker %d", step), on("<"+markerName(c.path, step)+">", isWrite)))
	}
	noCheckpointWrite := func(from, to int, what string) {
		for i := from; i < to; i++ {
			if strings.Contains(ev[i].args, ckptFD) && (isWrite(ev[i].call) || isSync(ev[i].call)) {
				t.Errorf("%s: the checkpoint was touched: %s(%s)", what, ev[i].call, ev[i].args)
			}
		}
	}

	// Commit 1 creates the log: written into a temp file, fsynced, renamed
	// into place, directory fsynced, then the batch appended and
	// fdatasynced. The checkpoint is not touched.
	end := marks[0]
	lw := find(0, end, "log temp write", on(tmpFD, isWrite))
	ls := find(lw, end, "log temp fsync", on(tmpFD, isFsync))
	// Files are reached through the directory's descriptor (renameat and
	// unlinkat with names relative to it), so calls name them by base name.
	named := func(e sysEvent, path string) bool {
		return strings.HasSuffix(e.args, `"`+path+`"`) || strings.Contains(e.args, dirFD) && strings.HasSuffix(e.args, `"`+filepath.Base(path)+`"`)
	}
	lr := find(ls, end, "log rename", func(e sysEvent) bool {
		return isRename(e.call) && strings.Contains(e.args, tmpFD) && named(e, lpath)
	})
	ld := find(lr, end, "directory fsync", on(dirFD, isFsync))
	bw := find(ld, end, "batch write", on(logFD, isWrite))
	find(bw, end, "batch fdatasync", on(logFD, is("fdatasync")))
	noCheckpointWrite(0, end, "commit 1")

	// Commits 2 and 3: the batch written to the log and fdatasynced, one
	// sync, nothing else written, nothing created, renamed or removed.
	for k := 1; k <= 2; k++ {
		what := fmt.Sprintf("commit %d", k+1)
		from, end := marks[k-1]+1, marks[k]
		w := find(from, end, "batch write", on(logFD, isWrite))
		s := find(w, end, "batch fdatasync", on(logFD, is("fdatasync")))
		for i := from; i < end; i++ {
			e := ev[i]
			switch {
			case isSync(e.call) && i != s:
				t.Errorf("%s: a second sync: %s(%s)", what, e.call, e.args)
			case isRename(e.call), isUnlink(e.call), strings.Contains(e.call, "link"):
				t.Errorf("%s: %s(%s) in a commit", what, e.call, e.args)
			case isWrite(e.call) && !strings.Contains(e.args, logFD):
				t.Errorf("%s: wrote to something other than the log: %s(%s)", what, e.call, e.args)
			case isWrite(e.call) && i > s:
				t.Errorf("%s: wrote the log after its fdatasync: %s(%s)", what, e.call, e.args)
			}
		}
	}

	// Compaction with a rewrite: the new file written and fsynced before
	// the compact record is written and fdatasynced (the commit point);
	// only then the rename and the directory fsync; the log removed only
	// after that, and its removal made durable.
	from, end := marks[2]+1, marks[3]
	tw := find(from, end, "temp write", on(tmpFD, isWrite))
	ts := find(tw, end, "temp fsync", on(tmpFD, isFsync))
	cw := find(ts, end, "compact record write", on(logFD, isWrite))
	cs := find(cw, end, "compact record fdatasync", on(logFD, is("fdatasync")))
	rr := find(cs, end, "rename over the checkpoint", func(e sysEvent) bool {
		return isRename(e.call) && strings.Contains(e.args, tmpFD) && named(e, c.path)
	})
	rd := find(rr, end, "directory fsync after the rename", on(dirFD, isFsync))
	unlinksLog := func(e sysEvent) bool {
		return isUnlink(e.call) && (strings.Contains(e.args, lpath) || strings.Contains(e.args, dirFD) && strings.Contains(e.args, `"`+filepath.Base(lpath)+`"`))
	}
	un := find(rd, end, "log removal", unlinksLog)
	find(un, end, "directory fsync after the log's removal", on(dirFD, isFsync))
	for i := ts + 1; i < end; i++ {
		if on(tmpFD, isWrite)(ev[i]) {
			t.Errorf("compaction: a temp file was written after its fsync: %s(%s)", ev[i].call, ev[i].args)
		}
	}

	// Compaction in place: the batch and the compact record durable in the
	// log before the checkpoint is written; the checkpoint fdatasynced
	// before the log is removed.
	from, end = marks[3]+1, marks[4]
	var logSyncs []int
	for i := from; i < end; i++ {
		if on(logFD, is("fdatasync"))(ev[i]) {
			logSyncs = append(logSyncs, i)
		}
	}
	pw := find(from, end, "in-place write", on(ckptFD, isWrite))
	if len(logSyncs) == 0 || logSyncs[len(logSyncs)-1] > pw {
		t.Errorf("in-place compaction: the checkpoint was written (event %d) before the log was durable (syncs %v)\n%s", pw, logSyncs, dump(ev[from:end]))
	}
	ps := find(pw, end, "checkpoint fdatasync", on(ckptFD, is("fdatasync", "fsync")))
	for i := ps + 1; i < end; i++ {
		if on(ckptFD, isWrite)(ev[i]) {
			t.Errorf("in-place compaction: the checkpoint was written after its fdatasync: %s(%s)", ev[i].call, ev[i].args)
		}
	}
	un = find(ps, end, "log removal", unlinksLog)
	find(un, end, "directory fsync after the log's removal", on(dirFD, isFsync))
}

// readTraces merges strace's per-thread files into one list of the
// successful calls that name something in dir, in time order.
func readTraces(t *testing.T, traceDir, dir string) []sysEvent {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(traceDir, "t.*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no trace files: %v", err)
	}
	line := regexp.MustCompile(`^(\d+\.\d+) (\w+)\((.*)\) += (-?\d+)`)
	var ev []sysEvent
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(raw), "\n") {
			m := line.FindStringSubmatch(l)
			if m == nil || m[4] == "-1" || !strings.Contains(m[3], dir) {
				continue
			}
			ts, _ := strconv.ParseFloat(m[1], 64)
			ev = append(ev, sysEvent{ts, m[2], m[3]})
		}
	}
	sort.SliceStable(ev, func(i, j int) bool { return ev[i].ts < ev[j].ts })
	return ev
}

func dump(ev []sysEvent) string {
	var b strings.Builder
	for i, e := range ev {
		fmt.Fprintf(&b, "%3d %.6f %s(%.160s)\n", i, e.ts, e.call, e.args)
	}
	return b.String()
}
