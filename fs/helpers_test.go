package fs

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/safejaxfs/safejaxfs/fs/upload"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
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

// TestUploadErrno: the errno a refused upload gives the writer is the one
// the upload chose, EPERM for a truncate by path with nothing open, and a
// refused commit's (closeErrno) otherwise.
func TestUploadErrno(t *testing.T) {
	for _, c := range []struct {
		err  error
		want syscall.Errno
	}{
		{nil, 0},
		{&upload.Error{Errno: syscall.EFBIG, Err: upload.ErrLimit}, syscall.EFBIG},
		{fmt.Errorf("x.npy: %w", &upload.Error{Errno: syscall.ENOSPC, Err: errors.New("no space")}), syscall.ENOSPC},
		{upload.ErrNotOpen, syscall.EPERM},
		{errors.New("x.npy: not a .npy file"), syscall.EINVAL},
		{fmt.Errorf("x: %w", checkpoint.ErrHeaderLimit), syscall.EFBIG},
	} {
		if got := uploadErrno(c.err); got != c.want {
			t.Errorf("uploadErrno(%v) = %v, want %v", c.err, got, c.want)
		}
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
