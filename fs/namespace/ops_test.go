package namespace

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/tree"
)

// Every operation and the refusals rename(2), unlink(2) and friends make,
// as a table: each step's error (nil: must succeed), then the layout the
// steps leave, which the file written back must hold too.
func TestOperations(t *testing.T) {
	const flax = "batch_stats/ batch_stats/BatchNorm_0/ batch_stats/BatchNorm_0/mean=batch_stats.BatchNorm_0.mean params/ params/Dense_0/ params/Dense_0/bias=params.Dense_0.bias params/Dense_0/kernel=params.Dense_0.kernel params/Dense_1/ params/Dense_1/bias=params.Dense_1.bias params/Dense_1/kernel=params.Dense_1.kernel"
	type step struct {
		op   string
		want error
	}
	tests := []struct {
		name  string
		steps []step
		want  string // the layout after, "" = unchanged
	}{
		{"tar x: create in a new directory", []step{
			{"mkdir params/Dense_2", nil}, {"create params/Dense_2/kernel", nil},
		}, strings.Replace(flax, "params/Dense_1/kernel=params.Dense_1.kernel", "params/Dense_1/kernel=params.Dense_1.kernel params/Dense_2/ params/Dense_2/kernel=params.Dense_2.kernel", 1)},
		{"create over an existing name", []step{{"create params/Dense_0/kernel", tree.ErrExist}}, ""},
		{"create a reserved root name", []step{{"create __metadata__", tree.ErrReserved}}, ""},
		{"create an invalid name", []step{{"create params/..", tree.ErrInvalidName}}, ""},
		{"create in a file", []step{{"create params/Dense_0/kernel/x", tree.ErrNotDir}}, ""},
		{"mkdir over a file", []step{{"mkdir params/Dense_0/kernel", tree.ErrExist}}, ""},
		{"rm", []step{{"unlink params/Dense_0/kernel", nil}},
			strings.Replace(flax, " params/Dense_0/kernel=params.Dense_0.kernel", "", 1)},
		{"rm of a directory", []step{{"unlink params/Dense_0", tree.ErrIsDir}}, ""},
		{"rm of nothing", []step{{"unlink params/nothing", ErrNotExist}}, ""},
		{"rmdir of a full directory", []step{{"rmdir params/Dense_0", tree.ErrNotEmpty}}, ""},
		{"rmdir of a file", []step{{"rmdir params/Dense_0/bias", tree.ErrNotDir}}, ""},
		{"rm -r", []step{
			{"unlink params/Dense_0/kernel", nil}, {"unlink params/Dense_0/bias", nil}, {"rmdir params/Dense_0", nil},
		}, "batch_stats/ batch_stats/BatchNorm_0/ batch_stats/BatchNorm_0/mean=batch_stats.BatchNorm_0.mean params/ params/Dense_1/ params/Dense_1/bias=params.Dense_1.bias params/Dense_1/kernel=params.Dense_1.kernel"},
		{"mv a file", []step{{"mv params/Dense_0/kernel params/Dense_0/w", nil}},
			strings.Replace(flax, "params/Dense_0/kernel=params.Dense_0.kernel", "params/Dense_0/w=params.Dense_0.w", 1)},
		{"mv a directory renames every key under it", []step{{"mv params/Dense_1 params/Out", nil}},
			strings.Replace(flax, "params/Dense_1/ params/Dense_1/bias=params.Dense_1.bias params/Dense_1/kernel=params.Dense_1.kernel", "params/Out/ params/Out/bias=params.Out.bias params/Out/kernel=params.Out.kernel", 1)},
		{"rsync: a temp file renamed over the tensor", []step{
			{"create params/Dense_0/.kernel.XXXX", nil}, {"mv params/Dense_0/.kernel.XXXX params/Dense_0/kernel", nil},
		}, ""},
		{"mv -T: RENAME_NOREPLACE onto a file", []step{{"mv! params/Dense_0/kernel params/Dense_0/bias", tree.ErrExist}}, ""},
		{"a file over a directory", []step{{"mv params/Dense_0/kernel params/Dense_1", tree.ErrIsDir}}, ""},
		{"a directory over a file", []step{{"mv params/Dense_1 params/Dense_0/kernel", tree.ErrNotDir}}, ""},
		{"a directory over a full directory", []step{{"mv params/Dense_1 params/Dense_0", tree.ErrNotEmpty}}, ""},
		{"a directory over an empty one", []step{{"mkdir E", nil}, {"mv params/Dense_1 E", nil}},
			strings.Replace(flax, "params/Dense_1/ params/Dense_1/bias=params.Dense_1.bias params/Dense_1/kernel=params.Dense_1.kernel", "", 1) + " E/ E/bias=E.bias E/kernel=E.kernel"},
		{"a directory into itself", []step{{"mv params params/Dense_0/p", tree.ErrIntoSelf}}, ""},
		{"onto itself", []step{{"mv params/Dense_0 params/Dense_0", nil}}, ""},
		{"swap by three renames", []step{
			{"mv params/Dense_0 params/tmp", nil}, {"mv params/Dense_1 params/Dense_0", nil}, {"mv params/tmp params/Dense_1", nil},
		}, flax},
		{"an editor's temp file saved as a new tensor", []step{
			{"create params/Dense_0/.w.tmp", nil}, {"npy params/Dense_0/.w.tmp params/Dense_0/w", nil},
		}, strings.Replace(flax, "params/Dense_0/kernel=params.Dense_0.kernel", "params/Dense_0/kernel=params.Dense_0.kernel params/Dense_0/w=params.Dense_0.w", 1)},
		{"an editor's temp file saved over a tensor", []step{
			{"create params/Dense_0/.k.tmp", nil}, {"npy params/Dense_0/.k.tmp params/Dense_0/kernel", nil},
		}, ""},
		{"an editor's temp file saved over a directory", []step{
			{"create params/.d.tmp", nil}, {"npy params/.d.tmp params/Dense_1", tree.ErrExist},
		}, "params/.d.tmp=params..d.tmp " + flax},
		{"tar x after rm: same keys again", []step{
			{"unlink params/Dense_0/kernel", nil}, {"create params/Dense_0/kernel", nil},
		}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, flaxKeys)
			if got := f.layout(); got != flax {
				t.Fatalf("start:\n%s\nwant\n%s", got, flax)
			}
			for _, s := range tc.steps {
				before, keys := f.layout(), f.checkpointKeys()
				err := f.do(s.op)
				if !errors.Is(err, s.want) || (s.want == nil) != (err == nil) {
					t.Fatalf("%s: %v, want %v", s.op, err, s.want)
				}
				if err := f.ns.Check(); err != nil {
					t.Fatalf("after %s: %v", s.op, err)
				}
				if err != nil && (f.layout() != before || !slices.Equal(f.checkpointKeys(), keys)) {
					t.Fatalf("refused %s changed the namespace:\n%s\nto\n%s", s.op, before, f.layout())
				}
			}
			want := tc.want
			if want == "" {
				want = flax
			}
			fields := strings.Fields(want)
			slices.Sort(fields)
			want = strings.Join(fields, " ")
			got := f.layout()
			if got != want {
				t.Fatalf("layout\n%s\nwant\n%s", got, want)
			}
			// The keys written back are the tree's.
			var treeKeys []string
			for _, l := range strings.Fields(got) {
				if _, k, ok := strings.Cut(l, "="); ok {
					treeKeys = append(treeKeys, k)
				}
			}
			slices.Sort(treeKeys)
			if written := f.writtenKeys(); !slices.Equal(written, treeKeys) {
				t.Errorf("written back %q, tree %q", written, treeKeys)
			}
		})
	}
}

// A change the checkpoint refuses (a disk error while it is logged, a key
// over the header's limit) or a create whose tensor cannot be made leaves
// both the tree and the checkpoint as they were: no compensating undo.
func TestRefusedByTheCheckpoint(t *testing.T) {
	for _, op := range []string{
		"unlink params/Dense_0/kernel",
		"mv params/Dense_0/kernel params/Dense_0/w",
		"mv params/Dense_0 params/D",
		"mv params/Dense_0/kernel params/Dense_0/bias",
		"create params/new",
	} {
		t.Run(op, func(t *testing.T) {
			f := newFixture(t, flaxKeys)
			before := f.state()
			f.store.failNext = syscall.EIO
			var err error
			if strings.HasPrefix(op, "create") {
				err = f.ns.Update(func(tx *Tx) error {
					_, err := tx.Create(f.ns.Root().Lookup("params"), "new", func(string) (checkpoint.ID, error) { return 0, syscall.EIO })
					return err
				})
			} else {
				err = f.do(op)
			}
			if !errors.Is(err, syscall.EIO) {
				t.Fatalf("%v, want EIO", err)
			}
			f.refusedCleanly(t, before)
			if len(f.ns.types.removed)+len(f.ns.types.created) != 0 {
				t.Errorf("the type rules were told of a change that did not happen: %+v", &f.ns.types)
			}
		})
	}
}

// rsync renames its temp file over a tensor of the same size: the file
// takes the tensor's type in the same step, and Types hears of the removal.
func TestRenameAdopts(t *testing.T) {
	f := newFixture(t, flaxKeys)
	kernel := f.node("params/Dense_0/kernel")
	old, _ := f.ck.Info(checkpoint.ID(kernel.Tensor))
	var tmp checkpoint.ID
	err := f.ns.Update(func(tx *Tx) error {
		n, err := tx.Create(kernel.Parent, ".kernel.tmp", f.ck.Create)
		if err != nil {
			return err
		}
		tmp = checkpoint.ID(n.Tensor)
		return f.ck.WriteAt(tmp, []byte{9, 9, 9, 9}, 0)
	})
	if err != nil {
		t.Fatal(err)
	}
	var r Renamed
	err = f.ns.Update(func(tx *Tx) error {
		var err error
		r, err = tx.Rename(tx.Lookup(kernel.Parent, ".kernel.tmp"), kernel.Parent, "kernel", false)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !r.HasReplace || r.Replaced.Key != "params.Dense_0.kernel" || r.Adopted == nil || r.Keys[tmp] != "params.Dense_0.kernel" {
		t.Errorf("renamed %+v", r)
	}
	info, _ := f.ck.Info(tmp)
	if info.Key != old.Key || info.DType != old.DType || !slices.Equal(info.Shape, old.Shape) {
		t.Errorf("after: %+v, want the type of %+v", info, old)
	}
	if _, ok := f.ns.types.removed["params.Dense_0.kernel"]; !ok || !f.ns.IsNew(tmp) {
		t.Errorf("type rules after: %+v", &f.ns.types)
	}
	if err := f.ns.Check(); err != nil {
		t.Fatal(err)
	}
}

// Operations from many goroutines at once (tar, rsync and rm in parallel on
// one mount) keep the tree and the checkpoint in agreement; -race checks
// the locking.
func TestConcurrentOperations(t *testing.T) {
	f := newFixture(t, flaxKeys)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			name := string(rune('a' + g))
			for i := range 50 {
				switch i % 5 {
				case 0:
					f.do("mkdir " + name)
				case 1:
					f.do("create " + name + "/x")
				case 2:
					f.do("mv " + name + "/x " + name + "/y")
				case 3:
					f.do("mv " + name + " " + name + "2")
					f.do("mv " + name + "2 " + name)
				case 4:
					f.do("unlink " + name + "/y")
					f.do("rmdir " + name)
				}
				f.ns.View(func(*tree.Tree) {})
			}
		})
	}
	wg.Wait()
	if err := f.ns.Check(); err != nil {
		t.Fatal(err)
	}
}

// What a name that is no entry stands for, and what wins when names
// collide: a real entry over any view, the .npy view of <base>.f32 over
// the float32 view of <base>, no view of a directory or of a tensor whose
// dtype has none.
func TestViewOf(t *testing.T) {
	f := newFixtureSep(t, []string{"w", "w.f32", "q", "q.f32.npy", "d/x", "nonpy", "x.f32"}, "/")
	noNPY := checkpoint.ID(f.node("nonpy").Tensor)
	f.ns.views = ViewRules{
		HasNPY: func(id checkpoint.ID) bool { return id != noNPY },
		HasF32: func(id checkpoint.ID) bool { return true },
	}
	for _, c := range []struct {
		name string
		of   string // the view's tensor path ("": none)
		kind ViewKind
	}{
		{"w.npy", "w", NPYView},
		{"w.f32.npy", "w.f32", NPYView}, // the .npy view of the tensor named w.f32
		{"q.f32.npy", "", NoView},       // a real entry
		{"q.npy", "q", NPYView},
		{"d.npy", "", NoView},     // a directory has no view
		{"d.f32.npy", "", NoView}, // nor a float32 one
		{"nonpy.npy", "", NoView}, // a dtype numpy has no form for
		{"nonpy.f32.npy", "nonpy", F32View},
		{"x.f32.npy", "x.f32", NPYView}, // x.f32 is a tensor, x is nothing
		{"absent.npy", "", NoView},
		{".npy", "", NoView},
		{".f32.npy", "", NoView},
		{"w", "", NoView},
	} {
		var got *tree.Node
		var kind ViewKind
		f.ns.View(func(tr *tree.Tree) { got, kind = f.ns.ViewOf(tr.Root, c.name) })
		path := ""
		if got != nil {
			path = got.Path()
		}
		if path != c.of || kind != c.kind {
			t.Errorf("%s: %q %v, want %q %v", c.name, path, kind, c.of, c.kind)
		}
	}
}

// Where a closed upload lands: the tensor at the name now (the last close
// wins), the tensor it was opened on wherever a rename took it, a new
// tensor at the name's key; never a directory or a removed tensor.
func TestTarget(t *testing.T) {
	f := newFixture(t, flaxKeys)
	dense0 := f.node("params/Dense_0")
	kernel := checkpoint.ID(f.node("params/Dense_0/kernel").Tensor)
	type result struct {
		id      checkpoint.ID
		key     string
		replace bool
		err     error
	}
	target := func(dir *tree.Node, name string, opened checkpoint.ID, exists bool) (r result) {
		f.ns.Update(func(tx *Tx) error {
			r.id, _, r.key, r.replace, r.err = tx.Target(dir, name, opened, exists)
			return nil
		})
		return r
	}
	if r := target(dense0, "new", 0, false); r.err != nil || r.replace || r.key != "params.Dense_0.new" {
		t.Errorf("a new name: %+v", r)
	}
	if r := target(dense0, "kernel", 0, false); r.err != nil || !r.replace || r.id != kernel || r.key != "params.Dense_0.kernel" {
		t.Errorf("the tensor at the name: %+v", r)
	}
	if r := target(f.node("params"), "Dense_0", 0, false); !errors.Is(r.err, tree.ErrIsDir) {
		t.Errorf("a directory at the name: %+v", r)
	}
	if err := f.do("mv params/Dense_0/kernel params/w"); err != nil {
		t.Fatal(err)
	}
	if r := target(dense0, "kernel", kernel, true); r.err != nil || !r.replace || r.id != kernel || r.key != "params.w" {
		t.Errorf("the tensor opened, renamed since: %+v", r)
	}
	if err := f.do("unlink params/w"); err != nil {
		t.Fatal(err)
	}
	if r := target(dense0, "kernel", kernel, true); !errors.Is(r.err, ErrNotExist) {
		t.Errorf("the tensor opened, removed since: %+v", r)
	}
}

// A temp file whose tensor cannot be made (the commit failed) stays as it
// was, and so does everything else: the make step is the only one that
// can fail, and the tree changes only after it.
func TestConsumeRefused(t *testing.T) {
	f := newFixture(t, flaxKeys)
	if err := f.do("create params/.w.tmp"); err != nil {
		t.Fatal(err)
	}
	before := f.state()
	err := f.ns.Update(func(tx *Tx) error {
		dir := f.ns.Root().Lookup("params")
		_, err := tx.Consume(dir.Lookup(".w.tmp"), dir, "w", func(string) (checkpoint.ID, error) { return 0, syscall.EIO })
		return err
	})
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("%v, want EIO", err)
	}
	f.refusedCleanly(t, before)
}
