package floats

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Stats and Diff against testdata/stats_truth.py: numpy computing the
// documented figures from values it decodes itself (truth.py).

var allDTypes = func() []safetensors.DType {
	var ds []safetensors.DType
	for d := range safetensors.DType(22) {
		ds = append(ds, d)
	}
	return ds
}()

// sample makes n elements of d: random bytes, then (for floats) some
// zeros, ±0, NaN and Inf, and for integers their extremes.
func sample(r *rand.Rand, d safetensors.DType, n int) []byte {
	size, _ := safetensors.ByteSize(d, []uint64{uint64(n)})
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	w := d.Bits() / 8
	if w == 0 {
		return b // F4, F6: random codes cover every value
	}
	for i := 0; i < n; i++ {
		e := b[i*w : (i+1)*w]
		switch p := r.IntN(20); {
		case p == 0:
			clear(e) // zero
		case p == 1 && d == safetensors.F32:
			binary.LittleEndian.PutUint32(e, math.Float32bits(float32(math.Inf(1-2*r.IntN(2)))))
		case p == 1 && d == safetensors.F64:
			binary.LittleEndian.PutUint64(e, math.Float64bits(math.NaN()))
		case p == 2 && w > 1 && classOf(d) != classFloat:
			for j := range e {
				e[j] = 0xFF // -1, or the unsigned max
			}
		case p == 3 && classOf(d) == classSigned:
			clear(e)
			e[w-1] = 0x80 // the most negative
		case p >= 4 && (d == safetensors.F32 || d == safetensors.F64 || d == safetensors.C64):
			// Mostly ordinary numbers: random bits are mostly huge or tiny.
			for j := 0; j < len(e); j += 4 {
				if d == safetensors.F64 {
					binary.LittleEndian.PutUint64(e, math.Float64bits(r.NormFloat64()*3))
					break
				}
				binary.LittleEndian.PutUint32(e[j:], math.Float32bits(float32(r.NormFloat64())))
			}
		}
	}
	return b
}

type truthStats struct {
	DType  string          `json:"dtype"`
	Count  uint64          `json:"count"`
	NaN    uint64          `json:"nan"`
	Inf    uint64          `json:"inf"`
	Zeros  uint64          `json:"zeros"`
	Finite uint64          `json:"finite"`
	Min    json.Number     `json:"min"`
	Max    json.Number     `json:"max"`
	Mean   jfloat          `json:"mean"`
	Std    jfloat          `json:"std"`
	Shape  json.RawMessage `json:"shape"`
}

type truthDiff struct {
	Count      uint64 `json:"count"`
	BytesEqual bool   `json:"bytes_equal"`
	Differ     uint64 `json:"differ"`
	NonFinite  uint64 `json:"nonfinite"`
	MaxAbs     jfloat `json:"max_abs"`
	MaxRel     jfloat `json:"max_rel"`
}

// jfloat is a number, or "inf", "-inf", "nan" as stats_truth.py writes
// what JSON cannot hold.
type jfloat float64

func (f *jfloat) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		v, err := strconv.ParseFloat(s, 64)
		*f = jfloat(v)
		return err
	}
	var v float64
	err := json.Unmarshal(b, &v)
	*f = jfloat(v)
	return err
}

type truthReply struct {
	Tensors     []truthStats          `json:"tensors"`
	Pairs       []truthDiff           `json:"pairs"`
	Checkpoints map[string]truthStats `json:"checkpoints"`
}

func askTruth(t *testing.T, req any) truthReply {
	t.Helper()
	truth(t) // skips without numpy
	in, _ := json.Marshal(req)
	cmd := exec.Command(python, "testdata/stats_truth.py")
	cmd.Stdin = bytes.NewReader(in)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("stats_truth.py: %v\n%s", err, stderr)
	}
	var r truthReply
	d := json.NewDecoder(bytes.NewReader(out))
	d.UseNumber()
	if err := d.Decode(&r); err != nil {
		t.Fatal(err)
	}
	return r
}

// close reports whether got is within a relative 1e-9 of want (the two
// sum in different orders).
func close(got, want float64) bool {
	return got == want || (math.IsNaN(got) && math.IsNaN(want)) || math.Abs(got-want) <= 1e-9*math.Max(math.Abs(want), 1e-300)
}

// CheckStats compares a summary with numpy's; shared with the command tests
// through the same field names.
func checkStats(t *testing.T, what string, s *Stats, w truthStats) {
	t.Helper()
	if s.Count != w.Count || s.NaN != w.NaN || s.Inf != w.Inf || s.Zeros != w.Zeros || s.Finite() != w.Finite {
		t.Errorf("%s: count/nan/inf/zeros/finite = %d/%d/%d/%d/%d, numpy %d/%d/%d/%d/%d", what,
			s.Count, s.NaN, s.Inf, s.Zeros, s.Finite(), w.Count, w.NaN, w.Inf, w.Zeros, w.Finite)
	}
	if w.Finite == 0 {
		if s.Min().Valid || s.Mean().Valid {
			t.Errorf("%s: figures without finite elements", what)
		}
		return
	}
	if got := s.Min(); !sameNumber(got, w.Min) {
		t.Errorf("%s: min %s, numpy %s", what, got.Format(-1), w.Min)
	}
	if got := s.Max(); !sameNumber(got, w.Max) {
		t.Errorf("%s: max %s, numpy %s", what, got.Format(-1), w.Max)
	}
	if got := s.Mean().Float64(); !close(got, float64(w.Mean)) {
		t.Errorf("%s: mean %.17g, numpy %.17g", what, got, w.Mean)
	}
	if got := s.Std().Float64(); !close(got, float64(w.Std)) {
		t.Errorf("%s: std %.17g, numpy %.17g", what, got, w.Std)
	}
}

// sameNumber compares exactly: integers as text, floats by value.
func sameNumber(got Number, want json.Number) bool {
	if got.kind != classFloat {
		return got.Format(-1) == want.String()
	}
	w, err := want.Float64()
	return err == nil && got.Float64() == w
}

func TestStatsAgainstNumpy(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	dir := t.TempDir()
	type tc struct {
		d    safetensors.DType
		data []byte
		n    int
	}
	var cases []tc
	var req []map[string]any
	for _, d := range allDTypes {
		for _, n := range []int{0, 4, 3000, 10000} {
			data := sample(r, d, n)
			f := filepath.Join(dir, fmt.Sprintf("%v-%d", d, n))
			if err := os.WriteFile(f, data, 0o644); err != nil {
				t.Fatal(err)
			}
			cases = append(cases, tc{d, data, n})
			req = append(req, map[string]any{"dtype": d.String(), "count": n, "file": f})
		}
	}
	want := askTruth(t, map[string]any{"tensors": req}).Tensors
	for i, c := range cases {
		what := fmt.Sprintf("%v[%d]", c.d, c.n)
		// In one piece.
		s := NewStats(c.d)
		s.Add(c.data)
		checkStats(t, what, s, want[i])
		// In pieces that split elements, and as two merged halves.
		p := NewStats(c.d)
		for rest := c.data; len(rest) > 0; {
			k := min(len(rest), 1+r.IntN(700))
			p.Add(rest[:k])
			rest = rest[k:]
		}
		checkStats(t, what+" in pieces", p, want[i])
		half := len(c.data) / 2
		half -= half % elemBytes(c.d)
		a, b := NewStats(c.d), NewStats(c.d)
		a.Add(c.data[:half])
		b.Add(c.data[half:])
		if err := a.Merge(b); err != nil {
			t.Fatal(err)
		}
		checkStats(t, what+" merged", a, want[i])
	}
}

// TestStatsCancellation: a large offset with a tiny spread, where a sum of
// squares in float64 would lose every digit of the deviation.
func TestStatsCancellation(t *testing.T) {
	const n = 1 << 20
	b := make([]byte, 8*n)
	for i := range n {
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(1e9+float64(i%2)))
	}
	s := NewStats(safetensors.F64)
	s.Add(b)
	if m, sd := s.Mean().Float64(), s.Std().Float64(); m != 1e9+0.5 || sd != 0.5 {
		t.Errorf("mean %.17g std %.17g, want 1000000000.5 and 0.5", m, sd)
	}
}

func TestDiffAgainstNumpy(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	dir := t.TempDir()
	type tc struct {
		d    safetensors.DType
		a, b []byte
		n    int
	}
	var cases []tc
	var req []map[string]any
	for _, d := range allDTypes {
		for _, mode := range []string{"same", "some", "all"} {
			n := 4000
			a := sample(r, d, n)
			b := bytes.Clone(a)
			switch mode {
			case "some":
				for range 300 {
					b[r.IntN(len(b))] ^= byte(1 + r.IntN(255))
				}
				if w := d.Bits() / 8; w > 0 && classOf(d) == classFloat {
					// +0 against -0: bytes differ, values do not.
					i := r.IntN(n) * w
					clear(a[i : i+w])
					clear(b[i : i+w])
					b[i+w-1] = 0x80
				}
			case "all":
				b = sample(r, d, n)
			}
			fa, fb := filepath.Join(dir, fmt.Sprintf("%v-%s-a", d, mode)), filepath.Join(dir, fmt.Sprintf("%v-%s-b", d, mode))
			os.WriteFile(fa, a, 0o644)
			os.WriteFile(fb, b, 0o644)
			cases = append(cases, tc{d, a, b, n})
			req = append(req, map[string]any{"dtype": d.String(), "count": n, "a": fa, "b": fb})
		}
	}
	want := askTruth(t, map[string]any{"pairs": req}).Pairs
	for i, c := range cases {
		w := want[i]
		for _, pieces := range []bool{false, true} {
			what := fmt.Sprintf("%v case %d (pieces %v)", c.d, i, pieces)
			df := NewDiff(c.d)
			if pieces {
				for off := 0; off < len(c.a); {
					k := min(len(c.a)-off, 1+r.IntN(500))
					df.Add(c.a[off:off+k], c.b[off:off+k])
					off += k
				}
			} else {
				df.Add(c.a, c.b)
			}
			if df.Count != w.Count || df.Differ != w.Differ || df.NonFinite != w.NonFinite || df.BytesEqual != w.BytesEqual {
				t.Errorf("%s: count/differ/nonfinite/bytes-equal %d/%d/%d/%v, numpy %d/%d/%d/%v", what,
					df.Count, df.Differ, df.NonFinite, df.BytesEqual, w.Count, w.Differ, w.NonFinite, w.BytesEqual)
			}
			if !close(df.MaxAbs, float64(w.MaxAbs)) || !close(df.MaxRel, float64(w.MaxRel)) {
				t.Errorf("%s: max abs %g rel %g, numpy %g %g", what, df.MaxAbs, df.MaxRel, w.MaxAbs, w.MaxRel)
			}
		}
	}
}

// TestScratchFollowsNeed: Stats and Diff size their scratch buffers by
// what they are given: a diff of equal bytes allocates none, a small
// tensor little (a checkpoint of 94k small tensors once allocated 20 KiB
// of scratch for each, most of a stats or diff run's time and memory).
func TestScratchFollowsNeed(t *testing.T) {
	small := make([]byte, 64) // 16 F32 elements
	other := bytes.Clone(small)
	other[3] = 0x3f
	for _, c := range []struct {
		what string
		run  func()
		most float64 // bytes
	}{
		{"diff of equal bytes", func() { NewDiff(safetensors.F32).Add(small, small) }, 256},
		{"diff of a 16-element tensor", func() { NewDiff(safetensors.F32).Add(small, other) }, 1024},
		{"stats of a 16-element tensor", func() { NewStats(safetensors.F32).Add(small) }, 1024},
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		const runs = 100
		for range runs {
			c.run()
		}
		runtime.ReadMemStats(&after)
		if per := float64(after.TotalAlloc-before.TotalAlloc) / runs; per > c.most {
			t.Errorf("%s allocates %.0f bytes, more than %.0f", c.what, per, c.most)
		}
	}
}
