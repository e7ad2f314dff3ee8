package checkpoint

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// The crash-hook tests stop at each step with the page cache intact, as a
// process crash would; they cannot show that each step was durable before
// the next began, which is what a power cut tests. This test checks that
// order on the system calls themselves: it runs commits and a rewrite in a
// helper process under strace and checks every sync comes before what
// depends on it, and that a commit into an existing journal costs two
// fdatasyncs and nothing else.

const straceHelperEnv = "SAFEJAXFS_TEST_STRACE_HELPER"

// markerName is a file the helper writes a byte to after each step, so the
// trace shows where each step returned.
func markerName(ckpt string, step int) string {
	return filepath.Join(filepath.Dir(ckpt), fmt.Sprintf("returned-%d", step))
}

// TestStraceHelperProcess is not a test: it is the traced process. Into
// the checkpoint named by the environment it commits a patch (creating the
// journal), then two more (overwriting it: the second one larger, so the
// journal grows), then rewrites the checkpoint; after each step it writes
// its marker.
func TestStraceHelperProcess(t *testing.T) {
	path := os.Getenv(straceHelperEnv)
	if path == "" {
		t.Skip("helper process for TestDurabilityOrder")
	}
	fail := func(err error) { fmt.Println(err); os.Exit(4) }
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		fail(err)
	}
	st, _ := f.Stat()
	h, err := safetensors.ReadHeader(f, st.Size())
	if err != nil {
		fail(err)
	}
	d := h.DataOffset()
	mark := func(step int) {
		if err := os.WriteFile(markerName(path, step), []byte{1}, 0o644); err != nil {
			fail(err)
		}
	}
	commits := [][]patch{
		{{d + 10, []byte("hello")}, {d + 5000, bytes.Repeat([]byte{7}, 100_000)}},
		{{d + 20, []byte("again")}, {d + 9000, bytes.Repeat([]byte{8}, 50_000)}},
		{{d + 30, bytes.Repeat([]byte{9}, 200_000)}},
	}
	for i, ps := range commits {
		if err := commitInPlace(f, path, d, ps, nil); err != nil {
			fail(err)
		}
		mark(i + 1)
	}
	src := []safetensors.Source{{Key: "x", DType: safetensors.U8, Shape: []uint64{uint64(st.Size() - d)}, Data: f, Off: d}}
	if err := rewriteAtomic(path, src, nil, nil); err != nil {
		fail(err)
	}
	mark(len(commits) + 1)
	os.Exit(0)
}

type sysEvent struct {
	call string
	args string
}

func TestDurabilityOrder(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace not installed")
	}
	c := defaultCkpt(t)
	trace := filepath.Join(t.TempDir(), "trace")
	cmd := exec.Command(strace, "-f", "-y", "-qq", "-o", trace,
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
	raw, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}

	// Keep the calls about our files, in order.
	line := regexp.MustCompile(`^(?:\[pid +\d+\] |\d+ +)?(\w+)\((.*)\) += (-?\d+)`)
	dir := filepath.Dir(c.path)
	var ev []sysEvent
	for _, l := range strings.Split(string(raw), "\n") {
		m := line.FindStringSubmatch(l)
		if m == nil || m[3] == "-1" || !strings.Contains(m[2], dir) {
			continue
		}
		ev = append(ev, sysEvent{m[1], m[2]})
	}
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
	tmpFD := "safejaxfs-tmp-"
	jpath := journalPath(c.path)
	journalFD := "<" + jpath + ">"
	ckptFD := "<" + c.path + ">"
	dirFD := "<" + dir + ">"
	on := func(fd string, calls func(string) bool) func(sysEvent) bool {
		return func(e sysEvent) bool { return calls(e.call) && strings.Contains(e.args, fd) }
	}
	var marks []int
	for step := 1; step <= 4; step++ {
		from := 0
		if step > 1 {
			from = marks[step-2] + 1
		}
		marks = append(marks, find(from, len(ev), fmt.Sprintf("marker %d", step), on("<"+markerName(c.path, step)+">", isWrite)))
	}

	// Commit 1 creates the journal: written into a temp file, fsynced,
	// renamed into place, directory fsynced; only then the checkpoint
	// written, and fdatasynced before the commit returns.
	end := marks[0]
	jw := find(0, end, "journal write", on(tmpFD, isWrite))
	js := find(jw, end, "journal fsync", on(tmpFD, isFsync))
	for i := js + 1; i < end; i++ {
		if isWrite(ev[i].call) && strings.Contains(ev[i].args, tmpFD) {
			t.Errorf("commit 1: the journal's temp file was written after its fsync (event %d)\n%s", i, dump(ev))
		}
	}
	jr := find(js, end, "journal rename", func(e sysEvent) bool {
		return isRename(e.call) && strings.Contains(e.args, tmpFD) && strings.HasSuffix(e.args, `"`+jpath+`"`)
	})
	jd := find(jr, end, "directory fsync", on(dirFD, isFsync))
	first := find(0, end, "in-place write", on(ckptFD, isWrite))
	if first < jd {
		t.Errorf("commit 1: the checkpoint was written (event %d) before the journal was durable (event %d)\n%s", first, jd, dump(ev))
	}
	checkCheckpointSynced(t, ev, first, end, ckptFD, "commit 1")

	// Commits 2 and 3 overwrite the journal: written, fdatasynced, then the
	// checkpoint written and fdatasynced. Two syncs, nothing on the
	// directory, no file created, renamed or removed.
	for k := 1; k <= 2; k++ {
		what := fmt.Sprintf("commit %d", k+1)
		from, end := marks[k-1]+1, marks[k]
		first := find(from, end, "in-place write", on(ckptFD, isWrite))
		jw := find(from, first, "journal write before the in-place write", on(journalFD, isWrite))
		jsync := find(jw, first, "journal fdatasync before the in-place write", on(journalFD, is("fdatasync")))
		cs := checkCheckpointSynced(t, ev, first, end, ckptFD, what)
		for i := jsync + 1; i < cs; i++ {
			if on(journalFD, isWrite)(ev[i]) {
				t.Errorf("%s: the journal was written (event %d) after its fdatasync (event %d) and before the checkpoint's (event %d)\n%s", what, i, jsync, cs, dump(ev))
			}
		}
		var syncs []int
		for i := from; i < end; i++ {
			e := ev[i]
			switch {
			case isSync(e.call):
				syncs = append(syncs, i)
			case isRename(e.call), strings.Contains(e.call, "unlink"), strings.Contains(e.call, "link"):
				t.Errorf("%s: %s(%s) in the steady state", what, e.call, e.args)
			case isWrite(e.call) && !strings.Contains(e.args, journalFD) && !strings.Contains(e.args, ckptFD):
				t.Errorf("%s: wrote to something other than the journal and the checkpoint: %s(%s)", what, e.call, e.args)
			case on(journalFD, isWrite)(e) && i > cs && !strings.HasSuffix(e.args, fmt.Sprintf(", 4, %d", markAt)):
				t.Errorf("%s: after the checkpoint's fdatasync the journal may only get its 4-byte applied mark at offset %d: %s(%s)", what, markAt, e.call, e.args)
			}
		}
		if len(syncs) != 2 || syncs[0] != jsync || syncs[1] != cs {
			t.Errorf("%s: syncs at events %v, want exactly the journal's fdatasync (%d) and the checkpoint's (%d)\n%s", what, syncs, jsync, cs, dump(ev[from:end]))
		}
	}

	// rewriteAtomic: the journal removed and the directory fsynced before
	// anything can take the checkpoint's name; temp written, fsynced,
	// renamed over the checkpoint, directory fsynced.
	from, end := marks[2]+1, marks[3]
	un := find(from, end, "journal removal", func(e sysEvent) bool { return strings.Contains(e.call, "unlink") && strings.Contains(e.args, jpath) })
	ud := find(un, end, "directory fsync after the journal's removal", on(dirFD, isFsync))
	rw := find(from, end, "rewrite write", on(tmpFD, isWrite))
	rs := find(rw, end, "rewrite fsync", on(tmpFD, isFsync))
	for i := rs + 1; i < end; i++ {
		if isWrite(ev[i].call) && strings.Contains(ev[i].args, tmpFD) {
			t.Errorf("temp file written after its fsync\n%s", dump(ev))
		}
	}
	rr := find(rs, end, "rename over the checkpoint", func(e sysEvent) bool {
		return isRename(e.call) && strings.Contains(e.args, tmpFD) && strings.HasSuffix(e.args, `"`+c.path+`"`)
	})
	if rr < ud {
		t.Errorf("the new file took the checkpoint's name (event %d) before the journal's removal was durable (event %d)\n%s", rr, ud, dump(ev))
	}
	find(rr, end, "directory fsync after the rename", on(dirFD, isFsync))
}

// checkCheckpointSynced checks that the checkpoint (fd name ckptFD) is
// fdatasynced after its last write in events [first, end) and before end,
// and returns the index of that fdatasync.
func checkCheckpointSynced(t *testing.T, ev []sysEvent, first, end int, ckptFD, what string) int {
	t.Helper()
	last, cs := first, -1
	for i := first; i < end; i++ {
		if !strings.Contains(ev[i].args, ckptFD) {
			continue
		}
		switch ev[i].call {
		case "fdatasync", "fsync":
			cs = i
		case "pwrite64", "pwritev", "pwritev2", "write", "writev":
			last = i
		}
	}
	if cs < last {
		t.Errorf("%s: the checkpoint's last write (event %d) is not followed by its fdatasync before the commit returned (event %d)\n%s", what, last, end, dump(ev))
	}
	return cs
}

func dump(ev []sysEvent) string {
	var b strings.Builder
	for i, e := range ev {
		fmt.Fprintf(&b, "%3d %s(%.160s)\n", i, e.call, e.args)
	}
	return b.String()
}
