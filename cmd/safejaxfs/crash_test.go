package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/safejaxfs/safejaxfs/fs"
	"github.com/safejaxfs/safejaxfs/internal/race"
	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/npy"
)

// Fault injection end to end: a daemon serving a read-write mount is killed
// with SIGKILL at a random moment while a writer in this process rewrites
// whole tensors through the mount and fsyncs. Afterwards the checkpoint must
// be valid once the next read-write open has replayed any journal, every
// tensor must hold exactly one version (never a mix), and no tensor may be
// older than the last version an fsync (or close) acknowledged.

// ---- a daemon in the foreground, as a child of the test ----

// fgDaemon is a mount served by `safejaxfs mount -f` run as a child of the
// test: the test can kill it, reap it and read what it printed.
type fgDaemon struct {
	cmd  *exec.Cmd
	mnt  string
	pid  int // as the mount root's user.safejaxfs.pid says
	out  *lockedBuffer
	done chan struct{} // closed once the process has exited and was reaped
	err  error         // from Wait; read after done
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newMountpoint makes an empty directory to mount on.
func newMountpoint(t testing.TB) string {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	return mnt
}

// startDaemon mounts ckpt at mnt in the foreground and returns once the
// mount answers. Race reports of the daemon go to its stderr (out), not to
// the files TestMain collects, so the test that provoked them can fail on
// them. Whatever happens, the mount is gone when the test ends.
func startDaemon(t testing.TB, ckpt, mnt string, flags ...string) *fgDaemon {
	t.Helper()
	args := append([]string{"mount", "--foreground"}, flags...)
	cmd := exec.Command(os.Args[0], append(args, ckpt, mnt)...)
	// The last GORACE wins over the one TestMain set.
	cmd.Env = append(os.Environ(), asCLIEnv+"=1", "GORACE=atexit_sleep_ms=0")
	d := &fgDaemon{cmd: cmd, mnt: mnt, out: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = d.out, d.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() { d.cleanup(t) })
	deadline := time.Now().Add(60 * time.Second)
	for {
		// Ready once it says so: before that, go-fuse's start-up probe
		// may hold a file of the mount open in the daemon, and a kill
		// then leaves a mount that hangs (the dying daemon waits on its
		// own flush) instead of a dead one.
		if pid := daemonPID(mnt); pid != 0 && strings.Contains(d.out.String(), " mounted at ") {
			if pid != cmd.Process.Pid {
				t.Fatalf("the mount says its daemon is pid %d, but it is %d", pid, cmd.Process.Pid)
			}
			d.pid = pid
			return d
		}
		select {
		case <-d.done:
			t.Fatalf("daemon exited before the mount answered: %v\n%s", d.err, d.out)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("mount at %s did not answer within a minute\n%s", mnt, d.out)
		}
	}
}

// kill9 kills the daemon as abruptly as possible and reaps it. The mount
// stays (dead: every request fails with ENOTCONN) until detach, so a
// writer still running cannot write into the mountpoint's directory
// instead. It reports whether the killed daemon was stuck on its own
// mount and its FUSE connection had to be aborted (see stuckOnMount).
func (d *fgDaemon) kill9(t testing.TB) (aborted bool) {
	t.Helper()
	if err := syscall.Kill(d.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); ; {
		select {
		case <-d.done:
		case <-time.After(20 * time.Millisecond):
			if !stuckOnMount(d.pid) && time.Since(start) < 10*time.Second {
				continue
			}
			// What `safejaxfs unmount` does with a mount that does
			// not answer: the waiting requests fail, the daemon
			// finishes dying.
			if err := abortConnectionOf(d.mnt); err != nil {
				t.Logf("aborting the connection of %s: %v", d.mnt, err)
			}
			aborted = true
			d.wait(t, 30*time.Second)
		}
		break
	}
	return aborted
}

// detach detaches the dead mount a killed daemon left (umount -l); the
// mountpoint must be as empty as it was.
func (d *fgDaemon) detach(t testing.TB) {
	t.Helper()
	lazyUnmount(d.mnt)
	if mounted(t, d.mnt) {
		t.Fatalf("%s still mounted after the daemon was killed and the mount detached", d.mnt)
	}
	if names, err := os.ReadDir(d.mnt); err != nil || len(names) > 0 {
		t.Fatalf("the mountpoint %s holds %v (%v): something wrote into it after the mount was gone", d.mnt, names, err)
	}
}

// abortConnectionOf aborts the FUSE connection of the mount at mnt (found
// through the mount table, without touching the mount), leaving the mount
// in place.
func abortConnectionOf(mnt string) error {
	m, found, err := fs.FindMount(mnt)
	if err != nil || !found {
		return fmt.Errorf("%s not in the mount table: %v", mnt, err)
	}
	_, minor, ok := strings.Cut(m.Dev, ":")
	if !ok {
		return fmt.Errorf("%s: device %q", mnt, m.Dev)
	}
	return abortConnection(minor)
}

// stuckOnMount reports whether a thread of the killed process pid waits,
// uninterruptibly, in a notification to the kernel about its own mount
// (go-fuse's NotifyEntry after a rename or create, which waits for the
// directory's lock): a request of the writer holds that lock while it
// waits for the daemon's answer, so the daemon cannot finish dying, its
// /dev/fuse descriptor is never closed, and the writer waits forever.
func stuckOnMount(pid int) bool {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/wchan", pid))
	for _, w := range tasks {
		if b, err := os.ReadFile(w); err == nil && strings.HasPrefix(string(b), "fuse_reverse_inval") {
			return true
		}
	}
	return false
}

// wait waits for the daemon to exit.
func (d *fgDaemon) wait(t testing.TB, limit time.Duration) {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(limit):
		d.cmd.Process.Kill()
		abortConnectionOf(d.mnt) // else a daemon stuck on its own mount never exits
		<-d.done
		t.Fatalf("daemon did not exit within %v\n%s", limit, d.out)
	}
}

// cleanup is the safety net: a daemon still serving is unmounted (killed if
// that fails), and a mount still in the table is detached. A race the
// daemon reported (on its stderr, which SIGKILL does not lose) fails the
// test.
func (d *fgDaemon) cleanup(t testing.TB) {
	defer func() {
		if out := d.out.String(); strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("the daemon at %s reported a data race:\n%s", d.mnt, out)
		}
	}()
	select {
	case <-d.done:
	default:
		if r := cli(t, "unmount", d.mnt); r.code != 0 {
			d.cmd.Process.Kill()
		}
		select {
		case <-d.done:
		case <-time.After(30 * time.Second):
			d.cmd.Process.Kill()
			<-d.done
		}
	}
	if mounted(t, d.mnt) {
		lazyUnmount(d.mnt)
	}
}

// ---- versioned tensors ----

// Every byte of a tensor in one version comes from the 8-byte word
// versionWord(k, v) repeated, so a tensor holding parts of two versions, or
// bytes of another tensor, shows.
const versionMagic = 0xA5

func versionWord(k int, v uint64) uint64 { return versionMagic<<56 | uint64(k)<<40 | v }

func versionBytes(k int, v uint64, n int) []byte {
	b := make([]byte, n)
	fillWords(b, versionWord(k, v))
	return b
}

// fillWords repeats the 8-byte word w over b's whole words (a tail of
// fewer than 8 bytes stays zero), by doubling copies: cheap under -race,
// which checks a copy once rather than each word stored.
func fillWords(b []byte, w uint64) {
	n := len(b) - len(b)%8
	if n == 0 {
		return
	}
	binary.LittleEndian.PutUint64(b, w)
	for f := 8; f < n; f *= 2 {
		copy(b[f:n], b[:f])
	}
}

// versionOf decodes a tensor's bytes: the one version they all belong to,
// or an error saying how they are torn.
func versionOf(k int, b []byte) (uint64, error) {
	if len(b) == 0 || len(b)%8 != 0 {
		return 0, fmt.Errorf("%d bytes, not a whole number of version words", len(b))
	}
	w := binary.LittleEndian.Uint64(b)
	if w>>56 != versionMagic || int(w>>40&0xffff) != k {
		return 0, fmt.Errorf("first word %#x is not a version of tensor %d", w, k)
	}
	whole := make([]byte, len(b))
	fillWords(whole, w)
	if !bytes.Equal(b, whole) {
		for i := 8; i < len(b); i += 8 {
			if x := binary.LittleEndian.Uint64(b[i:]); x != w {
				return 0, fmt.Errorf("torn: bytes 0-7 are version %d, bytes %d-%d are %#x", w&(1<<40-1), i, i+7, x)
			}
		}
	}
	return w & (1<<40 - 1), nil
}

// crashTensor is one tensor the writer rewrites, with what each version
// looked like and what was acknowledged.
type crashTensor struct {
	key      string
	k        int
	next     uint64         // the next version to write: versions are never reused
	cur      uint64         // the version the daemon holds now (as far as the writer knows)
	acked    uint64         // the newest version an fsync or close acknowledged
	size     map[uint64]int // bytes of each version written
	exists   bool           // acknowledged to exist (new tensors)
	tried    bool           // a write of it was started (new tensors)
	isNew    bool           // created by the writer
	readOnly bool           // never written: must stay byte for byte the same
	fixed    []byte         // the bytes of a readOnly tensor
}

func (c *crashTensor) path(mnt string) string {
	return filepath.Join(mnt, strings.ReplaceAll(c.key, ".", "/"))
}

// crashState is the writer's knowledge across rounds.
type crashState struct {
	ckpt    string
	tensors []*crashTensor
	byKey   map[string]*crashTensor
	layout  bool // the writer also replaces tensors with other sizes and creates new ones
	crashProbe
	// open descriptors of the round's mount, by tensor: kept open so that
	// only fsync persists (a close would persist too and hide an fsync
	// that does not).
	fds map[*crashTensor]*os.File
	// stats
	acks, pendingJournals, aheadOfAck, rounds int
}

// crashProbe is what the killer sees of a writer: persisting gets a
// (non-blocking) signal with the size of the write just before each fsync
// or committing close, so a kill can be aimed at the persistence;
// inPersist is set while one is under way.
type crashProbe struct {
	persisting     chan int
	inPersist      atomic.Bool
	killsInPersist int
	// what persists (a writer may say, before it signals), and the kills
	// during each kind
	kind    atomic.Value
	killsIn map[string]int
	// kills after which the daemon was stuck on its own mount (kill9)
	aborted int
}

func newCrashProbe() crashProbe {
	return crashProbe{persisting: make(chan int, 1), killsIn: map[string]int{}}
}

func (p *crashProbe) signal(n int) {
	p.inPersist.Store(true)
	select {
	case p.persisting <- n:
	default:
	}
}

// newCrashState makes the checkpoint: one file, or with shards > 1 a
// sharded set in a directory (st.ckpt is then the directory).
func newCrashState(t *testing.T, layout bool, sizes []int, shards int) *crashState {
	st := &crashState{layout: layout, byKey: map[string]*crashTensor{}, crashProbe: newCrashProbe()}
	var gen []genTensor
	for k, n := range sizes {
		ct := &crashTensor{key: fmt.Sprintf("t.%d", k), k: k, next: 1, size: map[uint64]int{0: n}}
		st.tensors = append(st.tensors, ct)
		gen = append(gen, raw(ct.key, safetensors.U8, versionBytes(k, 0, n), uint64(n)))
	}
	// Tensors nobody writes: rewrites copy them, in-place commits leave
	// them; either way they must not change.
	for i, g := range []genTensor{f32("keep.kernel", 3, 64, 33), raw("keep.bytes", safetensors.U8, ctBytes(7, 70_001), 70_001)} {
		ct := &crashTensor{key: g.key, k: 900 + i, readOnly: true, fixed: g.data}
		st.tensors = append(st.tensors, ct)
		gen = append(gen, g)
	}
	for _, ct := range st.tensors {
		st.byKey[ct.key] = ct
	}
	if shards <= 1 {
		st.ckpt = writeCheckpoint(t, "model.safetensors", map[string]string{"framework": "flax"}, gen...)
		return st
	}
	// Round-robin over the shards, so every rewrite spans several files.
	parts := make([][]genTensor, shards)
	for i, g := range gen {
		parts[i%shards] = append(parts[i%shards], g)
	}
	st.ckpt = writeShardedSet(t, map[string]string{"format": "pt"}, parts...)
	return st
}

// ctBytes is n seeded pseudo-random bytes.
func ctBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// writer rewrites tensors through the mount until an operation fails. It
// returns that failure; the caller decides whether the daemon was dead by
// then.
func (st *crashState) writer(mnt string, r *rand.Rand) error {
	var writable []*crashTensor
	for _, ct := range st.tensors {
		if !ct.readOnly && !ct.isNew {
			writable = append(writable, ct)
		}
	}
	if st.layout {
		if err := os.MkdirAll(filepath.Join(mnt, "n"), 0o755); err != nil {
			return err
		}
	}
	for {
		ct := writable[r.IntN(len(writable))]
		op := 0
		if st.layout {
			op = r.IntN(5)
		}
		var err error
		switch op {
		case 0, 1: // same layout: pwrite the whole tensor, fsync
			err = st.rewrite(mnt, ct)
		case 2, 3: // np.save of another size over the tensor
			err = st.replaceNPY(mnt, ct, st.size(ct)+8*r.IntN(4)-8*r.IntN(4))
		case 4: // a new tensor: a plain file or a .npy
			err = st.create(mnt, r)
		}
		if err != nil {
			return err
		}
	}
}

// size is the tensor's current size in the daemon.
func (st *crashState) size(ct *crashTensor) int { return ct.size[ct.cur] }

func (st *crashState) rewrite(mnt string, ct *crashTensor) error {
	v := ct.next
	ct.next++
	n := st.size(ct)
	ct.size[v] = n
	f := st.fds[ct]
	if f == nil {
		var err error
		if f, err = os.OpenFile(ct.path(mnt), os.O_WRONLY, 0); err != nil {
			return err
		}
		st.fds[ct] = f
	}
	// One write call: the kernel splits it into requests of up to 1 MiB.
	if _, err := f.WriteAt(versionBytes(ct.k, v, n), 0); err != nil {
		return err
	}
	ct.cur = v
	st.signal(n)
	if err := f.Sync(); err != nil {
		return err
	}
	st.inPersist.Store(false)
	ct.acked = v
	st.acks++
	return nil
}

// writeFile is os.WriteFile with a signal before the close that commits.
func (st *crashState) writeFile(name string, data []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	st.signal(len(data))
	if err := f.Close(); err != nil {
		return err
	}
	st.inPersist.Store(false)
	return nil
}

// replaceNPY writes <tensor>.npy with n bytes (U8 [n]): the tensor is
// replaced when the file is closed, a layout change if n differs.
func (st *crashState) replaceNPY(mnt string, ct *crashTensor, n int) error {
	n = max(n, 8)
	v := ct.next
	ct.next++
	ct.size[v] = n
	h, err := npy.Header("U8", []uint64{uint64(n)})
	if err != nil {
		return err
	}
	// An fd kept open for pwrites would hold a size that is no longer
	// the tensor's: a later write past it would be refused.
	if f := st.fds[ct]; f != nil {
		f.Close()
		delete(st.fds, ct)
	}
	if err := st.writeFile(ct.path(mnt)+".npy", append(h, versionBytes(ct.k, v, n)...)); err != nil {
		return err
	}
	// The close returned success: committed and persisted.
	ct.cur, ct.acked = v, v
	st.acks++
	return nil
}

// create adds a new tensor n.<j>, as a plain file or as a .npy.
func (st *crashState) create(mnt string, r *rand.Rand) error {
	j := len(st.tensors)
	ct := &crashTensor{key: fmt.Sprintf("n.%d", j), k: 1000 + j, next: 2, size: map[uint64]int{}, isNew: true, tried: true}
	st.tensors = append(st.tensors, ct)
	st.byKey[ct.key] = ct
	n := 8 * (1 + r.IntN(2000))
	ct.size[1] = n
	data := versionBytes(ct.k, 1, n)
	if r.IntN(2) == 0 {
		h, err := npy.Header("U8", []uint64{uint64(n)})
		if err != nil {
			return err
		}
		if err := st.writeFile(ct.path(mnt)+".npy", append(h, data...)); err != nil {
			return err
		}
	} else if err := st.writeFile(ct.path(mnt), data); err != nil {
		return err
	}
	ct.cur, ct.acked, ct.exists = 1, 1, true
	st.acks++
	return nil
}

// round mounts, writes until the kill, kills, and checks.
func (st *crashState) round(t *testing.T, mnt string, r *rand.Rand, maxDelay time.Duration) {
	t.Helper()
	d := startDaemon(t, st.ckpt, mnt)
	st.fds = map[*crashTensor]*os.File{}
	wr := rand.New(rand.NewPCG(r.Uint64(), r.Uint64()))
	killDuringWrites(t, d, &st.crashProbe, r, maxDelay, crashAim{minSize: 1 << 20, skip: 3, maxAfter: 15 * time.Millisecond},
		func() error { return st.writer(mnt, wr) })
	for _, f := range st.fds {
		f.Close()
	}
	st.check(t)
}

// crashAim is where an aimed kill lands: maxAfter at most after the start
// of one of the first skip persists of at least minSize bytes.
type crashAim struct {
	minSize, skip int
	maxAfter      time.Duration
}

// killDuringWrites runs write (which writes through d's mount until an
// operation fails) and kills d with SIGKILL: at a random moment within
// maxDelay, or (every other round) aimed at a persist, to land inside the
// persistence more often. It returns once write has returned, failing the
// test if write failed while the daemon was alive.
func killDuringWrites(t *testing.T, d *fgDaemon, p *crashProbe, r *rand.Rand, maxDelay time.Duration, aim crashAim, write func() error) {
	t.Helper()
	var killed atomic.Bool
	werr := make(chan error, 1)
	select {
	case <-p.persisting: // a stale signal of the last round
	default:
	}
	p.inPersist.Store(false)
	go func() {
		// A bug of the writer's fails the test (which then unmounts)
		// instead of taking the test binary down with the mount up.
		defer func() {
			if p := recover(); p != nil {
				werr <- fmt.Errorf("the writer panicked: %v\n%s", p, debug.Stack())
			}
		}()
		werr <- write()
	}()
	var wait <-chan time.Time
	if aimed := r.IntN(2) == 0; aimed {
		skip, after := r.IntN(aim.skip), time.Duration(r.Int64N(int64(aim.maxAfter)))
		for i := 0; i <= skip; {
			select {
			case n := <-p.persisting:
				if n >= aim.minSize {
					i++
				}
			case err := <-werr:
				t.Fatalf("writing through the live mount failed: %v\ndaemon said:\n%s", err, d.out)
			case <-time.After(time.Minute):
				t.Fatal("the writer does not persist")
			}
		}
		wait = time.After(after)
	} else {
		wait = time.After(time.Duration(r.Int64N(int64(maxDelay))))
	}
	select {
	case err := <-werr:
		// Nothing may fail while the daemon is alive.
		t.Fatalf("writing through the live mount failed: %v\ndaemon said:\n%s", err, d.out)
	case <-wait:
	}
	killed.Store(true)
	if p.inPersist.Load() {
		p.killsInPersist++
		if k, _ := p.kind.Load().(string); k != "" {
			p.killsIn[k]++
		}
	}
	if d.kill9(t) {
		p.aborted++
	}
	p.inPersist.Store(false)
	// The writer's requests fail now: wait for it before the mount goes,
	// or its next call would land in the mountpoint's own directory.
	if err := <-werr; err == nil || !killed.Load() {
		t.Fatalf("writer: %v", err)
	}
	d.detach(t)
}

// check verifies the checkpoint after a kill: valid once replayed, every
// tensor one whole version, none older than acknowledged.
func (st *crashState) check(t *testing.T) {
	t.Helper()
	st.rounds++
	// verify either passes, or refuses because a journal awaits replay:
	// a kill during the in-place apply leaves one, and tensors may be torn
	// on disk until a read-write open replays it (as the README says).
	r := cli(t, "verify", st.ckpt)
	if _, pending := checkpoint.Pending(st.ckpt); pending {
		st.pendingJournals++
		if r.code != exitInvalid || !strings.Contains(r.stderr, "interrupted") {
			t.Errorf("verify with a write-back pending: exit %d %q", r.code, r.stderr)
		}
	} else if r.code != 0 {
		t.Fatalf("verify after the kill, nothing pending: exit %d: %s", r.code, r.stderr)
	}
	// The next read-write open replays: through a mount now and then, as a
	// user would, else directly.
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
		t.Fatalf("verify after replay: exit %d: %s", r.code, r.stderr)
	}
	dir := st.ckpt
	if !st.sharded() {
		dir = filepath.Dir(st.ckpt)
	}
	if tmps, _ := filepath.Glob(filepath.Join(dir, ".*safejaxfs-tmp-*")); len(tmps) > 0 {
		t.Errorf("temp files left after a read-write open: %v", tmps)
	}

	// The truth, parsed independently of our parser: each file's header
	// and, for a set, the index.
	entries := map[string]rawEntry{}
	datas := map[string][]byte{}
	owner := map[string]string{}
	files := map[string][]genTensor{}
	metas := map[string]map[string]string{}
	for _, f := range st.files(t) {
		e, meta, data := rawHeader(t, f)
		metas[f] = meta
		files[f] = []genTensor{}
		for k, v := range e {
			if prev, ok := owner[k]; ok {
				t.Fatalf("%q is in two files: %s and %s", k, prev, f)
			}
			owner[k], entries[k], datas[k] = f, v, data
		}
	}
	if st.sharded() {
		checkIndex(t, st.ckpt, owner, entries)
	}
	for key, e := range entries {
		ct := st.byKey[key]
		if ct == nil {
			t.Fatalf("unexpected tensor %q", key)
		}
		b := datas[key][e.Offsets[0]:e.Offsets[1]]
		dt, ok := safetensors.ParseDType(e.DType)
		if !ok {
			t.Fatalf("%s: dtype %q", key, e.DType)
		}
		files[owner[key]] = append(files[owner[key]], genTensor{key, dt, e.Shape, b})
		if ct.readOnly {
			if !bytes.Equal(b, ct.fixed) {
				t.Errorf("%s: a tensor nobody wrote changed", key)
			}
			continue
		}
		if e.DType != "U8" || len(e.Shape) != 1 || e.Shape[0] != uint64(len(b)) {
			t.Errorf("%s: %s %v for %d bytes", key, e.DType, e.Shape, len(b))
		}
		v, err := versionOf(ct.k, b)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		switch {
		case v < ct.acked:
			t.Fatalf("%s holds version %d, but version %d was acknowledged by fsync/close", key, v, ct.acked)
		case v >= ct.next:
			t.Fatalf("%s holds version %d, which was never written (next is %d)", key, v, ct.next)
		case len(b) != ct.size[v]:
			t.Fatalf("%s holds version %d with %d bytes; that version had %d", key, v, len(b), ct.size[v])
		}
		if v > ct.acked {
			st.aheadOfAck++
		}
		// The next round starts from what the file holds.
		ct.cur, ct.acked, ct.exists = v, v, true
	}
	for _, ct := range st.tensors {
		if _, ok := entries[ct.key]; !ok {
			if ct.exists || !ct.isNew {
				t.Fatalf("%s is gone, but it was acknowledged", ct.key)
			}
			// Never made it: a later round must not expect it.
			ct.tried = false
		}
	}
	// In-place commits keep the layout and rewrites go through the
	// canonical writer, so every file is always the canonical one.
	for f, gen := range files {
		checkFile(t, f, metas[f], gen...)
	}
}

func (st *crashState) sharded() bool { return filepath.Ext(st.ckpt) != ".safetensors" }

// files are the checkpoint's safetensors files: the one file, or every
// shard in the set's directory.
func (st *crashState) files(t *testing.T) []string {
	if !st.sharded() {
		return []string{st.ckpt}
	}
	fs, err := filepath.Glob(filepath.Join(st.ckpt, "model-*.safetensors"))
	if err != nil || len(fs) == 0 {
		t.Fatalf("no shards in %s: %v", st.ckpt, err)
	}
	return fs
}

// runCrashRounds runs a fixed number of rounds: coverage is the same on
// every machine, however fast (a slower one takes longer). The counts are
// what the 20 s budgets they replace allowed on 2 cores. Under -race a
// few of them run (race.Rounds): scripts/test.sh runs every round again
// in a plain build.
func runCrashRounds(t *testing.T, layout bool, sizes []int, shards int, seed uint64, rounds int, maxDelay time.Duration) {
	st := newCrashState(t, layout, sizes, shards)
	mnt := newMountpoint(t)
	r := rand.New(rand.NewPCG(seed, seed))
	start := time.Now()
	for range race.Rounds(rounds) {
		st.round(t, mnt, r, maxDelay)
	}
	t.Logf("%d rounds in %v: %d writes acknowledged, %d kills during an fsync or committing close, %d left a log to recover from, %d tensors found newer than acknowledged, %d kills left the daemon stuck on its own mount (connection aborted)",
		st.rounds, time.Since(start).Round(time.Millisecond), st.acks, st.killsInPersist, st.pendingJournals, st.aheadOfAck, st.aborted)
}

// Same-layout rewrites (in place, behind the journal) killed at random.
func TestCrashKillDuringInPlaceWrites(t *testing.T) {
	if !isolated(t) {
		return
	}
	sizes := []int{8, 4096 + 8, 64<<10 + 24, 1<<20 + 8, 3 << 20}
	runCrashRounds(t, false, sizes, 1, 1, 23, 400*time.Millisecond)
}

// Layout changes (np.save of other sizes, new tensors: whole-file
// rewrites) mixed with same-layout rewrites, killed at random.
func TestCrashKillDuringRewrites(t *testing.T) {
	if !isolated(t) {
		return
	}
	sizes := []int{8, 4096 + 8, 64<<10 + 24, 1<<20 + 8, 2 << 20}
	runCrashRounds(t, true, sizes, 1, 2, 23, 400*time.Millisecond)
}

// The same mix on a sharded set of three files: every layout change
// rewrites several shards and the index behind one commit.
func TestCrashKillDuringShardedRewrites(t *testing.T) {
	if !isolated(t) {
		return
	}
	sizes := []int{8, 4096 + 8, 64<<10 + 24, 1<<20 + 8, 2 << 20, 16}
	runCrashRounds(t, true, sizes, 3, 3, 24, 400*time.Millisecond)
}
