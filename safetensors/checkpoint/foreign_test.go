package checkpoint

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/formats"
)

// npyFile writes a Fortran-ordered float32 .npy (2x3), whose C-order
// values 0..5 the checkpoint must show.
func npyFile(t *testing.T) string {
	t.Helper()
	dict := "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }"
	for (10+len(dict)+1)%64 != 0 {
		dict += " "
	}
	b := append([]byte("\x93NUMPY\x01\x00"), 0, 0)
	binary.LittleEndian.PutUint16(b[8:], uint16(len(dict)+1))
	b = append(append(b, dict...), '\n')
	for _, v := range []float32{0, 3, 1, 4, 2, 5} { // column-major
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	p := filepath.Join(t.TempDir(), "weights.npy")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestForeignCheckpoint(t *testing.T) {
	t.Parallel()
	c, err := Open(npyFile(t), Options{}) // read-write asked: read-only given
	if err != nil {
		t.Fatal(err)
	}
	if !c.ReadOnly() || c.Format() != "numpy .npy" {
		t.Fatalf("read-only %v, format %q", c.ReadOnly(), c.Format())
	}
	keys := c.Keys()
	if len(keys) != 1 || keys[0] != "weights" {
		t.Fatalf("keys %q", keys)
	}
	info, _ := c.Info(0)
	if info.DType != safetensors.F32 || len(info.Shape) != 2 || info.Shape[0] != 2 || info.Size != 24 {
		t.Fatalf("info %+v", info)
	}
	segs, release, err := c.Read(0, 4, 100)
	if err != nil {
		t.Fatal(err)
	}
	var want []byte
	for v := float32(1); v < 6; v++ {
		want = binary.LittleEndian.AppendUint32(want, math.Float32bits(v))
	}
	if len(segs) != 1 || !bytes.Equal(segs[0], want) {
		t.Fatalf("read % x, want % x", segs, want)
	}
	if _, err := c.Create("x"); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Create on a foreign checkpoint: %v", err)
	}
	// Close while a read holds bytes: they stay valid until its release.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(segs[0], want) {
		t.Fatal("bytes changed after Close")
	}
	release()
	if _, err := c.ForeignFile().Bytes(0); err == nil {
		t.Error("the file is still open after the last release")
	}
}

func TestForeignNotCheckpoint(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "model.safetensors")
	os.WriteFile(p, []byte("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 10\n"), 0o644)
	_, err := Open(p, Options{ReadOnly: true})
	if !errors.Is(err, formats.ErrNotCheckpoint) {
		t.Fatalf("Open of an LFS pointer: %v", err)
	}
}

// The files view of a foreign checkpoint is the file itself, byte for
// byte (what a loader of its format reads), served as the local file it
// is: no index, and never a safetensors rendering under the file's name.
func TestForeignFiles(t *testing.T) {
	t.Parallel()
	p := npyFile(t)
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(p, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	set := c.Files(FilesOptions{})
	if names := set.Names(); len(names) != 1 || names[0] != "weights.npy" {
		t.Fatalf("files %q, want weights.npy", names)
	}
	fi, err := set.Stat("weights.npy")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size != int64(len(want)) || !fi.Direct || !fi.Own {
		t.Fatalf("stat %+v: want the file's own size %d, served directly", fi, len(want))
	}
	v, err := set.Open("weights.npy", fi.Stamp)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	segs, release, err := v.Read(0, len(want)+10)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if got := bytes.Join(segs, nil); !bytes.Equal(got, want) {
		t.Fatalf("read % x, want the file % x", got, want)
	}
	if v.Backing() == nil {
		t.Error("no backing file: a passthrough could not serve it")
	}
}
