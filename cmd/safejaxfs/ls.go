package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/safejaxfs/safejaxfs/fs"
	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/tree"
)

func runLs(args []string) error {
	fl := newFlags("ls", "[flags] CHECKPOINT [PREFIX]",
		"List the tensors of CHECKPOINT as the tree a mount would show, with dtype, shape\nand size, without mounting. PREFIX limits the listing to a subtree, given as a\npath (params/Dense_0) or a key prefix (params.Dense_0).")
	sep := fl.String("sep", ".", "key separator, as for mount")
	asJSON := fl.Bool("json", false, "print a JSON array of {key, path, dtype, shape, bytes, offsets}")
	rest, err := parseFlags(fl, args, 1, 2)
	if err != nil {
		return err
	}
	if *sep == "" {
		return fail(exitUsage, "--sep must not be empty")
	}
	if err := checkCheckpoint(rest[0]); err != nil {
		return err
	}
	f, err := safetensors.Open(rest[0])
	if err != nil {
		return fail(exitInvalid, "%v", err)
	}
	defer f.Close()
	keys := make([]string, len(f.Tensors))
	for i := range f.Tensors {
		keys[i] = f.Tensors[i].Key
	}
	t, err := tree.Build(keys, tree.Options{Sep: *sep, Reserved: []string{fs.MetadataName}})
	if err != nil {
		return fail(exitUsage, "%v", err)
	}
	top := t.Root
	if len(rest) == 2 {
		if top = findPrefix(t, rest[1]); top == nil {
			return fail(exitInvalid, "no tensor or directory %q in %s", rest[1], rest[0])
		}
	}
	if *asJSON {
		return listJSON(os.Stdout, f, top)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	listTree(w, f, top, 0)
	return w.Flush()
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

func listTree(w io.Writer, f *safetensors.File, n *tree.Node, depth int) {
	indent := strings.Repeat("  ", depth)
	if !n.IsDir() {
		t := &f.Tensors[n.Tensor]
		fmt.Fprintf(w, "%s%s\t%s\t%s\t%d\n", indent, n.Name, t.DType, shapeString(t.Shape), t.Size())
		return
	}
	if n.Parent != nil {
		fmt.Fprintf(w, "%s%s/\n", indent, n.Name)
		depth++
	}
	for _, c := range sortedChildren(n) {
		listTree(w, f, c, depth)
	}
}

func shapeString(shape []uint64) string {
	parts := make([]string, len(shape))
	for i, d := range shape {
		parts[i] = fmt.Sprint(d)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

type jsonTensor struct {
	Key     string    `json:"key"`
	Path    string    `json:"path"`
	DType   string    `json:"dtype"`
	Shape   []uint64  `json:"shape"`
	Bytes   uint64    `json:"bytes"`
	Offsets [2]uint64 `json:"data_offsets"`
}

func listJSON(w io.Writer, f *safetensors.File, top *tree.Node) error {
	out := []jsonTensor{}
	walk(top, func(n *tree.Node) {
		if n.IsDir() {
			return
		}
		t := &f.Tensors[n.Tensor]
		out = append(out, jsonTensor{t.Key, n.Path(), t.DType.String(), t.Shape, t.Size(), [2]uint64{t.Begin, t.End}})
	})
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
