package namespace

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
)

// The tests here run the namespace over a real checkpoint file, without
// FUSE: each case is a sequence of operations as a user's tools make them
// (tar, rsync, mv, rm -r), each checked to leave the tree and the checkpoint
// in agreement (Check, as bbolt's tests call tx.Check), and the file
// written back at the end is read again with the safetensors reader, the
// independent truth.

var flaxKeys = []string{
	"params.Dense_0.kernel", "params.Dense_0.bias",
	"params.Dense_1.kernel", "params.Dense_1.bias",
	"batch_stats.BatchNorm_0.mean",
}

// fixture is a namespace over a fresh checkpoint with keys (4 bytes of U8
// each).
type fixture struct {
	t      *testing.T
	path   string
	ck     *checkpoint.Checkpoint
	ns     *Namespace
	store  *faultyStore
	closed bool
}

func newFixture(t *testing.T, keys []string) *fixture { return newFixtureSep(t, keys, "") }

// newFixtureSep is newFixture with keys split at sep ("" = ".").
func newFixtureSep(t *testing.T, keys []string, sep string) *fixture {
	t.Helper()
	var src []safetensors.Source
	for i, k := range keys {
		src = append(src, safetensors.Source{Key: k, DType: safetensors.U8, Shape: []uint64{4}, Data: safetensors.Bytes{byte(i), 1, 2, 3}})
	}
	var buf bytes.Buffer
	if _, err := safetensors.Write(&buf, src, nil); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "model.safetensors")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	ck, err := checkpoint.Open(path, checkpoint.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, path: path, ck: ck, store: &faultyStore{Checkpoint: ck}}
	t.Cleanup(func() {
		if !f.closed {
			ck.Close()
		}
	})
	tr, err := tree.Build(ck.Keys(), tree.Options{Sep: sep, Reserved: []string{"__metadata__"}})
	if err != nil {
		t.Fatal(err)
	}
	f.ns = New(tr, f.store, ViewRules{})
	return f
}

// faultyStore is the checkpoint with an error injected into its next
// Delete or Move.
type faultyStore struct {
	*checkpoint.Checkpoint
	failNext error
}

func (s *faultyStore) Delete(id checkpoint.ID) error {
	if err := s.take(); err != nil {
		return err
	}
	return s.Checkpoint.Delete(id)
}

func (s *faultyStore) Move(r map[checkpoint.ID]string, gone []checkpoint.ID, adopt *checkpoint.Retype) error {
	if err := s.take(); err != nil {
		return err
	}
	return s.Checkpoint.Move(r, gone, adopt)
}

func (s *faultyStore) take() error {
	err := s.failNext
	s.failNext = nil
	return err
}

// layout is the files as sorted "path=key" lines, directories as "path/".
func (f *fixture) layout() string {
	var lines []string
	f.ns.View(func(t *tree.Tree) {
		var walk func(n *tree.Node)
		walk = func(n *tree.Node) {
			for _, c := range n.Children() {
				if c.IsDir() {
					lines = append(lines, c.Path()+"/")
					walk(c)
				} else {
					lines = append(lines, c.Path()+"="+c.Key)
				}
			}
		}
		walk(t.Root)
	})
	slices.Sort(lines)
	return strings.Join(lines, " ")
}

func (f *fixture) node(path string) *tree.Node {
	var n *tree.Node
	f.ns.View(func(t *tree.Tree) { n = t.Find(path) })
	return n
}

// split is path's directory node (nil if absent) and last name.
func (f *fixture) split(path string) (*tree.Node, string) {
	dir, name := filepath.Split(path)
	return f.node(strings.TrimSuffix(dir, "/")), name
}

// do runs one operation written as "op arg [arg]":
//
//	create PATH      a new empty tensor (tar x, shell >)
//	mkdir PATH
//	unlink PATH
//	rmdir PATH
//	mv SRC DST       rename(2), replacing
//	mv! SRC DST      with RENAME_NOREPLACE
func (f *fixture) do(op string) error {
	w := strings.Fields(op)
	return f.ns.Update(func(tx *Tx) error {
		dir, name := f.splitTx(tx, w[1])
		if dir == nil {
			return ErrNotExist
		}
		switch w[0] {
		case "create":
			_, err := tx.Create(dir, name, f.ck.Create)
			return err
		case "mkdir":
			_, err := tx.Mkdir(dir, name)
			return err
		case "unlink":
			_, err := tx.Unlink(dir, name)
			return err
		case "rmdir":
			return tx.Rmdir(dir, name)
		case "npy":
			// An editor's temp file renamed to a .npy name: it becomes
			// the tensor there (new, or replacing one), its own goes.
			src := tx.Lookup(dir, name)
			if src == nil {
				return ErrNotExist
			}
			gone := checkpoint.ID(src.Tensor)
			dst, newName := f.splitTx(tx, w[2])
			data := []byte{1, 2, 3, 4}
			if old := tx.Lookup(dst, newName); old != nil && !old.IsDir() {
				target := checkpoint.ID(old.Tensor)
				_, err := tx.Consume(src, nil, "", func(string) (checkpoint.ID, error) {
					return target, f.ck.ReplaceSyncDeleting(target, safetensors.F32, []uint64{1}, data, gone)
				})
				return err
			}
			_, err := tx.Consume(src, dst, newName, func(key string) (checkpoint.ID, error) {
				return f.ck.PutNewSyncDeleting(key, safetensors.F32, []uint64{1}, data, gone)
			})
			return err
		case "mv", "mv!":
			src := tx.Lookup(dir, name)
			if src == nil {
				return ErrNotExist
			}
			dst, newName := f.splitTx(tx, w[2])
			if dst == nil {
				return ErrNotExist
			}
			_, err := tx.Rename(src, dst, newName, w[0] == "mv!")
			return err
		}
		return fmt.Errorf("unknown op %q", op)
	})
}

func (f *fixture) splitTx(tx *Tx, path string) (*tree.Node, string) {
	dir, name := filepath.Split(path)
	return tx.Tree().Find(strings.TrimSuffix(dir, "/")), name
}

// state is what a refused operation must leave as it was: the tree's
// layout and the checkpoint's live keys.
type state struct {
	layout string
	keys   []string
}

func (f *fixture) state() state { return state{f.layout(), f.checkpointKeys()} }

// refusedCleanly fails t unless the namespace checks and is still s.
func (f *fixture) refusedCleanly(t *testing.T, s state) {
	t.Helper()
	if err := f.ns.Check(); err != nil {
		t.Fatal(err)
	}
	if f.layout() != s.layout || !slices.Equal(f.checkpointKeys(), s.keys) {
		t.Fatalf("changed:\n%s\nto\n%s", s.layout, f.layout())
	}
}

// checkpointKeys are the live keys of the checkpoint, sorted.
func (f *fixture) checkpointKeys() []string {
	var keys []string
	for _, k := range f.ck.Keys() {
		if k != "" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// writtenKeys closes the checkpoint (writing the edits back) and reads the
// file's keys with the safetensors reader.
func (f *fixture) writtenKeys() []string {
	f.t.Helper()
	f.closed = true
	if err := f.ck.Close(); err != nil {
		f.t.Fatal(err)
	}
	sf, err := safetensors.Open(f.path)
	if err != nil {
		f.t.Fatal(err)
	}
	defer sf.Close()
	var keys []string
	for _, tn := range sf.Tensors {
		keys = append(keys, tn.Key)
	}
	slices.Sort(keys)
	return keys
}
