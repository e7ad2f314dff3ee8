package main

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
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
	"github.com/safejaxfs/safejaxfs/safetensors"
)

// safejaxfs stats and diff, run as a user runs them, against numpy: the
// truth is safetensors/floats/testdata/stats_truth.py, which reads the
// checkpoint files with plain Python and decodes every dtype itself.

const statsTruth = "../../safetensors/floats/testdata/stats_truth.py"

// numbers makes n elements of d: weights-like values with zeros, ±0, NaN
// and ±Inf mixed in for F32/F64/C64, every code for the narrow floats,
// the whole range for integers, 0/1 (and a stray 2) for BOOL.
func numbers(d safetensors.DType, n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	size, err := safetensors.ByteSize(d, []uint64{uint64(n)})
	if err != nil {
		panic(err)
	}
	b := make([]byte, size)
	special := func(v float64) float64 {
		switch r.IntN(40) {
		case 0:
			return 0
		case 1:
			return math.Copysign(0, -1)
		case 2:
			return math.NaN()
		case 3:
			return math.Inf(1 - 2*r.IntN(2))
		}
		return v
	}
	switch d {
	case safetensors.F32, safetensors.C64:
		for i := 0; i < len(b); i += 4 {
			binary.LittleEndian.PutUint32(b[i:], math.Float32bits(float32(special(r.NormFloat64()*0.02))))
		}
	case safetensors.F64:
		for i := 0; i < len(b); i += 8 {
			binary.LittleEndian.PutUint64(b[i:], math.Float64bits(special(r.NormFloat64()*1e3)))
		}
	case safetensors.BOOL:
		for i := range b {
			b[i] = byte(r.IntN(2))
		}
		b[len(b)/2] = 2 // read as True, like numpy
	default:
		for i := range b {
			b[i] = byte(r.Uint32())
		}
	}
	return b
}

// everyDType is one tensor of every dtype (numbers), a scalar and an
// empty tensor.
func everyDType(seed uint64) []genTensor {
	var ts []genTensor
	for d := range safetensors.DType(22) {
		shape := []uint64{12, 40}
		if d.Bits() == 6 {
			shape = []uint64{4, 12}
		}
		n := int(shape[0] * shape[1])
		ts = append(ts, raw("model."+strings.ToLower(d.String())+".weight", d, numbers(d, n, seed+uint64(d)), shape...))
	}
	return append(ts,
		raw("model.scale", safetensors.F32, binary.LittleEndian.AppendUint32(nil, math.Float32bits(0.125))),
		raw("model.empty", safetensors.BF16, nil, 0, 4))
}

// truthStats is a tensor's figures as stats --json and stats_truth.py
// write them.
type truthStats struct {
	Key    string      `json:"key"`
	Path   string      `json:"path"`
	DType  string      `json:"dtype"`
	Shape  []uint64    `json:"shape"`
	Count  uint64      `json:"count"`
	Finite uint64      `json:"finite"`
	NaN    uint64      `json:"nan"`
	Inf    uint64      `json:"inf"`
	Zeros  uint64      `json:"zeros"`
	Min    json.Number `json:"min"`
	Max    json.Number `json:"max"`
	Mean   json.Number `json:"mean"`
	Std    json.Number `json:"std"`
}

type truthDiff struct {
	Count      uint64      `json:"count"`
	Differ     uint64      `json:"differ"`
	NonFinite  uint64      `json:"nonfinite"`
	MaxAbs     json.Number `json:"max_abs"`
	MaxRel     json.Number `json:"max_rel"`
	BytesEqual bool        `json:"bytes_equal"`
}

type truthReply struct {
	Checkpoints map[string]truthStats `json:"checkpoints"`
	Diffs       map[string]truthDiff  `json:"diff_checkpoints"`
}

func askNumpy(t *testing.T, req any) truthReply {
	t.Helper()
	in, _ := json.Marshal(req)
	cmd := exec.Command(numpy(t), statsTruth)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("stats_truth.py: %v\n%s", err, stderr.Bytes())
	}
	var r truthReply
	decodeJSON(t, out, &r)
	return r
}

func decodeJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		t.Fatalf("%v in %s", err, b)
	}
}

// num reads a JSON number (or the strings "inf", "nan" stats_truth.py
// writes); NaN for null.
func num(n json.Number) float64 {
	if n == "" {
		return math.NaN()
	}
	f, err := strconv.ParseFloat(strings.Trim(string(n), `"`), 64)
	if err != nil {
		return math.NaN()
	}
	return f
}

// near: equal, or within 1e-9 relative (the sums run in other orders).
func near(got, want float64) bool {
	return got == want || (math.IsNaN(got) && math.IsNaN(want)) || math.Abs(got-want) <= 1e-9*math.Abs(want)
}

// checkStatsJSON compares stats --json output with numpy's figures for
// the same keys, and fails unless every tensor of want is there.
func checkStatsJSON(t *testing.T, out []byte, want map[string]truthStats) {
	t.Helper()
	var got []truthStats
	decodeJSON(t, out, &got)
	if len(got) != len(want) {
		t.Fatalf("stats listed %d tensors, numpy %d", len(got), len(want))
	}
	for _, g := range got {
		w, ok := want[g.Key]
		if !ok {
			t.Fatalf("stats listed %q, which numpy does not know", g.Key)
		}
		what := g.Key + " (" + g.DType + ")"
		if g.DType != w.DType || fmt.Sprint(g.Shape) != fmt.Sprint(w.Shape) {
			t.Errorf("%s: dtype/shape %s %v, header %s %v", what, g.DType, g.Shape, w.DType, w.Shape)
		}
		if g.Count != w.Count || g.Finite != w.Finite || g.NaN != w.NaN || g.Inf != w.Inf || g.Zeros != w.Zeros {
			t.Errorf("%s: count/finite/nan/inf/zeros %d/%d/%d/%d/%d, numpy %d/%d/%d/%d/%d", what,
				g.Count, g.Finite, g.NaN, g.Inf, g.Zeros, w.Count, w.Finite, w.NaN, w.Inf, w.Zeros)
		}
		if w.Finite == 0 {
			if g.Min != "" || g.Mean != "" {
				t.Errorf("%s: min %q mean %q without a finite element, want null", what, g.Min, g.Mean)
			}
			continue
		}
		// min and max exactly: integers as text, floats by value.
		for _, p := range [][2]json.Number{{g.Min, w.Min}, {g.Max, w.Max}} {
			if p[0] != p[1] && num(p[0]) != num(p[1]) {
				t.Errorf("%s: min/max %s, numpy %s", what, p[0], p[1])
			}
			if strings.HasPrefix(g.DType, "I") || strings.HasPrefix(g.DType, "U") {
				if p[0] != p[1] {
					t.Errorf("%s: integer %s, numpy %s (must be exact)", what, p[0], p[1])
				}
			}
		}
		if !near(num(g.Mean), num(w.Mean)) || !near(num(g.Std), num(w.Std)) {
			t.Errorf("%s: mean %s std %s, numpy %s %s", what, g.Mean, g.Std, w.Mean, w.Std)
		}
	}
}

func TestStatsMatchesNumpy(t *testing.T) {
	t.Parallel()
	ckpt := writeCheckpoint(t, "every.safetensors", map[string]string{"format": "pt"}, everyDType(1)...)
	want := askNumpy(t, map[string]any{"checkpoints": []string{ckpt}}).Checkpoints
	r := cli(t, "stats", "--json", ckpt)
	if r.code != 0 {
		t.Fatalf("stats --json: exit %d: %s", r.code, r.stderr)
	}
	if r.stderr != "" {
		t.Errorf("stats wrote to stderr (not a terminal): %q", r.stderr)
	}
	checkStatsJSON(t, []byte(r.stdout), want)

	// The table: a header and a line per tensor, with numpy's figures
	// (six significant digits).
	r = cli(t, "stats", ckpt)
	if r.code != 0 {
		t.Fatalf("stats: exit %d: %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != len(want)+1 || strings.Join(strings.Fields(lines[0]), " ") != "key dtype shape min max mean std nan inf zeros" {
		t.Fatalf("table:\n%s", r.stdout)
	}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		w, ok := want[f[0]]
		if !ok || len(f) != 10 {
			t.Fatalf("table line %q", l)
		}
		if f[7] != fmt.Sprint(w.NaN) || f[8] != fmt.Sprint(w.Inf) || f[9] != fmt.Sprint(w.Zeros) {
			t.Errorf("table line %q: numpy counts %d %d %d", l, w.NaN, w.Inf, w.Zeros)
		}
		if w.Finite > 0 && f[5] != strconv.FormatFloat(num(w.Mean), 'g', 6, 64) {
			t.Errorf("table line %q: numpy mean %s", l, w.Mean)
		}
	}

	// PREFIX as a path and as a key prefix: the subtree only.
	sub := map[string]truthStats{}
	for k, v := range want {
		if strings.HasPrefix(k, "model.f") {
			sub[k] = v
		}
	}
	for _, k := range []string{"model.bf16.weight", "model.f16.weight", "model.f4.weight"} {
		r = cli(t, "stats", "--json", ckpt, strings.ReplaceAll(k, ".", "/"))
		if r.code != 0 {
			t.Fatalf("stats %s: exit %d: %s", k, r.code, r.stderr)
		}
		checkStatsJSON(t, []byte(r.stdout), map[string]truthStats{k: want[k]})
	}
	r = cli(t, "stats", "--json", ckpt, "model")
	checkStatsJSON(t, []byte(r.stdout), want2(want, "model."))
}

func want2(want map[string]truthStats, prefix string) map[string]truthStats {
	m := map[string]truthStats{}
	for k, v := range want {
		if strings.HasPrefix(k, prefix) {
			m[k] = v
		}
	}
	return m
}

// Sharded, by directory and index, local and through nginx: the figures
// of every shard's tensors, as if they were one file.
func TestStatsShardedAndRemote(t *testing.T) {
	t.Parallel()
	ts := everyDType(2)
	dir := writeShardedSet(t, map[string]string{"format": "pt"}, ts[:8], ts[8:16], ts[16:])
	shards := []string{filepath.Join(dir, shardName(0, 3)), filepath.Join(dir, shardName(1, 3)), filepath.Join(dir, shardName(2, 3))}
	want := askNumpy(t, map[string]any{"checkpoints": shards}).Checkpoints
	for _, src := range []string{dir, filepath.Join(dir, indexName)} {
		r := cli(t, "stats", "--json", src)
		if r.code != 0 {
			t.Fatalf("stats %s: exit %d: %s", src, r.code, r.stderr)
		}
		checkStatsJSON(t, []byte(r.stdout), want)
	}

	www := t.TempDir()
	if err := os.Symlink(dir, filepath.Join(www, "set")); err != nil {
		t.Fatal(err)
	}
	ng, ports := testsrv.StartNginx(t, testsrv.StaticServer(www))
	url := fmt.Sprintf("http://127.0.0.1:%d/set/%s", ports[0], indexName)
	k := len(ng.Log(t))
	r := cli(t, "stats", "--json", "--cache-dir", t.TempDir(), url)
	if r.code != 0 {
		t.Fatalf("stats %s: exit %d: %s", url, r.code, r.stderr)
	}
	checkStatsJSON(t, []byte(r.stdout), want)
	if n := len(ng.Since(t, k)); n < 4 {
		t.Errorf("a remote stats sent %d requests: it cannot have read the tensors", n)
	}
}

func TestStatsRefusals(t *testing.T) {
	t.Parallel()
	ckpt := flaxModel(t)
	bad := filepath.Join(t.TempDir(), "bad.safetensors")
	os.WriteFile(bad, []byte("{nope"), 0o644)
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"stats", filepath.Join(t.TempDir(), "missing.safetensors")}, exitInvalid, "does not exist"},
		{[]string{"stats", bad}, exitInvalid, "bad.safetensors"},
		{[]string{"stats", ckpt, "params/nothing"}, exitInvalid, `no tensor or directory "params/nothing"`},
		{[]string{"stats"}, exitUsage, "wrong number of arguments"},
		{[]string{"stats", "--bogus", ckpt}, exitUsage, "bogus"},
	} {
		r := cli(t, c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.msg) || r.stdout != "" {
			t.Errorf("%v: exit %d, stderr %q, stdout %q; want %d and %q", c.args, r.code, r.stderr, r.stdout, c.code, c.msg)
		}
	}
	if r := cli(t, "stats", "--help"); r.code != 0 || !strings.Contains(r.stdout, "--json") {
		t.Errorf("stats --help: exit %d, %q", r.code, r.stdout)
	}
}

// openPTY returns a pseudo-terminal pair: what the command gets as stderr
// and the side the test reads.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// A checkpoint past the progress threshold: a line on a terminal, erased
// at the end; nothing when stderr is not a terminal. The children take a
// threshold of 16 MiB (progressFromEnv): the code path is the one of the
// real 256 MiB, at a sixteenth of the reading.
func TestStatsProgressOnTerminal(t *testing.T) {
	t.Parallel()
	const from = 16 << 20
	// A sparse tensor of zeros: the file costs no disk.
	p := filepath.Join(t.TempDir(), "big.safetensors")
	hdr := fmt.Sprintf(`{"w":{"dtype":"F32","shape":[%d],"data_offsets":[0,%d]}}`, from/4, from)
	hdr += strings.Repeat(" ", (8-len(hdr)%8)%8)
	head := append(binary.LittleEndian.AppendUint64(nil, uint64(len(hdr))), hdr...)
	if err := os.WriteFile(p, head, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, int64(len(head)+from)); err != nil {
		t.Fatal(err)
	}
	stats := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "stats", p)
		cmd.Env = append(os.Environ(), asCLIEnv+"=1", progressFromEnv+"="+strconv.Itoa(from))
		return cmd
	}

	master, tty := openPTY(t)
	cmd := stats()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, tty
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tty.Close() // the child holds it; the master reads EIO once it exits
	got := make(chan []byte)
	go func() {
		var b bytes.Buffer
		buf := make([]byte, 4096)
		for {
			k, err := master.Read(buf)
			b.Write(buf[:k])
			if err != nil {
				break
			}
		}
		got <- b.Bytes()
	}()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stats: %v", err)
	}
	var seen []byte
	select {
	case seen = <-got:
	case <-time.After(time.Minute):
		t.Fatal("the terminal did not close")
	}
	s := string(seen)
	if !strings.Contains(s, "stats: ") || !strings.Contains(s, "of 16.0 MiB") || !strings.HasSuffix(s, "\r\033[K") {
		t.Errorf("terminal got %q; want a progress line, erased at the end", s)
	}
	if !strings.Contains(out.String(), "[4194304]") {
		t.Errorf("stdout %q", out.String())
	}
	// The same with stderr a pipe: not a word.
	cmd = stats()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil || stderr.Len() != 0 {
		t.Errorf("stats with stderr a pipe: %v, stderr %q", err, stderr.String())
	}
}
