package checkpoint

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// A layout change (tensors added, removed, renamed or reshaped, metadata
// changed) moves every byte after the header, so it cannot be patched in
// place: the whole file is written anew through the canonical writer into a
// temp file next to the checkpoint and installed over it (install.go):
// renamed, which is atomic, or, where the file cannot be renamed over (a
// bind mount), copied in place under the log's protection.

const tmpInfix = ".safejaxfs-tmp-"

// tmpRandLen is the length of the random part of a temp name, in hex digits;
// removeTemps matches it exactly.
const tmpRandLen = 16

// createTemp creates ".<base>.safejaxfs-tmp-<random>" next to target (a
// name below d, so the final rename stays within one file system) with
// permission bits perm and, when running as root, owner's uid and gid, so
// the file that replaces the checkpoint looks like it and its owner can
// read and remove what we leave. It is created 0600 and only then given
// perm, so nobody else can open it in between; O_EXCL never follows a
// symlink planted at the name.
func createTemp(d *cdir, target string, perm uint32, owner *unix.Stat_t, h *crashHooks) (*os.File, string, error) {
	if err := h.sys(opCreate, target); err != nil {
		return nil, "", err
	}
	for range 100 {
		var rb [tmpRandLen / 2]byte
		rand.Read(rb[:])
		name := sideName(target, tmpInfix+hex.EncodeToString(rb[:]))
		f, err := d.open(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
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
			d.remove(name)
			return nil, "", &os.PathError{Op: "chmod", Path: d.join(name), Err: err}
		}
		return f, name, nil
	}
	return nil, "", fmt.Errorf("%s: could not find a free temp file name", d.join(target))
}

func isTempOf(name, base string) bool {
	rest, ok := strings.CutPrefix(name, "."+base+tmpInfix)
	if !ok || len(rest) != tmpRandLen {
		return false
	}
	_, err := hex.DecodeString(rest)
	return err == nil
}

// tempTarget is the file a temp file named name (below the directory)
// belongs to, or "" if name is not one createTemp makes.
func tempTarget(name string) string {
	dir, base := splitName(name)
	i := strings.Index(base, tmpInfix)
	if i < 1 || !isTempOf(base, base[1:i]) {
		return ""
	}
	return dir + base[1:i]
}

// removeTemps removes the temp files of the files names (below d):
// rewrites, logs being created and recovery files a crash left half
// written. They are harmless (the checkpoint is never touched through
// them) but can be large. The random part must be exactly what createTemp
// makes, so the temp files of a checkpoint whose own name happens to start
// with "<base>.safejaxfs-tmp-" are left alone. The caller holds the write
// lock: a live writer's temp files are not stale.
func removeTemps(d *cdir, names []string) error {
	byDir := map[string]map[string]bool{}
	for _, n := range names {
		dir, base := splitName(n)
		if byDir[dir] == nil {
			byDir[dir] = map[string]bool{}
		}
		byDir[dir][base] = true
	}
	for dir, bases := range byDir {
		entries, err := d.names(strings.TrimSuffix(dir, "/"))
		if err != nil {
			return err
		}
		for _, e := range entries {
			i := strings.Index(e, tmpInfix)
			if i < 1 || !bases[e[1:i]] || !isTempOf(e, e[1:i]) {
				continue
			}
			if err := d.remove(dir + e); err != nil {
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
	name  string // the file to replace, below the checkpoint's directory
	file  int    // its place in the log's base record (for the compact record)
	write func(*os.File) (int64, error)
	check func(f *os.File, size int64) error
	// hdr is how much of the new file the compact record hashes: its
	// header (8+N) for a shard, -1 (all of it) for the index.
	hdr func(f *os.File, size int64) int64

	// Set by prepare.
	st      unix.Stat_t // of the file replaced
	was     identity
	tmp     *os.File
	tmpName string
	tst     unix.Stat_t // of the temp file
	hash    [32]byte    // of the temp file's header (or whole index)
	locked  bool
	// Set by install.
	done    bool // in place (renamed or copied)
	renamed bool // by rename (the temp file is gone)
}

// shardReplacement is a safetensors file rewritten canonically.
func shardReplacement(name string, sources []safetensors.Source, metadata map[string]string) *replacement {
	return &replacement{
		name: name,
		write: func(f *os.File) (int64, error) {
			return safetensors.Write(f, sources, metadata)
		},
		check: func(f *os.File, n int64) error {
			if _, err := safetensors.ReadHeader(f, n); err != nil {
				return fmt.Errorf("the rewritten file does not validate: %w", err)
			}
			return nil
		},
		hdr: func(f *os.File, size int64) int64 { return headerLengthOf(f, size) },
	}
}

// indexReplacement is an index file with new content b.
func indexReplacement(name string, b []byte) *replacement {
	return &replacement{
		name: name,
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
		hdr: func(*os.File, int64) int64 { return -1 },
	}
}

// A file is replaced in three steps, so that a caller can put its own
// commit point between the second and the third (compaction writes a
// record to the log that lists the replacements):
//
//   - prepare writes each new file into a temp file next to the file it
//     replaces, with that file's permission bits (and owner, as root),
//     fsyncs it and validates it again (never install an invalid file
//     over a checkpoint); discard removes them if the caller gives up;
//   - unchanged checks that no file changed while the new ones were being
//     written (another program saved over it): ErrChanged, and nothing is
//     installed, so the other program's file is never overwritten;
//   - install (install.go) puts every temp file in place.
//
// Sources may read the files being replaced; they must stay readable until
// install returns, and the old files stay valid for the caller after it,
// since an open or mapped file outlives its name. When this process holds
// a file's lock, prepare locks the new file before it can get the name and
// install hands the lock to the caller's next lockFile of it (see
// lockFile). Extended attributes and ACLs of the old files are not carried
// over.

// prepare writes, syncs and validates the temp file of every replacement.
// On an error, or a crash hook, nothing is installed; on an error (not a
// simulated crash) the temp files are removed.
func prepare(d *cdir, reps []*replacement, hooks *crashHooks) (err error) {
	if len(reps) == 0 {
		return nil
	}
	crashed := false
	defer func() {
		if err != nil && !crashed {
			discard(d, reps)
		}
	}()
	for _, r := range reps {
		if r.st, err = d.lstat(r.name); err != nil {
			return err
		}
		if r.st.Mode&unix.S_IFMT != unix.S_IFREG {
			return fmt.Errorf("%s is not a regular file; not replacing it", d.join(r.name))
		}
		r.was = identityOf(&r.st)
		if r.tmp, r.tmpName, err = createTemp(d, r.name, r.st.Mode&0o7777, &r.st, hooks); err != nil {
			return err
		}
		if err := hooks.sys(opWrite, r.tmpName); err != nil {
			return err
		}
		n, err := r.write(r.tmp)
		if err != nil {
			return fmt.Errorf("writing %s: %w", d.join(r.tmpName), err)
		}
		if herr := hooks.hit("tmp-written"); herr != nil {
			crashed = true
			closeTemps(reps)
			return herr
		}
		if err = syncFile(r.tmp, r.tmpName, hooks); err != nil {
			return err
		}
		if r.tst, err = fstat(r.tmp); err != nil {
			return err
		}
		if r.tst.Size != n {
			return fmt.Errorf("%s is %d bytes after writing %d; not replacing %s with it", d.join(r.tmpName), r.tst.Size, n, d.join(r.name))
		}
		if err = r.check(r.tmp, n); err != nil {
			return fmt.Errorf("%w, so it did not replace %s", err, d.join(r.name))
		}
		if r.hash, err = hashPrefix(r.tmp, hashLen(r.hdr(r.tmp, n), n)); err != nil {
			return err
		}
		// Lock the new inode while only we know it, so it is locked from
		// the instant it has the file's name.
		if heldByUs(keyOf(&r.st)) {
			if err = flock(r.tmp, unix.LOCK_EX|unix.LOCK_NB); err != nil {
				return fmt.Errorf("locking %s: %w", d.join(r.tmpName), err)
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

func hashLen(hdr, size int64) int64 {
	if hdr < 0 {
		return size
	}
	return hdr
}

// unchanged refuses (ErrChanged) if any file to replace is no longer the
// one prepare saw.
func unchanged(d *cdir, reps []*replacement) error {
	for _, r := range reps {
		now, err := identityAt(d, r.name)
		if err != nil {
			return fmt.Errorf("%s: %w during the rewrite: %v; it was not replaced", d.join(r.name), ErrChanged, err)
		}
		if !now.same(r.was) {
			return fmt.Errorf("%s: %w during the rewrite (was %s, now %s); it was not replaced", d.join(r.name), ErrChanged, r.was, now)
		}
	}
	return nil
}

// discard removes the temp files of replacements that will not happen.
func discard(d *cdir, reps []*replacement) {
	for _, r := range reps {
		if r.tmp != nil {
			r.tmp.Close()
			d.remove(r.tmpName)
			r.tmp = nil
		}
	}
}

func closeTemps(reps []*replacement) {
	for _, r := range reps {
		if r.tmp != nil {
			r.tmp.Close()
			r.tmp = nil
		}
	}
}

// commitRenames lists what install will do, for a compact record.
func commitRenames(reps []*replacement) []commitRename {
	var out []commitRename
	for _, r := range reps {
		out = append(out, commitRename{File: r.file, Temp: r.tmpName, Dev: uint64(r.tst.Dev), Ino: r.tst.Ino, Size: r.tst.Size, Hash: r.hash})
	}
	return out
}

// headerLengthOf is 8+N of the safetensors file f of size bytes, or its
// size if that cannot be read (then it matches nothing anyway).
func headerLengthOf(f *os.File, size int64) int64 {
	var b [8]byte
	if _, err := f.ReadAt(b[:], 0); err != nil {
		return size
	}
	n := leU64(b[:])
	if size < 8 || n > uint64(size-8) {
		return size
	}
	return 8 + int64(n)
}

// rewriteAtomic replaces one checkpoint file (name below d) by the
// canonical file for sources and metadata: prepare, unchanged, then a
// rename. (Compaction has its own install, guarded by the log.)
func rewriteAtomic(d *cdir, name string, sources []safetensors.Source, metadata map[string]string, hooks *crashHooks) error {
	reps := []*replacement{shardReplacement(name, sources, metadata)}
	if err := prepare(d, reps, hooks); err != nil {
		return err
	}
	if err := unchanged(d, reps); err != nil {
		discard(d, reps)
		return err
	}
	r := reps[0]
	if err := hooks.sys(opRename, r.name); err != nil {
		discard(d, reps)
		return err
	}
	if err := d.rename(r.tmpName, r.name); err != nil {
		discard(d, reps)
		return err
	}
	if herr := hooks.hit("renamed"); herr != nil {
		closeTemps(reps)
		return herr
	}
	err := syncDirOf(d, r.name, hooks)
	handOff(d, r)
	return err
}

// handOff gives the lock prepare took on r's new file to the caller's next
// lockFile of it, or closes the temp file's descriptor.
func handOff(d *cdir, r *replacement) {
	if r.tmp == nil {
		return
	}
	if !r.locked || !offerHandoff(r.tmp, keyOf(&r.tst), keyOf(&r.st), d.join(r.name)) {
		r.tmp.Close()
	}
	r.tmp = nil
}
