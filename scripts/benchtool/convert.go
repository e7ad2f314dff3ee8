package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// convertSection is section 10: safejaxfs convert of a 1 GiB PyTorch zip
// and a 1 GiB Flax msgpack to safetensors, against cp of the same bytes
// and against Python doing it (torch.load, or flax's msgpack_restore,
// then a numpy safetensors writer following the reference's rules), side
// by side; with each process's peak RSS.
const convertSection = "10"

// The generators write the checkpoints with the real libraries: 64 tensors
// of equal size (F32) in a state dict.
const torchGen = `
import sys, torch, collections
total, n = int(sys.argv[2]), 64
sd = collections.OrderedDict()
g = torch.Generator().manual_seed(0)
for i in range(n):
    sd["layers.%d.weight" % i] = torch.randn(total // n // 4, generator=g)
torch.save(sd, sys.argv[1])
`

const flaxGen = `
import sys; sys.path.insert(0, sys.argv[3])
import numpy as np, flax_ref
total, n = int(sys.argv[2]), 64
rng = np.random.default_rng(0)
tree = {"params": {"layer_%d" % i: {"kernel": rng.standard_normal(total // n // 4, dtype=np.float32)} for i in range(n)}}
open(sys.argv[1], "wb").write(flax_ref.msgpack_serialize(tree))
`

// The Python references: load with the library, write with st_ref.save.
const torchRef = `
import sys; sys.path.insert(0, sys.argv[3])
import torch, st_ref
sd = torch.load(sys.argv[1], weights_only=True)
st_ref.save(sys.argv[2], {k: ("F32", tuple(v.shape), v.contiguous().numpy().tobytes()) for k, v in sd.items()})
`

const flaxRef = `
import sys; sys.path.insert(0, sys.argv[3])
import numpy as np, flax_ref, st_ref
tree = flax_ref.msgpack_restore(open(sys.argv[1], "rb").read())
flat = {}
def walk(d, p):
    for k, v in d.items():
        if isinstance(v, dict): walk(v, p + k + ".")
        else: flat[p + k] = st_ref.from_numpy(v)
walk(tree, "")
st_ref.save(sys.argv[2], flat)
`

func (b *bench) convertRows() error {
	size := b.cfg.bigBytes
	ref := filepath.Join(b.repo, "testdata", "foreign")
	if err := exec.Command(python, "-c", "import torch, msgpack").Run(); err != nil {
		b.note("section 10 skipped: %s lacks torch or msgpack (apt-get install python3-torch python3-msgpack)", python)
		return nil
	}
	inputs := []struct{ name, gen, ref, what string }{
		{"model.pt", torchGen, torchRef, "a PyTorch zip (torch.save)"},
		{"params.msgpack", flaxGen, flaxRef, "a Flax msgpack (msgpack_serialize)"},
	}
	for _, in := range inputs {
		src := filepath.Join(b.work, in.name)
		b.progress("   writing %s of %s with the real library", sizeName(size), in.what)
		if out, err := exec.Command(python, "-c", in.gen, src, strconv.FormatInt(size, 10), ref).CombinedOutput(); err != nil {
			return fmt.Errorf("generating %s: %v: %s", in.name, err, out)
		}
		st, err := os.Stat(src)
		if err != nil {
			return err
		}
		out := filepath.Join(b.work, "converted.safetensors")
		reps := max(b.cfg.reps, 3)
		if b.cfg.smoke {
			reps = 1
		}
		var cpT, ourT, pyT, cpSyncT, ourSyncT []time.Duration
		var ourRSS, pyRSS int64
		for range reps {
			readAll(src) // cached for every contender alike
			t, _, err := timed("cp", src, out)
			if err != nil {
				return err
			}
			cpT = append(cpT, t)
			os.Remove(out)
			readAll(src)
			t, rss, err := timed(b.cli, "convert", "--quiet", src, out)
			if err != nil {
				return err
			}
			ourT, ourRSS = append(ourT, t), max(ourRSS, rss)
			os.Remove(out)
			// Durable copies: cp + sync of the copy, convert --sync.
			readAll(src)
			t, _, err = timed("sh", "-c", `cp "$1" "$2" && sync "$2"`, "sh", src, out)
			if err != nil {
				return err
			}
			cpSyncT = append(cpSyncT, t)
			os.Remove(out)
			readAll(src)
			t, rss, err = timed(b.cli, "convert", "--quiet", "--sync", src, out)
			if err != nil {
				return err
			}
			ourSyncT, ourRSS = append(ourSyncT, t), max(ourRSS, rss)
			os.Remove(out)
			readAll(src)
			t, rss, err = timed(python, "-c", in.ref, src, out, ref)
			if err != nil {
				return err
			}
			pyT, pyRSS = append(pyT, t), max(pyRSS, rss)
			os.Remove(out)
		}
		mbs := func(d time.Duration) float64 { return float64(st.Size()) / 1e6 / d.Seconds() }
		cp, ours, py := medianD(cpT), medianD(ourT), medianD(pyT)
		b.add(row{section: convertSection, what: fmt.Sprintf("convert %s of %s to safetensors", sizeName(st.Size()), in.what),
			ours: mbs(ours), unit: "MB/s", refWhat: "cp of the same file", ref: mbs(cp), kind: rate, barMin: 0.5})
		b.add(row{section: convertSection, what: "  the same, durable: convert --sync",
			ours: mbs(medianD(ourSyncT)), unit: "MB/s", refWhat: "cp + sync of the copy", ref: mbs(medianD(cpSyncT)), kind: rate, barMin: 0.5})
		b.add(row{section: convertSection, what: "  the same in Python: load with the library + a numpy safetensors writer",
			ours: mbs(py), unit: "MB/s", refWhat: "cp of the same file", ref: mbs(cp), kind: rate})
		b.add(row{section: convertSection, what: fmt.Sprintf("  peak RSS of safejaxfs convert (%s)", in.name),
			ours: mb(ourRSS), unit: "MB", refWhat: "Python's peak RSS doing it", ref: mb(pyRSS), kind: cost, absMax: 64})
		os.Remove(src)
	}
	b.note("section 10: convert copies the tensor bytes kernel-side (copy_file_range) from the source file into a temporary file renamed into place (fsynced first with --sync); peak RSS is the child's ru_maxrss (file pages it maps count too), taken through a small launcher so it is not this large process's peak carried across exec")
	return nil
}

// spawnCmd is the hidden subcommand timed runs commands through. Go starts
// a child with CLONE_VM, and Linux carries the high-water RSS of the
// address space an exec replaces into the child's ru_maxrss: a child
// started straight from this (large) process would report this process's
// peak, not its own (the 1 GiB readAll buffers showed up as a converter's
// "1095 MB"). A fresh small launcher in between makes the figure the
// child's own, give or take the launcher's few MB.
const spawnCmd = "_spawn"

// spawn runs args, passing its stderr through, and prints its wall time
// (ns) and peak RSS (KiB).
func spawn(args []string) int {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stderr = os.Stderr
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		return 1
	}
	d := time.Since(t0)
	var rss int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss
	}
	fmt.Println(d.Nanoseconds(), rss)
	return 0
}

// timed runs a command through spawn and returns its wall time and peak
// RSS (KiB).
func timed(name string, args ...string) (time.Duration, int64, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, 0, err
	}
	cmd := exec.Command(self, append([]string{spawnCmd, name}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return 0, 0, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	var ns, rss int64
	if _, err := fmt.Sscan(string(out), &ns, &rss); err != nil {
		return 0, 0, fmt.Errorf("%s %s printed %q", spawnCmd, name, out)
	}
	return time.Duration(ns), rss, nil
}

func readAll(p string) {
	f, err := os.Open(p)
	if err != nil {
		return
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	for {
		if _, err := f.Read(buf); err != nil {
			return
		}
	}
}

func medianD(ds []time.Duration) time.Duration { return time.Duration(medianDur(ds) * 1e9) }
