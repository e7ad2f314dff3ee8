package safetensors

import (
	"encoding/binary"
	"errors"
	"io/fs"
	"math"
	"os"
	"testing"
)

func TestOpenTestdata(t *testing.T) {
	t.Parallel()
	for _, name := range testdataFiles {
		t.Run(name, func(t *testing.T) {
			orig := readTestdata(t, name)
			f, err := Open(testdataPath(name))
			if err != nil {
				t.Fatal(err)
			}
			if f.Size != int64(len(orig)) || f.Path != testdataPath(name) {
				t.Fatalf("Size %d Path %q", f.Size, f.Path)
			}
			off := f.DataOffset()
			for i := range f.Tensors {
				ts := &f.Tensors[i]
				b := f.Bytes(i)
				if uint64(len(b)) != ts.Size() || cap(b) != len(b) {
					t.Fatalf("%s: len %d cap %d, size %d", ts.Key, len(b), cap(b), ts.Size())
				}
				if string(b) != string(orig[off+int64(ts.Begin):off+int64(ts.End)]) {
					t.Fatalf("%s: bytes differ from the file", ts.Key)
				}
				if j, ok := f.Index(ts.Key); !ok || j != i {
					t.Fatalf("Index(%q) = %d, %v; want %d", ts.Key, j, ok, i)
				}
			}
			if _, ok := f.Index("no such tensor"); ok {
				t.Fatal("Index found a missing key")
			}
			if st, _ := f.Fd().Stat(); st.Size() != f.Size {
				t.Fatal("Fd is not the checkpoint")
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); !errors.Is(err, os.ErrClosed) {
				t.Fatalf("second Close = %v", err)
			}
		})
	}
}

// The Vandermonde fixture has known values: v[i][j] = (i+1)^(j+1).
func TestOpenVandermondeValues(t *testing.T) {
	t.Parallel()
	f, err := Open(testdataPath("vandermonde.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range []struct {
		key   string
		dtype DType
		width int
	}{{"F64_vandermonde_5x5", F64, 8}, {"F32_vandermonde_5x5", F32, 4}, {"BF16_vandermonde_5x5", BF16, 2}} {
		i, ok := f.Index(c.key)
		if !ok {
			t.Fatalf("missing %s", c.key)
		}
		ts := f.Tensors[i]
		if ts.DType != c.dtype || len(ts.Shape) != 2 || ts.Shape[0] != 5 || ts.Shape[1] != 5 {
			t.Fatalf("%s: %v %v", c.key, ts.DType, ts.Shape)
		}
		b := f.Bytes(i)
		for r := range 5 {
			for col := range 5 {
				e := b[(r*5+col)*c.width:]
				var v float64
				switch c.width {
				case 8:
					v = math.Float64frombits(binary.LittleEndian.Uint64(e))
				case 4:
					v = float64(math.Float32frombits(binary.LittleEndian.Uint32(e)))
				case 2:
					v = float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(e)) << 16))
				}
				want := math.Pow(float64(r+1), float64(col+1))
				if c.dtype == BF16 {
					// 8 significant bits: 625 is stored as 624.
					want = float64(math.Float32frombits(math.Float32bits(float32(want)) &^ 0xffff))
				}
				if v != want {
					t.Fatalf("%s[%d][%d] = %v, want %v", c.key, r, col, v, want)
				}
			}
		}
	}
}

func TestOpenAbuseAttempt(t *testing.T) {
	t.Parallel()
	_, err := Open(testdataPath("abuse_attempt_1.safetensors"))
	if !errors.Is(err, ErrHeaderTruncated) {
		t.Fatalf("err = %v, want ErrHeaderTruncated", err)
	}
}

func TestOpenRejects(t *testing.T) {
	t.Parallel()
	for _, c := range badCases {
		t.Run(c.name, func(t *testing.T) {
			p := writeTemp(t, c.file)
			f, err := Open(p)
			if err == nil {
				f.Close()
				t.Fatal("accepted")
			}
			var fe *FormatError
			var pe *os.PathError
			if !errors.Is(err, c.rule) || !errors.As(err, &fe) || !errors.As(err, &pe) || pe.Path != p {
				t.Fatalf("err = %v; want a *os.PathError for %s wrapping a *FormatError for %v", err, p, c.rule)
			}
		})
	}
}

func TestOpenNotACheckpoint(t *testing.T) {
	t.Parallel()
	if _, err := Open("no/such/file"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := Open(t.TempDir()); err == nil {
		t.Fatal("opened a directory")
	}
}

// Zero-size tensors and an empty data region need no mapping of their own.
func TestOpenEmptyData(t *testing.T) {
	t.Parallel()
	for _, b := range [][]byte{
		file("{}", nil),
		file(`{"e":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}`, nil),
	} {
		f, err := Open(writeTemp(t, b))
		if err != nil {
			t.Fatal(err)
		}
		for i := range f.Tensors {
			if b := f.Bytes(i); b == nil || len(b) != 0 {
				t.Fatalf("Bytes(%d) = %#v, want an empty non-nil slice", i, b)
			}
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFileReadAt(t *testing.T) {
	t.Parallel()
	b := file(`{"w":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}`, []byte("xyz"))
	f, err := Open(writeTemp(t, b))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := make([]byte, 4)
	n, err := f.ReadAt(p, int64(len(b)-3))
	if n != 3 || string(p[:3]) != "xyz" || err == nil {
		t.Fatalf("ReadAt = %d %q %v", n, p, err)
	}
	if _, err := f.ReadAt(p, -1); err == nil {
		t.Fatal("negative offset accepted")
	}
	if string(f.Mapped()) != string(b) {
		t.Fatal("Mapped differs from the file")
	}
}
