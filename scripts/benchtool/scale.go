package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// parseRSSCmd is the hidden subcommand that gives the memory reference: a
// process that opens (parses, validates, maps) a checkpoint and nothing
// else, reporting its RssAnon in KiB.
const parseRSSCmd = "_parse-rss"

func parseRSS(path string) int {
	f, err := safetensors.Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	kb, err := rssAnonKB(os.Getpid())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(kb, len(f.Tensors))
	f.Close()
	return 0
}

func (b *bench) parseRSSMB(path string) (float64, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	out, err := exec.Command(self, parseRSSCmd, path).Output()
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", parseRSSCmd, path, err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		return 0, fmt.Errorf("%s printed %q", parseRSSCmd, out)
	}
	kb, err := strconv.ParseInt(f[0], 10, 64)
	return mb(kb), err
}

// jsonScript is the Python reference for mount time: read the header and
// json.loads it, timed inside the interpreter (start-up excluded).
const jsonScript = `
import json, struct, sys, time
path, reps = sys.argv[1], int(sys.argv[2])
times = []
for _ in range(reps):
    t0 = time.perf_counter()
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        h = json.loads(f.read(n))
    times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "entries": len(h)}))
`

// countWriter counts lines (find prints one per entry).
type countWriter struct{ n int }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += bytes.Count(p, []byte{'\n'})
	return len(p), nil
}

func timeFind(dir string) (time.Duration, int, error) {
	var c countWriter
	cmd := exec.Command("find", dir)
	cmd.Stdout = &c
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, 0, fmt.Errorf("find %s: %w", dir, err)
	}
	return time.Since(t0), c.n, nil
}

// mirror recreates the tree under src as directories and empty files
// under dst: the local-disk reference for find.
func mirror(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		f, err := os.Create(out)
		if err != nil {
			return err
		}
		return f.Close()
	})
}

// mountScale is section 3: for header-dominated checkpoints of increasing
// size, the mount's latency and memory against parsing the header alone,
// and find over the mount against find over the same tree on local disk.
func (b *bench) mountScale() error {
	cfg := b.cfg
	for _, n := range cfg.mountSizes {
		path := b.scalePaths[n]
		name := countName(n)
		// The bars are set at 100k tensors.
		bar := n == 100_000

		// References: the Go parser and Python's json.loads on the same
		// header.
		var goParse []time.Duration
		for range max(cfg.reps, 3) {
			t0 := time.Now()
			f, err := safetensors.Open(path)
			if err != nil {
				return err
			}
			goParse = append(goParse, time.Since(t0))
			f.Close()
		}
		out, err := runPython(jsonScript, path, strconv.Itoa(max(cfg.reps, 3)))
		if err != nil {
			return err
		}
		var py struct {
			Times   []float64 `json:"times"`
			Entries int       `json:"entries"`
		}
		if err := json.Unmarshal(out, &py); err != nil {
			return fmt.Errorf("json script printed %q: %w", out, err)
		}
		if py.Entries != n+1 {
			return fmt.Errorf("%s: json.loads found %d entries, want %d tensors + __metadata__", path, py.Entries, n)
		}
		pyRef := median(py.Times)
		rssRef, err := b.parseRSSMB(path)
		if err != nil {
			return err
		}

		var took, findCold, findHot []time.Duration
		var rssAfter, rssPeak []float64
		entries := 0
		local := filepath.Join(b.work, "tree"+name)
		for rep := range cfg.reps {
			if err := b.ensureCached(path); err != nil {
				return err
			}
			// find is compared entry for entry with the local mirror:
			// no files directory.
			m, err := b.mount(path, "--no-files")
			if err != nil {
				return err
			}
			err = func() error {
				took = append(took, m.took)
				rssAfter = append(rssAfter, mb(m.rssKB))
				m.startSampling()
				c, k, err := timeFind(m.dir)
				if err != nil {
					return err
				}
				h, k2, err := timeFind(m.dir)
				if err != nil {
					return err
				}
				rssPeak = append(rssPeak, mb(m.stopSampling()))
				if k != k2 {
					return fmt.Errorf("find over %s listed %d entries, then %d", m.dir, k, k2)
				}
				findCold, findHot, entries = append(findCold, c), append(findHot, h), k
				if rep == 0 {
					return mirror(m.dir, local)
				}
				return nil
			}()
			if uerr := m.unmount(); err == nil {
				err = uerr
			}
			if err != nil {
				return err
			}
		}
		// Local find: one warm-up so the dentries are cached, like the
		// mount's hot run.
		var localFind []time.Duration
		for i := range cfg.reps + 1 {
			d, k, err := timeFind(local)
			if err != nil {
				return err
			}
			if k != entries {
				return fmt.Errorf("find over the local mirror listed %d entries, the mount %d", k, entries)
			}
			if i > 0 {
				localFind = append(localFind, d)
			}
		}
		os.RemoveAll(local)

		ms := func(d float64) float64 { return d * 1e3 }
		mt := row{section: "3", what: fmt.Sprintf("mount, %s tensors (command start to mount answering)", name), ours: ms(medianDur(took)), unit: "ms",
			refWhat: "read + json.loads of the same header in /usr/bin/python3", ref: ms(pyRef), kind: cost}
		if bar {
			mt.barMax = 1.0
		}
		b.add(mt)
		b.add(row{section: "3", what: fmt.Sprintf("mount, %s tensors", name), ours: ms(medianDur(took)), unit: "ms",
			refWhat: "safetensors.Open (Go parser + validation + mmap), in process", ref: ms(medianDur(goParse)), kind: cost})
		ra := row{section: "3", what: fmt.Sprintf("daemon RssAnon after mount, %s tensors", name), ours: median(rssAfter), unit: "MB",
			refWhat: "a process that only ran safetensors.Open", ref: rssRef, kind: cost}
		rp := row{section: "3", what: fmt.Sprintf("daemon max RssAnon during find, %s tensors (max of runs)", name), ours: maxOf(rssPeak), unit: "MB",
			refWhat: "a process that only ran safetensors.Open", ref: rssRef, kind: cost}
		if bar {
			ra.absMax, rp.absMax = 200, 200
		}
		b.add(ra)
		b.add(rp)
		b.add(row{section: "3", what: fmt.Sprintf("find over the mount, %s tensors (%d entries), cold (1st after mount)", name, entries), ours: ms(medianDur(findCold)), unit: "ms",
			refWhat: "find over the same tree of empty files on local disk (cached)", ref: ms(medianDur(localFind)), kind: cost})
		b.add(row{section: "3", what: fmt.Sprintf("find over the mount, %s tensors, hot (again)", name), ours: ms(medianDur(findHot)), unit: "ms",
			refWhat: "find over the same tree of empty files on local disk (cached)", ref: ms(medianDur(localFind)), kind: cost})
	}
	return nil
}
