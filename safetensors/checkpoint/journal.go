package checkpoint

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// The write-ahead journal makes a same-layout edit (bytes changed inside
// existing tensors, header unchanged) crash-safe at a cost proportional to
// the bytes changed: the new bytes go to the journal, which is made durable
// and then renamed into place (the commit point), then they are written into
// the checkpoint in place. A crash before the rename leaves the checkpoint
// untouched; after it, the next read-write open replays the journal.
//
// Format, all integers little-endian:
//
//	envelope (version-independent, so corruption is told apart from a
//	journal of a newer version):
//	  body
//	  u32      CRC-32C (Castagnoli) of body
//	  [8]byte  journalEnd
//	body, version 1:
//	  [8]byte  journalMagic
//	  u32      version (1)
//	  u32      flags (0)
//	  u64      checkpoint size in bytes
//	  u64      data offset D = 8 + N: the header is the file's first D bytes
//	  [32]byte SHA-256 of the checkpoint's first D bytes
//	  u32      S, number of sample ranges (at most maxSamples)
//	  u32      reserved (0)
//	  S x      u64 offset, u64 length: ranges of tensor data the edit leaves alone
//	  [32]byte SHA-256 of the bytes of the sample ranges, in order
//	  u64      R, number of records
//	  R x      u64 offset, u64 length, then length bytes: write these bytes
//	           at this checkpoint offset; records are sorted, disjoint and
//	           all inside [D, size)
//
// Size and header hash make sure the journal is replayed only onto the
// checkpoint it was written for. The samples are for a file with the same
// header and size but other data (the next training step of the same model,
// copied over the checkpoint after a crash): patching that would make it
// silently different from what anyone wrote, so a journal whose samples do
// not match is set aside, not applied. CRC-32C rather than a cryptographic
// hash because it only has to catch torn and corrupted writes, and it runs
// at memory speed.
const (
	journalMagic   = "SJFSJRNL"
	journalEnd     = "SJFSEND\n"
	journalVersion = 1
	trailerSize    = 4 + 8 // CRC, journalEnd
	bodyHeadSize   = 8 + 4 + 4 + 8 + 8 + 32 + 4 + 4
	ioBufSize      = 1 << 20

	maxSamples = 8
	sampleSize = 4 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errHeaderLength: the file's header length is not the one expected.
var errHeaderLength = errors.New("header length mismatch")

// errJournalPending wraps errors that happen after the commit point: the
// edit is durable in the journal and may be half written into the
// checkpoint; the next commitInPlace, rewriteAtomic or read-write open
// completes it.
var errJournalPending = errors.New("the edit is saved in the journal and will be completed when the checkpoint is next written or opened read-write")

// errStaleJournal: a journal that does not belong to the checkpoint as it is
// now. It was moved aside, the checkpoint left as it is.
var errStaleJournal = errors.New("journal does not match the checkpoint")

// patch is bytes to write at an absolute offset in the checkpoint file.
type patch struct {
	off  int64
	data []byte
}

// crashHooks lets tests simulate a crash at named points. When at returns
// an error, the operation returns it at once, leaving the files exactly as
// a crash there would (descriptors it opened are closed, as a crash would).
//
// commitInPlace: "journal-written" (journal in its temp file, not synced),
// "journal-synced" (synced, not yet renamed into place), "journal-committed"
// (renamed and directory synced: the commit point), "patch-applied" (after
// each run's pwrite, before the checkpoint is synced), "applied-synced",
// "journal-removed" (before the directory is synced).
// rewriteAtomic: "tmp-written" (before fsync), "tmp-synced" (before rename),
// "renamed" (before the directory is synced).
type crashHooks struct {
	at func(point string) error
}

func (h *crashHooks) hit(point string) error {
	if h == nil || h.at == nil {
		return nil
	}
	return h.at(point)
}

// journalPath is where the journal of checkpoint ckpt lives: next to the
// file ckpt names, symlinks resolved, so every path to a checkpoint finds
// the same journal.
func journalPath(ckpt string) string {
	if r, err := realPath(ckpt); err == nil {
		ckpt = r
	}
	return sidePath(ckpt, ".safejaxfs-journal")
}

// run is a contiguous range of new bytes, from one or more patches.
type run struct {
	off, n int64
	segs   [][]byte
}

type span struct{ off, end int64 }

// planRuns checks the patches and turns them into sorted, disjoint runs,
// adjacent patches merged so each run is one record and one pwritev. Where
// patches overlap, the later one in the slice wins, as if they had been
// written in order. No data is copied: runs hold sub-slices of the patches.
func planRuns(patches []patch, dataOffset, size int64) ([]run, error) {
	for i, p := range patches {
		n := int64(len(p.data))
		switch {
		case n == 0:
		case p.off < dataOffset:
			return nil, fmt.Errorf("patch %d at offset %d would overwrite the header (tensor data starts at %d)", i, p.off, dataOffset)
		case p.off > size-n:
			return nil, fmt.Errorf("patch %d at offset %d, %d bytes, runs past the end of the %d-byte checkpoint", i, p.off, n, size)
		}
	}
	// Walk from the last patch back, keeping only bytes no later patch
	// covers. covered stays sorted and disjoint.
	var pieces []patch
	var covered []span
	for i := len(patches) - 1; i >= 0; i-- {
		p := patches[i]
		a, b := p.off, p.off+int64(len(p.data))
		if a == b {
			continue
		}
		j := sort.Search(len(covered), func(k int) bool { return covered[k].end > a })
		k, cur := j, a
		for ; k < len(covered) && covered[k].off < b; k++ {
			if covered[k].off > cur {
				pieces = append(pieces, patch{cur, p.data[cur-a : covered[k].off-a]})
			}
			cur = max(cur, covered[k].end)
		}
		if cur < b {
			pieces = append(pieces, patch{cur, p.data[cur-a:]})
		}
		u := span{a, b}
		if j < k {
			u.off, u.end = min(a, covered[j].off), max(b, covered[k-1].end)
		}
		covered = slices.Replace(covered, j, k, u)
	}
	slices.SortFunc(pieces, func(x, y patch) int { return cmpInt64(x.off, y.off) })
	var runs []run
	for _, p := range pieces {
		if l := len(runs) - 1; l >= 0 && runs[l].off+runs[l].n == p.off {
			runs[l].segs = append(runs[l].segs, p.data)
			runs[l].n += int64(len(p.data))
			continue
		}
		runs = append(runs, run{off: p.off, n: int64(len(p.data)), segs: [][]byte{p.data}})
	}
	return runs, nil
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// pickSamples chooses up to maxSamples ranges of tensor data, spread over
// the file, that no run touches: their bytes are the same before, during
// and after the edit, so replay can compare them.
func pickSamples(runs []run, dataOffset, size int64) []span {
	total := size - dataOffset
	if total <= 0 {
		return nil
	}
	var out []span
	for k := int64(0); k < maxSamples; k++ {
		lo := dataOffset + total/maxSamples*k
		hi := dataOffset + total/maxSamples*(k+1)
		if k == maxSamples-1 {
			hi = size
		}
		// First byte at or after lo that no run covers.
		pos := lo
		i := sort.Search(len(runs), func(i int) bool { return runs[i].off+runs[i].n > pos })
		for i < len(runs) && runs[i].off <= pos {
			pos = runs[i].off + runs[i].n
			i++
		}
		if pos >= hi {
			continue
		}
		end := min(pos+sampleSize, hi)
		if i < len(runs) {
			end = min(end, runs[i].off)
		}
		if l := len(out) - 1; l >= 0 && out[l].end > pos {
			continue // tiny files: slots overlap
		}
		out = append(out, span{pos, end})
	}
	return out
}

// journalHead is the part of the journal that ties it to one checkpoint.
type journalHead struct {
	size, dataOffset int64
	headerHash       [32]byte
	samples          []span
	sampleHash       [32]byte
}

// fingerprint reads what a journal records about checkpoint f. It returns
// an error if the header length in the file does not give dataOffset.
func fingerprint(f *os.File, size, dataOffset int64, samples []span) (journalHead, error) {
	h := journalHead{size: size, dataOffset: dataOffset, samples: samples}
	var nb [8]byte
	if _, err := f.ReadAt(nb[:], 0); err != nil {
		return h, fmt.Errorf("reading header length: %w", err)
	}
	if n := binary.LittleEndian.Uint64(nb[:]); n > uint64(size) || 8+int64(n) != dataOffset || dataOffset > size {
		return h, fmt.Errorf("%w: the file's header length %d does not put tensor data at offset %d of %d bytes", errHeaderLength, n, dataOffset, size)
	}
	sum := sha256.New()
	if _, err := io.Copy(sum, io.NewSectionReader(f, 0, dataOffset)); err != nil {
		return h, fmt.Errorf("reading header: %w", err)
	}
	sum.Sum(h.headerHash[:0])
	sum.Reset()
	buf := make([]byte, sampleSize)
	for _, s := range samples {
		b := buf[:s.end-s.off]
		if _, err := f.ReadAt(b, s.off); err != nil {
			return h, fmt.Errorf("reading tensor data at %d: %w", s.off, err)
		}
		sum.Write(b)
	}
	sum.Sum(h.sampleHash[:0])
	return h, nil
}

// commitInPlace makes patches durable in the checkpoint crash-safely:
//  1. write the journal to a temp file, fsync it, rename it to journalPath,
//     fsync the directory (the commit point);
//  2. pwrite the runs into f (the checkpoint open O_RDWR) in ascending
//     offset order, fdatasync f;
//  3. remove the journal, fsync the directory.
//
// Patches may not touch the header (off < dataOffset) or reach past the end
// of the file; later patches win where they overlap. f must be the file now
// at ckpt. A journal an earlier call left behind is replayed first, so there
// is never more than one edit in flight. Errors after the commit point wrap
// errJournalPending. The caller holds the lock (lockFile).
//
// Cost: the new bytes are written twice (journal, checkpoint) plus the
// header, hashed, and up to maxSamples x 4 KiB read; four syncs.
func commitInPlace(f *os.File, ckpt string, dataOffset int64, patches []patch, hooks *crashHooks) error {
	path, err := realPath(ckpt)
	if err != nil {
		return err
	}
	fst, err := fstat(f)
	if err != nil {
		return err
	}
	var pst unix.Stat_t
	if err := unix.Stat(path, &pst); err != nil {
		return &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if keyOf(&fst) != keyOf(&pst) {
		return fmt.Errorf("%s: %w: it is no longer the file open for writing", path, ErrChanged)
	}
	size := fst.Size
	runs, err := planRuns(patches, dataOffset, size)
	if err != nil || len(runs) == 0 {
		return err
	}
	jpath := journalPath(path)
	if _, err := os.Lstat(jpath); err == nil {
		if _, err := replayOnto(f, path, jpath); err != nil {
			return fmt.Errorf("finishing an earlier interrupted write first: %w", err)
		}
	}
	head, err := fingerprint(f, size, dataOffset, pickSamples(runs, dataOffset, size))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}

	// 1. The journal. Until the rename the checkpoint is untouched, so any
	// failure only has to remove the temp file.
	tmp, tmpName, err := createTemp(path, fst.Mode&0o666, &fst)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		tmp.Close()
		os.Remove(tmpName)
		return err
	}
	if err := writeJournal(tmp, &head, runs); err != nil {
		return fail(fmt.Errorf("writing journal %s: %w", tmpName, err))
	}
	if err := hooks.hit("journal-written"); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		return fail(fmt.Errorf("syncing journal %s: %w", tmpName, err))
	}
	if err := hooks.hit("journal-synced"); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmpName, jpath); err != nil {
		os.Remove(tmpName)
		return err
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		// Nothing was written into the checkpoint yet: taking the journal
		// back leaves it consistent whether or not the rename is durable.
		os.Remove(jpath)
		return err
	}
	if err := hooks.hit("journal-committed"); err != nil {
		return err
	}

	// 2. In place.
	for _, r := range runs {
		if err := pwritev(f, r.segs, r.off); err != nil {
			return fmt.Errorf("%s: writing %d bytes at offset %d: %w (%w)", path, r.n, r.off, err, errJournalPending)
		}
		if err := hooks.hit("patch-applied"); err != nil {
			return err
		}
	}
	// fdatasync: the size does not change, so the data is all there is to
	// make durable (mtime is not worth a metadata write).
	if err := control(f, unix.Fdatasync); err != nil {
		return fmt.Errorf("%s: syncing: %w (%w)", path, err, errJournalPending)
	}
	if err := hooks.hit("applied-synced"); err != nil {
		return err
	}

	// 3. The edit is durable; the journal is now only a harmless,
	// idempotent redo.
	if err := os.Remove(jpath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("the edit is saved, but removing journal %s failed: %w", jpath, err)
	}
	if err := hooks.hit("journal-removed"); err != nil {
		return err
	}
	// If this sync is lost the journal can come back after a power cut;
	// replaying it rewrites the same bytes, so its error does not fail an
	// edit that is already durable.
	syncDir(filepath.Dir(path))
	return nil
}

func writeJournal(f *os.File, h *journalHead, runs []run) error {
	crc := crc32.New(castagnoli)
	w := bufio.NewWriterSize(io.MultiWriter(f, crc), ioBufSize)
	var b [16]byte
	le := binary.LittleEndian
	u32 := func(v uint32) { le.PutUint32(b[:4], v); w.Write(b[:4]) }
	u64 := func(v uint64) { le.PutUint64(b[:8], v); w.Write(b[:8]) }

	w.WriteString(journalMagic)
	u32(journalVersion)
	u32(0)
	u64(uint64(h.size))
	u64(uint64(h.dataOffset))
	w.Write(h.headerHash[:])
	u32(uint32(len(h.samples)))
	u32(0)
	for _, s := range h.samples {
		u64(uint64(s.off))
		u64(uint64(s.end - s.off))
	}
	w.Write(h.sampleHash[:])
	u64(uint64(len(runs)))
	for _, r := range runs {
		u64(uint64(r.off))
		u64(uint64(r.n))
		for _, s := range r.segs {
			w.Write(s)
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	var t [trailerSize]byte
	le.PutUint32(t[:4], crc.Sum32())
	copy(t[4:], journalEnd)
	_, err := f.Write(t[:])
	return err
}

// journal is a parsed, checksum-valid journal.
type journal struct {
	journalHead
	recs []jrec
}

type jrec struct {
	off, n int64 // where in the checkpoint
	at     int64 // where its bytes are in the journal
}

var (
	errJournalCorrupt = errors.New("journal is incomplete or corrupt")
	errJournalVersion = errors.New("journal has an unsupported version")
	errJournalInvalid = errors.New("journal has a valid checksum but invalid contents")
)

// readJournal checks the envelope first (end marker and CRC over the whole
// body, one streaming pass) and only then parses, so a torn or corrupted
// journal is always errJournalCorrupt however the damage falls, and a valid
// journal this code cannot read is errJournalVersion, never mistaken for
// damage and deleted.
func readJournal(f *os.File) (*journal, error) {
	st, err := fstat(f)
	if err != nil {
		return nil, err
	}
	size := st.Size
	if size < int64(bodyHeadSize+32+8+trailerSize) {
		return nil, errJournalCorrupt
	}
	body := size - trailerSize
	var t [trailerSize]byte
	if _, err := f.ReadAt(t[:], body); err != nil {
		return nil, err
	}
	if string(t[4:]) != journalEnd {
		return nil, errJournalCorrupt
	}
	crc := crc32.New(castagnoli)
	if _, err := io.CopyBuffer(crc, io.NewSectionReader(f, 0, body), make([]byte, ioBufSize)); err != nil {
		return nil, err
	}
	if crc.Sum32() != binary.LittleEndian.Uint32(t[:4]) {
		return nil, errJournalCorrupt
	}

	// The body is exactly what was written; now parse it. Records are
	// skipped over, not read: replay reads them when it copies them.
	le := binary.LittleEndian
	var hb [bodyHeadSize]byte
	if _, err := f.ReadAt(hb[:], 0); err != nil {
		return nil, err
	}
	if string(hb[:8]) != journalMagic {
		return nil, errJournalCorrupt
	}
	if v := le.Uint32(hb[8:]); v != journalVersion {
		return nil, fmt.Errorf("%w %d (this safejaxfs reads version %d)", errJournalVersion, v, journalVersion)
	}
	j := &journal{}
	j.size = int64(le.Uint64(hb[16:]))
	j.dataOffset = int64(le.Uint64(hb[24:]))
	copy(j.headerHash[:], hb[32:64])
	ns := le.Uint32(hb[64:])
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", errJournalInvalid, fmt.Sprintf(format, args...))
	}
	if le.Uint32(hb[12:]) != 0 || j.size < 8 || j.dataOffset < 8 || j.dataOffset > j.size || ns > maxSamples {
		return nil, invalid("bad head")
	}
	pos := int64(bodyHeadSize)
	var b [16]byte
	for range ns {
		if pos+16 > body {
			return nil, invalid("sample list runs past the end")
		}
		if _, err := f.ReadAt(b[:], pos); err != nil {
			return nil, err
		}
		pos += 16
		off, n := int64(le.Uint64(b[:])), int64(le.Uint64(b[8:]))
		if off < j.dataOffset || n <= 0 || n > sampleSize || off > j.size-n {
			return nil, invalid("sample [%d, +%d) outside the data", off, n)
		}
		j.samples = append(j.samples, span{off, off + n})
	}
	if pos+40 > body {
		return nil, invalid("record count runs past the end")
	}
	if _, err := f.ReadAt(j.sampleHash[:], pos); err != nil {
		return nil, err
	}
	if _, err := f.ReadAt(b[:8], pos+32); err != nil {
		return nil, err
	}
	pos += 40
	nr := le.Uint64(b[:8])
	if nr > uint64(body-pos)/16 {
		return nil, invalid("%d records cannot fit", nr)
	}
	last := j.dataOffset
	for range nr {
		if pos+16 > body {
			return nil, invalid("records run past the end")
		}
		if _, err := f.ReadAt(b[:], pos); err != nil {
			return nil, err
		}
		off, n := int64(le.Uint64(b[:])), int64(le.Uint64(b[8:]))
		pos += 16
		if n <= 0 || n > body-pos || off < last || off > j.size-n {
			return nil, invalid("record [%d, +%d) out of order or outside the data", off, n)
		}
		j.recs = append(j.recs, jrec{off, n, pos})
		pos += n
		last = off + n
	}
	if pos != body {
		return nil, invalid("%d bytes after the last record", body-pos)
	}
	return j, nil
}

// mismatch says why checkpoint f is not the file the journal was written
// for, or "" if it is.
func (j *journal) mismatch(f *os.File) (string, error) {
	st, err := fstat(f)
	if err != nil {
		return "", err
	}
	if st.Size != j.size {
		return fmt.Sprintf("the journal is for a %d-byte checkpoint and this one is %d bytes", j.size, st.Size), nil
	}
	h, err := fingerprint(f, j.size, j.dataOffset, j.samples)
	if errors.Is(err, errHeaderLength) {
		return "the checkpoint's header is not the one the journal was written for (" + err.Error() + ")", nil
	}
	if err != nil {
		return "", err
	}
	if h.headerHash != j.headerHash {
		return "the checkpoint's header is not the one the journal was written for", nil
	}
	if h.sampleHash != j.sampleHash {
		return "the checkpoint has the same header but different tensor data than the one the journal was written for", nil
	}
	return "", nil
}

// replayJournal finishes a write-back a crash interrupted. Run it at open,
// before the checkpoint is validated or mapped; it takes the write lock
// itself (ErrLocked if another mount holds it: the journal is that mount's
// edit in flight), unless this process already holds it.
//
//   - No journal: nothing to do.
//   - Incomplete or corrupt journal (the crash came before the commit
//     point, so the checkpoint was never touched): removed; the checkpoint is
//     not touched.
//   - Valid and written for this checkpoint (same size, header and sampled
//     data): its records are written again (idempotent), synced, and the
//     journal removed. applied is true.
//   - Valid but for another file (the checkpoint was replaced or changed
//     since), or of a version this code cannot read: the checkpoint is left
//     as it is and the journal renamed to "<journal>.stale-<unix time>"; the
//     error says so and wraps errStaleJournal.
func replayJournal(ckpt string) (applied bool, err error) {
	path, perr := realPath(ckpt)
	jpath := journalPath(path)
	if _, err := os.Lstat(jpath); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if perr != nil {
		if !errors.Is(perr, fs.ErrNotExist) {
			return false, perr
		}
		// No checkpoint: if the journal is valid it belongs to a file that
		// is gone, and keeping it aside is the most that can be done.
		jf, err := os.Open(jpath)
		if err != nil {
			return false, err
		}
		_, jerr := readJournal(jf)
		jf.Close()
		if errors.Is(jerr, errJournalCorrupt) {
			return false, removeSynced(jpath)
		}
		return false, setAside(jpath, path, "the checkpoint does not exist")
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Errorf("%s has an interrupted write to finish (journal %s), but it cannot be opened for writing: %w", path, jpath, err)
	}
	defer f.Close()
	err = withWriteLock(f, func() error {
		var err error
		applied, err = replayOnto(f, path, jpath)
		return err
	})
	return applied, err
}

// replayOnto is replayJournal for a caller that holds the lock and has the
// checkpoint open for writing as f.
func replayOnto(f *os.File, path, jpath string) (bool, error) {
	jf, err := os.Open(jpath)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer jf.Close()
	j, err := readJournal(jf)
	switch {
	case errors.Is(err, errJournalCorrupt):
		return false, removeSynced(jpath)
	case errors.Is(err, errJournalVersion) || errors.Is(err, errJournalInvalid):
		return false, setAside(jpath, path, err.Error())
	case err != nil:
		return false, fmt.Errorf("reading journal %s: %w", jpath, err)
	}
	why, err := j.mismatch(f)
	if err != nil {
		return false, fmt.Errorf("%s: checking journal %s: %w", path, jpath, err)
	}
	if why != "" {
		return false, setAside(jpath, path, why)
	}
	buf := make([]byte, ioBufSize)
	for _, r := range j.recs {
		for done := int64(0); done < r.n; {
			b := buf[:min(int64(len(buf)), r.n-done)]
			if _, err := jf.ReadAt(b, r.at+done); err != nil {
				return false, fmt.Errorf("reading journal %s: %w", jpath, err)
			}
			if _, err := f.WriteAt(b, r.off+done); err != nil {
				return false, fmt.Errorf("%s: replaying journal: %w", path, err)
			}
			done += int64(len(b))
		}
	}
	if err := control(f, unix.Fdatasync); err != nil {
		return false, fmt.Errorf("%s: syncing replayed journal: %w", path, err)
	}
	if err := removeSynced(jpath); err != nil {
		return true, err
	}
	return true, nil
}

// setAside renames a journal that must not be applied out of the way, so
// the checkpoint can be used again but the edit is not destroyed.
func setAside(jpath, path, why string) error {
	stale, err := renameAside(jpath, fmt.Sprintf("%s.stale-%d", jpath, time.Now().Unix()))
	if err != nil {
		return fmt.Errorf("%s: %w (%s), and moving the journal %s aside failed: %v", path, errStaleJournal, why, jpath, err)
	}
	return fmt.Errorf("%s: %w: %s; the checkpoint was left as it is and the journal moved to %s", path, errStaleJournal, why, stale)
}

// renameAside renames src to dst, or dst-2, dst-3... if taken: never over
// an existing file.
func renameAside(src, dst string) (string, error) {
	for i := 1; ; i++ {
		name := dst
		if i > 1 {
			name = fmt.Sprintf("%s-%d", dst, i)
		}
		err := renameNoReplace(src, name)
		if err == nil {
			return name, syncDir(filepath.Dir(name))
		}
		if !errors.Is(err, fs.ErrExist) || i >= 1000 {
			return "", err
		}
	}
}

func removeSynced(name string) error {
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return syncDir(filepath.Dir(name))
}

// pwritev writes segs contiguously at off with as few system calls as the
// iovec limit allows, retrying short writes.
func pwritev(f *os.File, segs [][]byte, off int64) error {
	const iovMax = 1024
	segs = slices.Clone(segs)
	return control(f, func(fd int) error {
		for len(segs) > 0 {
			batch := segs[:min(len(segs), iovMax)]
			n, err := unix.Pwritev(fd, batch, off)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			if n == 0 {
				return io.ErrShortWrite
			}
			off += int64(n)
			for n > 0 {
				if n >= len(segs[0]) {
					n -= len(segs[0])
					segs = segs[1:]
					continue
				}
				segs[0] = segs[0][n:]
				n = 0
			}
			for len(segs) > 0 && len(segs[0]) == 0 {
				segs = segs[1:]
			}
		}
		return nil
	})
}
