package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
	"github.com/safejaxfs/safejaxfs/safetensors"
)

type keyOnly struct {
	Key string `json:"key"`
}

type diffOut struct {
	A, B      string
	Identical bool      `json:"identical"`
	OnlyInA   []keyOnly `json:"only_in_a"`
	OnlyInB   []keyOnly `json:"only_in_b"`
	Changed   []struct {
		Key string `json:"key"`
		A   struct {
			DType string   `json:"dtype"`
			Shape []uint64 `json:"shape"`
		} `json:"a"`
		B struct {
			DType string   `json:"dtype"`
			Shape []uint64 `json:"shape"`
		} `json:"b"`
	} `json:"changed"`
	Tensors []struct {
		truthDiff
		Key   string `json:"key"`
		DType string `json:"dtype"`
	} `json:"tensors"`
	Metadata *struct {
		OnlyInA map[string]string    `json:"only_in_a"`
		OnlyInB map[string]string    `json:"only_in_b"`
		Changed map[string][2]string `json:"changed"`
	} `json:"metadata"`
}

func keysOf[T any](l []T, key func(T) string) []string {
	var ks []string
	for _, x := range l {
		ks = append(ks, key(x))
	}
	slices.Sort(ks)
	return ks
}

// edited is ts with: one tensor removed, one added, one with another
// dtype, one with another shape, elements changed in several, and an F32
// element +0 in one and -0 in the other.
func edited(ts []genTensor) []genTensor {
	var out []genTensor
	for _, g := range ts {
		g.data = bytes.Clone(g.data)
		switch g.key {
		case "model.i16.weight":
			continue // only in A
		case "model.u16.weight":
			g.dtype = safetensors.I16 // changed dtype
		case "model.i32.weight":
			g.shape = []uint64{40, 12} // changed shape
		case "model.bf16.weight", "model.f8_e4m3.weight", "model.f4.weight", "model.i64.weight", "model.c64.weight", "model.bool.weight":
			for i := 0; i < len(g.data); i += 37 {
				g.data[i] ^= 0x5A
			}
		case "model.f64.weight":
			binary.LittleEndian.PutUint64(g.data[80:], math.Float64bits(math.NaN())) // NaN in B only (or both)
			binary.LittleEndian.PutUint64(g.data[160:], binary.LittleEndian.Uint64(g.data[160:])^1)
		case "model.f32.weight":
			binary.LittleEndian.PutUint32(g.data[0:], 0)
		}
		out = append(out, g)
	}
	return append(out, raw("model.extra", safetensors.F32, make([]byte, 8), 2)) // only in B
}

func TestDiffMatchesNumpy(t *testing.T) {
	t.Parallel()
	ts := everyDType(3)
	for i := range ts {
		if ts[i].key == "model.f32.weight" {
			ts[i].data = bytes.Clone(ts[i].data)
			binary.LittleEndian.PutUint32(ts[i].data[0:], 0x80000000) // -0 in A, +0 in B
		}
	}
	a := writeCheckpoint(t, "a.safetensors", map[string]string{"format": "pt", "step": "1"}, ts...)
	b := writeCheckpoint(t, "b.safetensors", map[string]string{"format": "pt", "step": "2", "note": "x"}, edited(ts)...)

	r := cli(t, "diff", "--json", a, b)
	if r.code != exitDiffer {
		t.Fatalf("diff: exit %d, want 1: %s", r.code, r.stderr)
	}
	var got diffOut
	decodeJSON(t, []byte(r.stdout), &got)
	if got.Identical {
		t.Error("identical: true")
	}
	if k := keysOf(got.OnlyInA, func(x keyOnly) string { return x.Key }); !slices.Equal(k, []string{"model.i16.weight"}) {
		t.Errorf("only in A: %v", k)
	}
	if k := keysOf(got.OnlyInB, func(x keyOnly) string { return x.Key }); !slices.Equal(k, []string{"model.extra"}) {
		t.Errorf("only in B: %v", k)
	}
	if len(got.Changed) != 2 || got.Changed[0].Key != "model.i32.weight" || fmt.Sprint(got.Changed[0].B.Shape) != "[40 12]" ||
		got.Changed[1].Key != "model.u16.weight" || got.Changed[1].A.DType != "U16" || got.Changed[1].B.DType != "I16" {
		t.Errorf("changed: %+v", got.Changed)
	}
	m := got.Metadata
	if m == nil || m.Changed["step"] != [2]string{"1", "2"} || m.OnlyInB["note"] != "x" || len(m.OnlyInA) != 0 || len(m.Changed) != 1 {
		t.Errorf("metadata: %+v", m)
	}

	want := askNumpy(t, map[string]any{"diff_checkpoints": [][]string{{a}, {b}}}).Diffs
	if len(got.Tensors) != len(want) {
		t.Fatalf("%d tensors compared, numpy %d", len(got.Tensors), len(want))
	}
	changedBytes := 0
	for _, g := range got.Tensors {
		w, ok := want[g.Key]
		if !ok {
			t.Fatalf("compared %q, numpy did not", g.Key)
		}
		if g.Count != w.Count || g.Differ != w.Differ || g.NonFinite != w.NonFinite || g.BytesEqual != w.BytesEqual {
			t.Errorf("%s: count/differ/nonfinite/bytes-equal %d/%d/%d/%v, numpy %d/%d/%d/%v", g.Key,
				g.Count, g.Differ, g.NonFinite, g.BytesEqual, w.Count, w.Differ, w.NonFinite, w.BytesEqual)
		}
		if !near(num(g.MaxAbs), num(w.MaxAbs)) || !near(num(g.MaxRel), num(w.MaxRel)) {
			t.Errorf("%s: max abs %s rel %s, numpy %s %s", g.Key, g.MaxAbs, g.MaxRel, w.MaxAbs, w.MaxRel)
		}
		if !g.BytesEqual {
			changedBytes++
		}
	}
	if changedBytes != 8 {
		t.Errorf("%d tensors with other bytes, want 8", changedBytes)
	}

	// The text: a line per difference, identical tensors not named.
	r = cli(t, "diff", a, b)
	if r.code != exitDiffer {
		t.Fatalf("diff: exit %d", r.code)
	}
	for _, want := range []string{
		"only in A  model.i16.weight", "only in B  model.extra", "changed  model.i32.weight  I32 [12,40] -> I32 [40,12]",
		"changed  model.u16.weight  U16 [12,40] -> I16 [12,40]", "differs  model.f32.weight  F32 [12,40]: bytes only, values equal",
		"differs  model.bf16.weight  BF16 [12,40]: ", "metadata changed  step  \"1\" -> \"2\"", "metadata only in B  note  \"x\"",
	} {
		if !strings.Contains(squeeze(r.stdout), want) {
			t.Errorf("diff output lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "model.u8.weight") {
		t.Errorf("an identical tensor is listed:\n%s", r.stdout)
	}
	if r := cli(t, "diff", "-q", a, b); r.code != exitDiffer || r.stdout != "" || r.stderr != "" {
		t.Errorf("diff -q: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	// A PREFIX that holds no difference.
	if r := cli(t, "diff", a, b, "model/u8"); r.code != 0 || r.stdout != "" {
		t.Errorf("diff of an unchanged tensor: exit %d, %q %s", r.code, r.stdout, r.stderr)
	}
	if r := cli(t, "diff", a, b, "model/bf16"); r.code != exitDiffer || !strings.Contains(r.stdout, "model.bf16.weight") || strings.Contains(r.stdout, "metadata") {
		t.Errorf("diff of a changed tensor: exit %d, %q", r.code, r.stdout)
	}
}

// squeeze collapses runs of spaces (the table's padding) to two.
func squeeze(s string) string {
	for strings.Contains(s, "   ") {
		s = strings.ReplaceAll(s, "   ", "  ")
	}
	return s
}

// The same tensors as a single file, a sharded set and through nginx: no
// difference, exit 0, nothing printed.
func TestDiffIdenticalAcrossLayouts(t *testing.T) {
	t.Parallel()
	ts := everyDType(4)
	meta := map[string]string{"format": "pt"}
	file := writeCheckpoint(t, "model.safetensors", meta, ts...)
	dir := writeShardedSet(t, meta, ts[:10], ts[10:])
	www := t.TempDir()
	os.Symlink(dir, filepath.Join(www, "set"))
	os.Symlink(file, filepath.Join(www, "model.safetensors"))
	_, ports := testsrv.StartNginx(t, testsrv.StaticServer(www))
	setURL := fmt.Sprintf("http://127.0.0.1:%d/set/", ports[0])
	fileURL := fmt.Sprintf("http://127.0.0.1:%d/model.safetensors", ports[0])
	cache := t.TempDir()
	for _, p := range [][2]string{{file, file}, {file, dir}, {dir, file}, {file, setURL}, {fileURL, dir}} {
		r := cli(t, "diff", "--cache-dir", cache, p[0], p[1])
		if r.code != 0 || r.stdout != "" || r.stderr != "" {
			t.Errorf("diff %s %s: exit %d, stdout %q, stderr %q", p[0], p[1], r.code, r.stdout, r.stderr)
		}
	}
	r := cli(t, "diff", "--json", file, setURL)
	var got diffOut
	decodeJSON(t, []byte(r.stdout), &got)
	if r.code != 0 || !got.Identical || len(got.Tensors) != len(ts) {
		t.Errorf("diff --json: exit %d, identical %v, %d tensors", r.code, got.Identical, len(got.Tensors))
	}
	// One changed byte in the remote copy's shard is found.
	ts2 := slices.Clone(ts)
	ts2[15].data = bytes.Clone(ts2[15].data)
	ts2[15].data[len(ts2[15].data)-1] ^= 1
	dir2 := writeShardedSet(t, meta, ts2[:10], ts2[10:])
	os.Symlink(dir2, filepath.Join(www, "set2"))
	r = cli(t, "diff", "--cache-dir", cache, file, fmt.Sprintf("http://127.0.0.1:%d/set2/", ports[0]))
	if r.code != exitDiffer || !strings.Contains(r.stdout, ts[15].key) || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("one changed byte: exit %d, %q", r.code, r.stdout)
	}
}

// Trouble is 2 (like diff), never 1: 1 means "they differ".
func TestDiffTrouble(t *testing.T) {
	t.Parallel()
	good := flaxModel(t)
	bad := filepath.Join(t.TempDir(), "bad.safetensors")
	os.WriteFile(bad, []byte("{nope"), 0o644)
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"diff", good, filepath.Join(t.TempDir(), "missing.safetensors")}, "does not exist"},
		{[]string{"diff", bad, good}, "bad.safetensors"},
		{[]string{"diff", good, good, "nothing/here"}, `no tensor or directory "nothing/here"`},
		{[]string{"diff", good}, "wrong number of arguments"},
		{[]string{"diff", "--bogus", good, good}, "bogus"},
		{[]string{"diff", "http://127.0.0.1:1/x.safetensors", good}, "127.0.0.1:1"},
	} {
		r := cli(t, c.args...)
		if r.code != exitTrouble || !strings.Contains(r.stderr, c.msg) || r.stdout != "" {
			t.Errorf("%v: exit %d, stderr %q, stdout %q; want 2 and %q", c.args, r.code, r.stderr, r.stdout, c.msg)
		}
	}
}
