package checkpoint

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// The crash-hook tests stop at each step with the page cache intact, as a
// process crash would; they cannot show that each step was durable before
// the next began, which is what a power cut tests. This test checks that
// order on the system calls themselves: it runs a commit and a rewrite in a
// helper process under strace and checks every fsync comes before what
// depends on it.

const straceHelperEnv = "SAFEJAXFS_TEST_STRACE_HELPER"

// TestStraceHelperProcess is not a test: it is the traced process. It
// commits a patch into the checkpoint named by the environment, then
// rewrites it.
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
	if err := commitInPlace(f, path, d, []patch{{d + 10, []byte("hello")}, {d + 5000, bytes.Repeat([]byte{7}, 100_000)}}, nil); err != nil {
		fail(err)
	}
	src := []safetensors.Source{{Key: "x", DType: safetensors.U8, Shape: []uint64{uint64(st.Size() - d)}, Data: f, Off: d}}
	if err := rewriteAtomic(path, src, nil, nil); err != nil {
		fail(err)
	}
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
		"-e", "trace=fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat,pwrite64,pwritev,pwritev2,write,copy_file_range",
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
	find := func(from int, what string, ok func(e sysEvent) bool) int {
		t.Helper()
		for i := from; i < len(ev); i++ {
			if ok(ev[i]) {
				return i
			}
		}
		t.Fatalf("no %s after event %d; trace:\n%s", what, from, dump(ev))
		return -1
	}
	is := func(calls ...string) func(string) bool {
		return func(c string) bool {
			for _, x := range calls {
				if c == x {
					return true
				}
			}
			return false
		}
	}
	isRename, isSync := is("rename", "renameat", "renameat2"), is("fsync")
	isWrite := is("pwrite64", "pwritev", "pwritev2", "write", "copy_file_range")
	tmpFD := "safejaxfs-tmp-"
	journal := filepath.Base(journalPath(c.path))
	ckptFD := "<" + c.path + ">"
	dirFD := "<" + dir + ">"

	// commitInPlace: journal written and fsynced, renamed into place,
	// directory fsynced; only then the checkpoint written; fdatasynced;
	// only then the journal removed.
	jw := find(0, "journal write", func(e sysEvent) bool { return isWrite(e.call) && strings.Contains(e.args, tmpFD) })
	js := find(jw, "journal fsync", func(e sysEvent) bool { return isSync(e.call) && strings.Contains(e.args, tmpFD) })
	jr := find(js, "journal rename", func(e sysEvent) bool {
		return isRename(e.call) && strings.Contains(e.args, tmpFD) && strings.HasSuffix(e.args, journal+`"`)
	})
	jd := find(jr, "directory fsync", func(e sysEvent) bool { return isSync(e.call) && strings.Contains(e.args, dirFD) })
	first := find(0, "in-place write", func(e sysEvent) bool { return isWrite(e.call) && strings.Contains(e.args, ckptFD) })
	if first < jd {
		t.Errorf("the checkpoint was written (event %d) before the journal was durable (event %d)\n%s", first, jd, dump(ev))
	}
	cs := find(first, "fdatasync", func(e sysEvent) bool { return e.call == "fdatasync" && strings.Contains(e.args, ckptFD) })
	for i := first; i < cs; i++ {
		if strings.Contains(ev[i].call, "unlink") {
			t.Errorf("journal removed before the checkpoint was synced\n%s", dump(ev))
		}
	}
	un := find(cs, "journal removal", func(e sysEvent) bool { return strings.Contains(e.call, "unlink") && strings.Contains(e.args, journal) })

	// rewriteAtomic: temp written, fsynced, renamed over the checkpoint,
	// directory fsynced.
	rw := find(un, "rewrite write", func(e sysEvent) bool { return isWrite(e.call) && strings.Contains(e.args, tmpFD) })
	rs := find(rw, "rewrite fsync", func(e sysEvent) bool { return isSync(e.call) && strings.Contains(e.args, tmpFD) })
	for i := rs + 1; i < len(ev); i++ {
		if isWrite(ev[i].call) && strings.Contains(ev[i].args, tmpFD) {
			t.Errorf("temp file written after its fsync\n%s", dump(ev))
		}
	}
	rr := find(rs, "rename over the checkpoint", func(e sysEvent) bool {
		return isRename(e.call) && strings.Contains(e.args, tmpFD) && strings.HasSuffix(e.args, `"`+c.path+`"`)
	})
	find(rr, "directory fsync after the rename", func(e sysEvent) bool { return isSync(e.call) && strings.Contains(e.args, dirFD) })
}

func dump(ev []sysEvent) string {
	var b strings.Builder
	for i, e := range ev {
		fmt.Fprintf(&b, "%3d %s(%.160s)\n", i, e.call, e.args)
	}
	return b.String()
}
