package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/floats"
)

func runStats(args []string) error {
	fl := newFlags("stats", "[flags] CHECKPOINT [PREFIX]",
		"Print, per tensor of CHECKPOINT (a file, an index or a directory, local or a URL),\n"+
			"its dtype, shape, min, max, mean and standard deviation (numpy's, ddof=0) of the\n"+
			"finite elements, and its counts of NaN, Inf and zeros. Every dtype: BF16, F16 and\n"+
			"the 8-, 6- and 4-bit floats are read as ml_dtypes converts them; integers have\n"+
			"exact min and max; BOOL counts as 0 and 1; C64 is summarized by |z|. The data is\n"+
			"read once, in chunks (memory does not grow with the checkpoint). PREFIX limits it\n"+
			"to a subtree, as for ls.")
	sep := fl.String("sep", ".", "key separator, as for mount (for PREFIX given as a path)")
	asJSON := fl.Bool("json", false, "print a JSON array of {key, path, dtype, shape, count, finite, nan, inf, zeros, min, max, mean, std}")
	var rf remoteFlags
	addRemoteFlags(fl, &rf, true)
	var pf progressFlags
	addProgressFlags(fl, &pf, true)
	rest, err := parseFlags(fl, args, 1, 2)
	if err != nil {
		return err
	}
	src, err := openSource("stats", rest[0], &rf, pf, exitInvalid)
	if err != nil {
		return err
	}
	defer src.Close()
	prefix := ""
	if len(rest) == 2 {
		prefix = rest[1]
	}
	sel, found, err := src.selectTensors(prefix, *sep)
	if err != nil {
		return err
	}
	if !found {
		return fail(exitInvalid, "no tensor or directory %q in %s", prefix, src.shown)
	}
	var total int64
	for _, t := range sel {
		total += t.info.Size
	}
	prog := newProgress(pf.show(total >= progressFrom || src.c.Remote() != nil), "stats", unitBytes, total).items("tensor", len(sel))
	results := make([]*floats.Stats, len(sel))
	buf := make([]byte, 0, readChunk)
	for i, t := range sel {
		prog.next(i + 1)
		s := floats.NewStats(t.info.DType)
		for off := int64(0); off < t.info.Size; {
			b, release, err := src.read(t.id, t.info.Key, off, readChunk, buf)
			if err != nil {
				prog.finish()
				return fail(exitInvalid, "%v", err)
			}
			if len(b) == 0 {
				release()
				prog.finish()
				return fail(exitInvalid, "%s: tensor %q: its data ends at byte %d of %d", src.shown, t.info.Key, off, t.info.Size)
			}
			s.Add(b)
			release()
			off += int64(len(b))
			prog.add(len(b))
		}
		results[i] = s
	}
	prog.finish()
	out := tableOut()
	if *asJSON {
		if err := statsJSON(out, sel, results); err != nil {
			return err
		}
		return out.Flush()
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "key\tdtype\tshape\tmin\tmax\tmean\tstd\tnan\tinf\tzeros")
	for i, t := range sel {
		s := results[i]
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", t.info.Key, t.info.DType, safetensors.ShapeString(t.info.Shape),
			s.Min(), s.Max(), s.Mean(), s.Std(), s.NaN, s.Inf, s.Zeros)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return out.Flush()
}

type jsonStats struct {
	Key    string        `json:"key"`
	Path   string        `json:"path"`
	DType  string        `json:"dtype"`
	Shape  []uint64      `json:"shape"`
	Count  uint64        `json:"count"`
	Finite uint64        `json:"finite"`
	NaN    uint64        `json:"nan"`
	Inf    uint64        `json:"inf"`
	Zeros  uint64        `json:"zeros"`
	Min    floats.Number `json:"min"`
	Max    floats.Number `json:"max"`
	Mean   floats.Number `json:"mean"`
	Std    floats.Number `json:"std"`
}

func statsJSON(w io.Writer, sel []selected, results []*floats.Stats) error {
	out := make([]jsonStats, len(sel))
	for i, t := range sel {
		s := results[i]
		shape := t.info.Shape
		if shape == nil {
			shape = []uint64{}
		}
		out[i] = jsonStats{t.info.Key, t.path, t.info.DType.String(), shape, s.Count, s.Finite(), s.NaN, s.Inf, s.Zeros,
			s.Min(), s.Max(), s.Mean(), s.Std()}
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
