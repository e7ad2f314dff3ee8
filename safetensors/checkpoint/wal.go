package checkpoint

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// wal appends batches to a checkpoint's log (format: wal_format.go) and
// serves the bytes it holds from a mapping of it, so edits leave memory
// once they are durable.
type wal struct {
	path string
	f    *os.File
	end  int64  // the log's valid length: new batches go here
	crc  uint32 // the chain's last CRC
	seq  uint64 // of the last commit record
	base []walFile
	m    *walMap
	// hooks simulate crashes (tests only).
	hooks *crashHooks
}

const walSuffix = ".safejaxfs-log"

// walPathOf is where the log of the checkpoint whose main file (the file,
// or the index of a sharded one) is at path goes: next to the real file,
// symlinks resolved, so every path to a checkpoint finds the same log.
func walPathOf(path string) string {
	if r, err := realPath(path); err == nil {
		path = r
	}
	return sidePath(path, walSuffix)
}

// walReserve is how much address space a log's mapping takes: the log is
// mapped once, beyond its end, and grows into the mapping. Compaction keeps
// it far smaller (see compactAt).
const walReserve = 1 << 40

// walMap is the mapping of a log. Contents that hold slices of it keep a
// reference, so a log folded into the checkpoint and removed stays mapped
// until the last read of its bytes is done.
type walMap struct {
	b    []byte
	refs atomic.Int64
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
// place, the directory fsynced. An earlier log at the path is replaced.
func createWAL(path string, base []walFile, hooks *crashHooks) (*wal, error) {
	f, name, err := createTemp(walTarget(path), 0o600, nil)
	if err != nil {
		return nil, err
	}
	w := &wal{path: path, f: f, end: walHead, crc: headCRC(), base: base, hooks: hooks}
	fail := func(err error) (*wal, error) {
		f.Close()
		os.Remove(name)
		return nil, err
	}
	if _, err := f.WriteAt(walHeadBytes(), 0); err != nil {
		return fail(err)
	}
	if _, err := w.write([]walRecord{{typ: recBase, head: baseBody(base)}, {typ: recCommit, head: commitBody(1)}}); err != nil {
		return fail(err)
	}
	w.seq = 1
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := os.Rename(name, path); err != nil {
		return fail(err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fail(err)
	}
	if err := w.mapIt(); err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
}

// walTarget is the file whose temp files a log's own temp file is named
// after (so cleanStaleTemps of that file removes a log half created): the
// log path without its dot and suffix.
func walTarget(path string) string {
	dir, base := filepath.Split(path)
	return filepath.Join(dir, base[1:len(base)-len(walSuffix)])
}

// openWAL opens an existing log to append to, after scan found its
// committed part: what follows is cut off.
func openWAL(path string, s *walScan, base []walFile, hooks *crashHooks) (*wal, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(s.end); err != nil {
		f.Close()
		return nil, err
	}
	w := &wal{path: path, f: f, end: s.end, crc: s.crc, seq: s.seq, base: base, hooks: hooks}
	if err := w.mapIt(); err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
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
	w.m = &walMap{b: b}
	w.m.refs.Store(1) // the wal's own
	return nil
}

// bytesAt returns n bytes of the log at off, from the mapping. Only bytes
// of committed batches may be asked for.
func (w *wal) bytesAt(off, n int64) []byte { return w.m.b[off : off+n : off+n] }

// commit appends recs and a commit record as one batch and makes it
// durable (one fdatasync). It returns, for each record, the log offset of
// its tensor bytes (data and put records; 0 for others). On failure the
// log is cut back to where it was, so the batch never happened; the error
// keeps its errno (ENOSPC, EDQUOT, EIO).
func (w *wal) commit(recs []walRecord) ([]int64, error) {
	start, crc := w.end, w.crc
	recs = append(recs, walRecord{typ: recCommit, head: commitBody(w.seq + 1)})
	at, err := w.write(recs)
	if err == nil {
		if herr := w.hooks.hit("log-written"); herr != nil {
			return nil, herr
		}
		err = control(w.f, unix.Fdatasync)
	}
	if err != nil {
		// A batch that did not reach the disk whole must not be taken
		// for one that did: cut it off (the chain would refuse a torn
		// batch anyway; this also gives the space back).
		w.f.Truncate(start)
		w.end, w.crc = start, crc
		return nil, err
	}
	if herr := w.hooks.hit("log-synced"); herr != nil {
		return nil, herr
	}
	w.seq++
	return at[:len(at)-1], nil
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
	if err := pwritev(w.f, segs, w.end); err != nil {
		return nil, &os.PathError{Op: "write", Path: w.path, Err: err}
	}
	w.end, w.crc = pos, crc
	return at, nil
}

// close drops the log's file and its own reference to the mapping (slices
// handed out stay valid until their holders release them).
func (w *wal) close() {
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
	if w.m != nil {
		w.m.release()
		w.m = nil
	}
}

// remove closes and deletes the log, durably.
func (w *wal) remove() error {
	w.close()
	return removeSynced(w.path)
}

// walFileOf describes a file of the checkpoint for a base record: its
// identity and a hash of its header (the whole file for the index).
func walFileOf(name, path string, headerLen int64) (walFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return walFile{}, err
	}
	defer f.Close()
	st, err := fstat(f)
	if err != nil {
		return walFile{}, err
	}
	wf := walFile{name: name, size: st.Size, dev: uint64(st.Dev), ino: st.Ino, mtime: st.Mtim.Nano()}
	if headerLen < 0 {
		headerLen = st.Size
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, headerLen)); err != nil {
		return walFile{}, err
	}
	h.Sum(wf.hash[:0])
	return wf, nil
}

// sameFile reports whether path is still exactly the file wf describes.
func (wf walFile) sameFile(path string, headerLen int64) (bool, error) {
	now, err := walFileOf(wf.name, path, headerLen)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return now == wf, nil
}
