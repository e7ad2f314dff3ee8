package fs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// metadataNode is a special root file (doc): /__metadata__, the header's
// metadata as a JSON object, where writing a JSON object of strings to
// strings replaces the metadata; /__index_metadata__ likewise for the
// index's metadata.
type metadataNode struct {
	fs.Inode
	fsys    *FS
	doc     *doc
	uploads uploadSet
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

// metadataJSON renders the metadata with sorted keys, no HTML escaping (keys
// and values are shown as written) and a trailing newline for cat.
func (f *FS) metadataJSON() []byte {
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
	return b.Bytes()
}

func (m *metadataNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	size := len(m.doc.render())
	if u, ok := fh.(*upload); ok {
		size = u.size()
	}
	m.fsys.fillCommon(&out.Attr, m.doc.ino, syscall.S_IFREG|m.fsys.fileMode(), uint64(size))
	return 0
}

// Open uses direct I/O: the content is a few bytes rendered per read, and
// direct I/O keeps readers from seeing a stale cached copy after a change.
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
	return m.uploads.add(newUpload(buf, flags&syscall.O_TRUNC != 0)), fuse.FOPEN_DIRECT_IO, 0
}

func (m *metadataNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if u, ok := fh.(*upload); ok {
		return u.read(dest, off), 0
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
	if errno := m.uploads.setattr(fh, in); errno != 0 {
		return errno
	}
	return m.Getattr(ctx, fh, out)
}

// Flush replaces the document with what was written, if it parses;
// otherwise it is kept and close fails with EINVAL.
func (m *metadataNode) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	return m.fsys.flushUpload(ctx, fh, m.doc.commit)
}

func (m *metadataNode) Release(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	m.uploads.release(fh)
	return 0
}

func (m *metadataNode) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	return m.fsys.sync(ctx)
}

// parseMetadata accepts exactly one JSON object whose values are strings.
func parseMetadata(b []byte) (map[string]string, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	var raw map[string]any
	if err := dec.Decode(&raw); err != nil || raw == nil {
		return nil, fmt.Errorf("__metadata__: not a JSON object: %q", truncate(b))
	}
	if dec.More() {
		return nil, fmt.Errorf("__metadata__: more than one JSON value: %q", truncate(b))
	}
	meta := make(map[string]string, len(raw))
	for k, v := range raw {
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("__metadata__: value of %q is %v, not a string (safetensors metadata maps strings to strings)", k, v)
		}
		meta[k] = s
	}
	return meta, nil
}

func truncate(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}
