package main

import (
	"encoding/json"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Issue 17 item 2: copies between mounts and into fresh mounts with the
// everyday tools. Those that carry attributes (cp -a, tar --xattrs,
// rsync -X) keep every dtype and shape exactly; those that cannot never
// change a tensor's type silently: a file replacing a tensor of its size
// keeps the tensor's type, and a new file without a dtype is saved as 1-D
// U8 and named by the mount root's user.safejaxfs.untyped and by
// `safejaxfs unmount`.

// emptyCheckpoint is a checkpoint with no tensors and no metadata: a fresh
// place to copy into.
func emptyCheckpoint(t testing.TB) string {
	return writeCheckpoint(t, "fresh.safetensors", nil)
}

// typedMeta is the source's metadata: rsync of the whole mount carries it.
var typedMeta = map[string]string{"format": "pt"}

// typedSource is typedModel with metadata, mounted read-only: the source
// of the copies.
func typedSource(t testing.TB) (mnt string, tensors []genTensor) {
	_, tensors = typedModel(t)
	ckpt := writeCheckpoint(t, "source.safetensors", typedMeta, tensors...)
	return mount(t, ckpt, "--read-only"), tensors
}

// untypedList reads the mount root's list of tensors saved as U8 for want
// of a dtype (nil when there are none).
func untypedList(t testing.TB, mnt string) []string {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Getxattr(mnt, "user.safejaxfs.untyped", buf)
	if errors.Is(err, unix.ENODATA) {
		return nil
	}
	if err != nil {
		t.Fatalf("getxattr user.safejaxfs.untyped: %v", err)
	}
	return strings.Split(strings.TrimSuffix(string(buf[:n]), "\n"), "\n")
}

// keysUnder is want's keys with "params" replaced by prefix, sorted.
func keysUnder(want []genTensor, prefix string) []string {
	var keys []string
	for _, g := range want {
		keys = append(keys, prefix+strings.TrimPrefix(g.key, "params"))
	}
	slices.Sort(keys)
	return keys
}

func TestCopiesBetweenMountsKeepTypes(t *testing.T) {
	t.Parallel()
	src, tensors := typedSource(t)
	s := func(p string) string { return filepath.Join(src, p) }
	type dest struct {
		what string
		copy func(dst string)
		meta map[string]string // the destination's metadata after the copy
	}
	tarball := filepath.Join(t.TempDir(), "x.tar")
	runCmd(t, "tar", "--xattrs", "--xattrs-include=user.*", "-cf", tarball, "-C", src, ".")
	for _, d := range []dest{
		{"cp -a", func(dst string) { runCmd(t, "cp", "-a", s("params"), dst+"/") }, nil},
		// The whole mount: __metadata__ too (cp opens it with O_TRUNC;
		// tar removes it and creates it again).
		{"cp -a whole", func(dst string) { runCmd(t, "cp", "-a", src+"/.", dst+"/") }, typedMeta},
		{"tar --xattrs", func(dst string) {
			runCmd(t, "tar", "--xattrs", "--xattrs-include=user.*", "-xf", tarball, "-C", dst)
		}, typedMeta},
		// The whole mount, __metadata__ included (a temp file renamed
		// over it); the files directory is not listed, so not copied.
		{"rsync -aX", func(dst string) { runCmd(t, "rsync", "-aX", src+"/", dst+"/") }, typedMeta},
	} {
		t.Run(strings.ReplaceAll(d.what, " ", "_"), func(t *testing.T) {
			ckpt := emptyCheckpoint(t)
			mnt := mount(t, ckpt)
			d.copy(mnt)
			checkTyped(t, mnt, "params", tensors, d.what)
			if u := untypedList(t, mnt); u != nil {
				t.Errorf("%s: reported as saved without a dtype: %v", d.what, u)
			}
			r := cli(t, "unmount", mnt)
			if r.code != 0 || strings.Contains(r.stderr, "U8") {
				t.Fatalf("unmount: exit %d: %s", r.code, r.stderr)
			}
			checkFile(t, ckpt, d.meta, tensors...)
		})
	}
}

func TestCopiesWithoutAttributesAreReported(t *testing.T) {
	t.Parallel()
	src, tensors := typedSource(t)
	tarball := filepath.Join(t.TempDir(), "plain.tar")
	runCmd(t, "tar", "-cf", tarball, "-C", src, "params")
	for what, copy := range map[string]func(dst string){
		"cp -r":    func(dst string) { runCmd(t, "cp", "-r", filepath.Join(src, "params"), dst+"/") },
		"tar x":    func(dst string) { runCmd(t, "tar", "-xf", tarball, "-C", dst) },
		"rsync -a": func(dst string) { runCmd(t, "rsync", "-a", filepath.Join(src, "params"), dst+"/") },
	} {
		t.Run(strings.ReplaceAll(what, " ", "_"), func(t *testing.T) {
			ckpt := emptyCheckpoint(t)
			mnt := mount(t, ckpt)
			copy(mnt)
			// Nothing could tell these files' dtypes: each is its bytes
			// as 1-D U8, and each is named.
			var u8 []genTensor
			for _, g := range tensors {
				u8 = append(u8, raw(g.key, safetensors.U8, g.data, uint64(len(g.data))))
			}
			checkTyped(t, mnt, "params", u8, what)
			want := keysUnder(tensors, "params")
			if got := untypedList(t, mnt); !slices.Equal(got, want) {
				t.Errorf("%s: user.safejaxfs.untyped = %q, want %q", what, got, want)
			}
			r := cli(t, "unmount", mnt)
			if r.code != 0 {
				t.Fatalf("unmount: exit %d: %s", r.code, r.stderr)
			}
			for _, k := range want {
				if !strings.Contains(r.stderr, "\n  "+k+"\n") {
					t.Errorf("%s: unmount does not name %s as saved as U8:\n%s", what, k, r.stderr)
				}
			}
			checkFile(t, ckpt, nil, u8...)

			// Typed afterwards, in a new mount: no longer reported.
			mnt = mount(t, ckpt)
			for _, g := range tensors {
				p := filepath.Join(mnt, strings.ReplaceAll(g.key, ".", "/"))
				for name, v := range map[string]string{"user.safetensors.dtype": g.dtype.String(), "user.safetensors.shape": shapeJSONOf(g.shape)} {
					if err := unix.Setxattr(p, name, []byte(v), 0); err != nil {
						t.Fatalf("setfattr %s %s: %v", name, p, err)
					}
				}
			}
			if u := untypedList(t, mnt); u != nil {
				t.Errorf("tensors of an earlier mount reported: %v", u)
			}
			unmountOK(t, mnt)
			checkFile(t, ckpt, nil, tensors...)
		})
	}
}

// A tool without attributes replacing tensors of the same byte size, from
// one mount into another: each keeps its dtype and shape, nothing is
// reported.
func TestReplacementsBetweenMountsKeepTypes(t *testing.T) {
	t.Parallel()
	src, tensors := typedSource(t)
	tarball := filepath.Join(t.TempDir(), "plain.tar")
	runCmd(t, "tar", "-cf", tarball, "-C", src, "params")
	for what, copy := range map[string]func(dst string){
		"cp -r":    func(dst string) { runCmd(t, "cp", "-r", filepath.Join(src, "params"), dst+"/") },
		"tar x":    func(dst string) { runCmd(t, "tar", "-xf", tarball, "-C", dst) },
		"rsync -a": func(dst string) { runCmd(t, "rsync", "-a", "-I", filepath.Join(src, "params"), dst+"/") },
	} {
		t.Run(strings.ReplaceAll(what, " ", "_"), func(t *testing.T) {
			ckpt := writeCheckpoint(t, "dst.safetensors", nil, tensors...)
			mnt := mount(t, ckpt)
			var files []string
			for _, g := range tensors {
				files = append(files, filepath.Join(mnt, strings.ReplaceAll(g.key, ".", "/")))
			}
			scramble(t, files...)
			copy(mnt)
			checkTyped(t, mnt, "params", tensors, what)
			if u := untypedList(t, mnt); u != nil {
				t.Errorf("%s: reported as saved without a dtype: %v", what, u)
			}
			unmountOK(t, mnt)
			checkFile(t, ckpt, nil, tensors...)
		})
	}
}

// Issue 16 item 10: rsync -a --delete into a mount exits 0 on every run
// (it removes __metadata__ and the user.safetensors.* attributes of its
// temp files; the files directory is not listed), a second run changes
// nothing, and neither does a run after a remount: the times rsync set are
// kept beside the checkpoint.
func TestRsyncDeleteEveryRunAndAfterRemount(t *testing.T) {
	t.Parallel()
	src, tensors := typedSource(t)
	plain := t.TempDir() // the tensors as plain files, with their attributes
	runCmd(t, "cp", "-a", filepath.Join(src, "params"), plain+"/")
	for _, c := range []struct {
		what  string
		from  string
		flags []string
		meta  map[string]string // after the copy
	}{
		{"plain dir, rsync -a", plain, []string{"-a"}, map[string]string{}},
		{"plain dir, rsync -aX", plain, []string{"-aX"}, map[string]string{}},
		{"mount to mount, rsync -aX", src, []string{"-aX"}, typedMeta},
	} {
		t.Run(strings.ReplaceAll(strings.ReplaceAll(c.what, " ", "_"), ",", ""), func(t *testing.T) {
			ckpt := flaxModel(t) // other tensors and metadata: --delete removes them
			mnt := mount(t, ckpt)
			rsync := func(run string) string {
				t.Helper()
				args := append(append([]string{}, c.flags...), "--delete", "-i", c.from+"/", mnt+"/")
				out, err := exec.Command("rsync", args...).CombinedOutput()
				if err != nil {
					t.Fatalf("%s: rsync %v: %v\n%s", run, args, err, out)
				}
				return strings.Join(changes.FindAllString(string(out), -1), "\n")
			}
			rsync("first run")
			if out := rsync("second run"); out != "" {
				t.Errorf("second run changed something:\n%s", out)
			}
			typed := slices.Contains(c.flags, "-aX")
			if typed {
				checkTyped(t, mnt, "params", tensors, c.what)
			}
			unmountOK(t, mnt)
			mnt = mount(t, ckpt)
			if out := rsync("run after a remount"); out != "" {
				t.Errorf("a run after a remount changed something:\n%s", out)
			}
			unmountOK(t, mnt)
			want := tensors
			if !typed {
				// A file that replaced a tensor of its size kept its
				// type; the new ones are bytes.
				flax := map[string]genTensor{}
				for _, g := range flaxTensors() {
					flax[g.key] = g
				}
				want = nil
				for _, g := range tensors {
					if old, ok := flax[g.key]; !ok || len(old.data) != len(g.data) {
						g = raw(g.key, safetensors.U8, g.data, uint64(len(g.data)))
					}
					want = append(want, g)
				}
			}
			checkFile(t, ckpt, c.meta, want...)
		})
	}
}

// The times file is the only file the mount leaves beside the checkpoint,
// and a reader of the checkpoint never sees it: the checkpoint is the
// canonical writer's bytes (checked above); this checks the times go with
// those bytes only.
func TestKeptTimesFollowTheFile(t *testing.T) {
	t.Parallel()
	ckpt := flaxModel(t)
	side := filepath.Join(filepath.Dir(ckpt), ".flax.safetensors.safejaxfs-times")
	// A mount that changes nothing leaves nothing: the times shown are
	// the file's own.
	mnt := mount(t, ckpt)
	runCmd(t, "ls", "-lR", mnt)
	unmountOK(t, mnt)
	if _, err := os.Lstat(side); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a mount that changed nothing left a times file (%v)", err)
	}
	mnt = mount(t, ckpt)
	kernel := func() string { return filepath.Join(mnt, "params/Dense_0/kernel") }
	runCmd(t, "touch", "-d", "2020-01-02 03:04:05.123456789", kernel())
	// A write makes the write-back rewrite the file: the times follow.
	if err := os.WriteFile(filepath.Join(mnt, "notes"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	unmountOK(t, mnt)
	if _, err := os.Stat(side); err != nil {
		t.Fatalf("no times file: %v", err)
	}
	mnt = mount(t, ckpt)
	if got := statT(t, kernel()).Mtim; got.Sec != 1577934245 || got.Nsec != 123456789 {
		t.Errorf("after a remount the mtime is %v", got)
	}
	unmountOK(t, mnt)
	// Another program rewrites the checkpoint (a new header): the times
	// kept for the old one are not applied.
	b, err := os.ReadFile(ckpt)
	if err != nil {
		t.Fatal(err)
	}
	other := canonical(t, map[string]string{"by": "someone else"}, flaxTensors()...)
	if err := os.WriteFile(ckpt, other, 0o644); err != nil {
		t.Fatal(err)
	}
	mnt = mount(t, ckpt)
	if got := statT(t, kernel()).Mtim; got.Sec == 1577934245 {
		t.Errorf("times kept for another version of the file applied (the file was %d bytes, now %d)", len(b), len(other))
	}
	unmountOK(t, mnt)
	// Nothing changed in that mount: the times file kept for the old
	// version, which says nothing of this one, is gone.
	if _, err := os.Lstat(side); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the times file of another version of the checkpoint is still there (%v)", err)
	}
}

// changes are the lines of rsync -i output that copy or delete a file
// (not those that only set a directory's time or a mode, which a
// checkpoint cannot store).
var changes = regexp.MustCompile(`(?m)^(>f|cf|\*deleting).*$`)

// In a sharded set every file has its own mtime, so every tensor shows its
// file's. The times file keeps that once per file, not once per tensor (a
// DeepSeek-sized set would otherwise leave an 8 MB file parsed at every
// mount), and a remount after a write-back (which rewrites the shards)
// still shows each untouched tensor its file's old time.
func TestKeptTimesOfShards(t *testing.T) {
	t.Parallel()
	dir, _ := defaultSet(t)
	when := []time.Time{time.Unix(1500000000, 0), time.Unix(1600000000, 5), time.Unix(1700000000, 999)}
	for i, w := range when {
		if err := os.Chtimes(filepath.Join(dir, shardName(i, len(when))), w, w); err != nil {
			t.Fatal(err)
		}
	}
	mnt := mount(t, filepath.Join(dir, indexName))
	shown := map[string]time.Time{}
	var paths []string
	filepath.WalkDir(mnt, func(p string, d iofs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && !strings.HasPrefix(d.Name(), "__") {
			paths = append(paths, p)
		}
		return nil
	})
	for _, p := range paths {
		st := statT(t, p)
		shown[strings.TrimPrefix(p, mnt)] = time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
	}
	if len(shown) < 2 {
		t.Fatalf("tensors: %v", shown)
	}
	// A new tensor makes the write-back rewrite the shard it lands in.
	if err := os.WriteFile(filepath.Join(mnt, "notes"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	unmountOK(t, mnt)
	b, err := os.ReadFile(filepath.Join(dir, "."+indexName+".safejaxfs-times"))
	if err != nil {
		t.Fatal(err)
	}
	var kept struct {
		Tensors map[string]string `json:"tensors"`
		Shards  map[string]string `json:"shards"`
	}
	if err := json.Unmarshal(b, &kept); err != nil {
		t.Fatal(err)
	}
	if _, ok := kept.Tensors["notes"]; len(kept.Tensors) != 1 || !ok || len(kept.Shards) != len(when) {
		t.Errorf("times file names tensors %v and shards %v; want only the new tensor, and every shard", kept.Tensors, kept.Shards)
	}
	checkShown := func(when string) {
		t.Helper()
		mnt = mount(t, filepath.Join(dir, indexName))
		for p, want := range shown {
			st := statT(t, filepath.Join(mnt, p))
			if got := time.Unix(st.Mtim.Sec, st.Mtim.Nsec); !got.Equal(want) {
				t.Errorf("%s: %s %v, before %v", p, when, got, want)
			}
		}
		unmountOK(t, mnt)
	}
	checkShown("after a remount")

	// A times file an earlier version wrote names every tensor (format 1,
	// no shards): it is read, and the next save keeps the times once per
	// file again.
	var v1 map[string]any
	if err := json.Unmarshal(b, &v1); err != nil {
		t.Fatal(err)
	}
	all := map[string]any{}
	for p, at := range shown {
		key := strings.ReplaceAll(strings.TrimPrefix(p, "/"), "/", ".")
		all[key] = at.UTC().Format(time.RFC3339Nano)
	}
	for k, v := range kept.Tensors {
		all[k] = v
	}
	v1["safejaxfs_times"], v1["tensors"] = 1, all
	delete(v1, "shards")
	old, err := json.Marshal(v1)
	if err != nil {
		t.Fatal(err)
	}
	side := filepath.Join(dir, "."+indexName+".safejaxfs-times")
	if err := os.WriteFile(side, old, 0o644); err != nil {
		t.Fatal(err)
	}
	checkShown("from a format 1 times file")
	b, err = os.ReadFile(side)
	if err != nil {
		t.Fatal(err)
	}
	kept.Tensors, kept.Shards = nil, nil
	if err := json.Unmarshal(b, &kept); err != nil {
		t.Fatal(err)
	}
	if len(kept.Tensors) != 1 || len(kept.Shards) != len(when) {
		t.Errorf("after a format 1 file, the times file names tensors %v and shards %v", kept.Tensors, kept.Shards)
	}
}

// TestManyUntypedNamedInShort: a copy of many files without their
// attributes is reported in a few lines, not one per file: the unmount's
// note names the first ones in the order ls shows them and points to the
// daemon's log, which names them all; status names as many.
func TestManyUntypedNamedInShort(t *testing.T) {
	t.Parallel()
	ckpt := emptyCheckpoint(t)
	mnt := mount(t, ckpt)
	const n = maxNoteUntyped + 7
	for i := 1; i <= n; i++ {
		if err := os.WriteFile(filepath.Join(mnt, fmt.Sprintf("x%d", i)), []byte("raw"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A key with a newline is one line of the list, not two.
	if err := os.WriteFile(filepath.Join(mnt, "a\nb"), []byte("raw"), 0o644); err != nil {
		t.Fatal(err)
	}
	first := []string{`a\nb`} // in the order ls shows them: a\nb, x1, x2, ... x19
	for i := 1; i < maxNoteUntyped; i++ {
		first = append(first, fmt.Sprintf("x%d", i))
	}
	st := cli(t, "status", mnt).stdout
	if want := fmt.Sprintf("%d tensors created without a dtype", n+1); !strings.Contains(st, want) || !strings.Contains(st, fmt.Sprintf(", and %d more", n+1-maxNoteUntyped)) {
		t.Errorf("status does not say %q and how many more it does not name:\n%s", want, st)
	}
	logFile := getxattr(t, mnt, "user.safejaxfs.log")
	r := cli(t, "unmount", mnt)
	if r.code != 0 {
		t.Fatalf("unmount: exit %d: %s", r.code, r.stderr)
	}
	_, note, _ := strings.Cut(r.stderr, "(and user.safetensors.shape):\n")
	want := "  " + strings.Join(first, "\n  ") + fmt.Sprintf("\n  ... and %d more; the daemon's log names them all: %s\n", n+1-maxNoteUntyped, logFile)
	if note != want {
		t.Errorf("unmount's note lists\n%s\nwant\n%s", note, want)
	}
	log, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		if !regexp.MustCompile(fmt.Sprintf(`\bx%d\b`, i)).Match(log) {
			t.Errorf("the daemon's log does not name x%d:\n%s", i, log)
		}
	}
}
