package fs

import (
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/safejaxfs/safejaxfs/tree"
)

func TestParseMetadata(t *testing.T) {
	good := map[string]map[string]string{
		`{"step": "1300"}` + "\n":          {"step": "1300"},
		`{}`:                               {},
		" {\"a\":\"<&>\", \"b\": \"\"} \n": {"a": "<&>", "b": ""},
	}
	for in, want := range good {
		got, err := parseMetadata([]byte(in))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("parseMetadata(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{``, `null`, `[]`, `"x"`, `{"step": 1300}`, `{"a": {"b": "c"}}`, `{"a": "b"} {}`, `{"a": "b"`, `{"a": null}`} {
		if got, err := parseMetadata([]byte(in)); err == nil {
			t.Errorf("parseMetadata(%q) = %v, want an error", in, got)
		}
	}
}

func TestCopyAttr(t *testing.T) {
	if n, errno := copyAttr(nil, []byte("F32")); n != 3 || errno != syscall.ERANGE {
		t.Errorf("size probe: %d %v", n, errno)
	}
	buf := make([]byte, 8)
	if n, errno := copyAttr(buf, []byte("F32")); n != 3 || errno != 0 || string(buf[:n]) != "F32" {
		t.Errorf("copy: %d %v %q", n, errno, buf[:n])
	}
}

// TestInoSpaces: the inode numbers of dirs, tensors and views never meet.
func TestInoSpaces(t *testing.T) {
	seen := map[uint64]string{inoRoot: "root", inoMetadata: "metadata"}
	for id := uint64(0); id < 1000; id++ {
		for kind, name := range []string{"dir", "tensor", "npy"} {
			i := ino(kind, id)
			if prev, dup := seen[i]; dup {
				t.Fatalf("ino %d is both %s and %s %d", i, prev, name, id)
			}
			seen[i] = name
		}
	}
}

// testPool is an FS with only its upload pool, for upload unit tests.
func testPool(t *testing.T, limit, spillAt, budget int64) (*FS, *[]string) {
	var refusals []string
	f := &FS{}
	f.upPool = uploadPool{dir: t.TempDir(), limit: limit, spillAt: spillAt, budget: budget, refuse: func(err error) { refusals = append(refusals, err.Error()) }}
	return f, &refusals
}

func TestUploadFlushRepeatsRefusal(t *testing.T) {
	f, _ := testPool(t, 1<<30, spillAt, memoryBudget)
	u := f.newUpload(0, "x.npy", nil, false, 1<<20)
	u.write([]byte("abc"), 0)
	calls := 0
	refuse := func([]byte) syscall.Errno { calls++; return syscall.EINVAL }
	if errno := u.flush(refuse, nil); errno != syscall.EINVAL {
		t.Fatalf("first flush: %v", errno)
	}
	// A later close of another descriptor of the same open file reports
	// the refusal again without committing again.
	if errno := u.flush(refuse, nil); errno != syscall.EINVAL || calls != 1 {
		t.Fatalf("second flush: %v after %d commits", errno, calls)
	}
	u.write([]byte("d"), 3)
	ok := func(b []byte) syscall.Errno {
		if string(b) != "abcd" {
			t.Errorf("commit got %q", b)
		}
		return 0
	}
	if errno := u.flush(ok, nil); errno != 0 {
		t.Fatalf("flush after a new write: %v", errno)
	}
	// Past the limit: refused, nothing allocated.
	if errno := u.truncate(1 << 40); errno != syscall.EFBIG || u.size() != 4 {
		t.Errorf("truncate past the limit: %v, size %d", errno, u.size())
	}
	if errno := u.write([]byte("x"), 1<<20); errno != syscall.EFBIG {
		t.Errorf("write past the limit: %v", errno)
	}
}

func TestUnescapeOctal(t *testing.T) {
	for in, want := range map[string]string{`/mnt/a\040b`: "/mnt/a b", `/plain`: "/plain", `a\134b`: `a\b`, `bad\09`: `bad\09`, `end\04`: `end\04`} {
		if got := UnescapeMountinfo(in); got != want {
			t.Errorf("UnescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFindMountRoot(t *testing.T) {
	m, found, err := FindMount("/")
	if err != nil || !found || m.FSType == "" || !strings.Contains(m.Dev, ":") {
		t.Errorf("FindMount(/) = %+v, %v, %v", m, found, err)
	}
}

// A directory removed while open has no parent, like the root: its inode
// number must stay its own (fstat of a shell's removed working directory),
// and so must isRoot's answer.
func TestRemovedDirectoryIsNotRoot(t *testing.T) {
	tr, err := tree.Build([]string{"a.b"}, tree.Options{})
	if err != nil {
		t.Fatal(err)
	}
	a, b := tr.Find("a"), tr.Find("a/b")
	ino := dirIno(a)
	if err := tr.Remove(b); err != nil {
		t.Fatal(err)
	}
	if err := tr.Remove(a); err != nil {
		t.Fatal(err)
	}
	if got := dirIno(a); got != ino || got == inoRoot {
		t.Errorf("removed directory: inode %d, was %d (root %d)", got, ino, inoRoot)
	}
	if d := (&dirNode{node: a}); d.isRoot() {
		t.Error("a removed directory is taken for the root")
	}
	if dirIno(tr.Root) != inoRoot || !(&dirNode{node: tr.Root}).isRoot() {
		t.Error("the root is not the root")
	}
}
