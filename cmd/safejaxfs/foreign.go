package main

import (
	"fmt"
	"strings"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/formats"
)

// Checkpoints in other formats (Flax msgpack, PyTorch, numpy, GGUF) are
// read through the formats package: ls and verify see them as one
// safetensors header would describe them (checkpoint.Headers), plus what
// only their format knows (a GGUF type, storages shared between tensors).

// foreignNote is what ls shows of a foreign tensor beyond its header entry.
type foreignNote struct {
	typ       string
	typeShape []uint64
	shares    []string // the other keys of its storage
	tied      bool     // they are the same bytes (not other views)
}

func (n *foreignNote) sharesText() string {
	what := "shares storage with"
	if n.tied {
		what = "tied with"
	}
	return what + " " + strings.Join(n.shares, ", ")
}

// attachForeign notes on ts (the tensors of file, in its order) their
// types and shared storages.
func attachForeign(ts []lsTensor, file *formats.File) {
	if file == nil {
		return
	}
	for i := range ts {
		t := &file.Tensors[i]
		ts[i].foreign = &foreignNote{typ: t.Type, typeShape: t.TypeShape}
	}
	for _, g := range formats.SharedStorages(file.Tensors) {
		for _, i := range g {
			n := ts[i].foreign
			n.tied = true
			for _, j := range g {
				if j != i {
					n.shares = append(n.shares, file.Tensors[j].Key)
					n.tied = n.tied && file.SameView(i, j)
				}
			}
		}
	}
}

// dtypeName is what ls shows as the dtype: a foreign type by its name.
func (t *lsTensor) dtypeName() string {
	if t.foreign != nil && t.foreign.typ != "" {
		return t.foreign.typ
	}
	return t.DType.String()
}

func (t *lsTensor) shape() []uint64 {
	if t.foreign != nil && t.foreign.typ != "" {
		return t.foreign.typeShape
	}
	return t.Shape
}

// verifyForeign reports a foreign checkpoint that opened: every structural
// rule of its format was checked then.
func verifyForeign(shown string, file *formats.File) error {
	var data int64
	for i := range file.Tensors {
		data += file.Tensors[i].Size
	}
	fmt.Printf("%s: ok, %s, %s, %d bytes of tensor data, %s (read-only: convert it to edit)\n",
		shown, file.Format, plural(len(file.Tensors), "tensor"), data, nouns(len(file.Metadata), "metadata entry", "metadata entries"))
	for _, g := range formats.SharedStorages(file.Tensors) {
		keys := make([]string, len(g))
		tied := true
		for k, i := range g {
			keys[k] = file.Tensors[i].Key
			tied = tied && file.SameView(g[0], i)
		}
		what := "views of one storage"
		if tied {
			what = "tied (the same tensor)"
		}
		fmt.Printf("  %s: %s\n", what, strings.Join(keys, ", "))
	}
	return nil
}

// explainOpen is the error for a checkpoint that failed to open: one
// naming what the file is, when it is recognisably something else.
func explainOpen(ckpt string, err error) error {
	return formats.Explain(ckpt, err)
}

// noticeForeign tells the user a foreign checkpoint is mounted read-only,
// and how to get an editable one, unless read-only was asked for.
func noticeForeign(ck *checkpoint.Checkpoint, readOnly bool, logger *daemonLog) {
	if ck.Format() == "" || readOnly {
		return
	}
	logger.notice("%s is a %s checkpoint: mounting read-only (to edit it, convert it: safejaxfs convert %s %s)",
		ck.Path(), ck.Format(), ck.Path(), convertedName(ck.Path()))
}

// convertedName suggests the .safetensors name for a converted checkpoint.
func convertedName(p string) string {
	base := p
	if i := strings.LastIndexByte(base, '.'); i > strings.LastIndexByte(base, '/')+0 && i > 0 {
		base = base[:i]
	}
	return base + ".safetensors"
}
