package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Concurrency through the mount: writers and readers in parallel, on
// different tensors and on the same one, while fsyncs persist in place and
// another goroutine makes layout changes (so rewrites run under them too).
// The daemon is this test binary, race-instrumented under -race; it runs in
// the foreground with its stderr captured, and a race report fails the test.
//
// Every write is a single pwrite of one 64 KiB block at a 64 KiB-aligned
// offset: one FUSE request, which the daemon applies atomically. Readers
// use O_DIRECT, so each read is answered by the daemon rather than the
// kernel's page cache (which gives no atomicity between a read and a write
// of the same pages), and must see every block whole: one writer's one
// version, never older than what the same reader saw before (each block has
// one writer, except one block all writers of its tensor share). At the end
// the checkpoint must hold every block's last write.

const (
	ccBlock  = 64 << 10
	ccMagic  = 0xC3
	ccOrigin = 7 // the "writer" of the initial contents, version 0
)

func ccWord(tensor, block, writer int, v uint32) uint64 {
	return ccMagic<<56 | uint64(tensor)<<48 | uint64(block)<<40 | uint64(writer)<<32 | uint64(v)
}

func ccFill(b []byte, w uint64) { fillWords(b, w) }

// ccTensor is a tensor of the test: which writers own which block.
type ccTensor struct {
	key     string
	idx     int
	blocks  int
	owners  func(block int) []int // writers allowed to write the block
	written []atomic.Uint64       // per block: the last word written (for the final check)
}

type ccWriter struct {
	id     int
	tensor *ccTensor
	blocks []int
	issued atomic.Uint32 // the newest version this writer has started to write
	// last version written per block, for blocks shared between writers.
	mu   sync.Mutex
	last map[int]uint32
}

func TestConcurrentReadersWriters(t *testing.T) {
	if !isolated(t) {
		return
	}
	tensors := []*ccTensor{
		{key: "a.x", idx: 0, blocks: 16, owners: func(int) []int { return []int{0} }},
		{key: "a.y", idx: 1, blocks: 16, owners: func(int) []int { return []int{1} }},
		{key: "s.shared", idx: 2, blocks: 32, owners: func(b int) []int {
			if b == 0 {
				return []int{2, 3, 4} // contended
			}
			return []int{2 + b%3}
		}},
	}
	var gen []genTensor
	for _, ct := range tensors {
		ct.written = make([]atomic.Uint64, ct.blocks)
		data := make([]byte, ct.blocks*ccBlock)
		for b := range ct.blocks {
			w := ccWord(ct.idx, b, ccOrigin, 0)
			ccFill(data[b*ccBlock:(b+1)*ccBlock], w)
			ct.written[b].Store(w)
		}
		gen = append(gen, raw(ct.key, safetensors.U8, data, uint64(len(data))))
	}
	keep := f32("keep", 1, 100, 7)
	gen = append(gen, keep)
	ckpt := writeCheckpoint(t, "model.safetensors", map[string]string{"framework": "flax"}, gen...)
	mnt := newMountpoint(t)
	d := startDaemon(t, ckpt, mnt)
	path := func(ct *ccTensor) string { return filepath.Join(mnt, strings.ReplaceAll(ct.key, ".", "/")) }

	var writers []*ccWriter
	for id := range 5 {
		w := &ccWriter{id: id, last: map[int]uint32{}}
		for _, ct := range tensors {
			for b := range ct.blocks {
				for _, o := range ct.owners(b) {
					if o == id {
						w.tensor = ct
						w.blocks = append(w.blocks, b)
					}
				}
			}
		}
		writers = append(writers, w)
	}
	byID := func(id int) *ccWriter {
		if id < len(writers) {
			return writers[id]
		}
		return nil
	}

	var (
		stop     atomic.Bool
		wg       sync.WaitGroup
		errMu    sync.Mutex
		errs     []string
		nReads   atomic.Int64
		nWrites  atomic.Int64
		nLayouts atomic.Int64
	)
	// Each worker does at least its quota and goes on until every worker
	// has done its own (at most twice its quota): the same work on any
	// machine, overlapping (the quotas took about 3 s here).
	const writesEach, readsEach, layoutPairs = 120, 250, 30
	var unfinished atomic.Int64
	unfinished.Add(1) // this goroutine, until it has started every worker
	quotaDone := func() {
		if unfinished.Add(-1) == 0 {
			stop.Store(true)
		}
	}
	fail := func(format string, args ...any) {
		errMu.Lock()
		defer errMu.Unlock()
		if len(errs) < 10 {
			errs = append(errs, fmt.Sprintf(format, args...))
		}
		stop.Store(true)
	}

	// Writers: single 64 KiB pwrites, an fsync now and then.
	for _, w := range writers {
		wg.Add(1)
		unfinished.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w.id), 11))
			f, err := os.OpenFile(path(w.tensor), os.O_WRONLY, 0)
			if err != nil {
				fail("writer %d: %v", w.id, err)
				return
			}
			defer f.Close()
			buf := make([]byte, ccBlock)
			for writes := 1; !stop.Load() && writes <= 2*writesEach; writes++ {
				b := w.blocks[r.IntN(len(w.blocks))]
				v := w.issued.Add(1)
				word := ccWord(w.tensor.idx, b, w.id, v)
				ccFill(buf, word)
				if _, err := f.WriteAt(buf, int64(b)*ccBlock); err != nil {
					fail("writer %d: block %d: %v", w.id, b, err)
					return
				}
				w.mu.Lock()
				w.last[b] = v
				w.mu.Unlock()
				if len(w.tensor.owners(b)) == 1 {
					w.tensor.written[b].Store(word)
				}
				nWrites.Add(1)
				if writes == writesEach {
					quotaDone()
				}
				if writes%16 == 0 {
					if err := f.Sync(); err != nil {
						fail("writer %d: fsync: %v", w.id, err)
						return
					}
				}
			}
		}()
	}

	// check verifies bytes read at tensor offset off: every part of a block
	// is one whole version of an allowed writer, not newer than issued and
	// not older than what this reader saw of that block before.
	check := func(who string, ct *ccTensor, off int64, p []byte, seen map[int]uint32) bool {
		for len(p) > 0 {
			b := int(off / ccBlock)
			n := min(int64(len(p)), int64(b+1)*ccBlock-off)
			piece := p[:n]
			if off%8 != 0 || len(piece)%8 != 0 {
				fail("%s: test bug: unaligned piece", who)
				return false
			}
			word := binary.LittleEndian.Uint64(piece)
			for i := 8; i < len(piece); i += 8 {
				if x := binary.LittleEndian.Uint64(piece[i:]); x != word {
					fail("%s: %s block %d torn: %#x at its offset %d, %#x at %d", who, ct.key, b, word, off%ccBlock, x, off%ccBlock+int64(i))
					return false
				}
			}
			wid, v := int(word>>32&0xff), uint32(word)
			switch {
			case word>>56 != ccMagic || int(word>>48&0xff) != ct.idx || int(word>>40&0xff) != b:
				fail("%s: %s block %d holds %#x, not a version of this block", who, ct.key, b, word)
				return false
			case wid == ccOrigin && v == 0:
			case byID(wid) == nil || !containsInt(ct.owners(b), wid):
				fail("%s: %s block %d was written by %d, who does not write it", who, ct.key, b, wid)
				return false
			case v > byID(wid).issued.Load():
				fail("%s: %s block %d holds version %d of writer %d, never written", who, ct.key, b, v, wid)
				return false
			}
			if len(ct.owners(b)) == 1 {
				if v < seen[b] {
					fail("%s: %s block %d went back from version %d to %d", who, ct.key, b, seen[b], v)
					return false
				}
				seen[b] = v
			}
			p, off = p[n:], off+n
		}
		return true
	}

	// Readers, O_DIRECT: single blocks, several blocks at once, the whole
	// tensor, and the .npy view (whose header shifts the blocks).
	type reader struct {
		name   string
		ct     *ccTensor
		npy    bool
		length int64
	}
	for i, rd := range []reader{
		{"block reader", tensors[0], false, ccBlock},
		{"block reader", tensors[2], false, ccBlock},
		{"256 KiB reader", tensors[2], false, 4 * ccBlock},
		{"whole reader", tensors[1], false, 16 * ccBlock},
		{"npy view reader", tensors[1], true, ccBlock},
		{"npy view reader", tensors[2], true, 3*ccBlock + 40},
	} {
		wg.Add(1)
		unfinished.Add(1)
		go func() {
			defer wg.Done()
			who := fmt.Sprintf("%s %d (%s)", rd.name, i, rd.ct.key)
			r := rand.New(rand.NewPCG(uint64(i), 12))
			name := path(rd.ct)
			hdr := int64(0)
			if rd.npy {
				name += ".npy"
				hdr = 128 // U8 1-D: np.save's header is 128 bytes
			}
			f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_DIRECT, 0)
			if err != nil {
				fail("%s: %v", who, err)
				return
			}
			defer f.Close()
			size := int64(rd.ct.blocks * ccBlock)
			buf := make([]byte, rd.length)
			seen := map[int]uint32{}
			for reads := 1; !stop.Load() && reads <= 2*readsEach; reads++ {
				off := r.Int64N(size/ccBlock) * ccBlock
				if rd.npy {
					off = r.Int64N(size + hdr - rd.length)
					off -= off % 8
				}
				n, err := f.ReadAt(buf, off)
				if err != nil && err != io.EOF {
					fail("%s: read at %d: %v", who, off, err)
					return
				}
				p, toff := buf[:n], off-hdr
				if toff < 0 {
					p, toff = p[-toff:], 0
				}
				if !check(who, rd.ct, toff, p, seen) {
					return
				}
				nReads.Add(1)
				if reads == readsEach {
					quotaDone()
				}
			}
		}()
	}

	// Layout changes under it all: create a file (a rewrite at its close)
	// and delete it again, so writes and reads also race rewrites.
	wg.Add(1)
	unfinished.Add(1)
	go func() {
		defer wg.Done()
		if err := os.Mkdir(filepath.Join(mnt, "tmp"), 0o755); err != nil {
			fail("layout: %v", err)
			return
		}
		for i := 0; !stop.Load() && i < 2*layoutPairs; i++ {
			p := filepath.Join(mnt, "tmp", fmt.Sprint(i))
			if err := os.WriteFile(p, []byte("scratch"), 0o644); err != nil {
				fail("layout: %v", err)
				return
			}
			if err := os.Remove(p); err != nil {
				fail("layout: %v", err)
				return
			}
			nLayouts.Add(1)
			if i+1 == layoutPairs {
				quotaDone()
			}
			// Spread out over the writes, not all at their start.
			time.Sleep(20 * time.Millisecond)
		}
	}()

	// Until every quota is done, or a failure stops everything.
	quotaDone()
	wg.Wait()
	t.Logf("%d writes, %d checked reads, %d create+delete pairs", nWrites.Load(), nReads.Load(), nLayouts.Load())
	for _, e := range errs {
		t.Error(e)
	}
	if out := d.out.String(); strings.Contains(out, "WARNING: DATA RACE") {
		t.Fatalf("the daemon reported a data race:\n%s", out)
	}
	if t.Failed() {
		return
	}

	// The expected final bytes: each block's last write; the contended
	// block holds the last write of one of its writers.
	want := map[string][]byte{}
	for _, ct := range tensors {
		data := make([]byte, ct.blocks*ccBlock)
		for b := range ct.blocks {
			ccFill(data[b*ccBlock:(b+1)*ccBlock], ct.written[b].Load())
		}
		want[ct.key] = data
	}
	shared := tensors[2]
	contended := map[uint64]bool{}
	for _, id := range shared.owners(0) {
		if v, ok := writers[id].last[0]; ok {
			contended[ccWord(shared.idx, 0, id, v)] = true
		}
	}
	if len(contended) == 0 {
		contended[ccWord(shared.idx, 0, ccOrigin, 0)] = true
	}
	finalCheck := func(what string, get func(ct *ccTensor) []byte) {
		t.Helper()
		for _, ct := range tensors {
			got, exp := get(ct), want[ct.key]
			if len(got) != len(exp) {
				t.Fatalf("%s: %s is %d bytes, want %d", what, ct.key, len(got), len(exp))
			}
			if ct == shared {
				w := binary.LittleEndian.Uint64(got)
				if !contended[w] || !bytes.Equal(got[:ccBlock], bytes.Repeat(got[:8], ccBlock/8)) {
					t.Errorf("%s: the contended block holds %#x, not the last write of one of its writers", what, w)
				}
				got, exp = got[ccBlock:], exp[ccBlock:]
			}
			if !bytes.Equal(got, exp) {
				i := firstDifference(got, exp)
				t.Errorf("%s: %s differs from the last writes (%#x, want %#x)", what, ct.key,
					binary.LittleEndian.Uint64(got[i/8*8:]), binary.LittleEndian.Uint64(exp[i/8*8:]))
			}
		}
	}
	// Through the mount (page cache and all) once everything stopped...
	finalCheck("read back through the mount", func(ct *ccTensor) []byte {
		b, err := os.ReadFile(path(ct))
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
	// ...and in the checkpoint after a clean unmount.
	if r := cli(t, "unmount", mnt); r.code != 0 {
		t.Fatalf("unmount: exit %d: %s\ndaemon said:\n%s", r.code, r.stderr, d.out)
	}
	d.wait(t, 30*time.Second)
	if out := d.out.String(); strings.Contains(out, "WARNING: DATA RACE") || d.err != nil {
		t.Fatalf("the daemon exited with %v (66: race detected):\n%s", d.err, out)
	}
	entries, _, data := rawHeader(t, ckpt)
	finalCheck("in the checkpoint after unmount", func(ct *ccTensor) []byte {
		e := entries[ct.key]
		return bytes.Clone(data[e.Offsets[0]:e.Offsets[1]])
	})
	var final []genTensor
	for _, ct := range tensors {
		e := entries[ct.key]
		final = append(final, raw(ct.key, safetensors.U8, data[e.Offsets[0]:e.Offsets[1]], uint64(ct.blocks*ccBlock)))
	}
	checkFile(t, ckpt, map[string]string{"framework": "flax"}, append(final, keep)...)
}

func containsInt(s []int, x int) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

func firstDifference(a, b []byte) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}
