package fs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/safejaxfs/safejaxfs/fs/upload"
	"github.com/safejaxfs/safejaxfs/safetensors"
)

// metadataNode is a special root file (doc): /__metadata__, the header's
// metadata as a JSON object, where writing a JSON object of strings to
// strings replaces the metadata; /__index_metadata__ likewise for the
// index's metadata.
type metadataNode struct {
	fs.Inode
	fsys    *FS
	doc     *doc
	uploads upload.Set
}

var (
	_ = (fs.NodeGetattrer)((*metadataNode)(nil))
	_ = (fs.NodeSetattrer)((*metadataNode)(nil))
	_ = (fs.NodeOpener)((*metadataNode)(nil))
	_ = (fs.NodeReader)((*metadataNode)(nil))
	_ = (fs.NodeWriter)((*metadataNode)(nil))
	_ = (fs.NodeFlusher)((*metadataNode)(nil))
	_ = (fs.NodeFsyncer)((*metadataNode)(nil))
	_ = (fs.NodeReleaser)((*metadataNode)(nil))
)

// maxMetadataUpload caps what may be written to __metadata__: the whole
// header of a safetensors file is at most 100,000,000 bytes.
const maxMetadataUpload = 100_000_000

// metadataJSON renders the metadata with sorted keys, no HTML escaping (keys
// and values are shown as written) and a trailing newline for cat. It is
// rendered once per change, not per read: reads of a large metadata file
// come in many requests.
func (f *FS) metadataJSON() []byte {
	if b := f.metaJSON.Load(); b != nil {
		return *b
	}
	m := f.ck.Metadata()
	if m == nil {
		m = map[string]string{}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	// Encoding a map of strings cannot fail (invalid UTF-8 would already
	// have been refused by the header parser).
	_ = enc.Encode(m)
	out := b.Bytes()
	f.metaJSON.Store(&out)
	return out
}

// Getattr shows the metadata as it is, not an upload in progress (the
// handle go-fuse passes may be anyone's: see npyNode.Getattr).
func (m *metadataNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	size := len(m.doc.render())
	m.fsys.fillCommon(&out.Attr, m.doc.ino, syscall.S_IFREG|m.fsys.fileMode(), uint64(size))
	if t := m.doc.mtime.Load(); t != nil {
		setTimes(&out.Attr, *t, *t)
	}
	return 0
}

// Open uses direct I/O: the content is small, and direct I/O keeps readers
// from seeing a stale cached copy after a change.
func (m *metadataNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if !isWrite(flags) {
		return nil, fuse.FOPEN_DIRECT_IO, 0
	}
	if m.fsys.ck.ReadOnly() {
		return nil, 0, syscall.EROFS
	}
	var buf []byte
	if flags&syscall.O_TRUNC == 0 {
		buf = m.doc.render()
	}
	return m.fsys.newUpload(&m.uploads, openerOf(ctx), MetadataName, buf, flags&syscall.O_TRUNC != 0, maxMetadataUpload), fuse.FOPEN_DIRECT_IO, 0
}

func (m *metadataNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if u, ok := fh.(*uploadFile); ok {
		return readUpload(u, dest, off), 0
	}
	b := m.doc.render()
	if off >= int64(len(b)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(b[off:min(int64(len(b)), off+int64(len(dest)))]), 0
}

func (m *metadataNode) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	return writeUpload(fh, data, off)
}

func (m *metadataNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if mtime, ok := in.GetMTime(); ok {
		// touch, cp -p, rsync -a: kept beside the checkpoint (times.go).
		if m.fsys.ck.ReadOnly() {
			return syscall.EROFS
		}
		m.doc.mtime.Store(&mtime)
	}
	if size, ok := in.GetSize(); ok {
		if errno := truncateUpload(fh, &m.uploads, size); errno != 0 {
			return errno
		}
	}
	return m.Getattr(ctx, fh, out)
}

// Flush replaces the document with what was written, if it parses;
// otherwise it is kept and close fails with EINVAL.
func (m *metadataNode) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	u, ok := fh.(*uploadFile)
	if !ok {
		return 0
	}
	return m.fsys.flushUpload(ctx, u, m.commit)
}

// commit replaces the document with b, if it parses.
func (m *metadataNode) commit(b []byte) error {
	if err := m.doc.commit(b); err != nil {
		return err
	}
	now := time.Now()
	m.doc.mtime.Store(&now)
	return nil
}

func (m *metadataNode) Release(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	if u, ok := fh.(*uploadFile); ok {
		m.fsys.releaseUpload(ctx, &m.uploads, u, m.commit)
	}
	return 0
}

func (m *metadataNode) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	return m.fsys.sync(ctx)
}

// parseMetadata accepts what a safetensors header's __metadata__ may be:
// exactly one JSON object of string values, valid UTF-8, no key twice
// (safetensors.ParseMetadata). Anything else could not be written back.
func parseMetadata(b []byte) (map[string]string, error) {
	meta, err := safetensors.ParseMetadata(b)
	if err != nil {
		return nil, fmt.Errorf("__metadata__: %w (%q)", err, truncate(b))
	}
	return meta, nil
}

func truncate(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}

var (
	_ = (fs.NodeGetxattrer)((*metadataNode)(nil))
	_ = (fs.NodeSetxattrer)((*metadataNode)(nil))
	_ = (fs.NodeListxattrer)((*metadataNode)(nil))
	_ = (fs.NodeRemovexattrer)((*metadataNode)(nil))
)

// A special file has no attributes. Saying "not supported" to setting one
// (cp -a, mv and rsync -X copying ACLs or attributes onto it) lets those
// tools carry on, as on any file system without them; go-fuse's default
// (ENODATA) made mv print "preserving permissions: No data available".
func (m *metadataNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if errno := unsupportedXattr(attr); errno != 0 {
		return 0, errno
	}
	return 0, syscall.ENODATA
}

func (m *metadataNode) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.ENOTSUP
}

func (m *metadataNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return 0, 0
}

func (m *metadataNode) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if errno := unsupportedXattr(attr); errno != 0 {
		return errno
	}
	return syscall.ENODATA
}
