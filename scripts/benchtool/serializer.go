package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// safejaxAnchorMS is what safejax reports for serializing ResNet-50 on its
// own machine: 2.0974 s for 100 serializations.
const safejaxAnchorMS = 2097.4 / 100

// benchLine is one result line of go test -bench.
type benchLine struct {
	nsPerOp, mbPerS float64
}

// parseBench collects ns/op and MB/s per benchmark name (GOMAXPROCS suffix
// removed), one entry per -count run.
func parseBench(out []byte) map[string][]benchLine {
	res := map[string][]benchLine{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		var l benchLine
		for i := 2; i+1 < len(f); i++ {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				l.nsPerOp = v
			case "MB/s":
				l.mbPerS = v
			}
		}
		res[name] = append(res[name], l)
	}
	return res
}

func medianOf(ls []benchLine, get func(benchLine) float64) float64 {
	xs := make([]float64, len(ls))
	for i, l := range ls {
		xs[i] = get(l)
	}
	return median(xs)
}

// serializer is section 5: the repository's own writer benchmarks.
func (b *bench) serializer() error {
	args := []string{"test", "-run", "^$", "-bench", "Write|Memcpy", "-benchtime", b.cfg.benchtime,
		"-count", strconv.Itoa(b.cfg.benchCount), "./safetensors/"}
	cmd := exec.Command("go", args...)
	cmd.Dir = b.repo
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	res := parseBench(out)
	w, mc := res["BenchmarkWrite"], res["BenchmarkMemcpy"]
	if len(w) == 0 || len(mc) == 0 {
		return fmt.Errorf("go %s printed no BenchmarkWrite/BenchmarkMemcpy result:\n%s", strings.Join(args, " "), out)
	}
	mbs := func(l benchLine) float64 { return l.mbPerS }
	memcpy := medianOf(mc, mbs)
	b.add(row{section: "5", what: "serializer: safetensors.Write of ResNet-50 (320 tensors, 102 MB) to memory", ours: medianOf(w, mbs), unit: "MB/s",
		refWhat: "memcpy of the same bytes (BenchmarkMemcpy)", ref: memcpy, kind: rate, barMin: 0.5})
	for _, sub := range []string{"fd", "mmap"} {
		if l := res["BenchmarkWriteFile/"+sub]; len(l) > 0 {
			b.add(row{section: "5", what: fmt.Sprintf("serializer: checkpoint to new file, %s sources (BenchmarkWriteFile/%s)", sub, sub), ours: medianOf(l, mbs), unit: "MB/s",
				refWhat: "memcpy (BenchmarkMemcpy)", ref: memcpy, kind: rate})
		}
	}
	b.add(row{section: "5", what: "ms per ResNet-50 serialization (BenchmarkWrite)", ours: medianOf(w, func(l benchLine) float64 { return l.nsPerOp }) / 1e6, unit: "ms",
		refWhat: "safejax's reported 2.0974 s / 100 (its machine, not this one)", ref: safejaxAnchorMS, kind: cost})
	b.note("serializer rows: go test -bench 'Write|Memcpy' -benchtime %s -count %d ./safetensors/, median of the runs", b.cfg.benchtime, b.cfg.benchCount)
	return nil
}
