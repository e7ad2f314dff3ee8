package checkpoint

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"os"
	"slices"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// The write-ahead log: its byte format. (wal.go appends to it, recover.go
// decides what a log found at open means, compact.go folds it into the
// checkpoint.)
//
// A log is one file per checkpoint, ".<name>.safejaxfs-log" next to the
// checkpoint file or, for a sharded checkpoint, next to its index. It is
// append-only: a 16-byte file head, then records. Every record is
//
//	u32 type
//	u32 CRC-32C over the previous record's CRC (the file head's for the
//	    first), this record's type and length, and its payload: a chain, so
//	    a record is valid only where it was written, after the records it
//	    was written after
//	u64 payload length L
//	L bytes of payload, then zeros up to a multiple of 8
//
// and records come in batches, each ending with a commit record: a batch is
// the unit of durability (one fdatasync). A reader takes records while
// their CRCs hold and keeps the state as of the last commit record; what
// follows it (a batch torn by a crash, zeros, garbage) is not part of the
// log and is cut off before the next append.
//
// The first batch starts with a base record naming the files the log
// applies to (each shard and the index, with size, inode, mtime and a hash
// of the header), so a log is never applied to a file it was not written
// for. Later records change the checkpoint as the mount saw it change;
// keys in a record are the keys as of that point in the log. Integers are
// little-endian; a string is a u32 length and its bytes.

const (
	walMagic   = "SJFSWAL\x00"
	walVersion = 1
	walHead    = 16 // magic, u32 version, u32 reserved
	recHead    = 16 // type, CRC, length

	// maxRecord bounds one record's payload as read back: a corrupt length
	// must not make the reader allocate or skip absurdly.
	maxRecord = 1 << 46
	// maxStructRecord bounds the records read into memory whole (all but
	// the tensor bytes of data and put records): a crafted log must not
	// make the reader allocate what the file's size allows.
	maxStructRecord = 256 << 20
)

// Record types.
const (
	recBase      = 1  // the files the log applies to
	recData      = 2  // bytes written into a tensor
	recPut       = 3  // a tensor created, or replaced whole
	recDelete    = 4  // a tensor removed
	recRename    = 5  // tensors renamed, all at once
	recReshape   = 6  // a tensor's dtype and shape reinterpreted
	recMeta      = 7  // a shard's __metadata__ replaced
	recIndexMeta = 8  // the index's metadata replaced
	recCommit    = 9  // end of a batch
	recCompactV1 = 10 // a compaction's commit point, first format (read, never written)
	recCompact   = 11 // a compaction's commit point
	recInstall   = 12 // a file about to be installed by copying in place
)

var castagnoliWAL = crc32.MakeTable(crc32.Castagnoli)

// errWALCorrupt: a record whose CRC does not hold (end of the log).
var errWALCorrupt = errors.New("log record does not check")

// walFile is one file a log applies to, as it was when the log began.
type walFile struct {
	name  string // the shard's name; "" for the index
	size  int64
	dev   uint64
	ino   uint64
	mtime int64    // ns
	hash  [32]byte // SHA-256 of the header (8+N bytes); of the whole index
}

// rec is a decoded record. Byte payloads (data, put) are not copied: at is
// where they are in the log file.
type rec struct {
	typ  uint32
	off  int64 // of the record in the log
	end  int64 // just past it (padding included)
	body []byte

	// decoded fields, by type
	files   []walFile         // base
	key     string            // data, put, delete, reshape
	at      int64             // data, put: log offset of the bytes
	n       int64             // data, put: how many bytes
	pos     int64             // data: offset in the tensor
	shard   int               // put, meta; install: the file's place in the base record
	dtype   safetensors.DType // put, reshape
	shape   []uint64          // put, reshape
	renames [][2]string       // rename: old, new
	meta    map[string]string // meta (nil: no __metadata__)
	imeta   map[string][]byte // indexmeta
	seq     uint64            // commit
	compact *compactRec       // compact
}

// commitRename is a file a compaction committed to replace: the file (by
// its place in the base record), the temp file holding its new content
// (its name below the checkpoint's directory, next to the file), and the
// temp file's identity: device and inode, by which a finished rename is
// recognised, and size and a SHA-256 of its header (the whole file for
// the index), by which a finished copy in place is.
type commitRename struct {
	File     int
	Temp     string
	Dev, Ino uint64
	Size     int64 // -1: unknown (a record of the first format)
	Hash     [32]byte
}

// patchedFile is a shard a compaction patches in place, with what each
// patched byte range held before and will hold after, so that the next
// open tells our own half-done patch from a file someone else put there.
type patchedFile struct {
	File int
	Runs []patchRun // nil: unknown (a record of the first format)
}

// patchRun is one byte range of a file patched in place, cut at page
// boundaries into pieces (a crash tears a write at a page, never inside
// one); Old and New are the CRC-32C of each piece before and after.
type patchRun struct {
	Off, N   int64
	Old, New []uint32
}

// pageSize is the granularity at which a write can be torn by a crash.
const pageSize = 4096

// pieces calls fn for each page-bounded piece of [off, off+n).
func pieces(off, n int64, fn func(off, n int64)) {
	for end := off + n; off < end; {
		next := min((off/pageSize+1)*pageSize, end)
		fn(off, next-off)
		off = next
	}
}

func pieceCount(off, n int64) int {
	if n <= 0 {
		return 0
	}
	return int((off+n-1)/pageSize - off/pageSize + 1)
}

// compactRec is what a compaction will do: the commit point of folding the
// log into the checkpoint.
type compactRec struct {
	renames []commitRename
	patches []patchedFile
	// v1 holds a record of the first format (absolute paths); settleLog
	// turns it into renames and patches (legacyCompact).
	v1 *compactV1
}

type compactV1 struct {
	renames []struct {
		From, To string
		Dev, Ino uint64
	}
	inPlace []int
}

// enc builds a payload.
type enc struct{ b []byte }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *enc) str(s string) { e.u32(uint32(len(s))); e.b = append(e.b, s...) }
func (e *enc) shape(s []uint64) {
	e.u32(uint32(len(s)))
	for _, d := range s {
		e.u64(d)
	}
}

// dec reads a payload; the first error sticks.
type dec struct {
	b   []byte
	err error
}

func (d *dec) need(n int) bool {
	if d.err == nil && n > len(d.b) {
		d.err = fmt.Errorf("%w: payload ends early", errWALInvalid)
	}
	return d.err == nil
}

func (d *dec) u8() uint8 {
	if !d.need(1) {
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *dec) u32() uint32 {
	if !d.need(4) {
		return 0
	}
	v := binary.LittleEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *dec) u64() uint64 {
	if !d.need(8) {
		return 0
	}
	v := binary.LittleEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

// count reads a u32 count of elements of at least minSize bytes each,
// refusing one the payload cannot hold (a crafted count must not make the
// reader loop or allocate for billions of elements).
func (d *dec) count(minSize int) int {
	n := d.u32()
	if d.err == nil && uint64(n)*uint64(max(minSize, 1)) > uint64(len(d.b)) {
		d.err = fmt.Errorf("%w: %d elements in %d bytes", errWALInvalid, n, len(d.b))
	}
	if d.err != nil {
		return 0
	}
	return int(n)
}

func (d *dec) bytes32() (h [32]byte) {
	if d.need(32) {
		copy(h[:], d.b)
		d.b = d.b[32:]
	}
	return h
}

func (d *dec) str() string {
	n := d.u32()
	if !d.need(int(n)) {
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *dec) shape() []uint64 {
	n := d.count(8)
	if d.err != nil {
		return nil
	}
	s := make([]uint64, n)
	for i := range s {
		s[i] = d.u64()
	}
	return s
}

func (d *dec) dtype() safetensors.DType {
	v := safetensors.DType(d.u8())
	if d.err == nil && !v.Valid() {
		d.err = fmt.Errorf("%w: dtype %d", errWALInvalid, v)
	}
	return v
}

// errWALInvalid: a record whose CRC holds but whose content does not make
// sense (a bug, or a log of another version).
var errWALInvalid = errors.New("log record is invalid")

// Payload builders. Byte payloads (data, put) end with the bytes, which
// the writer appends without copying.

func baseBody(files []walFile) []byte {
	var e enc
	e.u32(uint32(len(files)))
	for _, f := range files {
		e.str(f.name)
		e.u64(uint64(f.size))
		e.u64(f.dev)
		e.u64(f.ino)
		e.u64(uint64(f.mtime))
		e.b = append(e.b, f.hash[:]...)
	}
	return e.b
}

func dataHead(key string, pos int64) []byte {
	var e enc
	e.str(key)
	e.u64(uint64(pos))
	return e.b
}

func putHead(key string, shard int, d safetensors.DType, shape []uint64) []byte {
	var e enc
	e.str(key)
	e.u32(uint32(shard))
	e.u8(uint8(d))
	e.shape(shape)
	return e.b
}

func deleteBody(key string) []byte {
	var e enc
	e.str(key)
	return e.b
}

func renameBody(pairs [][2]string) []byte {
	var e enc
	e.u32(uint32(len(pairs)))
	for _, p := range pairs {
		e.str(p[0])
		e.str(p[1])
	}
	return e.b
}

func reshapeBody(key string, d safetensors.DType, shape []uint64) []byte {
	var e enc
	e.str(key)
	e.u8(uint8(d))
	e.shape(shape)
	return e.b
}

func metaBody(shard int, m map[string]string) []byte {
	var e enc
	e.u32(uint32(shard))
	if m == nil {
		e.u8(0)
		return e.b
	}
	e.u8(1)
	e.u32(uint32(len(m)))
	for _, k := range sortedKeys(m) {
		e.str(k)
		e.str(m[k])
	}
	return e.b
}

func indexMetaBody(m map[string][]byte) []byte {
	var e enc
	e.u32(uint32(len(m)))
	for _, k := range sortedKeys(m) {
		e.str(k)
		e.str(string(m[k]))
	}
	return e.b
}

func commitBody(seq uint64) []byte {
	var e enc
	e.u64(seq)
	return e.b
}

func compactBody(c *compactRec) []byte {
	var e enc
	e.u32(uint32(len(c.renames)))
	for _, r := range c.renames {
		e.u32(uint32(r.File))
		e.str(r.Temp)
		e.u64(r.Dev)
		e.u64(r.Ino)
		e.u64(uint64(r.Size))
		e.b = append(e.b, r.Hash[:]...)
	}
	e.u32(uint32(len(c.patches)))
	for _, p := range c.patches {
		e.u32(uint32(p.File))
		e.u32(uint32(len(p.Runs)))
		for _, run := range p.Runs {
			e.u64(uint64(run.Off))
			e.u64(uint64(run.N))
			for i := range run.Old {
				e.u32(run.Old[i])
				e.u32(run.New[i])
			}
		}
	}
	return e.b
}

func installBody(file int) []byte {
	var e enc
	e.u32(uint32(file))
	return e.b
}

// decode fills r's fields from its body. Byte payloads are located, not
// read: bodyAt is the log offset of the body.
func (r *rec) decode(bodyAt int64, bodyLen int64) error {
	d := &dec{b: r.body}
	switch r.typ {
	case recBase:
		n := d.count(4 + 4*8 + 32)
		for range n {
			var f walFile
			f.name = d.str()
			f.size = int64(d.u64())
			f.dev = d.u64()
			f.ino = d.u64()
			f.mtime = int64(d.u64())
			f.hash = d.bytes32()
			r.files = append(r.files, f)
		}
	case recData, recPut:
		return r.decodeHead(bodyAt, bodyLen)
	case recDelete:
		r.key = d.str()
	case recRename:
		n := d.count(8)
		for range n {
			r.renames = append(r.renames, [2]string{d.str(), d.str()})
		}
	case recReshape:
		r.key = d.str()
		r.dtype = d.dtype()
		r.shape = d.shape()
	case recMeta:
		r.shard = int(d.u32())
		if d.u8() == 1 {
			r.meta = map[string]string{}
			n := d.count(8)
			for range n {
				k := d.str()
				r.meta[k] = d.str()
			}
		}
	case recIndexMeta:
		r.imeta = map[string][]byte{}
		n := d.count(8)
		for range n {
			k := d.str()
			r.imeta[k] = []byte(d.str())
		}
	case recCommit:
		r.seq = d.u64()
	case recCompactV1:
		v1 := &compactV1{}
		n := d.count(4 + 4 + 16)
		for range n {
			v1.renames = append(v1.renames, struct {
				From, To string
				Dev, Ino uint64
			}{d.str(), d.str(), d.u64(), d.u64()})
		}
		n = d.count(4)
		for range n {
			v1.inPlace = append(v1.inPlace, int(d.u32()))
		}
		r.compact = &compactRec{v1: v1}
	case recCompact:
		c := &compactRec{}
		n := d.count(4 + 4 + 3*8 + 32)
		for range n {
			c.renames = append(c.renames, commitRename{File: int(d.u32()), Temp: d.str(), Dev: d.u64(), Ino: d.u64(), Size: int64(d.u64()), Hash: d.bytes32()})
		}
		n = d.count(8)
		for range n {
			p := patchedFile{File: int(d.u32())}
			runs := d.count(16)
			for range runs {
				run := patchRun{Off: int64(d.u64()), N: int64(d.u64())}
				if d.err == nil && (run.Off < 0 || run.N <= 0 || run.Off+run.N < run.Off) {
					d.err = fmt.Errorf("%w: patch of %d bytes at %d", errWALInvalid, run.N, run.Off)
				}
				k := pieceCount(run.Off, run.N)
				if d.err == nil && uint64(k)*8 > uint64(len(d.b)) {
					d.err = fmt.Errorf("%w: %d page checksums in %d bytes", errWALInvalid, k, len(d.b))
				}
				if d.err != nil {
					break
				}
				run.Old, run.New = make([]uint32, k), make([]uint32, k)
				for i := range k {
					run.Old[i], run.New[i] = d.u32(), d.u32()
				}
				p.Runs = append(p.Runs, run)
			}
			c.patches = append(c.patches, p)
		}
		r.compact = c
	case recInstall:
		r.shard = int(d.u32())
	default:
		return fmt.Errorf("%w: unknown record type %d", errWALInvalid, r.typ)
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d bytes left over in a record of type %d", errWALInvalid, len(d.b), r.typ)
	}
	return d.err
}

// hasBytes reports whether the record's payload ends in tensor bytes that
// are located rather than read.
func hasBytes(typ uint32) bool { return typ == recData || typ == recPut }

// chain returns the CRC of a record given the previous one's.
func chain(prev, typ uint32, length uint64, parts ...[]byte) uint32 {
	var h [16]byte
	binary.LittleEndian.PutUint32(h[0:], prev)
	binary.LittleEndian.PutUint32(h[4:], typ)
	binary.LittleEndian.PutUint64(h[8:], length)
	c := crc32.Update(0, castagnoliWAL, h[:])
	for _, p := range parts {
		c = crc32.Update(c, castagnoliWAL, p)
	}
	return c
}

func walHeadBytes() []byte {
	b := make([]byte, walHead)
	copy(b, walMagic)
	binary.LittleEndian.PutUint32(b[8:], walVersion)
	return b
}

func headCRC() uint32 { return crc32.Checksum(walHeadBytes(), castagnoliWAL) }

func pad8(n int64) int64 { return (n + 7) &^ 7 }

// walScan is what reading a log found.
type walScan struct {
	recs []rec // up to and including the last commit record
	end  int64 // the log's valid length: just past the last commit record
	crc  uint32
	seq  uint64
	// id is the scanned file's identity: the log is opened again by name
	// to replay or finish it, and only this file was checked (reopenLog).
	id fileKey
}

// errWALVersion: a log this code cannot read.
var errWALVersion = errors.New("log has an unsupported version")

// scanWAL reads the log in f, checking every CRC, and returns the records
// of its committed batches. Byte payloads are not read into memory; their
// CRC is checked by streaming them.
func scanWAL(f *os.File) (*walScan, error) {
	st, err := fstat(f)
	if err != nil {
		return nil, err
	}
	size := st.Size
	head := make([]byte, walHead)
	if _, err := f.ReadAt(head, 0); err != nil {
		if errors.Is(err, io.EOF) {
			return &walScan{end: 0}, nil // never got its head: empty
		}
		return nil, err
	}
	if string(head[:8]) != walMagic {
		return nil, fmt.Errorf("%w: not a safejaxfs log", errWALVersion)
	}
	if v := binary.LittleEndian.Uint32(head[8:]); v != walVersion {
		return nil, fmt.Errorf("%w %d (this safejaxfs reads version %d)", errWALVersion, v, walVersion)
	}
	s := &walScan{end: walHead, crc: headCRC()}
	var pending []rec
	crc := s.crc
	pos := int64(walHead)
	buf := make([]byte, 1<<20)
	for pos+recHead <= size {
		var h [recHead]byte
		if _, err := f.ReadAt(h[:], pos); err != nil {
			return nil, err
		}
		typ := binary.LittleEndian.Uint32(h[0:])
		want := binary.LittleEndian.Uint32(h[4:])
		length := binary.LittleEndian.Uint64(h[8:])
		if typ == 0 || length > maxRecord || pos+recHead+int64(length) > size || !hasBytes(typ) && length > maxStructRecord {
			break
		}
		bodyAt := pos + recHead
		r := rec{typ: typ, off: pos, end: pos + recHead + pad8(int64(length))}
		// Read the structured part; stream the tensor bytes for the CRC.
		readN := int64(length)
		if hasBytes(typ) {
			readN = min(readN, 64<<10) // heads are small; bytes follow
		}
		body := make([]byte, readN)
		if _, err := f.ReadAt(body, bodyAt); err != nil {
			return nil, err
		}
		var hh [16]byte
		binary.LittleEndian.PutUint32(hh[0:], crc)
		binary.LittleEndian.PutUint32(hh[4:], typ)
		binary.LittleEndian.PutUint64(hh[8:], length)
		c := crc32.Update(0, castagnoliWAL, hh[:])
		c = crc32.Update(c, castagnoliWAL, body)
		for done := readN; done < int64(length); {
			b := buf[:min(int64(len(buf)), int64(length)-done)]
			if _, err := f.ReadAt(b, bodyAt+done); err != nil {
				return nil, err
			}
			c = crc32.Update(c, castagnoliWAL, b)
			done += int64(len(b))
		}
		if c != want {
			break
		}
		r.body = body
		// A data or put record's head (key, offsets, shape) fits well
		// within the 64 KiB read of it.
		if err := r.decode(bodyAt, int64(length)); err != nil {
			return nil, err
		}
		r.body = nil
		crc = want
		pos = r.end
		pending = append(pending, r)
		if typ == recCommit {
			s.recs = append(s.recs, pending...)
			pending = nil
			s.end, s.crc, s.seq = pos, crc, r.seq
		}
	}
	return s, nil
}

// decodeHead decodes a data or put record whose body holds at least its
// structured head (key, offsets, shape) and maybe some of its bytes.
func (r *rec) decodeHead(bodyAt, bodyLen int64) error {
	d := &dec{b: r.body}
	switch r.typ {
	case recData:
		r.key = d.str()
		r.pos = int64(d.u64())
	case recPut:
		r.key = d.str()
		r.shard = int(d.u32())
		r.dtype = d.dtype()
		r.shape = d.shape()
	}
	if d.err != nil {
		return d.err
	}
	r.at = bodyAt + int64(len(r.body)-len(d.b))
	r.n = bodyLen - (r.at - bodyAt)
	return nil
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func putU32(b []byte, v uint32) { binary.LittleEndian.PutUint32(b, v) }
func putU64(b []byte, v uint64) { binary.LittleEndian.PutUint64(b, v) }

func leU64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }
