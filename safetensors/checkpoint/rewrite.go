package checkpoint

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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
	return withWriteLock(f, func() error {
		dir, base := filepath.Split(path)
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if !isTempOf(e.Name(), base) {
				continue
			}
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		return nil
	})
}

// rewriteAtomic replaces the checkpoint by the canonical file for sources
// and metadata: written by safetensors.Write into a temp file in the
// checkpoint's directory with the checkpoint's permission bits (and owner,
// as root), fsynced, validated again with safetensors.ReadHeader (never
// rename an invalid file over a checkpoint), renamed over ckpt, directory
// fsynced. On any error before the rename the temp file is removed and the
// checkpoint is untouched.
//
// Sources may point at the checkpoint being replaced (*os.File: copied with
// copy_file_range; *safetensors.File: from its mapping). They must stay
// readable until this returns; the old file stays valid for the caller after
// the rename too, since an open or mapped file outlives its name.
//
// The checkpoint's journal is settled first (replayed into the old file if
// its commit is not marked applied), then removed and the directory synced,
// before anything is copied: the bytes copied from the old file are the
// ones last committed, and the new file never meets the old one's journal,
// whenever a crash comes. If the checkpoint's identity changes while the
// new file is being written (another program saved over it), the rename is
// not done and the error wraps ErrChanged: the other program's file is
// never overwritten.
//
// When this process holds the checkpoint's lock, the new file is locked
// before it is renamed into place and the lock handed to the caller's next
// lockFile of it (see lockFile). Extended attributes and ACLs of the old file
// are not carried over.
func rewriteAtomic(ckpt string, sources []safetensors.Source, metadata map[string]string, hooks *crashHooks) (err error) {
	path, err := realPath(ckpt)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if jpath := journalPath(path); exists(jpath) {
		if err := replayAt(path, jpath); err != nil {
			return fmt.Errorf("finishing an earlier interrupted write first: %w", err)
		}
		// The old file now holds every commit durably. The journal is
		// removed, durably, before the new file can take the name: a
		// journal never outlives the file it was written for, and a crash
		// before the rename leaves the old file complete.
		if err := removeSynced(jpath); err != nil {
			return fmt.Errorf("removing journal %s before rewriting: %w", jpath, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return &os.PathError{Op: "stat", Path: path, Err: err}
	}
	was := identityOf(&st)

	tmp, name, err := createTemp(path, st.Mode&0o7777, &st)
	if err != nil {
		return err
	}
	crashed := false
	defer func() {
		if err != nil && !crashed {
			tmp.Close()
			os.Remove(name)
		}
	}()
	crash := func(herr error) error {
		crashed = true
		tmp.Close()
		return herr
	}

	n, err := safetensors.Write(tmp, sources, metadata)
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if herr := hooks.hit("tmp-written"); herr != nil {
		return crash(herr)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", name, err)
	}
	tst, err := fstat(tmp)
	if err != nil {
		return err
	}
	if tst.Size != n {
		return fmt.Errorf("%s is %d bytes after writing %d; not replacing the checkpoint with it", name, tst.Size, n)
	}
	if _, err = safetensors.ReadHeader(tmp, n); err != nil {
		return fmt.Errorf("the rewritten checkpoint does not validate, so it did not replace %s: %w", path, err)
	}
	// Lock the new inode while only we know it, so it is locked from the
	// instant it has the checkpoint's name.
	locked := false
	if heldByUs(keyOf(&st)) {
		if err = flock(tmp, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			return fmt.Errorf("locking %s: %w", name, err)
		}
		locked = true
	}
	if herr := hooks.hit("tmp-synced"); herr != nil {
		return crash(herr)
	}
	now, err := statIdentity(path)
	if err != nil {
		return fmt.Errorf("%s: %w during the rewrite: %v; it was not replaced", path, ErrChanged, err)
	}
	if !now.same(was) {
		return fmt.Errorf("%s: %w during the rewrite (was %s, now %s); it was not replaced", path, ErrChanged, was, now)
	}
	if err = os.Rename(name, path); err != nil {
		return err
	}
	if herr := hooks.hit("renamed"); herr != nil {
		return crash(herr)
	}
	if err = syncDir(dir); err != nil {
		return fmt.Errorf("%s was replaced, but syncing its directory failed: %w", path, err)
	}
	if !locked || !offerHandoff(tmp, keyOf(&tst), keyOf(&st), path) {
		tmp.Close()
	}
	return nil
}

// replayAt opens the checkpoint for writing and settles its journal
// (replayOnto); the caller holds the lock.
func replayAt(path, jpath string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = replayOnto(f, path, jpath)
	return err
}

// writeRecovery writes the canonical file for sources and metadata to
// "<dir>/<base without .safetensors>.safejaxfs-recovered-<YYYYmmdd-HHMMSS>.safetensors"
// (local time; "-2", "-3"... before ".safetensors" if taken) and returns
// its path. It is for a checkpoint someone else changed while it was
// mounted: theirs must not be overwritten, ours must not be lost. It goes
// through a temp file, is synced and validated before it gets its name
// (never over an existing file), so a file with that name is always
// complete. Sources pointing at our old mapping of the checkpoint show what
// the mapping shows: if the other program wrote into the same inode rather
// than replacing it, unchanged tensors carry its bytes.
func writeRecovery(ckpt string, sources []safetensors.Source, metadata map[string]string) (path string, err error) {
	ck, err := realPath(ckpt)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	perm, owner := uint32(0o644), (*unix.Stat_t)(nil)
	var st unix.Stat_t
	if unix.Stat(ck, &st) == nil {
		perm, owner = st.Mode&0o777, &st
	}
	tmp, name, err := createTemp(ck, perm, owner)
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
