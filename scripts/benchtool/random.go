package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"time"
)

// randomRead is one 4 KiB read: which tensor, and where in it.
type randomRead struct {
	tensor int
	off    int64
}

const pageSize = 4096

// random is section 2: 4 KiB reads at random aligned offsets of random
// tensors, through a fresh mount (cold, then the same reads again: hot)
// against the same reads with pread on the checkpoint. Files are opened
// before the clock starts: the row is about reads, section 3 about lookups.
func (b *bench) random() error {
	cfg := b.cfg
	rng := rand.New(rand.NewPCG(7, 11))
	reads := make([]randomRead, cfg.randReads)
	for i := range reads {
		reads[i] = randomRead{rng.IntN(len(b.manyKeys)), rng.Int64N(cfg.manyBytes/pageSize) * pageSize}
	}
	buf := make([]byte, pageSize)
	ck, err := os.Open(b.manyPath)
	if err != nil {
		return err
	}
	defer ck.Close()
	direct := func() (time.Duration, error) {
		t0 := time.Now()
		for _, r := range reads {
			if _, err := ck.ReadAt(buf, b.manyOffs[r.tensor]+r.off); err != nil {
				return 0, err
			}
		}
		return time.Since(t0), nil
	}

	var cold, hot, ref []time.Duration
	for rep := range cfg.reps {
		if err := b.ensureCached(b.manyPath); err != nil {
			return err
		}
		d, err := direct()
		if err != nil {
			return err
		}
		ref = append(ref, d)
		m, err := b.mount(b.manyPath)
		if err != nil {
			return err
		}
		c, h, err := b.randomThroughMount(m, reads, rep == 0)
		if uerr := m.unmount(); err == nil {
			err = uerr
		}
		if err != nil {
			return err
		}
		cold, hot = append(cold, c), append(hot, h)
	}
	n := int64(len(reads)) * pageSize
	what := fmt.Sprintf("random 4 KiB reads (%d reads over %d tensors of %s)", len(reads), len(b.manyKeys), sizeName(cfg.manyBytes))
	refWhat := "the same preads on the checkpoint (page cache)"
	b.add(row{section: "2", what: what + ", cold (fresh mount)", ours: mbps(n, medianDur(cold)), unit: "MB/s", refWhat: refWhat, ref: mbps(n, medianDur(ref)), kind: rate})
	b.add(row{section: "2", what: what + ", hot (same reads again)", ours: mbps(n, medianDur(hot)), unit: "MB/s", refWhat: refWhat, ref: mbps(n, medianDur(ref)), kind: rate})
	b.note("random reads: %.0f k reads/s cold and %.0f k reads/s hot through the mount, %.0f k reads/s with pread on the checkpoint",
		float64(len(reads))/medianDur(cold)/1e3, float64(len(reads))/medianDur(hot)/1e3, float64(len(reads))/medianDur(ref)/1e3)
	return nil
}

func (b *bench) randomThroughMount(m *mount, reads []randomRead, verify bool) (cold, hot time.Duration, err error) {
	files := make([]*os.File, len(b.manyKeys))
	defer func() {
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
	}()
	for i, k := range b.manyKeys {
		if files[i], err = os.Open(keyPath(m.dir, k)); err != nil {
			return 0, 0, err
		}
	}
	buf := make([]byte, pageSize)
	pass := func() (time.Duration, error) {
		t0 := time.Now()
		for _, r := range reads {
			if _, err := files[r.tensor].ReadAt(buf, r.off); err != nil {
				return 0, err
			}
		}
		return time.Since(t0), nil
	}
	if cold, err = pass(); err != nil {
		return 0, 0, err
	}
	if hot, err = pass(); err != nil {
		return 0, 0, err
	}
	if verify {
		want := make([]byte, pageSize)
		ck, err := os.Open(b.manyPath)
		if err != nil {
			return 0, 0, err
		}
		defer ck.Close()
		for _, r := range reads[:min(len(reads), 200)] {
			files[r.tensor].ReadAt(buf, r.off)
			ck.ReadAt(want, b.manyOffs[r.tensor]+r.off)
			if !bytes.Equal(buf, want) {
				return 0, 0, fmt.Errorf("%s at %d differs from the checkpoint", b.manyKeys[r.tensor], r.off)
			}
		}
	}
	return cold, hot, nil
}
