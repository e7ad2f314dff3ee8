package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
)

// go-fuse's POSIX conformance cases, on a read-write mount of a checkpoint.
// Each case runs inside a new directory of its own (a key prefix: the
// cases expect to start from an empty directory), and the checkpoint must
// afterwards still validate, hold its original tensors unchanged, and keep
// what each case left.

// posixCases are the cases of posixtest.All that fit a tensor file system.
var posixCases = []string{
	"AppendWrite",
	"DirSeek",
	"DirectIO",
	"FcntlFlockSetLk",
	"FdLeak",
	"FileLarge",
	"FstatDeleted",
	"LseekEnxioCheck",
	"LseekHoleSeeksToEOF",
	"MkdirRmdir",
	"NlinkZero",
	"OpenAt",
	"ParallelFileOpen",
	"ReadDirBasic",
	"ReadDirConsistency",
	"RenameOpenDir",
	"RenameOverwriteDestExist",
	"RenameOverwriteDestNoExist",
	"TruncateFile",
	"TruncateNoFile",
}

// posixExcluded says why each other case does not run.
var posixExcluded = map[string]string{
	"FileBasic":           "expects the mode given at creation (0755); a checkpoint stores no modes, tensor files are always 0644",
	"Fallocate":           "fallocate is not implemented: a tensor's size follows its dtype and shape",
	"FallocateKeepSize":   "fallocate is not implemented: a tensor's size follows its dtype and shape",
	"FcntlFlockLocksFile": "POSIX record locks are left to the kernel, which keeps them per process: two descriptors of one process never conflict",
	"Link":                "no hard links: a key names one tensor",
	"LinkUnlinkRename":    "no hard links",
	"SymlinkReadlink":     "no symlinks in a checkpoint",
	"SetattrSymlink":      "no symlinks in a checkpoint",
	"OpenSymlinkRace":     "no symlinks in a checkpoint",
	"Tmpfile":             "O_TMPFILE is not supported: every file is a tensor with a key",
	"XAttr":               "only the user.safetensors.* attributes exist; others cannot be set",
	"XAttrLarge":          "only the user.safetensors.* attributes exist; others cannot be set",
}

func TestPosix(t *testing.T) {
	// One test process of its own (FdLeak counts that process's open
	// descriptors), one mount: the cases run one after another, each in
	// a new directory of its own, as a user's session would, and the
	// checkpoint is checked once they all ran.
	if !isolated(t) {
		return
	}
	for name := range posixtest.All {
		_, excluded := posixExcluded[name]
		if !excluded && !slices.Contains(posixCases, name) {
			t.Errorf("posixtest.%s is neither run nor excluded with a reason", name)
		}
	}
	ckpt := flaxModel(t)
	entriesBefore, _, dataBefore := rawHeader(t, ckpt)
	mnt := mount(t, ckpt)
	left := map[string]map[string][]byte{} // by case, what it left, by key
	for _, name := range posixCases {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(mnt, name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			posixtest.All[name](t, dir)
			if !t.Failed() {
				left[name] = filesByKey(t, dir)
			}
		})
	}
	if t.Failed() {
		return
	}
	unmountOK(t, mnt)
	if r := cli(t, "verify", ckpt); r.code != 0 {
		t.Fatalf("verify after the cases: exit %d: %s", r.code, r.stderr)
	}
	entries, _, data := rawHeader(t, ckpt)
	for key, e := range entriesBefore {
		got, ok := entries[key]
		if !ok {
			t.Errorf("tensor %s is gone", key)
			continue
		}
		if got.DType != e.DType || !slices.Equal(got.Shape, e.Shape) ||
			!bytes.Equal(data[got.Offsets[0]:got.Offsets[1]], dataBefore[e.Offsets[0]:e.Offsets[1]]) {
			t.Errorf("tensor %s changed", key)
		}
	}
	// And what each case left survives: the same tensors, the same
	// bytes, after a remount. (By key: a created name holding the
	// separator, like posixtest's file.txt, is split on remount, into
	// file/txt.)
	ro := mount(t, ckpt, "--read-only")
	for _, name := range posixCases {
		got := map[string][]byte{}
		if _, err := os.Stat(filepath.Join(ro, name)); err == nil {
			got = filesByKey(t, filepath.Join(ro, name))
		}
		if len(got) != len(left[name]) {
			t.Errorf("%s: after a remount %d files, before %d", name, len(got), len(left[name]))
		}
		for k, b := range got {
			if want, ok := left[name][k]; !ok || !bytes.Equal(b, want) {
				t.Errorf("%s: after a remount %q holds %d bytes, before %d (present: %v)", name, k, len(b), len(want), ok)
			}
		}
	}
}

// filesByKey reads every file under dir, by its tensor key.
func filesByKey(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, f := range walkFiles(t, dir) {
		p := filepath.Join(dir, f)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[getxattr(t, p, "user.safetensors.key")] = b
	}
	return out
}
