package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	safefs "github.com/safejaxfs/safejaxfs/fs"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/remote"
)

// Every daemon publishes its status in a file of its own in its private
// state directory (daemon_log.go):
//
//	<state>/<mountpoint>.<pid>.status.json
//
// rewritten (a temp file renamed over it) when something in it changes,
// at most a few times a second, and removed when the daemon exits. safejaxfs
// status lists these files; unmount and wait read the one of the daemon
// they wait for to show the progress of its write-back. Nothing reads the
// mount itself for it: a status must come back even when a mount hangs.

const statusSuffix = ".status.json"

// statusFormat numbers the file's layout; readers skip other formats.
const statusFormat = 1

// mountStatus is the status file's content, and (with what status adds)
// an entry of safejaxfs status --json.
type mountStatus struct {
	Format     int       `json:"format"`
	PID        int       `json:"pid"`
	Start      uint64    `json:"start_ticks"` // the daemon's start time (/proc/PID/stat): tells it from a later process with its pid
	UID        int       `json:"uid"`
	Source     string    `json:"source"` // the checkpoint as given (absolute), or its URL without credentials
	Mountpoint string    `json:"mountpoint"`
	ReadOnly   bool      `json:"read_only"`
	Remote     bool      `json:"remote"`
	Options    []string  `json:"options"` // allow_other, allow_root, uid=...: what changes who sees what
	State      string    `json:"state"`   // see the state* constants
	Since      time.Time `json:"since"`   // when it mounted
	Changed    time.Time `json:"changed"` // when this status last changed

	Pending *pendingStatus `json:"pending,omitempty"`
	// Untyped are the tensors created in the mount that nothing gave a
	// dtype: they are saved as 1-D U8 (fs/untyped.go). At most
	// maxStatusUntyped are listed; UntypedCount counts them all.
	Untyped      []string        `json:"untyped,omitempty"`
	UntypedCount int             `json:"untyped_count,omitempty"`
	WriteBack    *progressStatus `json:"write_back,omitempty"`
	Cache        *cacheStatus    `json:"cache,omitempty"`
	LastError    string          `json:"last_error,omitempty"`
	LogFile      string          `json:"log_file,omitempty"` // the daemon's own log
	FilesDir     string          `json:"files_dir,omitempty"`
}

// States a daemon is in.
const (
	stateMounting    = "mounting"
	stateMounted     = "mounted"
	stateWritingBack = "writing back"             // a write-back while mounted (sync, unmount, a full log)
	stateFinishing   = "unmounted, writing back"  // the mount is gone; the last write-back runs
	stateRetrying    = "unmounted, edits unsaved" // nowhere to save the edits yet: retrying (see finish)
)

type pendingStatus struct {
	Changed  int    `json:"changed"` // tensors changed, added, renamed or retyped
	Removed  int    `json:"removed"`
	Files    int    `json:"files"` // files the next write-back changes
	Log      string `json:"log,omitempty"`
	LogBytes int64  `json:"log_bytes"`
}

type progressStatus struct {
	Done  int64 `json:"done"`
	Total int64 `json:"total"`
}

type cacheStatus struct {
	Dir   string `json:"dir"`
	Used  int64  `json:"used"` // bytes in the chunk cache (shared by every mount that uses the directory)
	Limit int64  `json:"limit"`
}

// statusFile is a daemon's status file.
type statusFile struct {
	path string
	ck   *checkpoint.Checkpoint
	fsys *safefs.FS

	mu      sync.Mutex
	st      mountStatus
	base    string // the state the daemon set; a write-back under way shows over "mounted"
	written []byte
	cacheAt time.Time
	// pending is the last PendingEdits, taken when the checkpoint's
	// Edits and Persists were pendingAt: it walks every tensor, and an
	// idle mount need not pay that every tick.
	pending   checkpoint.Unwritten
	pendingAt [2]uint64
	havePend  bool
	stop      chan struct{}
	done      chan struct{}
}

// newStatusFile starts publishing the status of a daemon mounting ckpt at
// mnt, in the state directory dir. nil (and nothing published) without
// one.
func newStatusFile(dir string, st mountStatus) *statusFile {
	if dir == "" {
		return nil
	}
	st.Format, st.PID, st.UID = statusFormat, os.Getpid(), os.Geteuid()
	// As the mount table will show it (called before the mount exists:
	// resolving it later would be a request to this very daemon).
	if real, err := filepath.EvalSymlinks(st.Mountpoint); err == nil {
		st.Mountpoint = real
	}
	st.Start, _ = processStart(st.PID)
	st.State = stateMounting
	st.Since = time.Now()
	s := &statusFile{path: filepath.Join(dir, logStem(st.Mountpoint)+"."+strconv.Itoa(st.PID)+statusSuffix), st: st, base: stateMounting}
	pruneStatuses(dir)
	s.write()
	return s
}

// pruneStatuses removes the status files (and half-written temp files) in
// dir that daemons which are gone (killed) left.
func pruneStatuses(dir string) {
	names, _ := filepath.Glob(filepath.Join(dir, "*"+statusSuffix))
	for _, p := range names {
		if st, err := readStatusFile(p); err == nil && !pidAlive(st.PID, st.Start) {
			os.Remove(p)
		}
	}
	temps, _ := filepath.Glob(filepath.Join(dir, ".status-*.tmp"))
	for _, p := range temps {
		if fi, err := os.Lstat(p); err == nil && fi.Mode().IsRegular() && time.Since(fi.ModTime()) > time.Minute {
			os.Remove(p)
		}
	}
}

// update changes the status's fixed parts (read-only, cache) once known.
func (s *statusFile) update(fn func(st *mountStatus)) {
	if s == nil {
		return
	}
	s.mu.Lock()
	fn(&s.st)
	s.writeLocked()
	s.mu.Unlock()
}

// serving starts the updates once the checkpoint and the file system
// exist.
func (s *statusFile) serving(ck *checkpoint.Checkpoint, fsys *safefs.FS) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.ck, s.fsys = ck, fsys
	s.base = stateMounted
	s.st.Since = time.Now()
	s.mu.Unlock()
	s.refresh()
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	go s.loop()
}

// setState records what the daemon is doing now.
func (s *statusFile) setState(state string) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.base = state
	s.mu.Unlock()
	s.refresh()
}

// statusEvery is how often a daemon looks for changes to publish; while
// a write-back runs, its progress is published this often too.
const statusEvery = 250 * time.Millisecond

func (s *statusFile) loop() {
	defer close(s.done)
	t := time.NewTicker(statusEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.refresh()
		}
	}
}

// publish writes the status now, as it is (asked through the root's
// user.safejaxfs.status by safejaxfs status, which reads the file next).
func (s *statusFile) publish() {
	if s != nil {
		s.refresh()
	}
}

// refresh gathers the status and writes it if it changed.
func (s *statusFile) refresh() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.State = s.base
	if s.ck != nil {
		if !s.st.ReadOnly {
			p := s.pendingEdits()
			s.st.Pending = &pendingStatus{p.Changed, p.Removed, p.Files, p.Log, p.LogBytes}
			u := s.fsys.Untyped()
			s.st.UntypedCount = len(u)
			s.st.Untyped = u[:min(len(u), maxStatusUntyped)]
			s.st.WriteBack = nil
			if w := s.ck.WriteBackProgress(); w.Active {
				s.st.WriteBack = &progressStatus{w.Done, w.Total}
				if s.base == stateMounted {
					s.st.State = stateWritingBack
				}
			}
		}
		s.st.LastError = s.fsys.LastError()
		if s.st.Cache != nil && time.Since(s.cacheAt) >= cacheScanEvery {
			s.st.Cache.Used = dirUsage(filepath.Join(s.st.Cache.Dir, "chunks-v1"))
			s.cacheAt = time.Now()
		}
	}
	s.writeLocked()
}

// pendingEdits is the checkpoint's PendingEdits, walked again only when
// an edit or a persistence step (commit, write-back) has happened since
// the last walk. The counters are read first, so a change made during the
// walk moves them past what is cached, and the next tick walks again.
// Caller holds s.mu.
func (s *statusFile) pendingEdits() checkpoint.Unwritten {
	at := [2]uint64{s.ck.Edits(), s.ck.Persists()}
	if !s.havePend || at != s.pendingAt {
		s.pending, s.pendingAt, s.havePend = s.ck.PendingEdits(), at, true
	}
	return s.pending
}

// maxStatusUntyped bounds the untyped tensors a status file lists.
const maxStatusUntyped = 100

// cacheScanEvery bounds how often a remote mount's status sums its cache
// directory (a file per 4 MiB chunk: 2,500 files for 10 GiB).
const cacheScanEvery = 30 * time.Second

func (s *statusFile) write() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writeLocked()
}

// writeLocked writes the status if it changed since the last write: a
// new file renamed over the old one, so a reader sees one whole status.
func (s *statusFile) writeLocked() {
	s.st.Changed = time.Time{}
	b, err := json.Marshal(s.st)
	if err != nil || string(b) == string(s.written) {
		return
	}
	s.written = b
	s.st.Changed = time.Now()
	out, err := json.MarshalIndent(s.st, "", "  ")
	if err != nil {
		return
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.path), ".status-*.tmp")
	if err != nil {
		return
	}
	_, werr := tmp.Write(append(out, '\n'))
	if cerr := tmp.Close(); werr != nil || cerr != nil || os.Rename(tmp.Name(), s.path) != nil {
		os.Remove(tmp.Name())
	}
}

// close stops the updates and removes the file: the daemon is exiting.
func (s *statusFile) close() {
	if s == nil {
		return
	}
	if s.stop != nil {
		close(s.stop)
		<-s.done
	}
	os.Remove(s.path)
}

// processStart is a process's start time in clock ticks after boot, field
// 22 of /proc/PID/stat; with the pid it names one process for good.
func processStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return 0, errors.New("malformed stat")
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// dirUsage sums the sizes of the regular files below dir.
func dirUsage(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// remoteCacheStatus is where a remote mount caches, as safetensors/remote
// decides it; nil when it cannot tell (then Open fails too).
func remoteCacheStatus(o remote.Options) *cacheStatus {
	dir, limit, err := o.Cache()
	if err != nil {
		return nil
	}
	return &cacheStatus{Dir: dir, Limit: limit}
}

// mountOptionsShown are the options a status lists.
func mountOptionsShown(mf *mountFlags) []string {
	opts := []string{}
	if mf.allowOther {
		opts = append(opts, "allow_other")
	}
	if mf.allowRoot {
		opts = append(opts, "allow_root")
	}
	for _, o := range []struct{ name, v string }{{"uid", mf.perm.uid}, {"gid", mf.perm.gid}, {"umask", mf.perm.umask}, {"fsname", mf.fsname}} {
		if o.v != "" {
			opts = append(opts, fmt.Sprintf("%s=%s", o.name, o.v))
		}
	}
	return append(opts, mf.kernel...)
}

// pidAlive reports whether pid is the process that started at start
// ticks, and not a zombie.
func pidAlive(pid int, start uint64) bool {
	if pid <= 0 || exited(pid) {
		return false
	}
	got, err := processStart(pid)
	return err == nil && got == start
}

// statusOwner is the owner of the status file at p, not following a
// symlink.
func statusOwner(p string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return 0, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, fmt.Errorf("%s is not a regular file", p)
	}
	return st.Uid, nil
}
