package fs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// TestMetadataRenderedOnce: __metadata__ is rendered once per change, not
// per read (a large one is read in many requests: rendering each time was
// quadratic).
func TestMetadataRenderedOnce(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.safetensors")
	out, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	meta := map[string]string{"big": strings.Repeat("x", 1<<20)}
	if _, err := safetensors.Write(out, nil, meta); err != nil {
		t.Fatal(err)
	}
	out.Close()
	ck, err := checkpoint.Open(p, checkpoint.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	f, err := New(ck, Options{})
	if err != nil {
		t.Fatal(err)
	}
	a, b := f.metadataJSON(), f.metadataJSON()
	if len(a) < 1<<20 || &a[0] != &b[0] {
		t.Error("the metadata was rendered again for a second read")
	}
	f.metaJSON.Store(nil) // what a change does
	if c := f.metadataJSON(); &c[0] == &a[0] || string(c) != string(a) {
		t.Error("after a change the metadata was not rendered anew")
	}
}
