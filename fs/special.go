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
type doc struct {
	name   string
	ino    uint64
	render func() []byte
	commit func([]byte) error
	mtime  atomic.Pointer[time.Time] // when it last changed; nil: the checkpoint's mtime
}

func (f *FS) docs() []*doc {
	d := []*doc{{name: MetadataName, ino: inoMetadata, render: f.metadataJSON, commit: func(b []byte) error {
		meta, err := parseMetadata(b)
		if err != nil {
			return err
		}
		if err := f.ck.SetMetadataSync(meta); err != nil {
			return err
		}
		f.metaJSON.Store(nil) // rendered again at the next read
		return nil
	}}}
	if f.ck.Sharded() {
		d = append(d, &doc{name: IndexMetadataName, ino: inoIndexMetadata, render: f.indexMetadataJSON, commit: func(b []byte) error {
			meta, err := parseIndexMetadata(b)
			if err != nil {
				return err
			}
			return f.ck.SetIndexMetadataSync(meta)
		}})
	}
	return d
}

// doc returns the special file called name in the root, or nil.
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
