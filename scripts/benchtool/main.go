// Command benchtool is the engine of scripts/bench: it generates
// checkpoints, mounts them with the safejaxfs CLI, measures each figure next
// to its reference on the same machine in the same run, and prints a
// markdown table with the ratio and, where the issue sets one, the bar.
//
// It is not meant to be run by hand: scripts/bench builds the CLI and this
// tool and passes --cli, --repo and --work.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// config holds the sizes of one run: the full run on demand, or the smoke
// run CI uses to check that every row still runs.
type config struct {
	smoke bool
	reps  int // repetitions of each timed measurement (median reported)

	bigBytes    int64 // the large tensor for sequential reads and edits
	readSize    int   // bytes per read(2) in the sequential rows
	manyTensors int   // tensors in the random-read checkpoint
	manyBytes   int64 // bytes per tensor there
	randReads   int   // random 4 KiB reads per pass
	mountSizes  []int // tensor counts for mount time, memory and find
	editBytes   int   // size of the in-place edit
	deepseek    deepseekShape
	benchtime   string
	benchCount  int
}

func fullConfig() config {
	return config{
		reps:        3,
		bigBytes:    1 << 30,
		readSize:    4 << 20,
		manyTensors: 1024,
		manyBytes:   256 << 10,
		randReads:   20000,
		mountSizes:  []int{1_000, 10_000, 100_000},
		editBytes:   4 << 20,
		deepseek:    deepseekShape{layers: 61, experts: 256, shards: 163},
		benchtime:   "1s",
		benchCount:  3,
	}
}

func smokeConfig() config {
	return config{
		smoke:       true,
		reps:        1,
		bigBytes:    8 << 20,
		readSize:    4 << 20,
		manyTensors: 32,
		manyBytes:   64 << 10,
		randReads:   256,
		mountSizes:  []int{100, 1_000},
		editBytes:   1 << 20,
		deepseek:    deepseekShape{layers: 2, experts: 4, shards: 5},
		benchtime:   "1x",
		benchCount:  1,
	}
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == parseRSSCmd {
		os.Exit(parseRSS(os.Args[2]))
	}
	if len(os.Args) > 2 && os.Args[1] == spawnCmd {
		os.Exit(spawn(os.Args[2:]))
	}
	smoke := flag.Bool("smoke", false, "tiny sizes, one repetition: check that every row runs")
	strict := flag.Bool("strict", false, "exit 1 if any row misses its bar (full runs)")
	cli := flag.String("cli", "", "the safejaxfs binary to benchmark")
	repo := flag.String("repo", ".", "the repository root (for go test -bench)")
	work := flag.String("work", "", "an empty scratch directory on the disk to benchmark (checkpoints and mountpoints go here)")
	only := flag.String("only", "", "comma-separated sections to run (1-10); default all")
	raKB := flag.Int("read-ahead-kb", 0, "set read_ahead_kb of each mount's FUSE bdi to this (root; measures the knob); 0: kernel default")
	docs := flag.String("docs", "", "after a full run of every section (not --smoke, not --only), write the report to this file as well (docs/performance.md)")
	flag.Parse()
	if *cli == "" || *work == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: benchtool [--smoke] [--strict] --cli SAFEJAXFS --work DIR [--repo DIR]")
		os.Exit(2)
	}
	cfg := fullConfig()
	if *smoke {
		cfg = smokeConfig()
	}
	b := &bench{cfg: cfg, cli: mustAbs(*cli), repo: mustAbs(*repo), work: mustAbs(*work), only: map[string]bool{}, raKB: *raKB}
	for _, s := range strings.Split(*only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			b.only[s] = true
		}
	}

	// An interrupted run must not leave mounts behind.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "benchtool: %v: unmounting and exiting\n", s)
		b.unmountAll()
		os.Exit(130)
	}()

	start := time.Now()
	err := b.run()
	b.unmountAll()
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchtool: %v\n", err)
		os.Exit(1)
	}
	took := time.Since(start)
	b.printReport(os.Stdout, took)
	if *docs != "" && !cfg.smoke && len(b.only) == 0 && b.raKB == 0 {
		if err := b.writeDocs(*docs, took); err != nil {
			fmt.Fprintf(os.Stderr, "benchtool: %v\n", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "benchtool: wrote %s\n", *docs)
	}
	if *strict && !cfg.smoke && b.misses() > 0 {
		os.Exit(1)
	}
}

func mustAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	return a
}

// run measures everything, in an order that keeps the 1 GiB checkpoint
// unchanged until the last section that rewrites it.
func (b *bench) run() error {
	if err := b.checkSpace(); err != nil {
		return err
	}
	b.machine = machineLine(b.work) + ", load average " + loadAvg() + " at start"
	if b.raKB > 0 {
		b.machine += fmt.Sprintf(", FUSE read_ahead_kb set to %d (--read-ahead-kb)", b.raKB)
	}
	defer func() {
		b.note("load average at the end: %s (other work on the machine shows up as noise; each reference is measured alongside its row, so ratios suffer less than absolute figures)", loadAvg())
		if damonPageout() {
			b.note("DAMON pageout is active on this machine: idle page cache is reclaimed, so every file a row needs cached is re-read just before it is measured (it had been partly evicted %d times)", b.evictions)
		}
	}()
	steps := []struct {
		section, name string
		fn            func() error
	}{
		{"", "generate checkpoints", b.generate},
		{"1", "1 sequential reads", b.sequential},
		{filesSection, filesSection + " /.files/ reads", b.filesReads},
		{"2", "2 random reads", b.random},
		{"3", "3 mount time, memory, find", b.mountScale},
		{"4", "4 edits", b.edits},
		{"5", "5 serializer", b.serializer},
		{"6", "6 sharded scale: DeepSeek-V3-shaped listing and memory", b.listingScale},
		{remoteSection, remoteSection + " remote mounts", b.remoteMounts},
		{statsSection, statsSection + " stats", b.statsRows},
		{convertSection, convertSection + " convert from PyTorch and Flax", b.convertRows},
	}
	for _, s := range steps {
		if s.section != "" && !b.want(s.section) {
			continue
		}
		t0 := time.Now()
		b.progress("== %s", s.name)
		if err := s.fn(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		b.progress("   %s done in %.1fs", s.name, time.Since(t0).Seconds())
	}
	return nil
}

// want reports whether a section is to run (--only).
func (b *bench) want(section string) bool { return len(b.only) == 0 || b.only[section] }

func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}
