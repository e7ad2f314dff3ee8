package fs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/npy"
)

// names lists dir through the mount, as ls does (getdents), sorted.
func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// lsNames lists dir with ls, another process, as a user would.
func lsNames(t *testing.T, dir string) []string {
	t.Helper()
	out, err := exec.Command("ls", "-1", dir).Output()
	if err != nil {
		t.Fatalf("ls %s: %v", dir, err)
	}
	return strings.Fields(string(out))
}

func wantNames(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("%s lists %q, want %q", what, got, want)
	}
}

// TestListingFollowsKernelChanges: every directory listing is cached by the
// kernel; each change made through the mount must show in the next listing
// of every directory it touched, though each was listed (cached) before.
func TestListingFollowsKernelChanges(t *testing.T) {
	ckpt := writeCheckpoint(t, "a.w", "a.b", "c.x")
	mnt := mountTest(t, ckpt, false)
	a, c := filepath.Join(mnt, "a"), filepath.Join(mnt, "c")
	list := func(want map[string][]string) {
		t.Helper()
		for dir, w := range want {
			// Twice: the second comes from the cache the first filled.
			for range 2 {
				wantNames(t, dir, names(t, filepath.Join(mnt, dir)), w...)
			}
		}
	}
	list(map[string][]string{"": {MetadataName, "a", "c"}, "a": {"b", "w"}, "c": {"x"}})

	if err := os.WriteFile(filepath.Join(a, "new"), []byte("abcd"), 0o644); err != nil {
		t.Fatal(err)
	}
	list(map[string][]string{"a": {"b", "new", "w"}})
	if err := os.Remove(filepath.Join(a, "b")); err != nil {
		t.Fatal(err)
	}
	list(map[string][]string{"a": {"new", "w"}})
	if err := os.Rename(filepath.Join(a, "w"), filepath.Join(c, "w2")); err != nil {
		t.Fatal(err)
	}
	list(map[string][]string{"a": {"new"}, "c": {"w2", "x"}})
	if err := os.Mkdir(filepath.Join(mnt, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	list(map[string][]string{"": {MetadataName, "a", "c", "d"}, "d": nil})
	if err := os.Rename(filepath.Join(c, "x"), filepath.Join(mnt, "d", "x")); err != nil {
		t.Fatal(err)
	}
	list(map[string][]string{"c": {"w2"}, "d": {"x"}})
	if err := os.Rename(c, filepath.Join(mnt, "e")); err != nil {
		t.Fatal(err)
	}
	list(map[string][]string{"": {MetadataName, "a", "d", "e"}, "e": {"w2"}})
	if err := os.Remove(filepath.Join(mnt, "e", "w2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(mnt, "e")); err != nil {
		t.Fatal(err)
	}
	list(map[string][]string{"": {MetadataName, "a", "d"}})
}

// npyFile writes a .npy of four F32 values to a file outside the mount.
func npyFile(t *testing.T) string {
	t.Helper()
	h, err := npy.Header("F32", []uint64{4})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "x.npy")
	if err := os.WriteFile(p, append(h, make([]byte, 16)...), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestListingShowsTensorsMadeByUpload: a .npy written into the mount becomes
// a tensor when it is closed; the daemon adds that name itself, so the
// kernel's cached listing must be dropped before the close returns.
func TestListingShowsTensorsMadeByUpload(t *testing.T) {
	src := npyFile(t)
	for _, listViews := range []bool{false, true} {
		t.Run(fmt.Sprintf("npy=%v", listViews), func(t *testing.T) {
			mnt := mountTest(t, writeCheckpoint(t, "a.w"), listViews)
			a := filepath.Join(mnt, "a")
			want := []string{"w"}
			if listViews {
				want = append(want, "w.npy")
			}
			for range 2 {
				wantNames(t, "a", names(t, a), want...)
			}
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			for i, name := range []string{"new", "newer"} {
				// A lookup of the name before it exists is cached too.
				if _, err := os.Stat(filepath.Join(a, name)); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("stat %s before the upload: %v", name, err)
				}
				// Someone lists the directory while the .npy is being
				// written: the kernel caches a listing without the new
				// tensor, which exists only once the file is closed.
				f, err := os.Create(filepath.Join(a, name+".npy"))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { f.Close() })
				if _, err := f.Write(b); err != nil {
					t.Fatal(err)
				}
				// In this process: a child would close its copy of the
				// descriptor at exec, and that close commits the upload.
				if got := names(t, a); slices.Contains(got, name) {
					t.Fatalf("%s listed before its upload was closed: %q", name, got)
				}
				if err := f.Close(); err != nil {
					t.Fatalf("closing the upload: %v", err)
				}
				want = append(want, name)
				if listViews {
					want = append(want, name+".npy")
				}
				wantNames(t, fmt.Sprintf("ls after upload %d", i), lsNames(t, a), want...)
				wantNames(t, fmt.Sprintf("getdents after upload %d", i), names(t, a), want...)
				if st, err := os.Stat(filepath.Join(a, name)); err != nil || st.Size() != 16 {
					t.Fatalf("stat of the uploaded tensor: %v, %v", st, err)
				}
			}
		})
	}
}

// TestListingLargeDirectory: a directory larger than one READDIR reply is
// read in several requests, each continuing where the last stopped; every
// entry must come exactly once, and again from the cache.
func TestListingLargeDirectory(t *testing.T) {
	const n = 3000
	keys := make([]string, n)
	want := make([]string, 0, 2*n)
	for i := range keys {
		keys[i] = "big.t" + strconv.Itoa(i)
		want = append(want, "t"+strconv.Itoa(i), "t"+strconv.Itoa(i)+".npy")
	}
	mnt := mountTest(t, writeCheckpoint(t, keys...), true)
	for range 2 {
		wantNames(t, "big", names(t, filepath.Join(mnt, "big")), want...)
	}
	// ls -l also stats every entry: the sizes come with the listing.
	out, err := exec.Command("ls", "-l", filepath.Join(mnt, "big")).Output()
	if err != nil {
		t.Fatal(err)
	}
	files := regexp.MustCompile(`(?m)^-rw-r--r-- 1 \S+ \S+ +(\d+) .* (t\d+(\.npy)?)$`).FindAllStringSubmatch(string(out), -1)
	if len(files) != 2*n {
		t.Fatalf("ls -l printed %d files, want %d:\n%.500s", len(files), 2*n, out)
	}
	for _, f := range files {
		if size := map[bool]string{false: "16", true: "144"}[f[3] != ""]; f[1] != size {
			t.Fatalf("ls -l: %s has size %s, want %s", f[2], f[1], size)
		}
	}
}

// TestXattrNamespaces: the mount has only user.* attributes. Asked for a
// security label or an ACL it says "not supported", which is what lets ls
// -l stop asking after the first file instead of making two round trips per
// file.
func TestXattrNamespaces(t *testing.T) {
	keys := make([]string, 50)
	for i := range keys {
		keys[i] = "d.t" + strconv.Itoa(i)
	}
	mnt := mountTest(t, writeCheckpoint(t, keys...), false)
	d := filepath.Join(mnt, "d")
	buf := make([]byte, 256)
	for _, p := range []string{mnt, d, filepath.Join(d, "t0"), filepath.Join(d, "t0.npy")} {
		for _, name := range []string{"security.selinux", "security.capability", "system.posix_acl_access", "system.posix_acl_default", "trusted.x"} {
			if _, err := unix.Getxattr(p, name, buf); !errors.Is(err, unix.EOPNOTSUPP) {
				t.Errorf("getxattr %s %s: %v, want EOPNOTSUPP", p, name, err)
			}
		}
		if _, err := unix.Getxattr(p, "user.nonexistent", buf); !errors.Is(err, unix.ENODATA) {
			t.Errorf("getxattr %s user.nonexistent: %v, want ENODATA", p, err)
		}
	}
	if n, err := unix.Getxattr(filepath.Join(d, "t0"), "user.safetensors.dtype", buf); err != nil || string(buf[:n]) != "F32" {
		t.Errorf("user.safetensors.dtype: %q, %v", buf[:n], err)
	}

	// What ls -l itself asks for, seen from its side.
	if _, err := exec.LookPath("strace"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("strace is needed (apt-get install strace)")
		}
		t.Skip("no strace")
	}
	out, err := exec.Command("strace", "-f", "-e", "trace=getxattr,lgetxattr,listxattr,llistxattr", "-o", "/dev/stdout", "ls", "-l", d).Output()
	if err != nil {
		t.Fatalf("strace ls -l: %v", err)
	}
	calls := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "xattr(") && strings.Contains(l, d) {
			calls++
		}
	}
	if calls == 0 || calls > 4 {
		t.Errorf("ls -l of %d files made %d xattr calls, want 1-4 (once per device, not per file):\n%s", len(keys), calls, out)
	}
}

// fuseRequests counts, by opcode name (FUSE_LOOKUP, ...), the requests the
// kernel sends to the mount at mnt while run runs, read from the kernel's
// fuse_request_send tracepoint in a tracing instance of the test's own. ok
// is false where that cannot be done (not root, no tracefs, a kernel
// without the tracepoint: before 6.15).
func fuseRequests(t *testing.T, mnt string, run func()) (counts map[string]int, ok bool) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(mnt, &st); err != nil {
		t.Fatal(err)
	}
	inst := fmt.Sprintf("/sys/kernel/tracing/instances/safejaxfs-test-%d", os.Getpid())
	if err := os.Mkdir(inst, 0o700); err != nil {
		t.Logf("no tracing instance: %v", err)
		run()
		return nil, false
	}
	defer os.Remove(inst)
	enable := filepath.Join(inst, "events/fuse/fuse_request_send/enable")
	if err := os.WriteFile(enable, []byte("1"), 0); err != nil {
		t.Logf("no fuse tracepoint: %v", err)
		run()
		return nil, false
	}
	run()
	if err := os.WriteFile(enable, []byte("0"), 0); err != nil {
		t.Fatal(err)
	}
	trace, err := os.ReadFile(filepath.Join(inst, "trace"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(trace), "LOST") {
		t.Fatal("the trace lost events")
	}
	re := regexp.MustCompile(fmt.Sprintf(`fuse_request_send: connection %d req \d+ opcode \d+ \((\w+)\)`, unix.Minor(st.Dev)))
	counts = map[string]int{}
	for _, m := range re.FindAllStringSubmatch(string(trace), -1) {
		counts[m[1]]++
	}
	return counts, true
}

// TestStatWalkGetsAttributesWithListings: ls -lR and du stat every file
// they list, so once a walk is seen doing that (plusPolicy) the listings
// carry the files' attributes: the sizes ls prints are right, and the
// files are not looked up one by one (one round trip each).
func TestStatWalkGetsAttributesWithListings(t *testing.T) {
	const dirs = 100
	var src []safetensors.Source
	want := map[string]string{}
	for i := range 2 * dirs {
		key := fmt.Sprintf("layers.%03d.w%d", i/2, i%2)
		src = append(src, safetensors.Source{Key: key, DType: safetensors.F32, Shape: []uint64{uint64(i + 1)}, Data: safetensors.Bytes(make([]byte, 4*(i+1)))})
		want[strings.ReplaceAll(key, ".", "/")] = strconv.Itoa(4 * (i + 1))
	}
	mnt := mountTest(t, writeSources(t, src), false)

	var out []byte
	var err error
	counts, traced := fuseRequests(t, mnt, func() {
		out, err = exec.Command("ls", "-lR", mnt).Output()
	})
	if err != nil {
		t.Fatal(err)
	}
	// ls -lR prints "DIR:" then a line per entry.
	got := map[string]string{}
	dir := ""
	line := regexp.MustCompile(`^-\S+ +\d+ \S+ \S+ +(\d+) .* (w\d)$`)
	for _, l := range strings.Split(string(out), "\n") {
		if d, ok := strings.CutSuffix(l, ":"); ok {
			dir = strings.TrimPrefix(strings.TrimPrefix(d, mnt), "/")
		} else if m := line.FindStringSubmatch(l); m != nil {
			got[dir+"/"+m[2]] = m[1]
		}
	}
	if len(got) != len(want) {
		t.Fatalf("ls -lR printed %d tensors, want %d:\n%.1000s", len(got), len(want), out)
	}
	for k, size := range want {
		if got[k] != size {
			t.Errorf("ls -lR: %s has size %q, want %s", k, got[k], size)
		}
	}
	if !traced {
		t.Skip("the sizes are right; the requests cannot be counted here")
	}
	t.Logf("ls -lR: %v", counts)
	// Looked up one by one: the files of the first listing with files
	// (the root's __metadata__) and of one in probeEvery+1 after it.
	if max := 1 + 2*(1+dirs/(probeEvery+1)+1); counts["FUSE_LOOKUP"] > max {
		t.Errorf("ls -lR of %d files sent %d LOOKUPs, want at most %d (requests: %v)", 2*dirs, counts["FUSE_LOOKUP"], max, counts)
	}
	if counts["FUSE_READDIRPLUS"] < dirs {
		t.Errorf("ls -lR of %d directories sent %d READDIRPLUS (requests: %v)", dirs, counts["FUSE_READDIRPLUS"], counts)
	}
}

// dirents lists dir with getdents64 itself, in a buffer of bufSize bytes
// (os.ReadDir and unix.ParseDirent leave out "." and ".."): each name
// with its inode number, in the order listed.
func dirents(t *testing.T, dir string, bufSize int) (names []string, inos []uint64) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, bufSize)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Fatalf("getdents %s: %v", dir, err)
		}
		if n == 0 {
			return names, inos
		}
		for b := buf[:n]; len(b) > 0; {
			// struct linux_dirent64: ino, off, reclen, type, name.
			reclen := int(binary.LittleEndian.Uint16(b[16:]))
			name := b[19:reclen]
			names = append(names, string(name[:slices.Index(name, 0)]))
			inos = append(inos, binary.LittleEndian.Uint64(b))
			b = b[reclen:]
		}
	}
}

// TestListingHasDots: every directory lists "." and ".." first, once, with
// the inode numbers stat gives the directory and its parent, as on any
// file system (`ls -a`), however many requests the listing takes.
func TestListingHasDots(t *testing.T) {
	keys := []string{"a.b.w", "c"}
	for i := range 500 {
		keys = append(keys, "big.t"+strconv.Itoa(i))
	}
	mnt := mountTest(t, writeCheckpoint(t, keys...), true)
	ino := func(p string) uint64 {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	root := ino(mnt)
	for _, c := range []struct {
		dir     string
		parent  uint64
		entries int
	}{
		{mnt, root, 5}, // __metadata__, a, big, c, c.npy
		{filepath.Join(mnt, "a"), root, 1},
		{filepath.Join(mnt, "a", "b"), ino(filepath.Join(mnt, "a")), 2},
		{filepath.Join(mnt, "big"), root, 2 * 500},
	} {
		for _, size := range []int{512, 64 << 10} {
			got, inos := dirents(t, c.dir, size)
			if len(got) < 2 || got[0] != "." || got[1] != ".." {
				t.Fatalf("%s (getdents of %d bytes) lists %.5q..., want . and .. first", c.dir, size, got)
			}
			if inos[0] != ino(c.dir) || inos[1] != c.parent {
				t.Errorf("%s: . has inode %d and .. %d, want %d and %d", c.dir, inos[0], inos[1], ino(c.dir), c.parent)
			}
			if slices.Contains(got[2:], ".") || slices.Contains(got[2:], "..") || len(got) != 2+c.entries {
				t.Errorf("%s (getdents of %d bytes) lists %d entries, want the dots and %d: %.8q", c.dir, size, len(got), c.entries, got)
			}
		}
	}
}
