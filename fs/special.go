package fs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"
)

// IndexMetadataName is the root file of a sharded mount holding the
// index's "metadata" object (total_size and whatever else the index has).
const IndexMetadataName = "__index_metadata__"

// ReservedNames are the root names the special files take, so no tensor
// or directory can shadow them.
func ReservedNames(sharded bool) []string {
	if sharded {
		return []string{MetadataName, IndexMetadataName}
	}
	return []string{MetadataName}
}

// doc is a root file that shows a JSON document of the checkpoint and
// replaces it when a new one is written: the headers' __metadata__, and for
// a sharded checkpoint the index's metadata.
//
// It behaves as a file for the tools that replace files: removed (rm,
// rsync --delete, the cross-device mv that removes the target first), the
// document is emptied, durably, and the name is gone until it is created
// again (create, mknod, or a file renamed over it: sed -i, mv, os.replace,
// rsync's temp file); see doc_replace.go. A new mount shows it again.
type doc struct {
	name   string
	ino    uint64
	render func() []byte
	// prepare checks a new content and returns how to make it the
	// document, durably; nothing changes until apply runs.
	prepare func([]byte) (apply func() error, err error)
	// clear empties the document, durably (rm).
	clear  func() error
	mtime  atomic.Pointer[time.Time] // when it last changed; nil: the checkpoint's mtime
	hidden atomic.Bool               // removed in this mount, not created again yet
}

// commit replaces the document with b, durably, or changes nothing.
func (d *doc) commit(b []byte) error {
	apply, err := d.prepare(b)
	if err != nil {
		return err
	}
	return apply()
}

func (f *FS) docs() []*doc {
	setMeta := func(meta map[string]string) error {
		if err := f.ck.SetMetadataSync(meta); err != nil {
			return err
		}
		f.metaJSON.Store(nil) // rendered again at the next read
		return nil
	}
	d := []*doc{{name: MetadataName, ino: inoMetadata, render: f.metadataJSON,
		prepare: func(b []byte) (func() error, error) {
			meta, err := parseMetadata(b)
			if err != nil {
				return nil, err
			}
			return func() error { return setMeta(meta) }, nil
		},
		clear: func() error { return setMeta(map[string]string{}) },
	}}
	if f.ck.Sharded() {
		d = append(d, &doc{name: IndexMetadataName, ino: inoIndexMetadata, render: f.indexMetadataJSON,
			prepare: func(b []byte) (func() error, error) {
				meta, err := parseIndexMetadata(b)
				if err != nil {
					return nil, err
				}
				return func() error { return f.ck.SetIndexMetadataSync(meta) }, nil
			},
			clear: func() error { return f.ck.SetIndexMetadataSync(map[string]json.RawMessage{}) },
		})
	}
	return d
}

// shownDoc is the special file called name in the root, if it shows (it
// was not removed in this mount, or was created again since).
func (f *FS) shownDoc(name string) *doc {
	if d := f.doc(name); d != nil && !d.hidden.Load() {
		return d
	}
	return nil
}

// doc returns the special file called name in the root (shown or not), or
// nil: the name is reserved either way.
func (f *FS) doc(name string) *doc {
	for _, d := range f.specials {
		if d.name == name {
			return d
		}
	}
	return nil
}

// indexMetadataJSON renders the index's metadata compactly, keys sorted,
// values as the index has them, and a newline for cat.
func (f *FS) indexMetadataJSON() []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(f.ck.IndexMetadata()) // raw values already parsed once: cannot fail
	return b.Bytes()
}

// parseIndexMetadata accepts exactly one JSON object, any values.
func parseIndexMetadata(b []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	var m map[string]json.RawMessage
	if err := dec.Decode(&m); err != nil || m == nil {
		return nil, fmt.Errorf("%s: not a JSON object: %q", IndexMetadataName, truncate(b))
	}
	if dec.More() {
		return nil, fmt.Errorf("%s: more than one JSON value: %q", IndexMetadataName, truncate(b))
	}
	return m, nil
}
