package checkpoint

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// What a log found at a read-write open means, decided in one place
// (settleLog). A log is untrusted input like everything else in the
// checkpoint's directory (dirfs.go): it is read whole and checked (every
// record's checksum, its owner, and that it was written for exactly the
// files as they are now) before any byte of it is applied, and one that
// does not match is never applied: the open fails with a *LogError naming
// it and the choices (safejaxfs recover --discard, or move it away).

// ErrLogMismatch: a log that was not written for the checkpoint as it is
// now (it was replaced, restored or changed since), or that is not ours.
var ErrLogMismatch = errors.New("the log does not belong to the checkpoint as it is now")

// LogError is a log that was not applied, and why.
type LogError struct {
	Checkpoint string // the checkpoint's path as given
	Log        string // the log's path
	Why        string
	Err        error // ErrLogMismatch, or what made the log unreadable
}

func (e *LogError) Error() string {
	return fmt.Sprintf("%s: the log %s was not applied: %s. It holds edits of an earlier mount that crashed or could not finish its write-back; "+
		"they were not written into these files because they may not belong to them. To use the checkpoint as it is now: "+
		"safejaxfs recover --discard %s (moves the log aside; nothing is deleted), or move the log away yourself",
		e.Checkpoint, e.Log, e.Why, e.Checkpoint)
}

func (e *LogError) Unwrap() error { return e.Err }

// settleLog looks at the log of the checkpoint at loc (its main file, the
// file or the index, is main below d), at a read-write open, before the
// files are validated, with the write lock held:
//
//   - no log, or one that holds nothing beyond its base: nothing to do
//     (an empty one is removed);
//   - a log whose compaction was committed (it ends in a compact record),
//     for files that are each either as the log began, or as the record
//     says they will be, or half way between by our own hand: the
//     compaction is finished (files installed, patches written again from
//     the log) and the log removed;
//   - a log written for the files as they are (same size, inode, mtime
//     and header of each): returned, for Open to replay and compact;
//   - anything else (a log for other files, one we cannot read, one owned
//     by another user): a *LogError, and nothing is changed.
//
// finished reports that a compaction was finished (files may have been
// replaced). The files a log applies to are its own list (its base
// record), in its order: a shard a write-back emptied is no longer in the
// index, but the mount that wrote the log still had it (and records name
// shards by their place in that list). The Location returned is that list.
func settleLog(d *cdir, loc *safetensors.Location, path, main string, owner *unix.Stat_t, hooks *crashHooks) (scan *walScan, at *safetensors.Location, finished bool, err error) {
	lname := walNameOf(main)
	refuse := func(why string, err error) error {
		if err == nil {
			err = ErrLogMismatch
		}
		return &LogError{Checkpoint: path, Log: d.join(lname), Why: why, Err: err}
	}
	f, err := d.open(lname, os.O_RDONLY, 0)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, loc, false, nil
	case errors.Is(err, ErrSymlink):
		return nil, loc, false, refuse("it is a symlink, which safejaxfs never makes", nil)
	case err != nil:
		return nil, loc, false, fmt.Errorf("opening the log %s: %w", d.join(lname), err)
	}
	if why := foreignLog(f, owner); why != "" {
		f.Close()
		return nil, loc, false, refuse(why, nil)
	}
	s, err := scanWAL(f)
	if err == nil {
		var st unix.Stat_t
		if st, err = fstat(f); err == nil {
			s.id = keyOf(&st)
		}
	}
	f.Close()
	switch {
	case errors.Is(err, errWALVersion), errors.Is(err, errWALInvalid):
		return nil, loc, false, refuse(err.Error(), err)
	case err != nil:
		return nil, loc, false, fmt.Errorf("reading the log %s: %w", d.join(lname), err)
	case len(s.recs) == 0 || s.recs[0].typ != recBase:
		// Never committed its first batch: it holds nothing.
		return nil, loc, false, removeSynced(d, lname, hooks)
	}
	base := s.recs[0].files
	if cr := lastCompact(s); cr != nil {
		plan, why, err := planCompaction(d, main, base, s, cr)
		if errors.Is(err, errWALInvalid) {
			return nil, loc, false, refuse(err.Error(), err)
		}
		if err != nil {
			return nil, loc, false, err
		}
		if why != "" {
			return nil, loc, false, refuse(why, nil)
		}
		if err := hooks.hit("log-checked"); err != nil {
			return nil, loc, false, err
		}
		if err := plan.finish(d, lname, s, owner, hooks); err != nil {
			return nil, loc, false, fmt.Errorf("%s: finishing an interrupted write-back from the log %s: %w", path, d.join(lname), err)
		}
		return nil, loc, true, removeSynced(d, lname, hooks)
	}
	at, why := logLocation(d, loc, base)
	if why == "" {
		if why, err = mismatch(d, main, at, base); err != nil {
			return nil, loc, false, err
		}
	}
	if why != "" {
		if s.seq <= 1 {
			return nil, loc, false, removeSynced(d, lname, hooks) // nothing in it to lose
		}
		return nil, loc, false, refuse(why, nil)
	}
	if s.seq <= 1 {
		return nil, loc, false, removeSynced(d, lname, hooks)
	}
	if err := hooks.hit("log-checked"); err != nil {
		return nil, loc, false, err
	}
	return s, at, false, nil
}

// foreignLog says why the log f must not be trusted to be ours, or "":
// it must be owned by us or by the checkpoint's owner (whose the logs root
// makes are), and writable by nobody else. On a shared machine, another
// user who can write the directory could otherwise plant edits into a
// checkpoint they cannot write.
func foreignLog(f *os.File, owner *unix.Stat_t) string {
	st, err := fstat(f)
	if err != nil {
		return err.Error()
	}
	uid := uint32(os.Geteuid())
	if st.Uid != uid && (owner == nil || st.Uid != owner.Uid) && uid != 0 {
		return fmt.Sprintf("it is owned by uid %d, not by you (uid %d) nor by the checkpoint's owner", st.Uid, uid)
	}
	if uid == 0 && st.Uid != 0 && (owner == nil || st.Uid != owner.Uid) {
		return fmt.Sprintf("it is owned by uid %d, neither root nor the checkpoint's owner", st.Uid)
	}
	if st.Mode&0o022 != 0 {
		return fmt.Sprintf("others may write it (mode %#o)", st.Mode&0o777)
	}
	return ""
}

// lastCompact is the log's compact record, if it has one.
func lastCompact(s *walScan) *compactRec {
	for i := len(s.recs) - 1; i >= 0; i-- {
		if s.recs[i].typ == recCompact || s.recs[i].typ == recCompactV1 {
			return s.recs[i].compact
		}
	}
	return nil
}

// logLocation is the list of files a log applies to, as a Location: the
// log's shards in its order, next to the index; for a plain checkpoint,
// loc. why says what makes that impossible.
func logLocation(d *cdir, loc *safetensors.Location, base []walFile) (at *safetensors.Location, why string) {
	if !loc.Sharded() {
		return loc, ""
	}
	at = &safetensors.Location{Index: loc.Index}
	for _, wf := range base {
		if wf.name == "" {
			continue
		}
		if err := safetensors.CheckShardName(wf.name); err != nil {
			return nil, fmt.Sprintf("the log names a shard %q: %v", wf.name, err)
		}
		at.Names = append(at.Names, wf.name)
		at.Paths = append(at.Paths, d.join(wf.name))
	}
	for _, n := range loc.Names {
		if !slices.Contains(at.Names, n) {
			return nil, fmt.Sprintf("the index names a shard %s the log does not", n)
		}
	}
	return at, ""
}

// mismatch says why the files are not exactly those the log was written
// for, or "" if they are. main is the index's name (for the base entry
// named "").
func mismatch(d *cdir, main string, loc *safetensors.Location, base []walFile) (string, error) {
	want := len(loc.Names)
	if loc.Sharded() {
		want++
	}
	if len(base) != want {
		return fmt.Sprintf("the log is for %d files, the checkpoint has %d", len(base), want), nil
	}
	for _, wf := range base {
		if wf.name != "" && !slices.Contains(loc.Names, wf.name) {
			return fmt.Sprintf("the log names a file %q the checkpoint does not have", wf.name), nil
		}
		if why, err := sameAsBase(d, fileName(wf, main), wf, true); why != "" || err != nil {
			return why, err
		}
	}
	return "", nil
}

// fileName is the name below the directory of the file wf describes.
func fileName(wf walFile, main string) string {
	if wf.name == "" {
		return main
	}
	return wf.name
}

// sameAsBase says why the file name is not the one wf describes (size,
// inode, header hash, and mtime when withTime), or "".
func sameAsBase(d *cdir, name string, wf walFile, withTime bool) (string, error) {
	hdr := int64(-1)
	if wf.name != "" {
		hdr = 0 // a shard: its header
	}
	now, err := describe(d, name, hdr)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Sprintf("%s is gone", d.join(name)), nil
	}
	if errors.Is(err, ErrSymlink) {
		return fmt.Sprintf("%s is a symlink now", d.join(name)), nil
	}
	if err != nil {
		return "", err
	}
	now.name = wf.name
	if !withTime {
		now.mtime = wf.mtime
	}
	if now != wf {
		return fmt.Sprintf("%s is not the file the log was written for (it was replaced or changed since)", d.join(name)), nil
	}
	return "", nil
}

// describe is walFileOf for the file name below d; hdr 0 hashes a shard's
// header (8+N), -1 the whole file.
func describe(d *cdir, name string, hdr int64) (walFile, error) {
	f, err := d.open(name, os.O_RDONLY, 0)
	if err != nil {
		return walFile{}, err
	}
	defer f.Close()
	st, err := fstat(f)
	if err != nil {
		return walFile{}, err
	}
	if hdr == 0 {
		hdr = headerLengthOf(f, st.Size)
	}
	return walFileOfFile(name, f, hdr)
}

// compactPlan is what is left of a committed compaction.
type compactPlan struct {
	main    string
	base    []walFile
	install []commitRename // temp files to put in place
	patches []patchedFile  // shards to patch (again) from the log
}

// planCompaction checks every file a committed compaction touches or
// leaves alone against the record, before anything is written, and lists
// what is left to do. why says why the files are not those the record was
// written for (then nothing may be done).
func planCompaction(d *cdir, main string, base []walFile, s *walScan, cr *compactRec) (*compactPlan, string, error) {
	if cr.v1 != nil {
		var why string
		if cr, why = legacyCompact(d, main, base, cr.v1); why != "" {
			return nil, why, nil
		}
	}
	p := &compactPlan{main: main, base: base}
	touched := map[int]bool{}
	installing := map[int]bool{}
	for _, r := range s.recs {
		if r.typ == recInstall {
			installing[r.shard] = true
		}
	}
	for _, r := range cr.renames {
		if r.File < 0 || r.File >= len(base) || touched[r.File] {
			return nil, "", fmt.Errorf("%w: compact record names file %d", errWALInvalid, r.File)
		}
		touched[r.File] = true
		wf := base[r.File]
		target := fileName(wf, main)
		if err := checkName(r.Temp); err != nil || tempTarget(r.Temp) != target {
			return nil, "", fmt.Errorf("%w: compact record names %q as the new %s", errWALInvalid, r.Temp, target)
		}
		tst, terr := d.lstat(r.Temp)
		tempThere := terr == nil && tst.Mode&unix.S_IFMT == unix.S_IFREG && uint64(tst.Dev) == r.Dev && tst.Ino == r.Ino && (r.Size < 0 || tst.Size == r.Size)
		fst, ferr := d.lstat(target)
		isBaseInode := ferr == nil && uint64(fst.Dev) == wf.dev && fst.Ino == wf.ino
		switch {
		case tempThere && isBaseInode && installing[r.File]:
			// We were copying it in place: copy again.
			p.install = append(p.install, r)
		case tempThere && isBaseInode:
			why, err := sameAsBase(d, target, wf, true)
			if err != nil {
				return nil, "", err
			}
			if why != "" {
				return nil, why, nil
			}
			p.install = append(p.install, r)
		case tempThere:
			return nil, fmt.Sprintf("%s was replaced since the write-back began", d.join(target)), nil
		case ferr == nil && uint64(fst.Dev) == r.Dev && fst.Ino == r.Ino:
			// Renamed into place. Its content must be what was renamed.
			if r.Size >= 0 {
				hdr := int64(0)
				if wf.name == "" {
					hdr = -1
				}
				now, err := describe(d, target, hdr)
				if err != nil {
					return nil, "", err
				}
				if now.size != r.Size || now.hash != r.Hash {
					return nil, fmt.Sprintf("%s changed since the write-back put it in place", d.join(target)), nil
				}
			}
		default:
			return nil, fmt.Sprintf("the write-back cannot be finished: neither %s nor its result %s is there as the log says", d.join(r.Temp), d.join(target)), nil
		}
	}
	for _, pf := range cr.patches {
		if pf.File < 0 || pf.File >= len(base) || touched[pf.File] || base[pf.File].name == "" {
			return nil, "", fmt.Errorf("%w: compact record patches file %d", errWALInvalid, pf.File)
		}
		touched[pf.File] = true
		wf := base[pf.File]
		// Patching changes the mtime, and only the recorded bytes.
		why, err := sameAsBase(d, wf.name, wf, false)
		if err != nil {
			return nil, "", err
		}
		if why != "" {
			return nil, why, nil
		}
		if why, err := checkPieces(d, wf, pf); why != "" || err != nil {
			return nil, why, err
		}
		p.patches = append(p.patches, pf)
	}
	for i, wf := range base {
		if touched[i] {
			continue
		}
		why, err := sameAsBase(d, fileName(wf, main), wf, true)
		if err != nil {
			return nil, "", err
		}
		if why != "" {
			return nil, why, nil
		}
	}
	return p, "", nil
}

// checkPieces says why a shard to patch holds, somewhere in the recorded
// runs, bytes that are neither what it held before the patch nor what the
// patch writes (so someone else wrote there), or "".
func checkPieces(d *cdir, wf walFile, pf patchedFile) (string, error) {
	if pf.Runs == nil {
		return "", nil // a record of the first format: no checksums
	}
	f, err := d.open(wf.name, os.O_RDONLY, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	buf := make([]byte, pageSize)
	for _, run := range pf.Runs {
		if run.Off+run.N > wf.size {
			return "", fmt.Errorf("%w: patch of %s at %d, %d bytes, past its end", errWALInvalid, wf.name, run.Off, run.N)
		}
		i := 0
		var perr error
		var bad int64 = -1
		pieces(run.Off, run.N, func(off, n int64) {
			if perr != nil || bad >= 0 {
				return
			}
			b := buf[:n]
			if _, err := f.ReadAt(b, off); err != nil {
				perr = err
				return
			}
			c := crc32.Checksum(b, castagnoliWAL)
			if c != run.Old[i] && c != run.New[i] {
				bad = off
			}
			i++
		})
		if perr != nil {
			return "", perr
		}
		if bad >= 0 {
			return fmt.Sprintf("%s holds bytes at offset %d that are neither those before the write-back nor those it writes (another program wrote there)", d.join(wf.name), bad), nil
		}
	}
	return "", nil
}

// legacyCompact turns a compact record of the first format (absolute
// paths) into the current one: each rename's target must be one of the
// log's files in d, its temp file next to it.
func legacyCompact(d *cdir, main string, base []walFile, v1 *compactV1) (*compactRec, string) {
	cr := &compactRec{}
	for _, r := range v1.renames {
		file := -1
		for i, wf := range base {
			if d.join(fileName(wf, main)) == r.To {
				file = i
			}
		}
		if file < 0 || !strings.HasPrefix(r.From, d.path+"/") {
			return nil, fmt.Sprintf("the log's write-back names %s, which is not one of the checkpoint's files", r.To)
		}
		dir, tb := splitName(fileName(base[file], main))
		temp := dir + strings.TrimPrefix(r.From[strings.LastIndex(r.From, "/"):], "/")
		if !isTempOf(temp[len(dir):], tb) {
			return nil, fmt.Sprintf("the log's write-back names %s as a temp file", r.From)
		}
		cr.renames = append(cr.renames, commitRename{File: file, Temp: temp, Dev: r.Dev, Ino: r.Ino, Size: -1})
	}
	for _, i := range v1.inPlace {
		cr.patches = append(cr.patches, patchedFile{File: i})
	}
	return cr, ""
}

// finish does what the plan says is left: each temp file put in place (by
// rename, or copied in place where the file cannot be renamed over, with a
// record in the log first so a crash in the middle is recognised as ours),
// then each patched shard gets every data record of its tensors again
// (idempotent), and is fdatasynced.
func (p *compactPlan) finish(d *cdir, lname string, s *walScan, owner *unix.Stat_t, hooks *crashHooks) error {
	var w *wal
	defer func() {
		if w != nil {
			w.close()
			for _, m := range w.maps {
				m.release()
			}
		}
	}()
	for _, r := range p.install {
		target := fileName(p.base[r.File], p.main)
		err := hooks.sys(opRename, target)
		if err == nil {
			err = d.rename(r.Temp, target)
		}
		if err == nil {
			if err := syncDirOf(d, target, hooks); err != nil {
				return err
			}
			continue
		}
		if !renameRefused(err) {
			return err
		}
		if w == nil {
			if w, err = openWAL(d, lname, s, p.base, owner, hooks); err != nil {
				return err
			}
		}
		if _, err := w.commit([]walRecord{{typ: recInstall, head: installBody(r.File)}}, hooks); err != nil {
			return err
		}
		if err := copyInPlaceNamed(d, r.Temp, target, hooks); err != nil {
			return err
		}
	}
	if len(p.patches) == 0 {
		return nil
	}
	lf, err := reopenLog(d, lname, os.O_RDONLY, s)
	if err != nil {
		return err
	}
	defer lf.Close()
	buf := make([]byte, 1<<20)
	for _, pf := range p.patches {
		if err := patchFromLog(d, p.base[pf.File].name, lf, s, buf, hooks); err != nil {
			return err
		}
		if pf.Runs != nil {
			if err := checkPatched(d, p.base[pf.File], pf); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkPatched verifies that every recorded piece of a patched shard holds
// what the patch writes.
func checkPatched(d *cdir, wf walFile, pf patchedFile) error {
	f, err := d.open(wf.name, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, pageSize)
	for _, run := range pf.Runs {
		i := 0
		var bad error
		pieces(run.Off, run.N, func(off, n int64) {
			if bad != nil {
				return
			}
			b := buf[:n]
			if _, err := f.ReadAt(b, off); err != nil {
				bad = err
				return
			}
			if crc32.Checksum(b, castagnoliWAL) != run.New[i] {
				bad = fmt.Errorf("%s at offset %d does not hold what the log's write-back wrote there", d.join(wf.name), off)
			}
			i++
		})
		if bad != nil {
			return bad
		}
	}
	return nil
}

// patchFromLog writes every data record of the log whose key is a tensor
// of the shard name into it, in log order, and fdatasyncs it. Its keys
// never changed in the log (a shard patched in place has the header it
// had), so a key names the same tensor in every record.
func patchFromLog(d *cdir, name string, lf *os.File, s *walScan, buf []byte, hooks *crashHooks) error {
	f, err := d.open(name, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := fstat(f)
	if err != nil {
		return err
	}
	h, err := safetensors.ReadHeader(f, st.Size)
	if err != nil {
		return fmt.Errorf("%s: %w", d.join(name), err)
	}
	where := make(map[string]*safetensors.Tensor, len(h.Tensors))
	for i := range h.Tensors {
		where[h.Tensors[i].Key] = &h.Tensors[i]
	}
	for _, r := range s.recs {
		if r.typ != recData {
			continue
		}
		t, ok := where[r.key]
		if !ok {
			continue
		}
		if r.pos < 0 || r.pos+r.n > int64(t.Size()) {
			return fmt.Errorf("%w: data for %q at %d, %d bytes, outside its %d bytes", errWALInvalid, r.key, r.pos, r.n, t.Size())
		}
		dst := h.DataOffset() + int64(t.Begin) + r.pos
		for done := int64(0); done < r.n; {
			b := buf[:min(int64(len(buf)), r.n-done)]
			if _, err := lf.ReadAt(b, r.at+done); err != nil {
				return err
			}
			if err := hooks.sys(opWrite, name); err != nil {
				return err
			}
			if _, err := f.WriteAt(b, dst+done); err != nil {
				return err
			}
			done += int64(len(b))
		}
	}
	return syncData(f, name, hooks)
}

// pendingLog reports a log next to the checkpoint at loc (the user named
// it as given) that holds something a read-write open would apply (or
// refuse).
func pendingLog(given string, loc *safetensors.Location) (string, bool) {
	d, main, _, err := rootOf(given, loc)
	if err != nil {
		return "", false
	}
	defer d.close()
	lname := walNameOf(main)
	p := d.join(lname)
	f, err := d.open(lname, os.O_RDONLY, 0)
	if err != nil {
		return p, !errors.Is(err, fs.ErrNotExist)
	}
	defer f.Close()
	s, err := scanWAL(f)
	if err != nil {
		return p, true
	}
	return p, s.seq > 1 || lastCompact(s) != nil
}
