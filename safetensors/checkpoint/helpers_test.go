package checkpoint

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// ---- helpers shared by the persistence tests (log, rewrite, lock) ----

// testCkpt is a real checkpoint file in a temp dir and what it holds.
type testCkpt struct {
	path    string
	content []byte // the whole file as written
	dataOff int64
	tensors map[string][2]int64 // key -> absolute [begin, end)
}

// pseudo returns n deterministic pseudo-random bytes.
func pseudo(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func testSources(seed uint64) ([]safetensors.Source, map[string]string) {
	return []safetensors.Source{
		{Key: "params.Dense_0.kernel", DType: safetensors.F32, Shape: []uint64{256, 64}, Data: safetensors.Bytes(pseudo(seed, 256*64*4))},
		{Key: "params.Dense_0.bias", DType: safetensors.F32, Shape: []uint64{64}, Data: safetensors.Bytes(pseudo(seed+1, 64*4))},
		{Key: "embed", DType: safetensors.U8, Shape: []uint64{300_000}, Data: safetensors.Bytes(pseudo(seed+2, 300_000))},
		{Key: "step", DType: safetensors.I64, Shape: []uint64{}, Data: safetensors.Bytes(pseudo(seed+3, 8))},
	}, map[string]string{"framework": "flax"}
}

// makeCkpt writes a checkpoint with safetensors.Write at dir/name.
func makeCkpt(t testing.TB, dir, name string, sources []safetensors.Source, meta map[string]string) *testCkpt {
	t.Helper()
	var buf bytes.Buffer
	if _, err := safetensors.Write(&buf, sources, meta); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return describeCkpt(t, path)
}

func describeCkpt(t testing.TB, path string) *testCkpt {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := safetensors.ReadHeader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	c := &testCkpt{path: path, content: b, dataOff: h.DataOffset(), tensors: map[string][2]int64{}}
	for _, ts := range h.Tensors {
		c.tensors[ts.Key] = [2]int64{c.dataOff + int64(ts.Begin), c.dataOff + int64(ts.End)}
	}
	return c
}

func defaultCkpt(t testing.TB) *testCkpt {
	src, meta := testSources(1)
	return makeCkpt(t, t.TempDir(), "model.safetensors", src, meta)
}

// at is an absolute offset inside tensor key.
func (c *testCkpt) at(key string, off int64) int64 { return c.tensors[key][0] + off }

// applied is the content with patches applied in order.
func applied(content []byte, patches []patch) []byte {
	b := bytes.Clone(content)
	for _, p := range patches {
		copy(b[p.off:], p.data)
	}
	return b
}

func openRW(t testing.TB, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// checkFile fails unless path holds exactly want and validates strictly.
func checkFile(t testing.TB, path string, want []byte, what string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: %s differs from the expected content (%d vs %d bytes, first difference at %d)", what, path, len(got), len(want), i)
	}
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatalf("%s: %s does not validate: %v", what, path, err)
	}
	f.Close()
}

// sideFiles lists the dot files safejaxfs keeps next to the checkpoint.
func sideFiles(t testing.TB, path string) []string {
	t.Helper()
	dir, base := filepath.Split(path)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "."+base+".safejaxfs-") {
			out = append(out, e.Name())
		}
	}
	return out
}

var errCrash = errors.New("simulated crash")

// crashAt returns hooks that crash at the nth (1-based) time point is
// reached, after running before (if any) at that moment.
func crashAt(point string, nth int, before func()) *crashHooks {
	seen := 0
	return &crashHooks{at: func(p string) error {
		if p != point {
			return nil
		}
		if seen++; seen == nth {
			if before != nil {
				before()
			}
			return errCrash
		}
		return nil
	}}
}

// recordPoints returns hooks that record the points reached, in order.
func recordPoints(points *[]string) *crashHooks {
	return &crashHooks{at: func(p string) error { *points = append(*points, p); return nil }}
}
