package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/safejaxfs/safejaxfs/fs"
	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/tree"
)

func runLs(args []string) error {
	fl := newFlags("ls", "[flags] CHECKPOINT [PREFIX]",
		"List the tensors of CHECKPOINT (a file, an index or a directory, local or a URL)\nas the tree a mount would show, with dtype, shape, size (and shard), without mounting. PREFIX limits the listing to a subtree, given as a\npath (params/Dense_0) or a key prefix (params.Dense_0).")
	sep := fl.String("sep", ".", "key separator, as for mount")
	asJSON := fl.Bool("json", false, "print a JSON array of {key, path, dtype, shape, bytes, data_offsets, shard}")
	var rf remoteFlags
	addRemoteFlags(fl, &rf, false)
	var pf progressFlags
	addProgressFlags(fl, &pf, true)
	rest, err := parseFlags(fl, args, 1, 2)
	if err != nil {
		return err
	}
	if *sep == "" {
		return fail(exitUsage, "--sep must not be empty")
	}
	src, err := openSource("ls", rest[0], &rf, pf, exitInvalid)
	if err != nil {
		return err
	}
	defer src.Close()
	shown, sharded, foreign := src.shown, src.c.Sharded(), src.c.ForeignFile()
	ts := tensorsOf(src.c.Headers())
	attachForeign(ts, foreign)
	keys := make([]string, len(ts))
	for i := range ts {
		keys[i] = ts[i].Key
	}
	t, err := tree.Build(keys, tree.Options{Sep: *sep, Reserved: fs.ReservedNames(sharded)})
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	top := t.Root
	if len(rest) == 2 {
		if top = findPrefix(t, rest[1]); top == nil {
			return fail(exitInvalid, "no tensor or directory %q in %s", rest[1], shown)
		}
	}
	out := tableOut()
	if *asJSON {
		if err := listJSON(out, ts, top); err != nil {
			return err
		}
		return out.Flush()
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	listTree(w, ts, top, 0, sharded)
	if err := w.Flush(); err != nil {
		return err
	}
	return out.Flush()
}

// lsTensor is a tensor of any shard, with the shard's name (and, for a
// foreign checkpoint, what its format says of it: see foreign.go).
type lsTensor struct {
	*safetensors.Tensor
	shard   string
	foreign *foreignNote
}

// tensorsOf lists every tensor of every file (names[i] is headers[i]'s).
func tensorsOf(names []string, headers []*safetensors.Header) []lsTensor {
	var ts []lsTensor
	for i, h := range headers {
		for j := range h.Tensors {
			ts = append(ts, lsTensor{Tensor: &h.Tensors[j], shard: names[i]})
		}
	}
	return ts
}

// findPrefix resolves PREFIX as a tree path first, then as a key prefix.
func findPrefix(t *tree.Tree, prefix string) *tree.Node {
	if n := t.Find(strings.Trim(prefix, "/")); n != nil {
		return n
	}
	var found *tree.Node
	walk(t.Root, func(n *tree.Node) {
		if found == nil && n.Key == prefix {
			found = n
		}
	})
	return found
}

func walk(n *tree.Node, fn func(*tree.Node)) {
	fn(n)
	for _, c := range sortedChildren(n) {
		walk(c, fn)
	}
}

func listTree(w io.Writer, ts []lsTensor, n *tree.Node, depth int, sharded bool) {
	indent := strings.Repeat("  ", depth)
	if !n.IsDir() {
		t := ts[n.Tensor]
		fmt.Fprintf(w, "%s%s\t%s\t%s\t%d", indent, n.Name, t.dtypeName(), safetensors.ShapeString(t.shape()), t.Size())
		if sharded {
			fmt.Fprintf(w, "\t%s", t.shard)
		}
		if t.foreign != nil && len(t.foreign.shares) > 0 {
			fmt.Fprintf(w, "\t%s", t.foreign.sharesText())
		}
		fmt.Fprintln(w)
		return
	}
	if n.Parent != nil {
		fmt.Fprintf(w, "%s%s/\n", indent, n.Name)
		depth++
	}
	for _, c := range sortedChildren(n) {
		listTree(w, ts, c, depth, sharded)
	}
}

type jsonTensor struct {
	Key     string    `json:"key"`
	Path    string    `json:"path"`
	DType   string    `json:"dtype"`
	Shape   []uint64  `json:"shape"`
	Bytes   uint64    `json:"bytes"`
	Offsets [2]uint64 `json:"data_offsets"`
	Shard   string    `json:"shard"`
	// A foreign checkpoint's: its own type and logical shape (GGUF
	// "Q4_K"), the keys it shares storage with (tied weights).
	Type      string   `json:"type,omitempty"`
	TypeShape []uint64 `json:"type_shape,omitempty"`
	Shares    []string `json:"shares_storage_with,omitempty"`
}

func listJSON(w io.Writer, ts []lsTensor, top *tree.Node) error {
	out := []jsonTensor{}
	walk(top, func(n *tree.Node) {
		if n.IsDir() {
			return
		}
		t := ts[n.Tensor]
		jt := jsonTensor{Key: t.Key, Path: n.Path(), DType: t.DType.String(), Shape: t.Shape, Bytes: t.Size(), Offsets: [2]uint64{t.Begin, t.End}, Shard: t.shard}
		if f := t.foreign; f != nil {
			jt.Type, jt.TypeShape, jt.Shares = f.typ, f.typeShape, f.shares
		}
		out = append(out, jt)
	})
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
