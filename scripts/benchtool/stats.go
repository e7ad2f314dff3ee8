package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// statsSection is where the stats rows go (issue 11). 6 is "sharded
// scale" and 7 "remote mounts" (other branches).
const statsSection = "8"

// statsNumpyScript computes, per repetition, what safejaxfs stats reports
// for one tensor: min, max, mean and std in float64, NaN, Inf and zero
// counts, from np.fromfile of the checkpoint's byte range. The tensors
// here are all finite, so numpy's plain reductions give the figures of the
// finite elements with no mask. BF16 is decoded as ml_dtypes does it, by
// widening to the top half of a float32. Times are taken inside the
// interpreter (no start-up, no import).
const statsNumpyScript = `
import json, sys, time
import numpy as np
ckpt, off, count, dtype, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
def figures():
    if dtype == "F32":
        x = np.fromfile(ckpt, dtype='<f4', offset=off, count=count)
    else:
        u = np.fromfile(ckpt, dtype='<u2', offset=off, count=count)
        x = (u.astype(np.uint32) << 16).view(np.float32)
    return [float(x.min()), float(x.max()), float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64)),
            int(np.isnan(x).sum()), int(np.isinf(x).sum()), int(np.count_nonzero(x == 0))]
times = []
for _ in range(reps):
    t0 = time.perf_counter()
    r = figures()
    times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "figures": r}))
`

// weights is a tensor source of float32 values in [-0.05, 0.05) that
// depend only on the seed and the element's index: like a layer's weights
// (finite, no exact zeros to speak of), generated as fast as they are
// written, never held in memory.
type weights struct{ seed uint64 }

func (w weights) ReadAt(p []byte, off int64) (int, error) {
	for i := 0; i < len(p); {
		pos := off + int64(i)
		var e [4]byte
		r := splitmix(w.seed ^ uint64(pos/4))
		// A float in [1, 2) from 23 random mantissa bits, moved to
		// [-0.05, 0.05).
		v := (math.Float32frombits(0x3F800000|uint32(r)&0x7FFFFF) - 1.5) / 10
		binary.LittleEndian.PutUint32(e[:], math.Float32bits(v))
		i += copy(p[i:], e[pos%4:])
	}
	return len(p), nil
}

// bf16Weights is weights rounded to BF16 (by truncation: any BF16 will do).
type bf16Weights struct{ weights }

func (w bf16Weights) ReadAt(p []byte, off int64) (int, error) {
	for i := 0; i < len(p); {
		pos := off + int64(i)
		var f, e [4]byte
		w.weights.ReadAt(f[:], (pos/2)*4)
		copy(e[:2], f[2:4])
		i += copy(p[i:], e[pos%2:2])
	}
	return len(p), nil
}

// statsRows is section 8: safejaxfs stats (the whole command, process
// start included) of a 1 GiB F32 tensor, next to numpy computing the same
// figures on np.fromfile of the checkpoint's range, interleaved, median of
// the repetitions; the same for a BF16 tensor of half the bytes (same
// element count) with numpy widening it to float32; and the command's
// peak RssAnon (the mapped checkpoint pages are page cache, not counted).
func (b *bench) statsRows() error {
	dir := filepath.Join(b.work, "stats")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(dir) // 1.5 GiB: gone before anything else needs the disk
	n := uint64(b.cfg.bigBytes / 4)
	for _, c := range []struct {
		dtype safetensors.DType
		data  safetensors.Source
		bar   float64
	}{
		{safetensors.F32, safetensors.Source{Key: "model.embed_tokens.weight", DType: safetensors.F32, Shape: []uint64{n}, Data: weights{81}}, 0.5},
		{safetensors.BF16, safetensors.Source{Key: "model.embed_tokens.weight", DType: safetensors.BF16, Shape: []uint64{n}, Data: bf16Weights{weights{82}}}, 0},
	} {
		p := filepath.Join(dir, c.dtype.String()+".safetensors")
		if err := writeCheckpoint(p, []safetensors.Source{c.data}, map[string]string{"format": "pt"}); err != nil {
			return err
		}
		f, err := safetensors.Open(p)
		if err != nil {
			return err
		}
		off, size := f.DataOffset()+int64(f.Tensors[0].Begin), int64(f.Tensors[0].Size())
		f.Close()
		if err := warm(p); err != nil {
			return err
		}
		var ours, ref []float64
		var peak int64
		for rep := range b.cfg.reps {
			if err := b.ensureCached(p); err != nil {
				return err
			}
			secs, kb, out, err := b.runStats(p)
			if err != nil {
				return err
			}
			ours, peak = append(ours, secs), max(peak, kb)
			np, err := runPython(statsNumpyScript, p, strconv.FormatInt(off, 10), strconv.FormatUint(n, 10), c.dtype.String(), "1")
			if err != nil {
				return err
			}
			var r struct {
				Times   []float64 `json:"times"`
				Figures []float64 `json:"figures"`
			}
			if err := json.Unmarshal(np, &r); err != nil {
				return fmt.Errorf("numpy printed %q: %w", np, err)
			}
			ref = append(ref, r.Times...)
			if rep == 0 {
				if err := sameFigures(out, r.Figures); err != nil {
					return fmt.Errorf("%v stats: %w", c.dtype, err)
				}
			}
		}
		what := fmt.Sprintf("safejaxfs stats of a %s %v tensor (%s elements; the whole command)", sizeName(size), c.dtype, countName(int(n)))
		refWhat := "np.fromfile(checkpoint, offset=, count=) then min, max, mean/std (float64), isnan/isinf/==0 counts (page cache)"
		if c.dtype == safetensors.BF16 {
			refWhat = "np.fromfile of the range as uint16, widened to float32 by a shift, then the same figures (page cache)"
		}
		b.add(row{section: statsSection, what: what, ours: mbps(size, median(ours)), unit: "MB/s", refWhat: refWhat, ref: mbps(size, median(ref)), kind: rate, barMin: c.bar})
		if c.dtype == safetensors.F32 {
			b.add(row{section: statsSection, what: fmt.Sprintf("safejaxfs stats max RssAnon while summarizing the %s tensor", sizeName(size)), ours: mb(peak), unit: "MB", refWhat: "(bounded: 1 MiB reads, no copy of the tensor)", kind: cost, absMax: 64})
		} else if err := b.f32ViewRow(p, off, n); err != nil {
			return err
		}
		os.Remove(p)
	}
	b.note("section %s: numpy's times exclude its start-up and import; ours are the whole `safejaxfs stats --json` process. Figures checked equal (min/max exactly, mean/std to 1e-9) on the first repetition", statsSection)
	return nil
}

// runStats runs safejaxfs stats --json on p, sampling its RssAnon, and
// returns the wall time, the peak RssAnon (KiB) and its output.
func (b *bench) runStats(p string) (secs float64, peakKB int64, out []byte, err error) {
	cmd := exec.Command(b.cli, "stats", "--json", p)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if kb, err := rssAnonKB(cmd.Process.Pid); err == nil {
			peakKB = max(peakKB, kb)
		}
		select {
		case err := <-done:
			secs = time.Since(t0).Seconds()
			if err != nil {
				return 0, 0, nil, fmt.Errorf("safejaxfs stats: %v: %s", err, stderr.Bytes())
			}
			return secs, peakKB, stdout.Bytes(), nil
		case <-tick.C:
		}
	}
}

// sameFigures checks our JSON against numpy's [min, max, mean, std, nan,
// inf, zeros].
func sameFigures(out []byte, want []float64) error {
	var got []struct {
		Min, Max, Mean, Std float64
		NaN                 float64 `json:"nan"`
		Inf                 float64 `json:"inf"`
		Zeros               float64 `json:"zeros"`
	}
	if err := json.Unmarshal(out, &got); err != nil || len(got) != 1 || len(want) != 7 {
		return fmt.Errorf("unexpected output %q (numpy %v): %v", out, want, err)
	}
	g := got[0]
	near := func(x, y float64) bool { return math.Abs(x-y) <= 1e-9*math.Abs(y) }
	if g.Min != want[0] || g.Max != want[1] || !near(g.Mean, want[2]) || !near(g.Std, want[3]) ||
		g.NaN != want[4] || g.Inf != want[5] || g.Zeros != want[6] {
		return fmt.Errorf("safejaxfs %+v, numpy %v", g, want)
	}
	return nil
}

// f32ViewScript times np.load of a BF16 tensor's .f32.npy view through a
// fresh mount, cold (the daemon converts) and hot (the kernel's cache),
// next to numpy widening the same range of the checkpoint itself, and
// checks the two arrays are equal bit for bit.
const f32ViewScript = `
import json, sys, time
import numpy as np
view, ckpt, off, count, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def direct():
    u = np.fromfile(ckpt, dtype='<u2', offset=off, count=count)
    return (u.astype(np.uint32) << 16).view(np.float32)
def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0
direct(); direct()  # numpy, the allocator and the checkpoint's pages warm
cold = timed(lambda: np.load(view))  # the first read: converted by the daemon
ok = np.array_equal(np.load(view).reshape(-1).view(np.uint32), direct().view(np.uint32))
out = {"cold": cold, "view": [], "direct": [], "equal": bool(ok)}
for _ in range(reps):
    out["view"].append(timed(lambda: np.load(view)))
    out["direct"].append(timed(direct))
print(json.dumps(out))
`

// f32ViewRow: np.load of the BF16 tensor's float32 view (converted by the
// daemon, 4 bytes per element through FUSE) against numpy converting it
// itself from np.fromfile of the checkpoint.
func (b *bench) f32ViewRow(p string, off int64, n uint64) error {
	m, err := b.mount(p, "--read-only")
	if err != nil {
		return err
	}
	view := filepath.Join(keyPath(m.dir, "model.embed_tokens.weight") + ".f32.npy")
	out, err := runPython(f32ViewScript, view, p, strconv.FormatInt(off, 10), strconv.FormatUint(n, 10), strconv.Itoa(b.cfg.reps))
	if uerr := m.unmount(); err == nil {
		err = uerr
	}
	if err != nil {
		return err
	}
	var r struct {
		Cold         float64
		View, Direct []float64
		Equal        bool
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return fmt.Errorf("numpy printed %q: %w", out, err)
	}
	if !r.Equal {
		return fmt.Errorf("the .f32.npy view differs from numpy's own widening of the BF16 tensor")
	}
	size := int64(4 * n)
	refWhat := "np.fromfile of the BF16 range widened to float32 by numpy (page cache)"
	ref := mbps(size, median(r.Direct))
	b.add(row{section: statsSection, what: fmt.Sprintf("np.load of a BF16 tensor's .f32.npy view (%s of float32), 1st read: converted by the daemon", sizeName(size)),
		ours: mbps(size, r.Cold), unit: "MB/s", refWhat: refWhat, ref: ref, kind: rate})
	b.add(row{section: statsSection, what: "np.load of the same view, read again (served from the kernel's cache of the view)",
		ours: mbps(size, median(r.View)), unit: "MB/s", refWhat: refWhat, ref: ref, kind: rate})
	return nil
}
