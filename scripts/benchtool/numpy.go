package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// python is Debian's interpreter, the one with numpy; `python3` on PATH may
// be another without it.
const python = "/usr/bin/python3"

// numpyScript times numpy reading the tensor three ways. Times are taken
// inside the interpreter, so its start-up and numpy's import do not count.
const numpyScript = `
import json, sys, time
import numpy as np
tensor, view, ckpt, off, count, reps, verify = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7] == "1"
def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0
from_ckpt = lambda: np.fromfile(ckpt, dtype='<f4', offset=off, count=count)
from_mount = lambda: np.fromfile(tensor, dtype='<f4')
load_view = lambda: np.load(view)
# Two untimed reference runs: numpy's import, the allocator and the
# checkpoint's pages are warm before anything is timed.
from_ckpt(); from_ckpt()
out = {"direct": [timed(from_ckpt)], "mount_cold": timed(from_mount), "mount_hot": [], "load_hot": []}
for _ in range(reps):
    out["mount_hot"].append(timed(from_mount))
    out["direct"].append(timed(from_ckpt))
out["load_cold"] = timed(load_view)
for _ in range(reps):
    out["load_hot"].append(timed(load_view))
    out["direct"].append(timed(from_ckpt))
ok = True
if verify:
    ref = from_ckpt()
    a, b = load_view(), from_mount()
    ok = a.dtype == np.dtype('<f4') and a.shape == ref.shape and np.array_equal(a.view('<u4'), ref.view('<u4'))
    ok = ok and np.array_equal(b.view('<u4'), ref.view('<u4'))
out["equal"] = bool(ok)
print(json.dumps(out))
`

type numpyResult struct {
	MountCold float64   `json:"mount_cold"`
	MountHot  []float64 `json:"mount_hot"`
	Direct    []float64 `json:"direct"`
	LoadCold  float64   `json:"load_cold"`
	LoadHot   []float64 `json:"load_hot"`
	Equal     bool      `json:"equal"`
}

func runPython(script string, args ...string) ([]byte, error) {
	cmd := exec.Command(python, append([]string{"-c", script}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %s", python, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// numpyRows runs the numpy script against fresh mounts (so the first
// np.fromfile and the first np.load of each are cold), sampling the
// daemon's memory.
func (b *bench) numpyRows() error {
	size := b.cfg.bigBytes
	var mountCold, loadCold, mountHot, loadHot, direct []float64
	for rep := range b.cfg.reps {
		if err := b.ensureCached(b.bigPath); err != nil {
			return err
		}
		m, err := b.mount(b.bigPath)
		if err != nil {
			return err
		}
		m.startSampling()
		tensor := keyPath(m.dir, b.bigKey)
		verify := "0"
		if rep == 0 {
			verify = "1"
		}
		out, err := runPython(numpyScript, tensor, tensor+".npy", b.bigPath,
			strconv.FormatInt(b.bigOff, 10), strconv.FormatInt(size/4, 10), "1", verify)
		b.bigRSSAt = max(b.bigRSSAt, mb(m.stopSampling()))
		if uerr := m.unmount(); err == nil {
			err = uerr
		}
		if err != nil {
			return err
		}
		var r numpyResult
		if err := json.Unmarshal(out, &r); err != nil {
			return fmt.Errorf("numpy script printed %q: %w", out, err)
		}
		if !r.Equal {
			return fmt.Errorf("numpy read different bytes through the mount than from the checkpoint")
		}
		mountCold, loadCold = append(mountCold, r.MountCold), append(loadCold, r.LoadCold)
		mountHot, loadHot = append(mountHot, r.MountHot...), append(loadHot, r.LoadHot...)
		direct = append(direct, r.Direct...)
	}
	ref := mbps(size, median(direct))
	refWhat := "np.fromfile(checkpoint, offset=, count=) (page cache)"
	b.add(row{section: "1", what: "np.fromfile(tensor file), cold (1st read after mount)", ours: mbps(size, median(mountCold)), unit: "MB/s", refWhat: refWhat, ref: ref, kind: rate, barMin: 0.3})
	b.add(row{section: "1", what: "np.fromfile(tensor file), hot", ours: mbps(size, median(mountHot)), unit: "MB/s", refWhat: refWhat, ref: ref, kind: rate, barMin: 0.6})
	b.add(row{section: "1", what: "np.load(tensor.npy view), cold (1st read of the view)", ours: mbps(size, median(loadCold)), unit: "MB/s", refWhat: refWhat, ref: ref, kind: rate, barMin: 0.3})
	b.add(row{section: "1", what: "np.load(tensor.npy view), hot", ours: mbps(size, median(loadHot)), unit: "MB/s", refWhat: refWhat, ref: ref, kind: rate, barMin: 0.6})
	b.note("numpy rows: a fresh mount per run, times taken inside %s (no interpreter start-up); the reference runs are interleaved with ours (median of %d)", python, len(direct))
	return nil
}
