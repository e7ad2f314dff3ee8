package checkpoint

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// wal appends batches to a checkpoint's log (format: wal_format.go) and
// serves the bytes it holds from a mapping of it, so edits leave memory
// once they are durable.
type wal struct {
	d    *cdir
	name string // below d
	path string // d.join(name), for messages
	f    *os.File
	end  int64 // the log's valid length: new batches go here
	// filled is how far the file holds written blocks (zeros past end).
	filled int64
	crc    uint32 // the chain's last CRC
	seq    uint64 // of the last commit record
	base   []walFile
	m      *walMap
	// maps are every mapping of this log that tensors may hold slices of:
	// m, and those of files the log was copied out of (relog).
	maps  []*walMap
	owner *unix.Stat_t // whose the log's files are (see createTemp)
	hooks *crashHooks
}

const walSuffix = ".safejaxfs-log"

// walNameOf is the name of the log of the checkpoint whose main file (the
// file, or the index of a sharded one) is main, below the same directory.
func walNameOf(main string) string { return sideName(main, walSuffix) }

// walReserve is how much address space a log's mapping takes: the log is
// mapped once, beyond its end, and grows into the mapping. Compaction keeps
// it far smaller (see compactAt).
const walReserve = 1 << 40

// walMap is the mapping of a log. Tensors serve committed bytes from it;
// reads that return slices of it hold a reference, so it is unmapped only
// when the log was folded into the checkpoint (or the checkpoint closed)
// and the last such read is done.
type walMap struct {
	b    []byte
	refs atomic.Int64
}

func newWALMap(b []byte) *walMap {
	m := &walMap{b: b}
	m.refs.Store(1) // the checkpoint's own, until the log is dropped
	return m
}

func (m *walMap) acquire() { m.refs.Add(1) }

func (m *walMap) release() {
	if m.refs.Add(-1) == 0 {
		unix.Munmap(m.b)
	}
}

// walRecord is one record to append: its structured head and, for data and
// put records, the tensor bytes, written without copying them.
type walRecord struct {
	typ  uint32
	head []byte
	data [][]byte
}

func (r *walRecord) length() int64 {
	n := int64(len(r.head))
	for _, d := range r.data {
		n += int64(len(d))
	}
	return n
}

// createWAL starts a log for the files base describes: head, base record
// and a first commit, written to a temp file, fsynced and renamed into
// place, the directory fsynced. An earlier log at the name is replaced.
// owner (nil: ours) is whose the checkpoint is: as root, the log is made
// theirs, so they can read and remove it.
func createWAL(d *cdir, name string, base []walFile, owner *unix.Stat_t, hooks *crashHooks) (*wal, error) {
	f, tmp, err := createTemp(d, walTarget(name), 0o600, owner, hooks)
	if err != nil {
		return nil, err
	}
	w := &wal{d: d, name: name, path: d.join(name), f: f, end: walHead, crc: headCRC(), base: base, owner: owner, hooks: hooks}
	fail := func(err error) (*wal, error) {
		f.Close()
		d.remove(tmp)
		return nil, err
	}
	if err := hooks.sys(opWrite, tmp); err != nil {
		return fail(err)
	}
	if _, err := f.WriteAt(walHeadBytes(), 0); err != nil {
		return fail(err)
	}
	if _, err := w.write([]walRecord{{typ: recBase, head: baseBody(base)}, {typ: recCommit, head: commitBody(1)}}); err != nil {
		return fail(err)
	}
	w.seq = 1
	var total int64
	for _, f := range base {
		total += f.size
	}
	w.prefill(min(max(total/8, prefillMin), prefillFirst)) // synced with the rest below
	if err := syncFile(f, tmp, hooks); err != nil {
		return fail(err)
	}
	if err := hooks.sys(opRename, name); err != nil {
		return fail(err)
	}
	if err := d.rename(tmp, name); err != nil {
		return fail(err)
	}
	if err := syncDirOf(d, name, hooks); err != nil {
		return fail(err)
	}
	if err := w.mapIt(); err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
}

// walTarget is the file whose temp files a log's own temp file is named
// after (so removeTemps of that file removes a log half created): the
// log's name without its dot and suffix.
func walTarget(name string) string {
	dir, base := splitName(name)
	return dir + base[1:len(base)-len(walSuffix)]
}

// openWAL opens an existing log to append to, after scan found its
// committed part: what follows is cut off.
func openWAL(d *cdir, name string, s *walScan, base []walFile, owner *unix.Stat_t, hooks *crashHooks) (*wal, error) {
	f, err := reopenLog(d, name, os.O_RDWR, s)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(s.end); err != nil {
		f.Close()
		return nil, err
	}
	w := &wal{d: d, name: name, path: d.join(name), f: f, end: s.end, crc: s.crc, seq: s.seq, base: base, owner: owner, hooks: hooks}
	if err := w.mapIt(); err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
}

// reopenLog opens the log s scanned again by name, and refuses any other
// file found there. The scan checked that file's owner, mode and every
// record; someone who may write the directory could since have put
// another file at its name (our own logs are never replaced while the
// write lock is held), and its records would be replayed unchecked.
func reopenLog(d *cdir, name string, flag int, s *walScan) (*os.File, error) {
	f, err := d.open(name, flag, 0)
	if err != nil {
		return nil, err
	}
	st, err := fstat(f)
	if err == nil && keyOf(&st) != s.id {
		err = fmt.Errorf("%w: %s was replaced after it was checked", ErrLogMismatch, d.join(name))
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func (w *wal) mapIt() error {
	var b []byte
	err := control(w.f, func(fd int) error {
		var err error
		b, err = unix.Mmap(fd, 0, walReserve, unix.PROT_READ, unix.MAP_SHARED)
		return err
	})
	if err != nil {
		return &os.PathError{Op: "mmap", Path: w.path, Err: err}
	}
	w.m = newWALMap(b)
	w.maps = append(w.maps, w.m)
	return nil
}

// intact reports whether the log's file is still the one at its name: not
// removed (its last link gone) nor replaced by someone else meanwhile.
// What a commit appends to a log nobody can find would be lost at a crash.
func (w *wal) intact() bool {
	st, err := fstat(w.f)
	if err != nil || st.Nlink == 0 {
		return false
	}
	now, err := w.d.lstat(w.name)
	return err == nil && keyOf(&now) == keyOf(&st)
}

// relog writes the log's committed part into a new file at its name, for
// a log removed or replaced from outside (intact is false): every edit it
// held is durable again before anything more is appended. Tensors keep
// serving bytes from the old mapping (the removed file lives on while
// mapped); the new mapping is returned for the caller to register. A file
// someone put at the log's name is not overwritten: relog fails then.
func (w *wal) relog() (*walMap, error) {
	f, tmp, err := createTemp(w.d, walTarget(w.name), 0o600, w.owner, w.hooks)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*walMap, error) {
		f.Close()
		w.d.remove(tmp)
		return nil, fmt.Errorf("the log %s was removed or replaced by another program while mounted, and writing it again failed: %w", w.path, err)
	}
	if err := w.hooks.sys(opWrite, tmp); err != nil {
		return fail(err)
	}
	if err := pwritev(f, [][]byte{w.m.b[:w.end]}, 0); err != nil {
		return fail(err)
	}
	if err := syncFile(f, tmp, w.hooks); err != nil {
		return fail(err)
	}
	// Whatever is at the name now is not ours (the log was removed or
	// replaced): it is never overwritten, not even one put there while
	// this was being written.
	if err := w.d.renameNoReplace(tmp, w.name); err != nil {
		if errors.Is(err, os.ErrExist) {
			err = fmt.Errorf("%s is another file now; move it away", w.path)
		}
		return fail(err)
	}
	if err := syncDirOf(w.d, w.name, w.hooks); err != nil {
		return fail(err)
	}
	old := w.f
	w.f = f
	w.filled = w.end
	if err := w.mapIt(); err != nil {
		w.f = old
		f.Close()
		return nil, err
	}
	old.Close()
	return w.m, nil
}

// bytesAt returns n bytes of the log at off, from the mapping. Only bytes
// of committed batches may be asked for.
func (w *wal) bytesAt(off, n int64) []byte { return w.m.b[off : off+n : off+n] }

// commit appends recs and a commit record as one batch and makes it
// durable (one fdatasync). It returns, for each record, the log offset of
// its tensor bytes (data and put records; 0 for others). On failure the
// log is cut back to where it was, so the batch never happened; the error
// keeps its errno (ENOSPC, EDQUOT, EIO).
func (w *wal) commit(recs []walRecord, hooks *crashHooks) ([]int64, error) {
	w.hooks = hooks // the caller's, now (tests change them on a live log)
	start, crc := w.end, w.crc
	recs = append(recs, walRecord{typ: recCommit, head: commitBody(w.seq + 1)})
	w.prefill(batchLength(recs))
	at, err := w.write(recs)
	if err == nil {
		if herr := hooks.hit("log-written"); herr != nil {
			return nil, herr
		}
		err = syncData(w.f, w.name, hooks)
	}
	if err != nil {
		// A batch that did not reach the disk whole must not be taken
		// for one that did: cut it off where the file grew for it, and
		// in the prefilled part make its first record unreadable (the
		// chain refuses a torn batch anyway).
		w.f.Truncate(max(start, w.filled)) // never past what the file has
		if start < w.filled {
			w.f.WriteAt(make([]byte, recHead), start)
		}
		w.end, w.crc = start, crc
		return nil, err
	}
	if herr := hooks.hit("log-synced"); herr != nil {
		return nil, herr
	}
	w.seq++
	return at[:len(at)-1], nil
}

// Appending to a file and fdatasyncing costs a metadata commit (the new
// size, the new blocks) on top of the data: measured here, 4 MiB appended
// and fdatasynced took 17 ms where overwriting written blocks took 4.5 ms,
// and allocating with fallocate does not help (unwritten extents are a
// metadata change too). So the log writes zeros ahead of its end, in steps
// that double with its size (1 MiB to 256 MiB), and fdatasyncs them once;
// commits then overwrite blocks the file already has. What lies past the
// log's end reads as zeros, which no record is.
const (
	prefillMin = 1 << 20
	prefillMax = 256 << 20
	// prefillFirst bounds the zeros a new log starts with: an eighth of
	// the checkpoint's size, so a session's first edits of a large one
	// need no growing, and a small one gets a small log.
	prefillFirst = 32 << 20
)

// prefill makes sure n more bytes after the end are written blocks, if it
// can; when it cannot (disk full), the commit appends as it would anyway.
func (w *wal) prefill(n int64) {
	if w.end+n <= w.filled {
		return
	}
	step := min(max(w.filled, prefillMin), prefillMax)
	target := (max(w.end+n, w.filled+step) + 1<<20 - 1) &^ (1<<20 - 1)
	from := max(w.filled, w.end)
	if w.hooks.sys(opWrite, w.name) != nil {
		return
	}
	zeros := make([]byte, 1<<20)
	for off := from; off < target; off += int64(len(zeros)) {
		if _, err := w.f.WriteAt(zeros[:min(int64(len(zeros)), target-off)], off); err != nil {
			w.f.Truncate(from)
			return
		}
	}
	if err := control(w.f, unix.Fdatasync); err != nil {
		w.f.Truncate(from)
		return
	}
	w.filled = target
}

// trim gives back the zeros written ahead of the end (for a write-back
// that needs the room); it reports whether there were any.
func (w *wal) trim() bool {
	if w.filled <= w.end {
		return false
	}
	if err := w.f.Truncate(w.end); err != nil {
		return false
	}
	w.filled = w.end
	return true
}

func batchLength(recs []walRecord) int64 {
	var n int64
	for i := range recs {
		n += recHead + pad8(recs[i].length())
	}
	return n
}

// write appends recs at the end with one pwritev per batch of segments and
// advances the end and the chain.
func (w *wal) write(recs []walRecord) ([]int64, error) {
	var segs [][]byte
	at := make([]int64, len(recs))
	pos, crc := w.end, w.crc
	var zero [8]byte
	for i, r := range recs {
		n := r.length()
		parts := append([][]byte{r.head}, r.data...)
		c := chain(crc, r.typ, uint64(n), parts...)
		h := make([]byte, recHead)
		putU32(h[0:], r.typ)
		putU32(h[4:], c)
		putU64(h[8:], uint64(n))
		segs = append(segs, h, r.head)
		segs = append(segs, r.data...)
		if len(r.data) > 0 {
			at[i] = pos + recHead + int64(len(r.head))
		}
		if p := pad8(n) - n; p > 0 {
			segs = append(segs, zero[:p])
		}
		pos += recHead + pad8(n)
		crc = c
	}
	if pos > walReserve {
		return nil, fmt.Errorf("%s: the log would pass %d bytes", w.path, int64(walReserve))
	}
	if err := w.hooks.sys(opWrite, w.name); err != nil {
		return nil, err
	}
	if err := pwritev(w.f, segs, w.end); err != nil {
		return nil, &os.PathError{Op: "write", Path: w.path, Err: err}
	}
	w.end, w.crc = pos, crc
	return at, nil
}

// close closes the log's file; its mappings stay (see walMap).
func (w *wal) close() {
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
}

// remove closes and deletes the log, durably.
func (w *wal) remove() error {
	if err := w.hooks.sys(opRemove, w.name); err != nil {
		return err
	}
	if err := w.d.remove(w.name); err != nil {
		return err
	}
	if err := syncDirOf(w.d, w.name, w.hooks); err != nil {
		return err
	}
	w.close()
	return nil
}

// walFileOf describes a file of the checkpoint for a base record: its
// identity and a hash of its header (the whole file for the index,
// headerLen < 0). It is opened through the directory (no symlinks).
func walFileOf(d *cdir, name string, headerLen int64) (walFile, error) {
	f, err := d.open(name, os.O_RDONLY, 0)
	if err != nil {
		return walFile{}, err
	}
	defer f.Close()
	return walFileOfFile(name, f, headerLen)
}

func walFileOfFile(name string, f *os.File, headerLen int64) (walFile, error) {
	st, err := fstat(f)
	if err != nil {
		return walFile{}, err
	}
	wf := walFile{name: name, size: st.Size, dev: uint64(st.Dev), ino: st.Ino, mtime: st.Mtim.Nano()}
	if headerLen < 0 {
		headerLen = st.Size
	}
	wf.hash, err = hashPrefix(f, headerLen)
	return wf, err
}

// hashPrefix is the SHA-256 of f's first n bytes.
func hashPrefix(f *os.File, n int64) (h [32]byte, err error) {
	s := sha256.New()
	if _, err := io.Copy(s, io.NewSectionReader(f, 0, n)); err != nil {
		return h, err
	}
	s.Sum(h[:0])
	return h, nil
}
