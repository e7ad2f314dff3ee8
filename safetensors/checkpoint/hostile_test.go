package checkpoint

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/internal/race"
	"github.com/safejaxfs/safejaxfs/safetensors"
)

// A checkpoint directory is untrusted input (issue 15 items 2 and 3): a
// log beside it may be another checkpoint's, a leftover from before the
// files were replaced, cut short, damaged, crafted, owned by someone
// else; a shard may be a symlink to anything. None of it may ever be
// applied, and nothing outside the directory may ever be written.

// hoCrashWithLog leaves, beside a fresh default checkpoint, the log a
// crash left after acknowledged edits (no compaction yet); it returns the
// checkpoint's path, the model before and after the edits.
func hoCrashWithLog(t *testing.T) (string, *ckModel, *ckModel) {
	t.Helper()
	m := ckDefault()
	path := ckFile(t, m)
	old := m.clone()
	c := ckOpen(t, path, Options{})
	crashScenarios[1].edit(t, c, m)
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	ckAbandon(c)
	if _, ok := Pending(path); !ok {
		t.Fatal("no log left")
	}
	return path, old, m
}

// hoRefused asserts that opening path read-write refuses its log, names
// it, offers the way out, and changes nothing: the files hold want, the
// log is where it was.
func hoRefused(t *testing.T, path string, want func(t *testing.T), what string) {
	t.Helper()
	lpath := walPathOf(path)
	before, _ := os.ReadFile(lpath)
	_, err := Open(path, Options{})
	var le *LogError
	if !errors.As(err, &le) || !errors.Is(err, ErrLogMismatch) && !errors.Is(err, errWALInvalid) && !errors.Is(err, errWALVersion) {
		t.Fatalf("%s: open: %v, want a LogError", what, err)
	}
	if !strings.Contains(err.Error(), lpath) || !strings.Contains(err.Error(), "recover --discard") {
		t.Errorf("%s: the refusal does not name the log and the way out: %v", what, err)
	}
	if after, _ := os.ReadFile(lpath); !bytes.Equal(before, after) {
		t.Errorf("%s: the refused log was changed or moved", what)
	}
	want(t)
	if _, err := Open(path, Options{ReadOnly: true}); err == nil {
		t.Errorf("%s: a read-only open accepted a checkpoint with a log it cannot apply", what)
	}
	// The way out: the log moved aside, not deleted; the files as they are.
	moved, err := Discard(path)
	if err != nil || moved == "" || !strings.Contains(moved, ".stale-") {
		t.Fatalf("%s: Discard: %q, %v", what, moved, err)
	}
	if b, _ := os.ReadFile(moved); !bytes.Equal(b, before) {
		t.Errorf("%s: the log moved aside is not the log", what)
	}
	c, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("%s: open after Discard: %v", what, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	want(t)
}

// A log made for checkpoint A, beside checkpoint B of the same name.
func TestLogFromAnotherCheckpointRefused(t *testing.T) {
	t.Parallel()
	pathA, _, _ := hoCrashWithLog(t)
	mB := ckDefault()
	mB.tensors["other"] = ckTensor{safetensors.U8, []uint64{3}, []byte("bbb")}
	pathB := ckFile(t, mB)
	if err := os.WriteFile(walPathOf(pathB), mustRead(t, walPathOf(pathA)), 0o600); err != nil {
		t.Fatal(err)
	}
	hoRefused(t, pathB, func(t *testing.T) { ckCheckFile(t, pathB, mB, "B") }, "another checkpoint's log")
}

// A leftover log beside a checkpoint replaced since (downloaded again,
// restored from a backup): by a new file, or rewritten in place.
func TestStaleLogRefused(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"new file", "in place"} {
		t.Run(how, func(t *testing.T) {
			path, old, _ := hoCrashWithLog(t)
			b := old.canonical(t)
			switch how {
			case "new file":
				os.WriteFile(path+".dl", b, 0o644)
				if err := os.Rename(path+".dl", path); err != nil {
					t.Fatal(err)
				}
			case "in place":
				if err := os.WriteFile(path, b, 0o644); err != nil { // O_TRUNC: same inode, new mtime
					t.Fatal(err)
				}
			}
			hoRefused(t, path, func(t *testing.T) { ckCheckFile(t, path, old, "the replaced file") }, how)
		})
	}
}

// A log whose compaction was committed (the item's exact case: finishing
// it would rename or patch into the new file), beside a checkpoint
// replaced since. Both kinds: files rewritten (renames) and patched in
// place (page checksums tell another version with the same header).
func TestStaleCompactionRefused(t *testing.T) {
	t.Parallel()
	for i, sc := range crashScenarios {
		for _, how := range []string{"new file", "in place"} {
			t.Run(sc.name+"/"+how, func(t *testing.T) {
				m := ckDefault()
				path := ckFile(t, m)
				c := ckOpen(t, path, Options{})
				sc.edit(t, c, m)
				c.hooks = ckCrashAt("log-synced", 2) // the compact record is durable
				if err := c.Compact(); !errors.Is(err, errCkCrash) {
					t.Fatalf("compaction: %v, want the crash", err)
				}
				ckAbandon(c)
				// Another version with the same tensors and header: every
				// byte different.
				other := ckDefault()
				for k, ts := range other.tensors {
					ts.data = ctPattern(uint64(1000+i+len(k)), len(ts.data))
					other.tensors[k] = ts
				}
				b := other.canonical(t)
				switch how {
				case "new file":
					os.WriteFile(path+".dl", b, 0o644)
					if err := os.Rename(path+".dl", path); err != nil {
						t.Fatal(err)
					}
				case "in place":
					f, err := os.OpenFile(path, os.O_WRONLY, 0)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := f.WriteAt(b, 0); err != nil {
						t.Fatal(err)
					}
					f.Truncate(int64(len(b)))
					f.Close()
				}
				hoRefused(t, path, func(t *testing.T) { ckCheckFile(t, path, other, "the other version") }, sc.name+"/"+how)
			})
		}
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hoLogBounds lists the offsets of every record boundary of the log at
// path.
func hoLogBounds(t *testing.T, path string) []int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := scanWAL(f)
	if err != nil {
		t.Fatal(err)
	}
	b := []int64{0, walHead}
	for _, r := range s.recs {
		b = append(b, r.off, r.end)
	}
	return b
}

// hoCuts are the offsets to cut or damage a log of n bytes at: every byte
// within 8 of a record boundary (where a reader's decisions change: heads,
// checksums, lengths), and every 127th byte besides (inside a payload one
// byte is like the next). SAFEJAXFS_EXHAUSTIVE=1 takes every byte.
func hoCuts(bounds []int64, n int64) []int64 {
	seen := map[int64]bool{}
	var out []int64
	add := func(i int64) {
		if i >= 0 && i < n && !seen[i] {
			seen[i] = true
			out = append(out, i)
		}
	}
	stride := int64(127)
	if os.Getenv("SAFEJAXFS_EXHAUSTIVE") == "1" {
		stride = 1
	}
	for _, b := range bounds {
		for d := int64(-8); d <= 8; d++ {
			add(b + d)
		}
	}
	for i := int64(0); i < n; i += stride {
		add(i)
	}
	return out
}

// A log cut at any byte, or with any byte flipped, from a crash after a
// committed compaction: the next open leaves the files exactly as before
// the edits or exactly as after, never anything else, and never fails
// for our own log cut short. A flipped byte may make it refuse the log
// (a record whose checksum holds but whose content does not), never apply
// garbage. Each case crashes afresh, so the log lies beside the very
// files (inodes) it was written for.
func TestDamagedLog(t *testing.T) {
	t.Parallel()
	small := func() *ckModel {
		return &ckModel{tensors: map[string]ckTensor{
			"a": {safetensors.F32, []uint64{4, 8}, ctPattern(1, 128)},
			"b": {safetensors.U8, []uint64{300}, ctPattern(2, 300)},
			"c": {safetensors.I64, []uint64{}, ctPattern(3, 8)},
		}, meta: map[string]string{"format": "flax"}}
	}
	// crash leaves, in a fresh directory, the state a crash right after
	// the compact record became durable leaves: files as before, the log
	// with the edits and the record.
	crash := func(t *testing.T) (path string, old, new *ckModel) {
		m := small()
		path = ckFile(t, m)
		old = m.clone()
		c := ckOpen(t, path, Options{})
		p := ctPattern(9, 20)
		if err := c.WriteAt(ckID(t, c, "b"), p, 100); err != nil {
			t.Fatal(err)
		}
		m.write("b", p, 100)
		if _, err := c.Put("d", safetensors.U8, []uint64{5}, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		m.tensors["d"] = ckTensor{safetensors.U8, []uint64{5}, []byte("hello")}
		if err := c.Rename(ckID(t, c, "c"), "step"); err != nil {
			t.Fatal(err)
		}
		m.tensors["step"] = m.tensors["c"]
		delete(m.tensors, "c")
		if err := c.SetMetadata(map[string]string{"format": "flax", "note": "x"}); err != nil {
			t.Fatal(err)
		}
		m.meta["note"] = "x"
		if err := c.Sync(); err != nil {
			t.Fatal(err)
		}
		c.hooks = ckCrashAt("log-synced", 1) // the compact record is durable
		if err := c.Compact(); !errors.Is(err, errCkCrash) {
			t.Fatalf("compaction: %v, want the crash", err)
		}
		ckAbandon(c)
		return path, old, m
	}
	path, _, _ := crash(t)
	bounds := hoLogBounds(t, walPathOf(path))
	end := bounds[len(bounds)-1] // past the last record: zeros written ahead
	var mu sync.Mutex
	outcomes := map[string]int{}
	count := func(k string) {
		mu.Lock()
		outcomes[k]++
		mu.Unlock()
	}
	try := func(t *testing.T, what string, damage func(log []byte) []byte, mayRefuse bool) {
		path, old, new := crash(t)
		lp := walPathOf(path)
		if err := os.WriteFile(lp, damage(mustRead(t, lp)[:end]), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Open(path, Options{})
		var le *LogError
		switch {
		case err == nil:
			if err := c.Close(); err != nil {
				t.Fatalf("%s: Close: %v", what, err)
			}
		case errors.As(err, &le) && mayRefuse:
			count("refused")
		default:
			t.Fatalf("%s: open: %v", what, err)
		}
		got := mustRead(t, path)
		switch {
		case bytes.Equal(got, old.canonical(t)):
			count("before")
		case bytes.Equal(got, new.canonical(t)):
			count("after")
		default:
			t.Fatalf("%s: the file is neither the state before nor after the edits", what)
		}
	}
	cuts := hoCuts(bounds, end)
	t.Run("cases", func(t *testing.T) {
		for i, n := range cuts {
			if !race.Sample(i, len(cuts)) {
				continue
			}
			t.Run("cut "+itoa(n), func(t *testing.T) {
				t.Parallel()
				try(t, "cut at "+itoa(n), func(log []byte) []byte { return log[:n] }, false)
			})
			t.Run("flip "+itoa(n), func(t *testing.T) {
				t.Parallel()
				try(t, "byte "+itoa(n)+" flipped", func(log []byte) []byte { log[n] ^= 0x5a; return log }, true)
			})
		}
	})
	// A cut before the edits' commit leaves the state before, one after
	// it the state after; some flips make a record the reader refuses.
	if outcomes["before"] == 0 || outcomes["after"] == 0 || outcomes["refused"] == 0 {
		t.Errorf("outcomes %v: every kind should occur", outcomes)
	}
	t.Logf("outcomes over %d damaged logs: %v", 2*len(cuts), outcomes)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// The attack in issue 15 item 3: a downloaded set whose shard is a
// symlink to a file elsewhere, with a planted log that matches that file
// exactly (same inode, size, times and header: what the log checks). A
// read-write open must refuse before writing anything, anywhere.
func TestSymlinkedShardWithPlantedLog(t *testing.T) {
	t.Parallel()
	m := shDefault()
	dir := shFiles(t, m)
	c := ckOpen(t, dir, Options{})
	p := ctPattern(77, 3000)
	if err := c.WriteAt(ckID(t, c, "layers.1.w"), p[:400], 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	ckAbandon(c)
	// The victim's file: the shard, moved out (same inode), linked back.
	outside := filepath.Join(t.TempDir(), "victim.safetensors")
	shard := filepath.Join(dir, "model-00002-of-00003.safetensors")
	if err := os.Rename(shard, outside); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, shard); err != nil {
		t.Fatal(err)
	}
	victim := mustRead(t, outside)
	st0, _ := os.Stat(outside)
	_, err := Open(dir, Options{})
	if err == nil {
		t.Fatal("a read-write open accepted a set with a symlinked shard and a log")
	}
	if got := mustRead(t, outside); !bytes.Equal(got, victim) {
		t.Fatal("the file outside the checkpoint's directory was written")
	}
	if st, _ := os.Stat(outside); !st.ModTime().Equal(st0.ModTime()) {
		t.Error("the file outside the directory was touched")
	}
	ents, _ := os.ReadDir(filepath.Dir(outside))
	if len(ents) != 1 {
		t.Errorf("files appeared outside the directory: %v", ents)
	}
	// Without the log: a read-write open is refused (ErrSymlink), a
	// read-only one reads the set.
	if _, err := Discard(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrSymlink) {
		t.Errorf("read-write open of a set with a symlinked shard: %v, want ErrSymlink", err)
	}
	ro, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only open of a set with a symlinked shard: %v", err)
	}
	ro.Close()
	if got := mustRead(t, outside); !bytes.Equal(got, victim) {
		t.Fatal("the file outside the checkpoint's directory was written")
	}
}

// A shard name whose directory is a symlink leading out.
func TestShardDirectorySymlinkRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "sub")); err != nil {
		t.Fatal(err)
	}
	s := ckDefault()
	if err := os.WriteFile(filepath.Join(outside, "a.safetensors"), s.canonical(t), 0o644); err != nil {
		t.Fatal(err)
	}
	var wm []string
	for k := range s.tensors {
		wm = append(wm, `"`+k+`": "sub/a.safetensors"`)
	}
	idx := `{"metadata": {}, "weight_map": {` + strings.Join(wm, ", ") + `}}`
	if err := os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), []byte(idx), 0o644); err != nil {
		t.Fatal(err)
	}
	before := mustRead(t, filepath.Join(outside, "a.safetensors"))
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrSymlink) {
		t.Errorf("read-write open through a symlinked directory: %v, want ErrSymlink", err)
	}
	ro, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only: %v", err)
	}
	ro.Close()
	if !bytes.Equal(mustRead(t, filepath.Join(outside, "a.safetensors")), before) {
		t.Fatal("written outside")
	}
}

// A checkpoint file with another hard link: writing it in place would
// change the other name too (a backup made with cp -al).
func TestHardLinkedRefused(t *testing.T) {
	t.Parallel()
	m := ckDefault()
	path := ckFile(t, m)
	if err := os.Link(path, filepath.Join(t.TempDir(), "backup.safetensors")); err != nil {
		t.Skipf("no hard links here: %v", err)
	}
	if _, err := Open(path, Options{}); !errors.Is(err, ErrLinked) {
		t.Errorf("read-write open of a file with two links: %v, want ErrLinked", err)
	}
}

// Files named like our temp files that are symlinks: removed (the link),
// never followed.
func TestPlantedTempSymlinkNotFollowed(t *testing.T) {
	t.Parallel()
	m := ckDefault()
	path := ckFile(t, m)
	outside := filepath.Join(t.TempDir(), "precious")
	os.WriteFile(outside, []byte("keep me"), 0o644)
	planted := filepath.Join(filepath.Dir(path), ".model.safetensors"+tmpInfix+"0123456789abcdef")
	if err := os.Symlink(outside, planted); err != nil {
		t.Fatal(err)
	}
	c := ckOpen(t, path, Options{})
	c.Close()
	if string(mustRead(t, outside)) != "keep me" {
		t.Fatal("the planted link was followed")
	}
	if _, err := os.Lstat(planted); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the planted temp link is still there: %v", err)
	}
}

// A crafted log whose compact record names files it may not touch: a
// temp that is not ours, a name leading out, a file the log does not
// have. Refused, nothing touched.
func TestCraftedCompactRecordRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		rec  func(base []walFile) *compactRec
	}{
		{"temp leading out", func([]walFile) *compactRec {
			return &compactRec{renames: []commitRename{{File: 0, Temp: "../.model.safetensors" + tmpInfix + "0123456789abcdef", Size: -1}}}
		}},
		{"temp of another file", func([]walFile) *compactRec {
			return &compactRec{renames: []commitRename{{File: 0, Temp: ".other.safetensors" + tmpInfix + "0123456789abcdef", Size: -1}}}
		}},
		{"a file the log does not have", func([]walFile) *compactRec {
			return &compactRec{renames: []commitRename{{File: 7, Temp: ".model.safetensors" + tmpInfix + "0123456789abcdef", Size: -1}}}
		}},
		{"a patch past the end", func(base []walFile) *compactRec {
			return &compactRec{patches: []patchedFile{{File: 0, Runs: []patchRun{{Off: base[0].size, N: 10, Old: []uint32{0}, New: []uint32{0}}}}}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := ckDefault()
			path := ckFile(t, m)
			d, name := dirOfPath(t, path)
			wf, err := walFileOf(d, name, headerLen(t, path))
			if err != nil {
				t.Fatal(err)
			}
			base := []walFile{wf}
			w, err := createWAL(d, walNameOf(name), base, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.commit([]walRecord{{typ: recCompact, head: compactBody(tc.rec(base))}}, nil); err != nil {
				t.Fatal(err)
			}
			w.close()
			hoRefused(t, path, func(t *testing.T) { ckCheckFile(t, path, m, "the checkpoint") }, tc.name)
		})
	}
}

func headerLen(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	return headerLengthOf(f, st.Size())
}

// A log owned by another user, or writable by others, is not trusted.
func TestForeignLogRefused(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"group-writable", "another owner"} {
		t.Run(how, func(t *testing.T) {
			path, old, _ := hoCrashWithLog(t)
			lp := walPathOf(path)
			switch how {
			case "group-writable":
				os.Chmod(lp, 0o620)
			case "another owner":
				if os.Geteuid() != 0 {
					t.Skip("chown needs root")
				}
				if err := os.Chown(lp, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			}
			hoRefused(t, path, func(t *testing.T) { ckCheckFile(t, path, old, "the checkpoint") }, how)
		})
	}
}

// A log that is a symlink (we never make one).
func TestSymlinkedLogRefused(t *testing.T) {
	t.Parallel()
	path, old, _ := hoCrashWithLog(t)
	lp := walPathOf(path)
	elsewhere := filepath.Join(t.TempDir(), "log")
	if err := os.Rename(lp, elsewhere); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, lp); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path, Options{})
	var le *LogError
	if !errors.As(err, &le) {
		t.Fatalf("open with a symlinked log: %v, want a LogError", err)
	}
	ckCheckFile(t, path, old, "the checkpoint")
}

// The log removed (or replaced) by another program while mounted (issue
// 15 item 8): the next commit writes it again with everything it held, so
// every acknowledged edit survives a crash; a file someone put at its
// name is not overwritten.
func TestLogRemovedWhileMounted(t *testing.T) {
	t.Parallel()
	m := ckDefault()
	path := ckFile(t, m)
	c := ckOpen(t, path, Options{})
	ckVersion(t, c, m, 2, "embed")
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(walPathOf(path)); err != nil {
		t.Fatal(err)
	}
	ckVersion(t, c, m, 3, "step", "params.b")
	if err := c.Sync(); err != nil {
		t.Fatalf("Sync after the log was removed: %v", err)
	}
	ckAbandon(c)
	c = ckOpen(t, path, Options{})
	ckCheckState(t, c, m, "after the crash")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	ckCheckFile(t, path, m, "after Close")

	// Replaced by another file: not overwritten, and the commit fails.
	c = ckOpen(t, path, Options{})
	defer c.Close()
	ckVersion(t, c, m, 4, "embed")
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	theirs := []byte("someone else's file")
	os.WriteFile(walPathOf(path)+".x", theirs, 0o600)
	if err := os.Rename(walPathOf(path)+".x", walPathOf(path)); err != nil {
		t.Fatal(err)
	}
	ckVersion(t, c, m, 5, "step")
	if err := c.Sync(); err == nil {
		t.Error("Sync succeeded with another file at the log's name")
	}
	if !bytes.Equal(mustRead(t, walPathOf(path)), theirs) {
		t.Error("the file put at the log's name was overwritten")
	}
}

// Root writing a user's checkpoint (issue 15 item 10): the log, the new
// file of a rewrite and a recovery file are the checkpoint owner's, so
// the owner can read and remove them.
func TestRootMakesFilesForTheOwner(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	const uid, gid = 65534, 65534
	m := ckDefault()
	path := ckFile(t, m)
	dir := filepath.Dir(path)
	for _, p := range []string{dir, path} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	owner := func(p string) uint32 {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Uid
	}
	c := ckOpen(t, path, Options{})
	crashScenarios[1].edit(t, c, m)
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	if o := owner(walPathOf(path)); o != uid {
		t.Errorf("the log is owned by uid %d, not the checkpoint's owner", o)
	}
	if err := c.Compact(); err != nil {
		t.Fatal(err)
	}
	if o := owner(path); o != uid {
		t.Errorf("the rewritten checkpoint is owned by uid %d", o)
	}
	// Someone else replaces it: the edits go to a recovery file.
	ckVersion(t, c, m, 9, "params.b")
	os.WriteFile(path+".x", m.canonical(t), 0o644)
	os.Chown(path+".x", uid, gid)
	os.Rename(path+".x", path)
	if err := c.Compact(); !errors.Is(err, ErrChanged) {
		t.Fatalf("Compact over a replaced file: %v", err)
	}
	rec := ckRecoveryFiles(t, path)
	if len(rec) != 1 || owner(rec[0]) != uid {
		t.Errorf("recovery files %v: not one, owned by the checkpoint's owner", rec)
	}
	c.Close()
}

// A log swapped for another file after recovery checked it (its owner,
// mode and records) and before it is opened again to replay or finish:
// the file found then is refused, not replayed unchecked. Here the swap
// is an identical copy, so the next open (nothing swapped) shows that
// every edit the log held is still applied.
func TestLogReplacedAfterCheck(t *testing.T) {
	t.Parallel()
	// An in-place write-back reads its patches from the log again.
	for phase, sc := range map[string]crashScenario{"replay": crashScenarios[1], "finish a write-back": crashScenarios[0]} {
		t.Run(phase, func(t *testing.T) {
			m := ckDefault()
			path := ckFile(t, m)
			old := m.clone()
			c := ckOpen(t, path, Options{})
			sc.edit(t, c, m)
			if phase == "replay" {
				if err := c.Sync(); err != nil {
					t.Fatal(err)
				}
			} else {
				c.hooks = ckCrashAt("log-synced", 2) // the compact record is durable
				if err := c.Compact(); !errors.Is(err, errCkCrash) {
					t.Fatalf("compaction: %v, want the crash", err)
				}
			}
			ckAbandon(c)
			lp := walPathOf(path)
			swapped := 0
			swap := &crashHooks{at: func(p string) error {
				if p != "log-checked" {
					return nil
				}
				b, err := os.ReadFile(lp)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(lp+".x", b, 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(lp+".x", lp); err != nil {
					t.Fatal(err)
				}
				swapped++
				return nil
			}}
			_, err := Open(path, Options{hooks: swap})
			if swapped != 1 || !errors.Is(err, ErrLogMismatch) || !strings.Contains(err.Error(), "replaced after it was checked") {
				t.Fatalf("open with the log swapped after its check (%d swaps): %v, want ErrLogMismatch", swapped, err)
			}
			if phase == "replay" {
				ckCheckFile(t, path, old, "the checkpoint after the refusal")
			}
			c = ckOpen(t, path, Options{})
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			ckCheckFile(t, path, m, "the checkpoint recovered from the log")
		})
	}
}
