package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/fs"
	"github.com/safejaxfs/safejaxfs/internal/race"
	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/npy"
)

// Random kill -9 during mixed layout changes (issue 9). The writer does
// what crash_test.go's does (pwrite + fsync, np.save over a tensor, new
// tensors) and also removes tensors, moves subtrees holding several of
// them (across shards in a set), renames tensors over others (rsync's temp
// file, which takes the replaced tensor's dtype and shape), replaces
// __metadata__, reshapes through user.safetensors.shape and asks for a
// write-back (safejaxfs sync), each
// made durable the way a user would: fsync of the directory, close, fsync
// of the file; some changes are left for a later persist to carry.
//
// The writer keeps a model of the checkpoint: the state as of the last
// acknowledgement (a persist that returned success makes every change
// before it durable, as the README says) and the state after each change
// since. After the kill and the next read-write open, the files must be
// valid and canonical and hold exactly one of those states: every
// acknowledged change present; each unacknowledged one whole or absent (a
// moved subtree entirely at its old keys or entirely at its new ones, the
// metadata the acknowledged or the attempted value), never one without
// those made before it; every tensor one whole version.

// mixTensor is a tensor in the model: its bytes are versionBytes(k, v, n),
// or fixed for a tensor the writer never writes.
type mixTensor struct {
	k     int
	v     uint64
	n     int
	dtype string
	shape []uint64 // replaced, never changed in place
	fixed []byte
}

func (m mixTensor) bytes() []byte {
	if m.fixed != nil {
		return m.fixed
	}
	return versionBytes(m.k, m.v, m.n)
}

// holds reports whether b are this tensor's bytes.
func (m mixTensor) holds(b []byte) bool {
	if m.fixed != nil {
		return bytes.Equal(b, m.fixed)
	}
	v, err := versionOf(m.k, b)
	return err == nil && v == m.v && len(b) == m.n
}

func (m mixTensor) String() string {
	if m.fixed != nil {
		return fmt.Sprintf("fixed tensor %d, %s %v", m.k, m.dtype, m.shape)
	}
	return fmt.Sprintf("tensor %d version %d, %s %v", m.k, m.v, m.dtype, m.shape)
}

// mixModel is the checkpoint as the mount shows it: keys and metadata
// (every shard's, in a set whose shards share all their entries).
type mixModel struct {
	tensors map[string]mixTensor
	meta    map[string]string
}

func (m mixModel) clone() mixModel {
	return mixModel{maps.Clone(m.tensors), maps.Clone(m.meta)}
}

// dirs are the directories the model's keys make, with how many tensors
// each holds; "" is the root.
func (m mixModel) dirs() map[string]int {
	d := map[string]int{"": len(m.tensors)}
	for key := range m.tensors {
		for i := range len(key) {
			if key[i] == '.' {
				d[key[:i]]++
			}
		}
	}
	return d
}

// versioned are the keys of the tensors the writer writes, sorted (the
// random choices must not depend on map order).
func (m mixModel) versioned() []string {
	var keys []string
	for k, t := range m.tensors {
		if t.fixed == nil {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// mixChange is a change the writer made, and the model after it.
type mixChange struct {
	kind, what string
	after      mixModel
}

// mixState is the writer's knowledge across rounds.
type mixState struct {
	crashProbe
	ckpt  string
	acked mixModel    // as of the last acknowledgement
	todo  []mixChange // changes since, in order
	cur   mixModel    // after the last change
	// open descriptors of written tensors, by key: only fsync persists
	// through them, so a commit is not always a close.
	fds map[string]*os.File
	// plain are the tensors created as plain files in this mount and not
	// reshaped or replaced since: renamed over a tensor of their size, they
	// take its dtype and shape (rsync's temp file).
	plain map[int]bool
	nextK int
	nextV uint64
	name  int // for new names: never reused, so never a collision
	// shardOf is the shard each tensor was last found in: a tensor stays
	// in its shard, renamed or replaced.
	shardOf map[int]string
	// canary is a file outside the checkpoint's directory, as it was:
	// nothing safejaxfs does may change it (issue 15).
	canary     string
	canaryWas  []byte
	canaryTime time.Time
	// stats
	rounds, acks, pendingLogs, unackedGone, unackedKept, prefixes int
	tried, unacked                                                map[string]int
}

var mixSizes = []int{8, 4096 + 8, 64<<10 + 24, 1<<20 + 8, 2 << 20, 16}

// newMixState makes the checkpoint: tensors in directories of two
// (g.0.a, g.0.b, ...) and three fixed ones under keep; one file, or with
// shards > 1 a set of three where every directory spans two shards and
// every shard holds a fixed tensor. The writer never removes those, so no
// shard is ever emptied (TestCrashAfterShardEmptied tests that case).
func newMixState(t *testing.T, shards int) *mixState {
	st := &mixState{crashProbe: newCrashProbe(), nextV: 1, shardOf: map[int]string{},
		tried: map[string]int{}, unacked: map[string]int{}}
	meta := map[string]string{"framework": "flax"}
	if shards > 1 {
		meta = map[string]string{"format": "pt"}
	}
	m := mixModel{tensors: map[string]mixTensor{}, meta: meta}
	var gen []genTensor
	for k, n := range mixSizes {
		key := fmt.Sprintf("g.%d.%c", k/2, 'a'+k%2)
		m.tensors[key] = mixTensor{k: k, n: n, dtype: "U8", shape: []uint64{uint64(n)}}
		gen = append(gen, raw(key, safetensors.U8, versionBytes(k, 0, n), uint64(n)))
	}
	fixed := []genTensor{f32("keep.kernel", 3, 64, 33), raw("keep.bytes", safetensors.U8, ctBytes(7, 70_001), 70_001),
		raw("keep.half", safetensors.BF16, ctBytes(9, 384), 192)}
	for i, g := range fixed {
		m.tensors[g.key] = mixTensor{k: 900 + i, n: len(g.data), dtype: g.dtype.String(), shape: g.shape, fixed: g.data}
		gen = append(gen, g)
	}
	st.nextK = 1000
	st.acked, st.cur = m, m
	st.canary = filepath.Join(t.TempDir(), "outside.safetensors")
	st.canaryWas = canonical(t, nil, raw("outside", safetensors.U8, ctBytes(11, 5000), 5000))
	if err := os.WriteFile(st.canary, st.canaryWas, 0o644); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(st.canary); err == nil {
		st.canaryTime = fi.ModTime()
	}
	if shards <= 1 {
		st.ckpt = writeCheckpoint(t, "model.safetensors", meta, gen...)
		return st
	}
	parts := make([][]genTensor, shards)
	for i, g := range gen {
		parts[i%shards] = append(parts[i%shards], g)
	}
	st.ckpt = writeShardedSet(t, meta, parts...)
	return st
}

func (st *mixState) sharded() bool { return filepath.Ext(st.ckpt) != ".safetensors" }

func mixPath(mnt, key string) string {
	if key == "" {
		return mnt
	}
	return filepath.Join(mnt, strings.ReplaceAll(key, ".", "/"))
}

func parentKey(key string) string {
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		return key[:i]
	}
	return ""
}

func joinKey(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "." + name
}

// change records a change about to be made: from the moment its request
// may reach the daemon, the daemon may hold it.
func (st *mixState) change(kind, what string, m mixModel) {
	st.tried[kind]++
	st.cur = m
	st.todo = append(st.todo, mixChange{kind, what, m})
}

// persist runs op, an fsync or a close that commits; its success
// acknowledges every change made before it.
func (st *mixState) persist(kind string, n int, op func() error) error {
	st.kind.Store(kind)
	st.signal(n)
	if err := op(); err != nil {
		return err
	}
	st.inPersist.Store(false)
	st.acked, st.todo = st.cur, nil
	st.acks++
	return nil
}

// closeFD closes the descriptor kept open on key, if any: a close of a
// written file persists.
func (st *mixState) closeFD(key string) error {
	f := st.fds[key]
	if f == nil {
		return nil
	}
	delete(st.fds, key)
	return st.persist("close of a written tensor", 0, f.Close)
}

// writeClose writes data to name (created or truncated) and closes it:
// the close commits.
func (st *mixState) writeClose(kind, name string, data []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return st.persist(kind, len(data), f.Close)
}

// fsyncPath opens path read-only and fsyncs it (a directory or a tensor).
func fsyncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// write makes random changes through the mount until an operation fails.
func (st *mixState) write(mnt string, r *rand.Rand) error {
	for {
		var err error
		switch op := r.IntN(18); {
		case op < 3:
			err = st.rewrite(mnt, r)
		case op < 5:
			err = st.replaceNPY(mnt, r)
		case op < 7:
			err = st.create(mnt, r)
		case op < 9:
			err = st.remove(mnt, r)
		case op < 11:
			err = st.move(mnt, r)
		case op < 12:
			err = st.setMeta(mnt)
		case op < 15:
			err = st.reshape(mnt, r)
		case op < 17:
			err = st.renameOver(mnt, r)
		default:
			err = st.writeBack(mnt)
		}
		if err != nil {
			return err
		}
	}
}

func (st *mixState) newVersion() uint64 { st.nextV++; return st.nextV - 1 }

func (st *mixState) newName(prefix string) string {
	st.name++
	return fmt.Sprintf("%s%d", prefix, st.name)
}

// rewrite pwrites a new version of a tensor whole and fsyncs.
func (st *mixState) rewrite(mnt string, r *rand.Rand) error {
	keys := st.cur.versioned()
	key := keys[r.IntN(len(keys))]
	m := st.cur.clone()
	ct := m.tensors[key]
	ct.v = st.newVersion()
	m.tensors[key] = ct
	f := st.fds[key]
	if f == nil {
		var err error
		if f, err = os.OpenFile(mixPath(mnt, key), os.O_WRONLY, 0); err != nil {
			return err
		}
		st.fds[key] = f
	}
	st.change("rewrite", "pwrite "+key, m)
	if _, err := f.WriteAt(ct.bytes(), 0); err != nil {
		return err
	}
	return st.persist("fsync", ct.n, f.Sync)
}

// replaceNPY np.saves a U8 vector of about the tensor's size over it.
func (st *mixState) replaceNPY(mnt string, r *rand.Rand) error {
	keys := st.cur.versioned()
	key := keys[r.IntN(len(keys))]
	if err := st.closeFD(key); err != nil {
		return err
	}
	m := st.cur.clone()
	ct := m.tensors[key]
	ct.v, ct.n = st.newVersion(), max(8, ct.n+8*r.IntN(4)-8*r.IntN(4))
	ct.dtype, ct.shape = "U8", []uint64{uint64(ct.n)}
	m.tensors[key] = ct
	delete(st.plain, ct.k)
	h, err := npy.Header("U8", ct.shape)
	if err != nil {
		return err
	}
	st.change("np.save", "np.save "+key+".npy", m)
	return st.writeClose("np.save close", mixPath(mnt, key)+".npy", append(h, ct.bytes()...))
}

// create adds a tensor, as a plain file or a .npy, in a directory that
// exists or in a new one.
func (st *mixState) create(mnt string, r *rand.Rand) error {
	dirs := sortedKeys(st.cur.dirs())
	dir := dirs[r.IntN(len(dirs))]
	if r.IntN(4) == 0 {
		dir = joinKey(dir, st.newName("d"))
		// mkdir changes nothing a checkpoint stores.
		if err := os.MkdirAll(mixPath(mnt, dir), 0o755); err != nil {
			return err
		}
	}
	key := joinKey(dir, st.newName("n"))
	n := 8 * (1 + r.IntN(2000))
	m := st.cur.clone()
	ct := mixTensor{k: st.nextK, v: st.newVersion(), n: n, dtype: "U8", shape: []uint64{uint64(n)}}
	st.nextK++
	m.tensors[key] = ct
	if r.IntN(2) == 0 {
		h, err := npy.Header("U8", ct.shape)
		if err != nil {
			return err
		}
		st.change("create", "np.save "+key+".npy (new)", m)
		return st.writeClose("create close", mixPath(mnt, key)+".npy", append(h, ct.bytes()...))
	}
	st.plain[ct.k] = true
	st.change("create", "write "+key+" (new)", m)
	return st.writeClose("create close", mixPath(mnt, key), ct.bytes())
}

// remove rm's a tensor, then (mostly) fsyncs its directory.
func (st *mixState) remove(mnt string, r *rand.Rand) error {
	keys := st.cur.versioned()
	if len(keys) <= 4 {
		return st.create(mnt, r)
	}
	key := keys[r.IntN(len(keys))]
	if err := st.closeFD(key); err != nil {
		return err
	}
	m := st.cur.clone()
	delete(m.tensors, key)
	st.change("rm", "rm "+key, m)
	if err := os.Remove(mixPath(mnt, key)); err != nil {
		return err
	}
	return st.maybeFsync(r, "directory fsync", mixPath(mnt, parentKey(key)))
}

// maybeFsync fsyncs path three times in four; otherwise the change waits
// for the next persist.
func (st *mixState) maybeFsync(r *rand.Rand, what, path string) error {
	if r.IntN(4) == 0 {
		return nil
	}
	return st.persist(what, 0, func() error { return fsyncPath(path) })
}

// move renames a directory holding at least two tensors to a new name,
// in its parent or in another directory, then (mostly) fsyncs the
// directory it went to.
func (st *mixState) move(mnt string, r *rand.Rand) error {
	dirs := st.cur.dirs()
	var srcs []string
	for d, n := range dirs {
		if d != "" && n >= 2 {
			srcs = append(srcs, d)
		}
	}
	if len(srcs) == 0 {
		return st.create(mnt, r)
	}
	slices.Sort(srcs)
	src := srcs[r.IntN(len(srcs))]
	var parents []string
	for _, d := range sortedKeys(dirs) {
		if d != src && !strings.HasPrefix(d, src+".") && strings.Count(d, ".") < 3 {
			parents = append(parents, d)
		}
	}
	parent := parents[r.IntN(len(parents))]
	dst := joinKey(parent, st.newName("d"))
	m := st.cur.clone()
	moved := 0
	for key, ct := range st.cur.tensors {
		if strings.HasPrefix(key, src+".") {
			delete(m.tensors, key)
			m.tensors[dst+key[len(src):]] = ct
			moved++
		}
	}
	// Descriptors follow their files.
	for key, f := range st.fds {
		if strings.HasPrefix(key, src+".") {
			delete(st.fds, key)
			st.fds[dst+key[len(src):]] = f
		}
	}
	st.change("mv", fmt.Sprintf("mv %s %s (%d tensors)", src, dst, moved), m)
	if err := os.Rename(mixPath(mnt, src), mixPath(mnt, dst)); err != nil {
		return err
	}
	return st.maybeFsync(r, "directory fsync", mixPath(mnt, parent))
}

// setMeta writes __metadata__ with a new step: acknowledged at close.
func (st *mixState) setMeta(mnt string) error {
	m := st.cur.clone()
	m.meta["step"] = fmt.Sprint(st.newVersion())
	doc, err := json.Marshal(m.meta)
	if err != nil {
		return err
	}
	st.change("metadata", "__metadata__ step "+m.meta["step"], m)
	return st.writeClose("__metadata__ close", filepath.Join(mnt, "__metadata__"), doc)
}

// reshape sets user.safetensors.shape to another shape of the same number
// of elements, then (mostly) fsyncs the file.
func (st *mixState) reshape(mnt string, r *rand.Rand) error {
	keys := sortedKeys(st.cur.tensors)
	key := keys[r.IntN(len(keys))]
	ct := st.cur.tensors[key]
	dt, _ := safetensors.ParseDType(ct.dtype)
	numel := uint64(ct.n * 8 / dt.Bits())
	var shapes [][]uint64
	for _, s := range [][]uint64{{numel}, {numel / 8, 8}, {8, numel / 8}, {numel / 8, 2, 4}, {numel / 3, 3}, {1, numel}} {
		p := uint64(1)
		for _, d := range s {
			p *= d
		}
		if p == numel && !slices.Equal(s, ct.shape) {
			shapes = append(shapes, s)
		}
	}
	ct.shape = shapes[r.IntN(len(shapes))]
	delete(st.plain, ct.k)
	m := st.cur.clone()
	m.tensors[key] = ct
	st.change("reshape", fmt.Sprintf("reshape %s to %v", key, ct.shape), m)
	if err := unix.Setxattr(mixPath(mnt, key), "user.safetensors.shape", []byte(shapeJSONOf(ct.shape)), 0); err != nil {
		return fmt.Errorf("setxattr shape %v on %s: %w", ct.shape, key, err)
	}
	return st.maybeFsync(r, "fsync", mixPath(mnt, key))
}

// renameOver renames a tensor over another, then (mostly) fsyncs the
// directory: half the time rsync's way (a temp file with new bytes of the
// tensor's size, written and closed next to it), else an existing tensor.
func (st *mixState) renameOver(mnt string, r *rand.Rand) error {
	keys := st.cur.versioned()
	if len(keys) < 3 {
		return st.create(mnt, r)
	}
	dst := keys[r.IntN(len(keys))]
	if err := st.closeFD(dst); err != nil {
		return err
	}
	var src string
	if r.IntN(2) == 0 {
		src = joinKey(parentKey(dst), st.newName("r"))
		m := st.cur.clone()
		n := st.cur.tensors[dst].n
		ct := mixTensor{k: st.nextK, v: st.newVersion(), n: n, dtype: "U8", shape: []uint64{uint64(n)}}
		st.nextK++
		m.tensors[src] = ct
		st.plain[ct.k] = true
		st.change("create", "write "+src+" (rsync's temp file)", m)
		if err := st.writeClose("create close", mixPath(mnt, src), ct.bytes()); err != nil {
			return err
		}
	} else {
		for src == "" || src == dst {
			src = keys[r.IntN(len(keys))]
		}
		if err := st.closeFD(src); err != nil {
			return err
		}
	}
	m := st.cur.clone()
	ct, old := m.tensors[src], m.tensors[dst]
	if st.plain[ct.k] && ct.n == old.n {
		ct.dtype, ct.shape = old.dtype, old.shape
		delete(st.plain, ct.k)
	}
	delete(m.tensors, src)
	m.tensors[dst] = ct
	st.change("rename over", fmt.Sprintf("mv %s %s (over %v)", src, dst, old), m)
	if err := os.Rename(mixPath(mnt, src), mixPath(mnt, dst)); err != nil {
		return err
	}
	return st.maybeFsync(r, "directory fsync", mixPath(mnt, parentKey(dst)))
}

// writeBack asks for the write-back now (safejaxfs sync): a compaction,
// which a kill may interrupt. No retry after EINTR: the Go runtime's
// preemption signal (SIGURG) interrupts the setxattr, and the daemon must
// go on with it (fs/interrupt.go); this test once failed on that.
func (st *mixState) writeBack(mnt string) error {
	n := 0
	for _, ct := range st.cur.tensors {
		n += ct.n
	}
	return st.persist("write-back", n, func() error { return unix.Setxattr(mnt, fs.XattrSync, []byte("1"), 0) })
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// round mounts, writes until the kill, kills, and checks.
func (st *mixState) round(t *testing.T, mnt string, r *rand.Rand, maxDelay time.Duration) {
	t.Helper()
	d := startDaemon(t, st.ckpt, mnt)
	st.fds, st.plain = map[string]*os.File{}, map[int]bool{}
	wr := rand.New(rand.NewPCG(r.Uint64(), r.Uint64()))
	// Layout commits are small: aim at any persist, a few milliseconds in.
	killDuringWrites(t, d, &st.crashProbe, r, maxDelay, crashAim{minSize: 0, skip: 8, maxAfter: 6 * time.Millisecond},
		func() error { return st.write(mnt, wr) })
	for _, f := range st.fds {
		f.Close()
	}
	st.check(t)
}

// mixFound is the checkpoint as the files hold it after recovery.
type mixFound struct {
	tensors map[string]foundTensor
	metas   map[string]map[string]string // by file
}

type foundTensor struct {
	dtype string
	shape []uint64
	b     []byte
	file  string
}

// check verifies the checkpoint after a kill (see the top of this file).
func (st *mixState) check(t *testing.T) {
	t.Helper()
	st.rounds++
	// verify passes, or refuses because a log awaits the next read-write
	// open.
	r := cli(t, "verify", st.ckpt)
	if _, pending := checkpoint.Pending(st.ckpt); pending {
		st.pendingLogs++
		if r.code != exitInvalid || !strings.Contains(r.stderr, "interrupted") {
			t.Errorf("verify with a write-back pending: exit %d %q", r.code, r.stderr)
		}
	} else if r.code != 0 {
		t.Fatalf("verify after the kill, nothing pending: exit %d: %s", r.code, r.stderr)
	}
	// A symlink to the file outside, named like one of our temp files:
	// recovery removes stale temp files, and must remove this one as a
	// link, never follow it.
	main := filepath.Base(st.ckpt)
	dir0 := filepath.Dir(st.ckpt)
	if st.sharded() {
		main, dir0 = indexName, st.ckpt
	}
	planted := filepath.Join(dir0, "."+main+".safejaxfs-tmp-0123456789abcdef")
	os.Remove(planted)
	if err := os.Symlink(st.canary, planted); err != nil {
		t.Fatal(err)
	}
	// The next read-write open recovers: through a mount now and then, as
	// a user would, else directly.
	if st.rounds%4 == 0 {
		unmountOK(t, mount(t, st.ckpt))
	} else {
		c, err := checkpoint.Open(st.ckpt, checkpoint.Options{})
		if err != nil {
			t.Fatalf("read-write open after the kill: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if p, pending := checkpoint.Pending(st.ckpt); pending {
		t.Fatalf("%s is still pending after a read-write open", p)
	}
	if r := cli(t, "verify", st.ckpt); r.code != 0 {
		t.Fatalf("verify after recovery: exit %d: %s", r.code, r.stderr)
	}
	dir := st.ckpt
	if !st.sharded() {
		dir = filepath.Dir(st.ckpt)
	}
	if tmps, _ := filepath.Glob(filepath.Join(dir, ".*safejaxfs-tmp-*")); len(tmps) > 0 {
		t.Errorf("temp files left after a read-write open: %v", tmps)
	}
	if logs, _ := filepath.Glob(filepath.Join(dir, ".*safejaxfs-log*")); len(logs) > 0 {
		t.Errorf("logs left after a read-write open: %v", logs)
	}
	// Nothing outside the checkpoint's directory changed.
	if b, err := os.ReadFile(st.canary); err != nil || !bytes.Equal(b, st.canaryWas) {
		t.Fatalf("the file outside the checkpoint's directory changed: %v", err)
	}
	if fi, err := os.Stat(st.canary); err != nil || !fi.ModTime().Equal(st.canaryTime) {
		t.Fatalf("the file outside the checkpoint's directory was touched: %v", err)
	}

	found := st.read(t)
	// Every tensor of the writer's is one whole version.
	for key, ft := range found.tensors {
		if len(ft.b) >= 8 && ft.b[7] == versionMagic && !st.isFixed(ft.b) {
			k := int(binary.LittleEndian.Uint64(ft.b) >> 40 & 0xffff)
			if _, err := versionOf(k, ft.b); err != nil {
				t.Fatalf("%s (tensor %d): %v", key, k, err)
			}
		}
	}
	cands := append([]mixChange{{"", "the last acknowledged state", st.acked}}, st.todo...)
	at := -1
	for i := len(cands) - 1; i >= 0; i-- {
		if found.is(cands[i].after) {
			at = i
			break
		}
	}
	if at < 0 {
		var b strings.Builder
		fmt.Fprintf(&b, "after the kill the checkpoint holds no state the writer produced since its last acknowledgement\n")
		fmt.Fprintf(&b, "against the acknowledged state:\n%s", found.diff(st.acked))
		for i, c := range st.todo {
			fmt.Fprintf(&b, "unacknowledged change %d: %s; against the state after it:\n%s", i+1, c.what, found.diff(c.after))
		}
		t.Fatal(b.String())
	}
	for i, c := range st.todo {
		st.unacked[c.kind]++
		if i < at {
			st.unackedKept++
		} else {
			st.unackedGone++
		}
	}
	if at > 0 && at < len(cands)-1 {
		st.prefixes++
	}
	st.checkShards(t, found, cands[at].after)
	// The next round starts from what the files hold.
	st.acked, st.cur, st.todo = cands[at].after, cands[at].after, nil
}

// isFixed reports whether b are the bytes of one of the tensors the
// writer never writes (random bytes may look like a version word).
func (st *mixState) isFixed(b []byte) bool {
	for _, ct := range st.acked.tensors {
		if ct.fixed != nil && bytes.Equal(b, ct.fixed) {
			return true
		}
	}
	return false
}

// read parses every file of the checkpoint independently of our parser,
// checks each is the canonical writer's bytes for what it holds, and, for
// a set, that the index agrees with the shards.
func (st *mixState) read(t *testing.T) *mixFound {
	t.Helper()
	files := []string{st.ckpt}
	if st.sharded() {
		var err error
		files, err = filepath.Glob(filepath.Join(st.ckpt, "model-*.safetensors"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no shards in %s: %v", st.ckpt, err)
		}
	}
	named := st.indexedShards(t)
	found := &mixFound{tensors: map[string]foundTensor{}, metas: map[string]map[string]string{}}
	owner := map[string]string{}
	all := map[string]rawEntry{}
	for _, f := range files {
		entries, meta, data := rawHeader(t, f)
		if named != nil && !named[filepath.Base(f)] {
			// A shard whose last tensor was removed left the set: it
			// stays, valid and empty, and nothing updates it since.
			if len(entries) > 0 {
				t.Fatalf("%s holds %d tensors, but the index does not name it", f, len(entries))
			}
			checkFile(t, f, meta)
			continue
		}
		found.metas[f] = meta
		var gen []genTensor
		for key, e := range entries {
			if prev, ok := owner[key]; ok {
				t.Fatalf("%q is in two files: %s and %s", key, prev, f)
			}
			dt, ok := safetensors.ParseDType(e.DType)
			if !ok {
				t.Fatalf("%s: %s: dtype %q", f, key, e.DType)
			}
			b := data[e.Offsets[0]:e.Offsets[1]]
			owner[key], all[key] = f, e
			found.tensors[key] = foundTensor{e.DType, e.Shape, b, filepath.Base(f)}
			gen = append(gen, genTensor{key, dt, e.Shape, b})
		}
		checkFile(t, f, meta, gen...)
	}
	if st.sharded() {
		checkIndex(t, st.ckpt, owner, all)
	}
	return found
}

// indexedShards are the shard files the set's index names (nil for one
// file).
func (st *mixState) indexedShards(t *testing.T) map[string]bool {
	t.Helper()
	if !st.sharded() {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(st.ckpt, indexName))
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatalf("the index is not JSON: %v", err)
	}
	named := map[string]bool{}
	for _, f := range idx.WeightMap {
		named[f] = true
	}
	return named
}

// is reports whether the files hold exactly the model's state.
func (f *mixFound) is(m mixModel) bool {
	if len(f.tensors) != len(m.tensors) {
		return false
	}
	for key, ct := range m.tensors {
		ft, ok := f.tensors[key]
		if !ok || ft.dtype != ct.dtype || !slices.Equal(ft.shape, ct.shape) || !ct.holds(ft.b) {
			return false
		}
	}
	for _, meta := range f.metas {
		if !maps.Equal(meta, m.meta) {
			return false
		}
	}
	return true
}

// diff says how the files differ from the model's state.
func (f *mixFound) diff(m mixModel) string {
	var b strings.Builder
	for _, key := range sortedKeys(m.tensors) {
		ct := m.tensors[key]
		ft, ok := f.tensors[key]
		switch {
		case !ok:
			fmt.Fprintf(&b, "  %s: missing (%v)\n", key, ct)
		case ft.dtype != ct.dtype || !slices.Equal(ft.shape, ct.shape) || !ct.holds(ft.b):
			fmt.Fprintf(&b, "  %s: holds %s, want %v\n", key, describeBytes(ft), ct)
		}
	}
	for _, key := range sortedKeys(f.tensors) {
		if _, ok := m.tensors[key]; !ok {
			fmt.Fprintf(&b, "  %s: there, holding %s; not in this state\n", key, describeBytes(f.tensors[key]))
		}
	}
	for file, meta := range f.metas {
		if !maps.Equal(meta, m.meta) {
			fmt.Fprintf(&b, "  %s: metadata %v, want %v\n", filepath.Base(file), meta, m.meta)
		}
	}
	if b.Len() == 0 {
		return "  (no difference)\n"
	}
	return b.String()
}

func describeBytes(ft foundTensor) string {
	s := fmt.Sprintf("%s %v, %d bytes", ft.dtype, ft.shape, len(ft.b))
	if len(ft.b) >= 8 && ft.b[7] == versionMagic {
		w := binary.LittleEndian.Uint64(ft.b)
		return fmt.Sprintf("tensor %d version %d (%s)", w>>40&0xffff, w&(1<<40-1), s)
	}
	return s
}

// checkShards: in a set, a tensor stays in the shard it was in, whatever
// its key becomes.
func (st *mixState) checkShards(t *testing.T, found *mixFound, m mixModel) {
	t.Helper()
	if !st.sharded() {
		return
	}
	for key, ct := range m.tensors {
		file := found.tensors[key].file
		if prev, ok := st.shardOf[ct.k]; ok && prev != file {
			t.Errorf("%s (tensor %d) moved from %s to %s", key, ct.k, prev, file)
		}
		st.shardOf[ct.k] = file
	}
}

// runMixRounds runs a fixed number of rounds, as runCrashRounds does.
func runMixRounds(t *testing.T, shards int, seed uint64, rounds int, maxDelay time.Duration) {
	st := newMixState(t, shards)
	mnt := newMountpoint(t)
	r := rand.New(rand.NewPCG(seed, seed))
	start := time.Now()
	for range race.Rounds(rounds) {
		st.round(t, mnt, r, maxDelay)
	}
	t.Logf("%d rounds in %v: %d persists acknowledged, %d kills during a persist, %d left a log to recover from, %d left the daemon stuck on its own mount (connection aborted)",
		st.rounds, time.Since(start).Round(time.Millisecond), st.acks, st.killsInPersist, st.pendingLogs, st.aborted)
	t.Logf("kills during a persist, by kind: %v", st.killsIn)
	t.Logf("changes made: %v; unacknowledged at the kill: %v; of those %d found applied, %d not (%d rounds stopped between two unacknowledged changes)",
		st.tried, st.unacked, st.unackedKept, st.unackedGone, st.prefixes)
}

// Mixed layout changes on one file, killed at random.
func TestCrashKillDuringLayoutChanges(t *testing.T) {
	if !isolated(t) {
		return
	}
	runMixRounds(t, 1, 4, 35, 400*time.Millisecond)
}

// The same mix on a set of three shards: moved directories span shards,
// metadata goes to every shard, and the index follows.
func TestCrashKillDuringShardedLayoutChanges(t *testing.T) {
	if !isolated(t) {
		return
	}
	runMixRounds(t, 3, 5, 31, 400*time.Millisecond)
}

// A rename over an existing tensor is one POSIX operation: after a crash
// the name holds the old tensor or the new one, never nothing. Threads
// rename w<j>/1, w<j>/2, ... over w<j>/b (one directory each, so the
// kernel runs them side by side) while another fsyncs a tensor in a loop
// (so commits land at any moment), and the daemon is killed.
//
// (It failed in most runs while fs's Rename removed the tensor renamed
// over and renamed in two checkpoint steps; checkpoint.Move does both, and
// the dtype a plain file takes from the tensor it replaces, in one.)
func TestCrashKillDuringRenamesOver(t *testing.T) {
	if !isolated(t) {
		return
	}
	const dirs, n, runs = 4, 400, 46 // runs: what its 20 s budget allowed on 2 cores
	mnt := newMountpoint(t)
	r := rand.New(rand.NewPCG(6, 6))
	rounds, moved := 0, 0
	for rounds < race.Rounds(runs) {
		rounds++
		gen := []genTensor{raw("z", safetensors.U8, make([]byte, 8), 8)}
		for j := range dirs {
			for i := 0; i <= n; i++ {
				key := fmt.Sprintf("w%d.%d", j, i)
				if i == 0 {
					key = fmt.Sprintf("w%d.b", j)
				}
				gen = append(gen, raw(key, safetensors.U8, versionBytes(i, 0, 64), 64))
			}
		}
		ckpt := writeCheckpoint(t, "model.safetensors", nil, gen...)
		d := startDaemon(t, ckpt, mnt)
		stop := make(chan struct{})
		errs := make(chan error, dirs+1)
		// The kill comes once k renames have returned (with others
		// under way), not after some time: as many renames on any
		// machine, however fast or loaded.
		k := int64(r.IntN(24))
		var renamed atomic.Int64
		reached := make(chan struct{})
		if k == 0 {
			close(reached)
		}
		for j := range dirs {
			go func() {
				dir := filepath.Join(mnt, fmt.Sprintf("w%d", j))
				for i := 1; i <= n; i++ {
					if err := os.Rename(filepath.Join(dir, fmt.Sprint(i)), filepath.Join(dir, "b")); err != nil {
						errs <- err
						return
					}
					if renamed.Add(1) == k {
						close(reached)
					}
				}
				errs <- nil
			}()
		}
		go func() {
			// Not a directory: the kernel holds a directory's lock
			// through its fsync, and the renames would wait for it.
			f, err := os.Open(filepath.Join(mnt, "z"))
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			for {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				if err := f.Sync(); err != nil {
					errs <- err
					return
				}
			}
		}()
		select {
		case <-reached:
		case err := <-errs:
			d.kill9(t)
			t.Fatalf("round %d: a rename through the live mount failed: %v", rounds, err)
		case <-time.After(time.Minute):
			d.kill9(t)
			t.Fatalf("round %d: %d renames in a minute, waiting for %d", rounds, renamed.Load(), k)
		}
		d.kill9(t)
		close(stop)
		for range dirs + 1 {
			<-errs
		}
		d.detach(t)
		c, err := checkpoint.Open(ckpt, checkpoint.Options{})
		if err != nil {
			t.Fatalf("read-write open after the kill: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		entries, _, data := rawHeader(t, ckpt)
		for j := range dirs {
			e, ok := entries[fmt.Sprintf("w%d.b", j)]
			if !ok {
				left := -1
				for i := n; i >= 1; i-- {
					if _, ok := entries[fmt.Sprintf("w%d.%d", j, i)]; ok {
						left = i
					}
				}
				t.Fatalf("round %d: w%d/b is gone after the kill: w%d/1..%d were renamed over it, w%d/%d is still there", rounds, j, j, left-1, j, left)
			}
			b := data[e.Offsets[0]:e.Offsets[1]]
			k := int(binary.LittleEndian.Uint64(b) >> 40 & 0xffff)
			if _, err := versionOf(k, b); err != nil {
				t.Fatalf("round %d: w%d/b: %v", rounds, j, err)
			}
			for i := 1; i <= n; i++ {
				if _, ok := entries[fmt.Sprintf("w%d.%d", j, i)]; ok != (i > k) {
					t.Fatalf("round %d: w%d/b holds what was w%d/%d, and w%d/%d exists: %v", rounds, j, j, k, j, i, ok)
				}
			}
			moved += k
		}
	}
	t.Logf("%d rounds, %d renames over an existing tensor found durable", rounds, moved)
}

// A shard emptied and written back leaves the set (the index cannot name
// a file without tensors), but the mount keeps it among its files: the
// next log's first record names all of them. After a crash the next
// read-write open must replay that log over the files it names, the
// emptied shard included, and not set it aside with every edit
// acknowledged since the write-back in it (it did, once).
func TestCrashAfterShardEmptied(t *testing.T) {
	if !isolated(t) {
		return
	}
	dir := writeShardedSet(t, map[string]string{"format": "pt"},
		[]genTensor{raw("a.x", safetensors.U8, versionBytes(1, 0, 64), 64)},
		[]genTensor{raw("b.x", safetensors.U8, versionBytes(2, 0, 64), 64)},
		[]genTensor{raw("c.x", safetensors.U8, versionBytes(3, 0, 64), 64)})
	mnt := newMountpoint(t)
	d := startDaemon(t, dir, mnt)
	if err := os.Remove(filepath.Join(mnt, "b", "x")); err != nil {
		t.Fatal(err)
	}
	if r := cli(t, "sync", mnt); r.code != 0 {
		t.Fatalf("sync: exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, shardName(1, 3))); err != nil {
		t.Fatalf("the emptied shard is gone: %v", err)
	}
	// An edit acknowledged after the write-back.
	f, err := os.OpenFile(filepath.Join(mnt, "a", "x"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(versionBytes(1, 1, 64), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	d.kill9(t)
	d.detach(t)
	c, err := checkpoint.Open(dir, checkpoint.Options{})
	if err != nil {
		t.Fatalf("read-write open after the kill: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	entries, _, data := rawHeader(t, filepath.Join(dir, shardName(0, 3)))
	e := entries["a.x"]
	if v, err := versionOf(1, data[e.Offsets[0]:e.Offsets[1]]); err != nil || v != 1 {
		t.Fatalf("a.x holds version %d (%v), but version 1 was acknowledged by fsync", v, err)
	}
}
