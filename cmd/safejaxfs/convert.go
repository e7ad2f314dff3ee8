package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/safejaxfs/safejaxfs/fs"
	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/formats"
)

type convertFlags struct {
	maxShard   string
	quiet      bool
	force      bool
	dequantize bool
	sync       bool
	sep        string
}

func runConvert(args []string) error {
	var cf convertFlags
	fl := newFlags("convert", "[flags] IN OUT [PREFIX]",
		"Write the tensors of IN as OUT. IN is any checkpoint safejaxfs reads: a safetensors\n"+
			"file, index or directory, a URL, a Flax .msgpack, a PyTorch .bin/.pt/.pth (zip or\n"+
			"legacy; read without running any of its code), a numpy .npy/.npz, a GGUF file, or\n"+
			"a directory inside a safejaxfs mount (its subtree). OUT is a .safetensors file\n"+
			"(the canonical file the reference writer makes for the same keys, dtypes and\n"+
			"bytes; with --max-shard-size, a sharded set as save_pretrained writes it: OUT's\n"+
			"stem-0000k-of-0000N.safetensors and OUT.index.json) or a Flax .msgpack\n"+
			"(flax.serialization.msgpack_restore gives back the nested dict of arrays).\n"+
			"Flax keys are joined with \".\", as safejax does. Tensors that share storage (tied\n"+
			"weights) are stored once per key and listed. The bytes stream from IN to OUT:\n"+
			"memory does not grow with the checkpoint. PREFIX limits it to a subtree, as for ls.")
	fl.StringVar(&cf.maxShard, "max-shard-size", "", "write a sharded set with shards of at most this size: bytes, or with KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), as huggingface_hub reads 5GB")
	fl.BoolVarP(&cf.quiet, "quiet", "q", false, "no progress line on a terminal")
	fl.BoolVar(&cf.force, "force", false, "replace OUT (and its shards and index) if they exist")
	fl.BoolVar(&cf.dequantize, "dequantize", false, "GGUF: write quantized tensors (Q4_K, Q8_0, ...) as F32 values, as llama.cpp dequantizes them")
	fl.BoolVar(&cf.sync, "sync", false, "fsync OUT before it is renamed into place (as cp, torch.save and save_pretrained, convert otherwise leaves the write-back to the kernel)")
	fl.StringVar(&cf.sep, "sep", ".", "key separator, as for mount (for PREFIX given as a path)")
	rest, err := parseFlags(fl, args, 2, 3)
	if err != nil {
		return err
	}
	in, out := rest[0], rest[1]
	prefix := ""
	if len(rest) == 3 {
		prefix = rest[2]
	}
	var maxShard int64
	if cf.maxShard != "" {
		if maxShard, err = parseShardSize(cf.maxShard); err != nil {
			return fail(exitUsage, "--max-shard-size: %v", err)
		}
	}
	toFlax := strings.HasSuffix(out, ".msgpack")
	switch {
	case !toFlax && !strings.HasSuffix(out, ".safetensors"):
		return fail(exitUsage, "OUT %s must end in .safetensors or .msgpack (the format written)", out)
	case toFlax && maxShard > 0:
		return fail(exitUsage, "--max-shard-size writes safetensors shards; a Flax .msgpack is one file")
	}
	src, err := openConvertSource(in, prefix, cf)
	if err != nil {
		return err
	}
	defer src.close()
	if len(src.tied) > 0 {
		for _, g := range src.tied {
			fmt.Fprintf(os.Stderr, "safejaxfs convert: %s share storage (tied weights, or views of one tensor): each is stored under its own key\n", escapeControl(strings.Join(g, ", ")))
		}
	}
	if toFlax {
		if len(src.meta) > 0 {
			fmt.Fprintf(os.Stderr, "safejaxfs convert: the %s not written: a Flax msgpack holds arrays only\n", nouns(len(src.meta), "metadata entry is", "metadata entries are"))
		}
		return writeOutput(out, cf, src.total(), func(f *os.File) error {
			_, err := formats.WriteFlax(f, src.sources, formats.MaxChunkSize)
			return err
		})
	}
	if maxShard > 0 {
		return writeSharded(out, maxShard, src, cf)
	}
	layout, err := safetensors.Plan(src.sources, src.meta)
	if err != nil {
		return fail(exitInvalid, "%v", err)
	}
	return writeOutput(out, cf, int64(len(layout.Header))+int64(layout.DataSize()), func(f *os.File) error {
		_, err := layout.Write(f, src.sources)
		return err
	})
}

// parseShardSize reads a size as huggingface_hub's parse_size_to_int does
// (KB, MB, GB, TB: powers of 1000, a decimal value allowed) and as
// transformers reads KiB, MiB, GiB (powers of 1024); a bare number is bytes.
func parseShardSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   float64
	}{{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30}, {"TIB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1}}
	up := strings.ToUpper(s)
	mult := 1.0
	num := s
	for _, u := range units {
		if strings.HasSuffix(up, u.suffix) {
			mult, num = u.mult, strings.TrimSpace(s[:len(s)-len(u.suffix)])
			break
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size (like 5GB, 500MB, 2GiB or a number of bytes)", s)
	}
	n := int64(v * mult)
	if n <= 0 {
		return 0, fmt.Errorf("%q is not a positive size", s)
	}
	return n, nil
}

// writeOutput writes a file through a temporary one in the same directory,
// renamed into place (synced first with --sync), so OUT is either absent
// or complete.
func writeOutput(out string, cf convertFlags, total int64, write func(*os.File) error) error {
	if err := checkOutput(out, cf.force); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return fail(exitInvalid, "%v", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename: nothing there
	stop := watchProgress(tmp, total, cf.quiet)
	err = write(tmp)
	stop()
	if err == nil && cf.sync {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// The mode a new file gets (CreateTemp made it 0600), read without
		// setting the umask: a set-and-restore races with files created
		// meanwhile by other goroutines.
		err = os.Chmod(tmp.Name(), 0o644&^os.FileMode(fs.ProcessUmask()))
	}
	if err == nil {
		err = os.Rename(tmp.Name(), out)
	}
	if err != nil {
		return fail(exitInvalid, "writing %s: %v", out, err)
	}
	if cf.sync {
		syncDir(filepath.Dir(out))
	}
	return nil
}

func checkOutput(out string, force bool) error {
	if _, err := os.Lstat(out); err == nil && !force {
		return fail(exitUsage, "%s exists: remove it, or pass --force to replace it", out)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fail(exitInvalid, "%v", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return nil
	}
	defer d.Close()
	d.Sync()
	return nil
}

// watchProgress shows the progress line (progress.go) of a conversion
// writing f, total bytes in all, by f's size as it grows.
func watchProgress(f *os.File, total int64, quiet bool) (stop func()) {
	p := newProgress(progressFlags{quiet: quiet}.show(total >= progressFrom), "convert", unitBytes, total)
	if p == nil {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				p.finish()
				return
			case <-t.C:
				if st, err := f.Stat(); err == nil {
					p.set(st.Size(), total, "")
				}
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}
