package checkpoint

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// A layout change (tensors added, removed, renamed or reshaped, metadata
// changed) moves every byte after the header, so it cannot be patched in
// place: the whole file is written anew through the canonical writer into a
// temp file next to the checkpoint and renamed over it. rename(2) is atomic,
// so a crash leaves the old file or the new one, each complete.

const tmpInfix = ".safejaxfs-tmp-"

// tmpRandLen is the length of the random part of a temp name, in hex digits;
// cleanStaleTemps matches it exactly.
const tmpRandLen = 16

// createTemp creates "<dir>/.<base>.safejaxfs-tmp-<random>" next to the
// checkpoint path (so the final rename stays within one filesystem) with
// permission bits perm and, when running as root, owner's uid and gid, so
// the file that replaces the checkpoint looks like it. It is created 0600
// and only then given perm, so nobody else can open it in between.
func createTemp(path string, perm uint32, owner *unix.Stat_t) (*os.File, string, error) {
	for range 100 {
		var rb [tmpRandLen / 2]byte
		rand.Read(rb[:])
		name := sidePath(path, tmpInfix+hex.EncodeToString(rb[:]))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		err = control(f, func(fd int) error {
			// chown before chmod: chown clears set-id bits.
			if owner != nil && os.Geteuid() == 0 {
				if err := unix.Fchown(fd, int(owner.Uid), int(owner.Gid)); err != nil {
					return err
				}
			}
			return unix.Fchmod(fd, perm&0o7777)
		})
		if err != nil {
			f.Close()
			os.Remove(name)
			return nil, "", &os.PathError{Op: "chmod", Path: name, Err: err}
		}
		return f, name, nil
	}
	return nil, "", fmt.Errorf("%s: could not find a free temp file name", filepath.Dir(path))
}

func isTempOf(name, base string) bool {
	rest, ok := strings.CutPrefix(name, "."+base+tmpInfix)
	if !ok || len(rest) != tmpRandLen {
		return false
	}
	_, err := hex.DecodeString(rest)
	return err == nil
}

// cleanStaleTemps removes "<dir>/.<base>.safejaxfs-tmp-*" files: rewrites,
// journals being created and recovery files a crash left half written. They
// are harmless (the checkpoint is never touched through them) but can be
// large. The random part must be exactly what createTemp makes, so the temp
// files of a checkpoint whose own name happens to start with
// "<base>.safejaxfs-tmp-" are left alone. It takes the write lock (or relies on this process
// holding it): a live writer's temp files are not stale.
func cleanStaleTemps(ckpt string) error {
	path, err := realPath(ckpt)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return withWriteLock(f, func() error { return removeTemps([]string{path}) })
}

// cleanSetTemps is cleanStaleTemps for every file of a sharded checkpoint
// at once (one directory read per directory, not per shard); the caller
// holds the set's lock (the index's), which every writer of the set takes
// first.
func cleanSetTemps(paths []string) error {
	var real []string
	for _, p := range paths {
		r, err := realPath(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		real = append(real, r)
	}
	return removeTemps(real)
}

// removeTemps removes the temp files of the files at paths (resolved).
func removeTemps(paths []string) error {
	byDir := map[string]map[string]bool{}
	for _, p := range paths {
		dir, base := filepath.Split(p)
		if byDir[dir] == nil {
			byDir[dir] = map[string]bool{}
		}
		byDir[dir][base] = true
	}
	for dir, bases := range byDir {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			name := e.Name()
			i := strings.Index(name, tmpInfix)
			if i < 1 || !bases[name[1:i]] || !isTempOf(name, name[1:i]) {
				continue
			}
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// replacement is one file a rewrite replaces: its new content comes from
// write, and check validates the written temp file before it may take the
// file's name.
type replacement struct {
	path  string // the file to replace, as named (symlinks are resolved)
	write func(*os.File) (int64, error)
	check func(f *os.File, size int64) error

	// Set by replaceFiles.
	real    string
	st      unix.Stat_t // of the file replaced
	was     identity
	tmp     *os.File
	tmpName string
	tst     unix.Stat_t // of the temp file
	locked  bool
}

// shardReplacement is a safetensors file rewritten canonically.
func shardReplacement(path string, sources []safetensors.Source, metadata map[string]string) *replacement {
	return &replacement{
		path: path,
		write: func(f *os.File) (int64, error) {
			return safetensors.Write(f, sources, metadata)
		},
		check: func(f *os.File, n int64) error {
			if _, err := safetensors.ReadHeader(f, n); err != nil {
				return fmt.Errorf("the rewritten file does not validate: %w", err)
			}
			return nil
		},
	}
}

// indexReplacement is an index file with new content b.
func indexReplacement(path string, b []byte) *replacement {
	return &replacement{
		path: path,
		write: func(f *os.File) (int64, error) {
			n, err := f.Write(b)
			return int64(n), err
		},
		check: func(f *os.File, n int64) error {
			got := make([]byte, n)
			if _, err := f.ReadAt(got, 0); err != nil {
				return err
			}
			if _, err := safetensors.ParseIndex(got); err != nil {
				return fmt.Errorf("the rewritten index does not validate: %w", err)
			}
			return nil
		},
	}
}

// lateError is a failure after the files were renamed into place (the
// directory fsync, or removing the commit record): the new files are in
// place and the caller's, only their durability is in doubt.
type lateError struct{ err error }

func (e *lateError) Error() string { return e.err.Error() }
func (e *lateError) Unwrap() error { return e.err }

// rewriteAtomic replaces one checkpoint file by the canonical file for
// sources and metadata: prepare, unchanged, install.
func rewriteAtomic(ckpt string, sources []safetensors.Source, metadata map[string]string, hooks *crashHooks) error {
	reps := []*replacement{shardReplacement(ckpt, sources, metadata)}
	if err := prepare(reps, hooks); err != nil {
		return err
	}
	if err := unchanged(reps); err != nil {
		discard(reps)
		return err
	}
	return install(reps, hooks)
}

// A file is replaced in three steps, so that a caller can put its own
// commit point between the second and the third (compaction writes a
// record to the log that lists the renames):
//
//   - prepare writes each new file into a temp file next to the file it
//     replaces, with that file's permission bits (and owner, as root),
//     fsyncs it and validates it again (never rename an invalid file over
//     a checkpoint); discard removes them if the caller gives up;
//   - unchanged checks that no file changed while the new ones were being
//     written (another program saved over it): ErrChanged, and nothing is
//     renamed, so the other program's file is never overwritten;
//   - install renames every temp file into place and fsyncs the
//     directories. A failure after the first rename is a *lateError: the
//     files in place are the new ones.
//
// Sources may read the files being replaced; they must stay readable until
// install returns, and the old files stay valid for the caller after it,
// since an open or mapped file outlives its name. When this process holds
// a file's lock, prepare locks the new file before it can get the name and
// install hands the lock to the caller's next lockFile of it (see
// lockFile). Extended attributes and ACLs of the old files are not carried
// over.

// prepare writes, syncs and validates the temp file of every replacement.
// On an error, or a crash hook, nothing is renamed; on an error (not a
// simulated crash) the temp files are removed.
func prepare(reps []*replacement, hooks *crashHooks) (err error) {
	if len(reps) == 0 {
		return nil
	}
	crashed := false
	defer func() {
		if err != nil && !crashed {
			discard(reps)
		}
	}()
	for _, r := range reps {
		if r.real, err = realPath(r.path); err != nil {
			return err
		}
		if err := unix.Stat(r.real, &r.st); err != nil {
			return &os.PathError{Op: "stat", Path: r.real, Err: err}
		}
		r.was = identityOf(&r.st)
		if r.tmp, r.tmpName, err = createTemp(r.real, r.st.Mode&0o7777, &r.st); err != nil {
			return err
		}
		n, err := r.write(r.tmp)
		if err != nil {
			return fmt.Errorf("writing %s: %w", r.tmpName, err)
		}
		if herr := hooks.hit("tmp-written"); herr != nil {
			crashed = true
			closeTemps(reps)
			return herr
		}
		if err = r.tmp.Sync(); err != nil {
			return fmt.Errorf("syncing %s: %w", r.tmpName, err)
		}
		if r.tst, err = fstat(r.tmp); err != nil {
			return err
		}
		if r.tst.Size != n {
			return fmt.Errorf("%s is %d bytes after writing %d; not replacing %s with it", r.tmpName, r.tst.Size, n, r.real)
		}
		if err = r.check(r.tmp, n); err != nil {
			return fmt.Errorf("%w, so it did not replace %s", err, r.real)
		}
		// Lock the new inode while only we know it, so it is locked from
		// the instant it has the file's name.
		if heldByUs(keyOf(&r.st)) {
			if err = flock(r.tmp, unix.LOCK_EX|unix.LOCK_NB); err != nil {
				return fmt.Errorf("locking %s: %w", r.tmpName, err)
			}
			r.locked = true
		}
	}
	if herr := hooks.hit("tmp-synced"); herr != nil {
		crashed = true
		closeTemps(reps)
		return herr
	}
	return nil
}

// unchanged refuses (ErrChanged) if any file to replace is no longer the
// one prepare saw.
func unchanged(reps []*replacement) error {
	for _, r := range reps {
		now, err := statIdentity(r.real)
		if err != nil {
			return fmt.Errorf("%s: %w during the rewrite: %v; it was not replaced", r.real, ErrChanged, err)
		}
		if !now.same(r.was) {
			return fmt.Errorf("%s: %w during the rewrite (was %s, now %s); it was not replaced", r.real, ErrChanged, r.was, now)
		}
	}
	return nil
}

// discard removes the temp files of replacements that will not happen.
func discard(reps []*replacement) {
	for _, r := range reps {
		if r.tmp != nil {
			r.tmp.Close()
			os.Remove(r.tmpName)
			r.tmp = nil
		}
	}
}

func closeTemps(reps []*replacement) {
	for _, r := range reps {
		if r.tmp != nil {
			r.tmp.Close()
		}
	}
}

// renames lists what install will do, for a commit record.
func renames(reps []*replacement) []commitRename {
	var out []commitRename
	for _, r := range reps {
		out = append(out, commitRename{From: r.tmpName, To: r.real, Dev: uint64(r.tst.Dev), Ino: r.tst.Ino})
	}
	return out
}

// install renames the temp files into place and fsyncs their directories.
// A crash hook between renames stops there, as a crash would; a failure of
// the first rename is an ordinary error (nothing changed), any later one a
// *lateError.
func install(reps []*replacement, hooks *crashHooks) error {
	var late error
	for i, r := range reps {
		if err := os.Rename(r.tmpName, r.real); err != nil {
			if i == 0 {
				discard(reps)
				return err
			}
			closeTemps(reps)
			return &lateError{fmt.Errorf("renaming %s into place: %w", r.real, err)}
		}
		if herr := hooks.hit("renamed"); herr != nil {
			if len(reps) > 1 {
				closeTemps(reps)
				return herr // a crash between renames
			}
			late = herr
		}
	}
	if late == nil {
		for _, dir := range dirsOf(reps) {
			if err := syncDir(dir); err != nil {
				late = fmt.Errorf("the files were replaced, but syncing %s failed: %w", dir, err)
				break
			}
		}
	}
	for _, r := range reps {
		if !r.locked || !offerHandoff(r.tmp, keyOf(&r.tst), keyOf(&r.st), r.real) {
			r.tmp.Close()
		}
		r.tmp = nil
	}
	if late != nil {
		return &lateError{late}
	}
	return nil
}

// rollForward finishes renames a compaction committed to: a temp file
// still there (with the recorded inode) is renamed over its final name; a
// final name already holding the recorded inode is done. It syncs the
// directories it touched.
func rollForward(rs []commitRename) error {
	dirs := map[string]bool{}
	for _, r := range rs {
		var st unix.Stat_t
		if err := unix.Lstat(r.From, &st); err == nil {
			if uint64(st.Dev) != r.Dev || st.Ino != r.Ino {
				return fmt.Errorf("the log names %s, but that is another file now; it was left as it is", r.From)
			}
			if err := os.Rename(r.From, r.To); err != nil {
				return fmt.Errorf("finishing an interrupted write-back: %w", err)
			}
		} else if err := unix.Stat(r.To, &st); err != nil || uint64(st.Dev) != r.Dev || st.Ino != r.Ino {
			return fmt.Errorf("an interrupted write-back cannot be finished: neither %s nor its result %s is there", r.From, r.To)
		}
		dirs[filepath.Dir(r.To)] = true
	}
	for d := range dirs {
		if err := syncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// dirsOf returns the distinct directories of the replaced files.
func dirsOf(reps []*replacement) []string {
	var dirs []string
	for _, r := range reps {
		if d := filepath.Dir(r.real); !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// writeRecovery saves the snapshot next to the checkpoint, which someone
// else changed while it was mounted: theirs must not be overwritten, ours
// must not be lost. A plain checkpoint goes to one recovery file
// (writeRecoveryFile); a sharded one to a recovery directory next to the
// index holding the index and every shard: the shards this mount changed
// are written whole, the others are symlinks to the originals.
func (c *Checkpoint) writeRecovery(s *snapshot) (string, error) { return c.writeRecoveryIn(s, "") }

// writeRecoveryIn is writeRecovery into dir ("": next to the checkpoint).
func (c *Checkpoint) writeRecoveryIn(s *snapshot, in string) (string, error) {
	if c.index == nil {
		ss := &s.shards[0]
		near := c.shards[0].path
		if in != "" {
			near = filepath.Join(in, filepath.Base(near))
		}
		return writeRecoveryFile(near, "", sources(ss.tensors), ss.meta)
	}
	ix, err := realPath(c.index.path)
	if err != nil {
		return "", err
	}
	dir, base := filepath.Split(ix)
	if in != "" {
		dir = in
	}
	stem := strings.TrimSuffix(base, safetensors.IndexSuffix)
	out, err := mkdirFresh(filepath.Join(dir, stem+".safejaxfs-recovered-"+time.Now().Format("20060102-150405")))
	if err != nil {
		return "", err
	}
	for i, sh := range c.shards {
		ss := &s.shards[i]
		dst := filepath.Join(out, filepath.FromSlash(sh.name))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", err
		}
		if !ss.dirty {
			abs, err := filepath.Abs(sh.path)
			if err != nil {
				return "", err
			}
			if err := os.Symlink(abs, dst); err != nil {
				return "", err
			}
			continue
		}
		if _, err := writeRecoveryFile(sh.path, dst, sources(ss.tensors), ss.meta); err != nil {
			return "", err
		}
	}
	b, err := c.renderIndex(s)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(out, base), b, 0o644); err != nil {
		return "", err
	}
	if err := syncDir(out); err != nil {
		return "", err
	}
	return out, syncDir(dir)
}

// mkdirFresh creates dir, or dir-2, dir-3... if taken.
func mkdirFresh(dir string) (string, error) {
	for i := 1; ; i++ {
		name := dir
		if i > 1 {
			name = fmt.Sprintf("%s-%d", dir, i)
		}
		err := os.Mkdir(name, 0o755)
		if err == nil {
			return name, nil
		}
		if !errors.Is(err, fs.ErrExist) || i >= 1000 {
			return "", err
		}
	}
}

// writeRecoveryFile writes the canonical file for sources and metadata to
// dst, or when dst is "" to
// "<dir>/<base without .safetensors>.safejaxfs-recovered-<YYYYmmdd-HHMMSS>.safetensors"
// next to ckpt (local time; "-2", "-3"... before ".safetensors" if taken),
// and returns its path. It goes through a temp file, is synced and
// validated before it gets its name (never over an existing file), so a
// file with that name is always complete. Sources pointing at our old
// mapping of the checkpoint show what the mapping shows: if the other
// program wrote into the same inode rather than replacing it, unchanged
// tensors carry its bytes.
func writeRecoveryFile(ckpt, dst string, sources []safetensors.Source, metadata map[string]string) (path string, err error) {
	ck, err := realPath(ckpt)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	perm, owner := uint32(0o644), (*unix.Stat_t)(nil)
	var st unix.Stat_t
	if unix.Stat(ck, &st) == nil {
		perm, owner = st.Mode&0o777, &st
	}
	near := ck
	if dst != "" {
		near = dst
	}
	tmp, name, err := createTemp(near, perm, owner)
	if err != nil {
		return "", err
	}
	defer func() {
		tmp.Close()
		if err != nil {
			os.Remove(name)
		}
	}()
	n, err := safetensors.Write(tmp, sources, metadata)
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", name, err)
	}
	if err = tmp.Sync(); err != nil {
		return "", fmt.Errorf("syncing %s: %w", name, err)
	}
	if _, err = safetensors.ReadHeader(tmp, n); err != nil {
		return "", fmt.Errorf("the recovery file does not validate: %w", err)
	}
	if dst != "" {
		return dst, renameNoReplace(name, dst)
	}
	dir, base := filepath.Split(ck)
	stem := strings.TrimSuffix(base, ".safetensors")
	stamp := time.Now().Format("20060102-150405")
	for i := 1; ; i++ {
		suffix := ""
		if i > 1 {
			suffix = fmt.Sprintf("-%d", i)
		}
		path = filepath.Join(dir, stem+".safejaxfs-recovered-"+stamp+suffix+".safetensors")
		err = renameNoReplace(name, path)
		if err == nil {
			return path, syncDir(dir)
		}
		if !errors.Is(err, fs.ErrExist) || i >= 1000 {
			return "", err
		}
	}
}

func exists(name string) bool {
	_, err := os.Lstat(name)
	return err == nil
}

// syncDir makes renames, creations and removals in dir durable. Filesystems
// that cannot sync a directory say EINVAL; there is nothing more to do there.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, unix.EINVAL) {
		return err
	}
	return nil
}

// renameNoReplace renames src to dst unless dst exists (an error matching
// fs.ErrExist then). RENAME_NOREPLACE where the filesystem has it, else a
// hard link (which fails on an existing name), else check-then-rename, which
// the write lock makes safe against other safejaxfs processes.
func renameNoReplace(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	switch err {
	case nil:
		return nil
	case unix.EINVAL, unix.ENOSYS, unix.EOPNOTSUPP:
	default:
		return &os.LinkError{Op: "rename", Old: src, New: dst, Err: err}
	}
	lerr := os.Link(src, dst)
	if lerr == nil {
		return os.Remove(src)
	}
	if errors.Is(lerr, fs.ErrExist) {
		return lerr
	}
	if exists(dst) {
		return &os.LinkError{Op: "rename", Old: src, New: dst, Err: unix.EEXIST}
	}
	return os.Rename(src, dst)
}
