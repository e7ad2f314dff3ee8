package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// flatCosts measures what must cost the same whatever the number of
// tensors (issue: O(what changed)): a no-op fsync, an fsync after a 4-byte
// write, and a rename of one tensor, on a read-write mount of a small and a
// large header-dominated checkpoint. Each row's reference is the same
// operation on the small one.
func (b *bench) flatCosts() error {
	small, large := 1_000, 100_000
	if b.cfg.smoke {
		small, large = 100, 1_000
	}
	reps := 20
	if b.cfg.smoke {
		reps = 3
	}
	res := map[int][3]time.Duration{}
	for _, n := range []int{small, large} {
		// Keys none of which is a prefix of another, so each is at the
		// path its dots make.
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprintf("layers.%d.t%d", i/100, i%100)
		}
		src := make([]safetensors.Source, n)
		for i, k := range keys {
			src[i] = safetensors.Source{Key: k, DType: safetensors.F32, Shape: []uint64{2, 2}, Data: noise{uint64(i)}}
		}
		p := filepath.Join(b.work, fmt.Sprintf("flat%d.safetensors", n))
		if err := writeCheckpoint(p, src, map[string]string{"format": "pt"}); err != nil {
			return err
		}
		m, err := b.mount(p)
		if err != nil {
			return err
		}
		d, err := flatOps(m.dir, keys, reps)
		if uerr := m.unmount(); err == nil {
			err = uerr
		}
		os.Remove(p)
		if err != nil {
			return err
		}
		res[n] = d
	}
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	for i, what := range []string{"fsync with nothing to write", "fsync after a 4-byte write into one tensor", "rename of one tensor (mv)"} {
		b.add(row{section: "4", what: fmt.Sprintf("%s, %dk tensors (median of %d)", what, large/1000, reps),
			ours: ms(res[large][i]), unit: "ms", refWhat: fmt.Sprintf("the same with %d tensors", small), ref: ms(res[small][i]), kind: cost})
	}
	return nil
}

// flatOps returns the median times of the three operations on a mount.
func flatOps(mnt string, keys []string, reps int) ([3]time.Duration, error) {
	var out [3]time.Duration
	t := keyPath(mnt, keys[len(keys)/2])
	f, err := os.OpenFile(t, os.O_WRONLY, 0)
	if err != nil {
		return out, err
	}
	defer f.Close()
	var noop, write, rename []time.Duration
	for i := range reps {
		t0 := time.Now()
		if err := f.Sync(); err != nil {
			return out, err
		}
		noop = append(noop, time.Since(t0))
		t0 = time.Now()
		if _, err := f.WriteAt([]byte{byte(i), 1, 2, 3}, 4); err != nil {
			return out, err
		}
		if err := f.Sync(); err != nil {
			return out, err
		}
		write = append(write, time.Since(t0))
		from, to := keyPath(mnt, keys[i]), keyPath(mnt, keys[i])+"_moved"
		t0 = time.Now()
		if err := os.Rename(from, to); err != nil {
			return out, err
		}
		rename = append(rename, time.Since(t0))
	}
	for i, ds := range [][]time.Duration{noop, write, rename} {
		out[i] = time.Duration(medianDur(ds) * float64(time.Second))
	}
	return out, nil
}
