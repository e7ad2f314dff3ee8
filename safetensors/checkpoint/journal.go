package checkpoint

import (
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

// Same-layout edits (bytes changed inside existing tensors, the header
// unchanged) are made durable in place, at a cost proportional to the bytes
// changed, behind a write-ahead journal: one file per checkpoint,
// ".<name>.safejaxfs-journal" next to it (journalPath), that every commit
// overwrites in place and that always holds the last commit's new bytes.
//
// A commit (commitInPlace), the journal already there:
//
//  1. pwrite the journal: the payload (the new bytes and what they belong
//     to) from offset 64, then the 64-byte head that gives the payload's
//     length and CRC-32C and a sequence number one above the last commit's
//     (1 in a new journal);
//  2. fdatasync the journal. This is the commit point;
//  3. pwrite the new bytes into the checkpoint, in ascending offset order;
//  4. fdatasync the checkpoint;
//  5. write the journal's applied mark (4 bytes of its head; not synced).
//
// Two syncs and no directory operation. The journal is not removed after a
// commit (a durable removal costs a directory fsync) nor truncated: a
// payload shorter than the file leaves a stale tail after it, which the
// head's length excludes. The file grows when a commit needs more room
// (fdatasync makes the new size durable with the data) and is cut back after
// a commit much smaller than it. The first commit after an open or a rewrite
// creates the journal instead: written into a temp file, fsynced, renamed to
// its name, directory fsynced (the commit point); then steps 3 to 5.
//
// Why a crash at any moment is safe: the checkpoint is written only after
// the journal describing that write is durable (step 2 returned), and a
// commit starts writing its journal only when the previous commit is durably
// in the checkpoint (its step 4 returned, or it was replayed at the start of
// this one) or never touched it (its journal failed to be written or synced,
// and was invalidated). So the journal on disk is never older than the
// newest bytes in place, and after a crash it is one of:
//
//   - the commit under way, whole (the crash came after its journal was
//     written): replaying it writes that commit's bytes entirely, however
//     many of them had reached the checkpoint;
//   - torn: the head's CRC or the payload's does not match. The crash came
//     before the commit point, so the commit under way never touched the
//     checkpoint, which holds the previous commit durably: the journal is
//     discarded;
//   - the previous commit, whole (none of the new journal reached the disk):
//     its bytes are durably in the checkpoint and nothing has touched those
//     ranges since, so replaying it changes nothing;
//   - marked applied. The mark is written after the checkpoint's fdatasync
//     returned, so when the mark is on disk the bytes it vouches for are
//     too; when it is lost, the journal reads as not applied and replaying
//     it rewrites the same bytes.
//
// A crash in the first commit's creation leaves a temp file (removed by
// cleanStaleTemps) and no journal, or the whole journal under its name.
//
// Replay (replayJournal, at every read-write open, before the checkpoint is
// validated or mapped):
//
//   - no journal: nothing to do;
//   - torn or corrupt: removed, the checkpoint left as it is;
//   - marked applied: removed, nothing written, whatever the checkpoint is
//     now (it holds that commit, or was replaced since by someone's choice);
//   - valid and written for this checkpoint (same size, header hash and
//     sampled tensor bytes): its records are written again (idempotent), the
//     checkpoint fdatasynced, the journal removed;
//   - valid but for another file (the checkpoint was replaced between a
//     crash and this open), or of a version this code cannot read: the
//     checkpoint is left as it is and the journal renamed aside, not
//     destroyed; that open fails with an error that names it, and the next
//     one goes ahead with the checkpoint as it is.
//
// A layout rewrite (rewriteAtomic) replaces the checkpoint by a new file.
// Before the rename it replays a pending journal into the old file, removes
// the journal and fsyncs the directory, so the new file never meets the old
// file's journal: a crash between the removal and the rename leaves the old
// file, which holds every commit. retireJournal removes a journal whose
// commit is applied, for a read-write Close (an unmounted checkpoint need
// not keep one), and journalPending tells a read-only open or verify whether
// a commit may be half done: only a journal that is valid and not marked
// applied says so.
//
// Format, all integers little-endian:
//
//	head, 64 bytes (magic, version and the head CRC keep their places in
//	every version, so a journal of a newer version is told apart from a
//	corrupt one):
//	  [8]byte  journalMagic
//	  u32      version (2)
//	  u32      flags (0)
//	  u64      sequence number: one more than the journal it overwrote
//	  u64      L, payload length
//	  u32      CRC-32C (Castagnoli) of the payload
//	  [20]byte reserved (0)
//	  u32      CRC-32C of head bytes [0, 56)
//	  u32      applied mark: 0 as written; appliedMark of the head once the
//	           checkpoint holds the commit durably. Outside the head CRC
//	           because it is written later; a checksum of the head itself so
//	           that neither a damaged 0 nor an earlier commit's mark passes.
//	payload, L bytes from offset 64:
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
//	anything after 64 + L: left by a longer earlier commit, ignored
//
// (Version 1, a new journal file per commit with the CRC in a trailer, is
// recognised and set aside, never replayed or deleted.)
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
	journalMagic    = "SJFSJRNL"
	journalVersion  = 2
	headSize        = 64
	headCRCAt       = 56 // the head CRC covers [0, headCRCAt)
	markAt          = 60
	payloadHeadSize = 8 + 8 + 32 + 4 + 4
	ioBufSize       = 1 << 20

	maxSamples = 8
	sampleSize = 4 << 10

	// A journal file longer than twice the commit it holds, and by more
	// than trimSlack, is cut back once that commit is applied: one huge
	// edit does not keep its size for the rest of the session, and small
	// ups and downs do not cost a size change each.
	trimSlack = 16 << 20
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
// commitInPlace: "journal-written" (the journal written, not synced: over
// the last commit's, or into a temp file when the journal is created),
// "journal-synced" (fdatasynced; when created: fsynced, not yet renamed into
// place), "journal-committed" (the commit point: the journal durable under
// its name; right after journal-synced when it was overwritten),
// "patch-applied" (after each run's pwrite into the checkpoint, before it is
// synced), "applied-synced" (the checkpoint fdatasynced, the journal not yet
// marked applied).
// rewriteAtomic: "tmp-written" (before fsync; a journal the old file had is
// already gone), "tmp-synced" (before rename), "renamed" (before the
// directory is synced).
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
	return sidePath(ckpt, journalSuffix)
}

const journalSuffix = ".safejaxfs-journal"

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

// target is what a journal records about the checkpoint it is for.
type target struct {
	size, dataOffset int64
	headerHash       [32]byte
	samples          []span
	sampleHash       [32]byte
}

// fingerprint reads what a journal records about checkpoint f. It returns
// an error if the header length in the file does not give dataOffset.
func fingerprint(f *os.File, size, dataOffset int64, samples []span) (target, error) {
	t := target{size: size, dataOffset: dataOffset, samples: samples}
	var nb [8]byte
	if _, err := f.ReadAt(nb[:], 0); err != nil {
		return t, fmt.Errorf("reading header length: %w", err)
	}
	if n := binary.LittleEndian.Uint64(nb[:]); n > uint64(size) || 8+int64(n) != dataOffset || dataOffset > size {
		return t, fmt.Errorf("%w: the file's header length %d does not put tensor data at offset %d of %d bytes", errHeaderLength, n, dataOffset, size)
	}
	sum := sha256.New()
	if _, err := io.Copy(sum, io.NewSectionReader(f, 0, dataOffset)); err != nil {
		return t, fmt.Errorf("reading header: %w", err)
	}
	sum.Sum(t.headerHash[:0])
	sum.Reset()
	buf := make([]byte, sampleSize)
	for _, s := range samples {
		b := buf[:s.end-s.off]
		if _, err := f.ReadAt(b, s.off); err != nil {
			return t, fmt.Errorf("reading tensor data at %d: %w", s.off, err)
		}
		sum.Write(b)
	}
	sum.Sum(t.sampleHash[:0])
	return t, nil
}

// commitInPlace makes patches durable in the checkpoint crash-safely, by
// the protocol described at the top of this file: journal written and
// fdatasynced (created through a temp file, rename and directory fsync when
// there is none), runs pwritten into f (the checkpoint open O_RDWR) in
// ascending offset order, f fdatasynced, the journal marked applied.
//
// Patches may not touch the header (off < dataOffset) or reach past the end
// of the file; later patches win where they overlap. f must be the file now
// at ckpt. A journal whose commit is not marked applied (an earlier call
// failed or crashed after its commit point) is replayed first, so there is
// never more than one edit in flight. Errors after the commit point wrap
// errJournalPending. The caller holds the lock (lockFile).
//
// Cost: the new bytes are written twice (journal, checkpoint) and
// checksummed once, the header hashed, up to maxSamples x 4 KiB read; two
// fdatasyncs. Creating the journal costs a rename and two more syncs, once.
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
	jpath := sidePath(path, journalSuffix) // journalPath, path already resolved
	jf, seq, err := openJournal(f, path, jpath)
	if err != nil {
		return err
	}
	if jf != nil {
		defer jf.Close()
	}
	t, err := fingerprint(f, size, dataOffset, pickSamples(runs, dataOffset, size))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	payload := encodeJournal(&t, runs)
	var head [headSize]byte

	// 1-2. The journal, up to the commit point. The checkpoint is not
	// touched before it, so a failure here only has to make sure the
	// journal is not mistaken for a commit later.
	if jf != nil {
		if head, err = writeJournal(jf, seq, payload); err != nil {
			return invalidate(jf, jpath, fmt.Errorf("writing journal %s: %w", jpath, err))
		}
		if err := hooks.hit("journal-written"); err != nil {
			return err
		}
		if err := control(jf, unix.Fdatasync); err != nil {
			return invalidate(jf, jpath, fmt.Errorf("syncing journal %s: %w", jpath, err))
		}
		if err := hooks.hit("journal-synced"); err != nil {
			return err
		}
	} else {
		if jf, head, err = createJournal(path, jpath, &fst, seq, payload, hooks); err != nil {
			return err
		}
		defer jf.Close()
	}
	if err := hooks.hit("journal-committed"); err != nil {
		return err
	}

	// 3-4. In place.
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

	// 5. The edit is durable. The mark spares the next commit a replay and
	// tells journalPending there is nothing to finish; if it is not
	// written, or lost, the journal is replayed, which changes nothing.
	markApplied(jf, &head)
	if st, err := fstat(jf); err == nil {
		used := headSize + payloadLen(payload)
		if st.Size > 2*used && st.Size-used > trimSlack {
			jf.Truncate(used)
		}
	}
	return nil
}

// openJournal opens the checkpoint's journal for the next commit and
// returns the sequence number that commit gets. A journal whose commit is
// not marked applied is settled first as an open would settle it
// (replayed, removed or set aside). A nil file means there is no journal:
// the commit creates one.
func openJournal(f *os.File, path, jpath string) (*os.File, uint64, error) {
	for settled := false; ; settled = true {
		jf, err := os.OpenFile(jpath, os.O_RDWR|unix.O_NOFOLLOW, 0)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, 1, nil
		}
		if err != nil {
			return nil, 0, fmt.Errorf("opening journal %s: %w", jpath, err)
		}
		h, herr := readHead(jf)
		if herr == nil && (h.applied || settled) {
			// Its commit is durably in the checkpoint (settled: replayed
			// just now, even if the mark could not be written), so it may
			// be overwritten.
			return jf, h.seq + 1, nil
		}
		jf.Close()
		if settled {
			return nil, 0, fmt.Errorf("journal %s: %w, after replaying it", jpath, herr)
		}
		if _, err := replayOnto(f, path, jpath); err != nil {
			return nil, 0, fmt.Errorf("finishing an earlier interrupted write first: %w", err)
		}
	}
}

// createJournal writes the first journal of a checkpoint that has none:
// into a temp file with the checkpoint's permission bits (and owner, as
// root: it holds tensor data), fsynced, renamed to jpath, directory
// fsynced. It returns the journal open for writing the applied mark.
func createJournal(path, jpath string, ckst *unix.Stat_t, seq uint64, payload [][]byte, hooks *crashHooks) (*os.File, [headSize]byte, error) {
	var head [headSize]byte
	tmp, tmpName, err := createTemp(path, ckst.Mode&0o666, ckst)
	if err != nil {
		return nil, head, err
	}
	fail := func(err error) (*os.File, [headSize]byte, error) {
		tmp.Close()
		os.Remove(tmpName)
		return nil, head, err
	}
	if head, err = writeJournal(tmp, seq, payload); err != nil {
		return fail(fmt.Errorf("writing journal %s: %w", tmpName, err))
	}
	if err := hooks.hit("journal-written"); err != nil {
		tmp.Close()
		return nil, head, err
	}
	if err := tmp.Sync(); err != nil {
		return fail(fmt.Errorf("syncing journal %s: %w", tmpName, err))
	}
	if err := hooks.hit("journal-synced"); err != nil {
		tmp.Close()
		return nil, head, err
	}
	if err := os.Rename(tmpName, jpath); err != nil {
		return fail(err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		// Nothing was written into the checkpoint yet: taking the journal
		// back leaves it consistent whether or not the rename is durable.
		tmp.Close()
		os.Remove(jpath)
		return nil, head, err
	}
	return tmp, head, nil
}

// invalidate overwrites the head of a journal that failed to be written or
// synced, or failing that removes it, so that this process never replays
// what the page cache holds as if it were durable. Best effort: the
// checkpoint was not touched, so whatever the disk ends up holding is safe
// to replay after a crash.
func invalidate(jf *os.File, jpath string, err error) error {
	var zero [headSize]byte
	if _, werr := jf.WriteAt(zero[:], 0); werr != nil {
		os.Remove(jpath)
	}
	return err
}

// encodeJournal lays out the payload of a commit's journal, as slices to
// write from offset headSize (the runs' bytes are not copied).
func encodeJournal(t *target, runs []run) [][]byte {
	le := binary.LittleEndian
	pre := make([]byte, 0, payloadHeadSize+16*len(t.samples)+32+8)
	pre = le.AppendUint64(pre, uint64(t.size))
	pre = le.AppendUint64(pre, uint64(t.dataOffset))
	pre = append(pre, t.headerHash[:]...)
	pre = le.AppendUint32(pre, uint32(len(t.samples)))
	pre = le.AppendUint32(pre, 0)
	for _, s := range t.samples {
		pre = le.AppendUint64(pre, uint64(s.off))
		pre = le.AppendUint64(pre, uint64(s.end-s.off))
	}
	pre = append(pre, t.sampleHash[:]...)
	pre = le.AppendUint64(pre, uint64(len(runs)))
	payload := make([][]byte, 0, 1+2*len(runs))
	payload = append(payload, pre)
	recHeads := make([]byte, 16*len(runs))
	for i, r := range runs {
		rh := recHeads[16*i : 16*i+16]
		le.PutUint64(rh, uint64(r.off))
		le.PutUint64(rh[8:], uint64(r.n))
		payload = append(payload, rh)
		payload = append(payload, r.segs...)
	}
	return payload
}

func payloadLen(payload [][]byte) int64 {
	var n int64
	for _, p := range payload {
		n += int64(len(p))
	}
	return n
}

func encodeHead(seq uint64, length int64, crc uint32) [headSize]byte {
	var b [headSize]byte
	le := binary.LittleEndian
	copy(b[:], journalMagic)
	le.PutUint32(b[8:], journalVersion)
	le.PutUint64(b[16:], seq)
	le.PutUint64(b[24:], uint64(length))
	le.PutUint32(b[32:], crc)
	le.PutUint32(b[headCRCAt:], crc32.Checksum(b[:headCRCAt], castagnoli))
	return b
}

// writeJournal writes the payload, then the head with sequence number seq,
// and returns the head. A process that dies in between leaves the previous
// head, whose CRC no longer matches the payload (or which is marked
// applied, and is). One fdatasync covers both, in no particular order on
// disk: the CRCs catch any mix.
func writeJournal(jf *os.File, seq uint64, payload [][]byte) ([headSize]byte, error) {
	var crc uint32
	for _, p := range payload {
		crc = crc32.Update(crc, castagnoli, p)
	}
	head := encodeHead(seq, payloadLen(payload), crc)
	if err := pwritev(jf, payload, headSize); err != nil {
		return head, err
	}
	return head, pwritev(jf, [][]byte{head[:]}, 0)
}

// appliedMark is the applied mark of a journal whose head is h.
func appliedMark(h []byte) uint32 {
	m := crc32.Update(crc32.Checksum([]byte("applied"), castagnoli), castagnoli, h[:headCRCAt])
	if m == 0 {
		m = 1 // 0 means not applied
	}
	return m
}

// markApplied records in the journal that its commit is durably in the
// checkpoint. Call it only after the checkpoint's fdatasync returned; it
// needs no sync of its own.
func markApplied(jf *os.File, head *[headSize]byte) error {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], appliedMark(head[:]))
	_, err := jf.WriteAt(b[:], markAt)
	return err
}

// jhead is a parsed, checksum-valid journal head.
type jhead struct {
	raw     [headSize]byte
	seq     uint64
	length  int64 // of the payload
	crc     uint32
	applied bool
}

// journal is a parsed, checksum-valid journal. When its head is marked
// applied the payload is neither checked nor parsed: nothing needs it.
type journal struct {
	head jhead
	target
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

// readHead reads and checks a journal's head: errJournalCorrupt if it is
// torn or not a journal, errJournalVersion if it is one this code cannot
// read (checked after the CRC, so damage is never taken for a version).
func readHead(f *os.File) (jhead, error) {
	var h jhead
	b := h.raw[:]
	if n, err := f.ReadAt(b, 0); n < headSize {
		if err == nil || errors.Is(err, io.EOF) {
			return h, errJournalCorrupt
		}
		return h, err
	}
	le := binary.LittleEndian
	if string(b[:8]) != journalMagic {
		return h, errJournalCorrupt
	}
	v := le.Uint32(b[8:])
	if v == 1 {
		// Its CRC is in a trailer; the head CRC below would call it
		// corrupt and it would be deleted.
		return h, fmt.Errorf("%w 1 (the journal of an earlier safejaxfs, which can replay it)", errJournalVersion)
	}
	if crc32.Checksum(b[:headCRCAt], castagnoli) != le.Uint32(b[headCRCAt:]) {
		return h, errJournalCorrupt
	}
	if v != journalVersion {
		return h, fmt.Errorf("%w %d (this safejaxfs reads version %d)", errJournalVersion, v, journalVersion)
	}
	length := le.Uint64(b[24:])
	if le.Uint32(b[12:]) != 0 || slices.ContainsFunc(b[36:headCRCAt], func(c byte) bool { return c != 0 }) ||
		length < payloadHeadSize+32+8 || length > 1<<62 {
		return h, fmt.Errorf("%w: bad head", errJournalInvalid)
	}
	h.seq = le.Uint64(b[16:])
	h.length = int64(length)
	h.crc = le.Uint32(b[32:])
	h.applied = le.Uint32(b[markAt:]) == appliedMark(b)
	return h, nil
}

// readJournal checks the head, then (unless it is marked applied) the
// payload's CRC in one streaming pass, and only then parses, so a torn or
// corrupted journal is always errJournalCorrupt however the damage falls,
// and a valid journal this code cannot read is errJournalVersion, never
// mistaken for damage and deleted.
func readJournal(f *os.File) (*journal, error) {
	h, err := readHead(f)
	if err != nil {
		return nil, err
	}
	j := &journal{head: h}
	if h.applied {
		return j, nil
	}
	st, err := fstat(f)
	if err != nil {
		return nil, err
	}
	end := headSize + h.length
	if st.Size < end {
		// The head reached the disk, the grown file's size did not.
		return nil, errJournalCorrupt
	}
	crc := crc32.New(castagnoli)
	if _, err := io.CopyBuffer(crc, io.NewSectionReader(f, headSize, h.length), make([]byte, ioBufSize)); err != nil {
		return nil, err
	}
	if crc.Sum32() != h.crc {
		return nil, errJournalCorrupt
	}

	// The payload is exactly what was written; now parse it. Records are
	// skipped over, not read: replay reads them when it copies them.
	le := binary.LittleEndian
	var pb [payloadHeadSize]byte
	if _, err := f.ReadAt(pb[:], headSize); err != nil {
		return nil, err
	}
	j.size = int64(le.Uint64(pb[0:]))
	j.dataOffset = int64(le.Uint64(pb[8:]))
	copy(j.headerHash[:], pb[16:48])
	ns := le.Uint32(pb[48:])
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", errJournalInvalid, fmt.Sprintf(format, args...))
	}
	if le.Uint32(pb[52:]) != 0 || j.size < 8 || j.dataOffset < 8 || j.dataOffset > j.size || ns > maxSamples {
		return nil, invalid("bad payload head")
	}
	pos := int64(headSize + payloadHeadSize)
	var b [16]byte
	for range ns {
		if pos+16 > end {
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
	if pos+40 > end {
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
	if nr > uint64(end-pos)/16 {
		return nil, invalid("%d records cannot fit", nr)
	}
	last := j.dataOffset
	for range nr {
		if pos+16 > end {
			return nil, invalid("records run past the end")
		}
		if _, err := f.ReadAt(b[:], pos); err != nil {
			return nil, err
		}
		off, n := int64(le.Uint64(b[:])), int64(le.Uint64(b[8:]))
		pos += 16
		if n <= 0 || n > end-pos || off < last || off > j.size-n {
			return nil, invalid("record [%d, +%d) out of order or outside the data", off, n)
		}
		j.recs = append(j.recs, jrec{off, n, pos})
		pos += n
		last = off + n
	}
	if pos != end {
		return nil, invalid("%d bytes after the last record", end-pos)
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

// replayJournal settles the journal a read-write open finds (see the top of
// this file), so the checkpoint holds every commit whole and no journal is
// left. Run it at open, before the checkpoint is validated or mapped; it
// takes the write lock itself (ErrLocked if another mount holds it: the
// journal may be that mount's edit in flight), unless this process already
// holds it. applied is true when it wrote a journal's records into the
// checkpoint. A journal that must not be applied (written for another file,
// or of a version this code cannot read) is renamed to
// "<journal>.stale-<unix time>" and the error says so and wraps
// errStaleJournal.
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
		// No checkpoint: a finished or torn journal is of no use, and one
		// that is neither belongs to a file that is gone; keeping it aside
		// is the most that can be done.
		jf, err := os.OpenFile(jpath, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return false, err
		}
		j, jerr := readJournal(jf)
		jf.Close()
		if errors.Is(jerr, errJournalCorrupt) || jerr == nil && j.head.applied {
			return false, removeSynced(jpath)
		}
		return false, setAside(jpath, path, "the checkpoint does not exist")
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Errorf("%s has a journal to settle (%s), but it cannot be opened for writing: %w", path, jpath, err)
	}
	defer f.Close()
	err = withWriteLock(f, func() error {
		var err error
		if applied, err = replayOnto(f, path, jpath); err != nil {
			return err
		}
		// The checkpoint now holds the journal's commit durably, or never
		// saw it: the journal has nothing left to give.
		return removeSynced(jpath)
	})
	return applied, err
}

// replayOnto settles the journal at jpath for checkpoint f, open for
// writing at path; the caller holds the lock. A torn journal is removed;
// one marked applied is left as it is; a valid one written for f is written
// into it, f fdatasynced, the journal marked applied and left in place
// (callers done with it remove it); any other is set aside. applied reports
// whether records were written.
func replayOnto(f *os.File, path, jpath string) (bool, error) {
	jf, err := os.OpenFile(jpath, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("opening journal %s: %w", jpath, err)
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
	if j.head.applied {
		return false, nil
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
	markApplied(jf, &j.head.raw)
	return true, nil
}

// journalPending reports the journal of checkpoint ckpt when it may hold a
// commit that is half written into the checkpoint: it exists and is not
// marked applied. A torn journal does not count (its commit never touched
// the checkpoint). Until a read-write open replays it, tensors it covers may
// be torn. PendingJournal is this.
func journalPending(ckpt string) (string, bool) {
	j := journalPath(ckpt)
	jf, err := os.OpenFile(j, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return j, !errors.Is(err, fs.ErrNotExist)
	}
	defer jf.Close()
	jr, err := readJournal(jf)
	if errors.Is(err, errJournalCorrupt) {
		return j, false
	}
	return j, err != nil || !jr.head.applied
}

// retireJournal removes the checkpoint's journal if its commit is marked
// applied, and syncs the directory: a read-write Close calls it after its
// last commit, so an unmounted checkpoint has no journal next to it. A
// journal that is not marked applied is left for the next read-write open
// to settle. It takes the write lock, or relies on this process holding it.
func retireJournal(ckpt string) error {
	path, err := realPath(ckpt)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	jpath := journalPath(path)
	if !exists(jpath) {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return withWriteLock(f, func() error {
		jf, err := os.OpenFile(jpath, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		h, herr := readHead(jf)
		jf.Close()
		if herr != nil || !h.applied {
			return nil
		}
		return removeSynced(jpath)
	})
}

// setAside renames a journal that must not be applied out of the way, so
// the checkpoint can be used again but the edit is not destroyed.
func setAside(jpath, path, why string) error {
	stale, err := renameAside(jpath, fmt.Sprintf("%s.stale-%d", jpath, time.Now().Unix()))
	if err != nil {
		return fmt.Errorf("%s: %w (%s), and moving the journal %s aside failed: %v", path, errStaleJournal, why, jpath, err)
	}
	return fmt.Errorf("%s: %w: %s; the checkpoint was left as it is and the journal moved to %s (open the checkpoint again to use it as it is; the journal holds the edit that was not applied)", path, errStaleJournal, why, stale)
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
