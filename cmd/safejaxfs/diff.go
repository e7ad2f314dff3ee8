package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/floats"
)

// diff's exit codes are diff(1)'s and cmp(1)'s: 0 identical, 1 different,
// 2 trouble. "Trouble" includes a checkpoint that is missing or invalid,
// which other commands report as 1: here 1 must mean only "they differ".
const (
	exitSame    = 0
	exitDiffer  = 1
	exitTrouble = 2
)

func runDiff(args []string) error {
	err := diffCheckpoints(args)
	var ee *exitError
	switch {
	case err == nil, errors.Is(err, pflag.ErrHelp):
		return err
	case errors.As(err, &ee) && ee.err == nil:
		return err // exitDiffer, silently
	case errors.As(err, &ee):
		return &exitError{code: exitTrouble, err: ee.err}
	}
	return &exitError{code: exitTrouble, err: err}
}

// diffReport is what diff finds; it is also the --json output.
type diffReport struct {
	A         string         `json:"a"`
	B         string         `json:"b"`
	Identical bool           `json:"identical"`
	OnlyInA   []diffTensor   `json:"only_in_a"`
	OnlyInB   []diffTensor   `json:"only_in_b"`
	Changed   []diffChanged  `json:"changed"`
	Tensors   []diffValues   `json:"tensors"`
	Metadata  *diffMetadata  `json:"metadata,omitempty"`
	selA      map[string]int // key -> index in the selections
	selB      map[string]int
}

type diffTensor struct {
	Key   string   `json:"key"`
	DType string   `json:"dtype"`
	Shape []uint64 `json:"shape"`
}

type diffChanged struct {
	Key string     `json:"key"`
	A   diffTensor `json:"a"`
	B   diffTensor `json:"b"`
}

// diffValues is one tensor in both with the same dtype and shape.
type diffValues struct {
	diffTensor
	Count      uint64  `json:"count"`
	Differ     uint64  `json:"differ"`
	NonFinite  uint64  `json:"nonfinite"`
	MaxAbs     float64 `json:"max_abs"`
	MaxRel     float64 `json:"max_rel"`
	BytesEqual bool    `json:"bytes_equal"`
}

type diffMetadata struct {
	OnlyInA map[string]string    `json:"only_in_a"`
	OnlyInB map[string]string    `json:"only_in_b"`
	Changed map[string][2]string `json:"changed"`
}

func (m *diffMetadata) empty() bool {
	return len(m.OnlyInA) == 0 && len(m.OnlyInB) == 0 && len(m.Changed) == 0
}

func diffCheckpoints(args []string) error {
	fl := newFlags("diff", "[flags] A B [PREFIX]",
		"Compare checkpoints A and B (each a file, an index or a directory, local or a URL)\n"+
			"tensor by tensor, by key: keys only in A or only in B, dtype or shape changes, and\n"+
			"for tensors in both the number of elements that differ, the largest absolute\n"+
			"difference |a-b| and relative difference |a-b|/max(|a|,|b|) over elements finite in\n"+
			"both, and whether the bytes are identical; then the metadata. Prints nothing when\n"+
			"they are identical. PREFIX limits it to a subtree, as for ls.\n"+
			"Exit 0 if identical, 1 if they differ, 2 on trouble (usage, a checkpoint missing,\n"+
			"invalid or unreadable), like diff(1).")
	sep := fl.String("sep", ".", "key separator, as for mount (for PREFIX given as a path)")
	asJSON := fl.Bool("json", false, "print the whole comparison as JSON (every tensor compared, identical or not)")
	quiet := fl.BoolP("quiet", "q", false, "print nothing (no progress either): the exit code says whether they differ")
	var rf remoteFlags
	addRemoteFlags(fl, &rf, true)
	var pf progressFlags
	addProgressFlags(fl, &pf, false)
	rest, err := parseFlags(fl, args, 2, 3)
	if err != nil {
		return err
	}
	pf.quiet = *quiet
	a, err := openSource("diff", rest[0], &rf, pf, exitTrouble)
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := openSource("diff", rest[1], &rf, pf, exitTrouble)
	if err != nil {
		return err
	}
	defer b.Close()
	prefix := ""
	if len(rest) == 3 {
		prefix = rest[2]
	}
	selA, foundA, err := a.selectTensors(prefix, *sep)
	if err != nil {
		return err
	}
	selB, foundB, err := b.selectTensors(prefix, *sep)
	if err != nil {
		return err
	}
	if !foundA && !foundB {
		return fail(exitTrouble, "no tensor or directory %q in %s or in %s", prefix, a.shown, b.shown)
	}
	rep := &diffReport{A: a.shown, B: b.shown, OnlyInA: []diffTensor{}, OnlyInB: []diffTensor{},
		Changed: []diffChanged{}, Tensors: []diffValues{}, selA: indexKeys(selA), selB: indexKeys(selB)}
	keys := slices.Sorted(maps.Keys(rep.selA))
	for k := range rep.selB {
		if _, ok := rep.selA[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var pairs [][2]selected
	var total int64
	for _, k := range keys {
		ia, inA := rep.selA[k]
		ib, inB := rep.selB[k]
		switch {
		case !inB:
			rep.OnlyInA = append(rep.OnlyInA, describe(selA[ia]))
		case !inA:
			rep.OnlyInB = append(rep.OnlyInB, describe(selB[ib]))
		case selA[ia].info.DType != selB[ib].info.DType || !slices.Equal(selA[ia].info.Shape, selB[ib].info.Shape):
			rep.Changed = append(rep.Changed, diffChanged{k, describe(selA[ia]), describe(selB[ib])})
		default:
			pairs = append(pairs, [2]selected{selA[ia], selB[ib]})
			total += selA[ia].info.Size
		}
	}
	prog := newProgress(pf.show(total >= progressFrom || a.c.Remote() != nil || b.c.Remote() != nil), "diff", unitBytes, total).items("tensor", len(pairs))
	bufA, bufB := make([]byte, 0, readChunk), make([]byte, 0, readChunk)
	identical := len(rep.OnlyInA) == 0 && len(rep.OnlyInB) == 0 && len(rep.Changed) == 0
	for i, p := range pairs {
		prog.next(i + 1)
		d, err := compareTensors(a, b, p[0], p[1], bufA, bufB, prog)
		if err != nil {
			prog.finish()
			return err
		}
		identical = identical && d.BytesEqual
		rep.Tensors = append(rep.Tensors, diffValues{describe(p[0]), d.Count, d.Differ, d.NonFinite, d.MaxAbs, d.MaxRel, d.BytesEqual})
	}
	prog.finish()
	// Metadata belongs to the whole checkpoint: compared unless a PREFIX
	// narrowed the comparison to some tensors.
	if prefix == "" {
		rep.Metadata = compareMetadata(a.c.Metadata(), b.c.Metadata())
		identical = identical && rep.Metadata.empty()
	}
	rep.Identical = identical
	out := tableOut()
	switch {
	case *asJSON:
		if err := diffJSON(out, rep); err != nil {
			return err
		}
	case !*quiet:
		if err := diffText(out, rep); err != nil {
			return err
		}
	}
	if err := out.Flush(); err != nil {
		return err
	}
	if !identical {
		return &exitError{code: exitDiffer}
	}
	return nil
}

func indexKeys(sel []selected) map[string]int {
	m := make(map[string]int, len(sel))
	for i, t := range sel {
		m[t.info.Key] = i
	}
	return m
}

func describe(t selected) diffTensor {
	shape := t.info.Shape
	if shape == nil {
		shape = []uint64{}
	}
	return diffTensor{t.info.Key, t.info.DType.String(), shape}
}

// compareTensors streams two tensors of one dtype and shape side by side.
func compareTensors(a, b *source, ta, tb selected, bufA, bufB []byte, prog *progress) (*floats.Diff, error) {
	d := floats.NewDiff(ta.info.DType)
	size := ta.info.Size
	for off := int64(0); off < size; {
		pa, relA, err := a.read(ta.id, ta.info.Key, off, readChunk, bufA)
		if err != nil {
			return nil, fail(exitTrouble, "%v", err)
		}
		pb, relB, err := b.read(tb.id, tb.info.Key, off, readChunk, bufB)
		if err != nil {
			relA()
			return nil, fail(exitTrouble, "%v", err)
		}
		n := min(len(pa), len(pb))
		if n == 0 {
			relA()
			relB()
			return nil, fail(exitTrouble, "tensor %q: its data ends at byte %d of %d", ta.info.Key, off, size)
		}
		d.Add(pa[:n], pb[:n])
		relA()
		relB()
		off += int64(n)
		prog.add(n)
	}
	return d, nil
}

func compareMetadata(a, b map[string]string) *diffMetadata {
	m := &diffMetadata{OnlyInA: map[string]string{}, OnlyInB: map[string]string{}, Changed: map[string][2]string{}}
	for k, va := range a {
		vb, ok := b[k]
		switch {
		case !ok:
			m.OnlyInA[k] = va
		case va != vb:
			m.Changed[k] = [2]string{va, vb}
		}
	}
	for k, vb := range b {
		if _, ok := a[k]; !ok {
			m.OnlyInB[k] = vb
		}
	}
	return m
}

func diffText(out io.Writer, rep *diffReport) error {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for _, t := range rep.OnlyInA {
		fmt.Fprintf(w, "only in A\t%s\t%s %s\n", t.Key, t.DType, safetensors.ShapeString(t.Shape))
	}
	for _, t := range rep.OnlyInB {
		fmt.Fprintf(w, "only in B\t%s\t%s %s\n", t.Key, t.DType, safetensors.ShapeString(t.Shape))
	}
	for _, c := range rep.Changed {
		fmt.Fprintf(w, "changed\t%s\t%s %s -> %s %s\n", c.Key, c.A.DType, safetensors.ShapeString(c.A.Shape), c.B.DType, safetensors.ShapeString(c.B.Shape))
	}
	for _, t := range rep.Tensors {
		if t.BytesEqual {
			continue
		}
		what := fmt.Sprintf("%s %s", t.DType, safetensors.ShapeString(t.Shape))
		if t.Differ == 0 {
			fmt.Fprintf(w, "differs\t%s\t%s: bytes only, values equal (+0 against -0, or NaN payloads)\n", t.Key, what)
			continue
		}
		fmt.Fprintf(w, "differs\t%s\t%s: %d of %d elements, max abs %s, max rel %s", t.Key, what, t.Differ, t.Count,
			strconv.FormatFloat(t.MaxAbs, 'g', 6, 64), strconv.FormatFloat(t.MaxRel, 'g', 6, 64))
		if t.NonFinite > 0 {
			fmt.Fprintf(w, ", %d NaN or Inf in one only", t.NonFinite)
		}
		fmt.Fprintln(w)
	}
	if m := rep.Metadata; m != nil {
		for _, k := range slices.Sorted(maps.Keys(m.OnlyInA)) {
			fmt.Fprintf(w, "metadata only in A\t%s\t%q\n", k, m.OnlyInA[k])
		}
		for _, k := range slices.Sorted(maps.Keys(m.OnlyInB)) {
			fmt.Fprintf(w, "metadata only in B\t%s\t%q\n", k, m.OnlyInB[k])
		}
		for _, k := range slices.Sorted(maps.Keys(m.Changed)) {
			fmt.Fprintf(w, "metadata changed\t%s\t%q -> %q\n", k, m.Changed[k][0], m.Changed[k][1])
		}
	}
	return w.Flush()
}

func diffJSON(w io.Writer, rep *diffReport) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}
