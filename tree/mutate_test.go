package tree

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

var flaxKeys = []string{
	"params.Dense_0.kernel",
	"params.Dense_0.bias",
	"params.Dense_1.kernel",
	"batch_stats.BatchNorm_0.mean",
}

func keysOf(nodes []*Node) []string {
	var ks []string
	for _, n := range nodes {
		ks = append(ks, n.Key)
	}
	return ks
}

func find(t *testing.T, tr *Tree, path string) *Node {
	t.Helper()
	n := tr.Find(path)
	if n == nil {
		t.Fatalf("no %q in\n%s", path, layout(tr))
	}
	return n
}

func TestChildKey(t *testing.T) {
	t.Parallel()
	tr := mustBuild(t, flaxKeys, Options{})
	if k := tr.ChildKey(tr.Root, "opt"); k != "opt" {
		t.Errorf("root child key %q", k)
	}
	if k := tr.ChildKey(find(t, tr, "params/Dense_0"), "scale"); k != "params.Dense_0.scale" {
		t.Errorf("child key %q", k)
	}
	tr = mustBuild(t, []string{"a::b::c"}, Options{Sep: "::"})
	if k := tr.ChildKey(find(t, tr, "a/b"), "d"); k != "a::b::d" {
		t.Errorf("child key with Sep :: %q", k)
	}
}

func TestAddFile(t *testing.T) {
	t.Parallel()
	tr := mustBuild(t, flaxKeys, Options{Reserved: []string{"__metadata__"}})
	dense := find(t, tr, "params/Dense_0")
	next := tr.next
	n, err := tr.AddFile(dense, "scale", tr.ChildKey(dense, "scale"), 7)
	if err != nil {
		t.Fatal(err)
	}
	if n.ID != next || n.Parent != dense || n.Key != "params.Dense_0.scale" || n.Tensor != 7 || n.IsDir() {
		t.Errorf("new file %+v", n)
	}
	if tr.Find("params/Dense_0/scale") != n {
		t.Error("new file not found")
	}
	// A reserved name is fine below the root.
	if _, err := tr.AddFile(dense, "__metadata__", "params.Dense_0.__metadata__", 8); err != nil {
		t.Error(err)
	}
	checkInvariants(t, tr)
}

// Every refusal leaves the tree as it was.
func TestAddRefusals(t *testing.T) {
	t.Parallel()
	tr := mustBuild(t, flaxKeys, Options{Reserved: []string{"__metadata__"}})
	before := shape(tr)
	dense := find(t, tr, "params/Dense_0")
	kernel := find(t, tr, "params/Dense_0/kernel")
	removed, _ := tr.AddDir(tr.Root, "gone")
	if err := tr.Remove(removed); err != nil {
		t.Fatal(err)
	}
	before = shape(tr)
	next := tr.next
	tests := []struct {
		dir  *Node
		name string
		want error
	}{
		{dense, "kernel", ErrExist},
		{tr.Root, "params", ErrExist},
		{dense, "", ErrInvalidName},
		{dense, ".", ErrInvalidName},
		{dense, "..", ErrInvalidName},
		{dense, "a/b", ErrInvalidName},
		{dense, "a\x00b", ErrInvalidName},
		{dense, strings.Repeat("x", 256), ErrInvalidName},
		{tr.Root, "__metadata__", ErrReserved},
		{kernel, "x", ErrNotDir},
		{removed, "x", ErrNotInTree},
		{nil, "x", ErrNotInTree},
	}
	for _, tc := range tests {
		if _, err := tr.AddFile(tc.dir, tc.name, "k", 0); !errors.Is(err, tc.want) {
			t.Errorf("AddFile(%q): %v, want %v", tc.name, err, tc.want)
		}
		if _, err := tr.AddDir(tc.dir, tc.name); !errors.Is(err, tc.want) {
			t.Errorf("AddDir(%q): %v, want %v", tc.name, err, tc.want)
		}
	}
	if after := shape(tr); after != before || tr.next != next {
		t.Errorf("refusals changed the tree:\n%s\nvs\n%s", before, after)
	}
	// The longest valid name is accepted.
	if _, err := tr.AddFile(dense, strings.Repeat("x", 255), "k", 0); err != nil {
		t.Error(err)
	}
}

func TestAddDir(t *testing.T) {
	t.Parallel()
	tr := mustBuild(t, flaxKeys, Options{})
	params := find(t, tr, "params")
	d, err := tr.AddDir(params, "Dense_2")
	if err != nil {
		t.Fatal(err)
	}
	if !d.IsDir() || d.Key != "params.Dense_2" || d.Tensor != -1 || d.Len() != 0 {
		t.Errorf("new dir %+v", d)
	}
	f, err := tr.AddFile(d, "kernel", tr.ChildKey(d, "kernel"), 9)
	if err != nil {
		t.Fatal(err)
	}
	if f.Key != "params.Dense_2.kernel" || tr.Find("params/Dense_2/kernel") != f {
		t.Errorf("file in new dir: %+v", f)
	}
	top, _ := tr.AddDir(tr.Root, "opt_state")
	if top.Key != "opt_state" {
		t.Errorf("root dir key %q", top.Key)
	}
	checkInvariants(t, tr)
}

func TestRemove(t *testing.T) {
	t.Parallel()
	tr := mustBuild(t, flaxKeys, Options{})
	dense1 := find(t, tr, "params/Dense_1")
	kernel := find(t, tr, "params/Dense_1/kernel")
	if err := tr.Remove(dense1); !errors.Is(err, ErrNotEmpty) {
		t.Errorf("remove non-empty dir: %v", err)
	}
	if err := tr.Remove(tr.Root); !errors.Is(err, ErrRoot) {
		t.Errorf("remove root: %v", err)
	}
	if err := tr.Remove(nil); !errors.Is(err, ErrNotInTree) {
		t.Errorf("remove nil: %v", err)
	}
	if err := tr.Remove(kernel); err != nil {
		t.Fatal(err)
	}
	if kernel.Parent != nil || tr.Find("params/Dense_1/kernel") != nil || dense1.Len() != 0 {
		t.Error("file still there")
	}
	if err := tr.Remove(kernel); !errors.Is(err, ErrNotInTree) {
		t.Errorf("second remove: %v", err)
	}
	if err := tr.Remove(dense1); err != nil {
		t.Fatal(err)
	}
	// A new node with the same name gets a fresh ID.
	again, _ := tr.AddDir(find(t, tr, "params"), "Dense_1")
	if again.ID == dense1.ID || again.ID <= kernel.ID {
		t.Errorf("ID %d reused (old %d, %d)", again.ID, dense1.ID, kernel.ID)
	}
	if got := keysOf(tr.Files()); !slices.Equal(got, []string{"batch_stats.BatchNorm_0.mean", "params.Dense_0.bias", "params.Dense_0.kernel"}) {
		t.Errorf("files %q", got)
	}
	checkInvariants(t, tr)
}

func TestMoveFile(t *testing.T) {
	t.Parallel()
	tr := mustBuild(t, flaxKeys, Options{})
	kernel := find(t, tr, "params/Dense_0/kernel")
	id := kernel.ID
	got, err := tr.Move(kernel, kernel.Parent, "w")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != kernel || kernel.Key != "params.Dense_0.w" || kernel.ID != id || kernel.Name != "w" {
		t.Errorf("rename: %q, node %+v", keysOf(got), kernel)
	}
	if tr.Find("params/Dense_0/kernel") != nil || tr.Find("params/Dense_0/w") != kernel {
		t.Error("rename not reflected in lookups")
	}
	got, err = tr.Move(kernel, tr.Root, "top")
	if err != nil || len(got) != 1 || kernel.Key != "top" || kernel.Parent != tr.Root {
		t.Errorf("move to root: %v %q %+v", err, keysOf(got), kernel)
	}
	checkInvariants(t, tr)
}

func TestMoveDir(t *testing.T) {
	t.Parallel()
	tr := mustBuild(t, append(flaxKeys, "params.Dense_0.sub.x"), Options{})
	dense0 := find(t, tr, "params/Dense_0")
	sub := find(t, tr, "params/Dense_0/sub")
	bs := find(t, tr, "batch_stats")
	got, err := tr.Move(dense0, bs, "Moved")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"batch_stats.Moved.bias", "batch_stats.Moved.kernel", "batch_stats.Moved.sub.x"}
	if !slices.Equal(keysOf(got), want) {
		t.Errorf("renamed %q, want %q (path order)", keysOf(got), want)
	}
	if dense0.Key != "batch_stats.Moved" || sub.Key != "batch_stats.Moved.sub" {
		t.Errorf("dir keys %q %q", dense0.Key, sub.Key)
	}
	if tr.Find("batch_stats/Moved/sub/x") == nil || tr.Find("params/Dense_0") != nil {
		t.Errorf("tree after move:\n%s", layout(tr))
	}
	// To the root: the prefix becomes just the name.
	got, err = tr.Move(dense0, tr.Root, "D")
	if err != nil || !slices.Equal(keysOf(got), []string{"D.bias", "D.kernel", "D.sub.x"}) {
		t.Errorf("move to root: %v %q", err, keysOf(got))
	}
	checkInvariants(t, tr)
}

func TestMoveRefusals(t *testing.T) {
	t.Parallel()
	tr := mustBuild(t, append(flaxKeys, "params.Dense_0.sub.x"), Options{Reserved: []string{"__metadata__"}})
	params := find(t, tr, "params")
	dense0 := find(t, tr, "params/Dense_0")
	sub := find(t, tr, "params/Dense_0/sub")
	kernel := find(t, tr, "params/Dense_0/kernel")
	mean := find(t, tr, "batch_stats/BatchNorm_0/mean")
	before, next := shape(tr), tr.next
	tests := []struct {
		name    string
		n, dir  *Node
		newName string
		want    error
	}{
		{"into itself", dense0, dense0, "x", ErrIntoSelf},
		{"into its child", dense0, sub, "x", ErrIntoSelf},
		{"into its grandchild", params, sub, "x", ErrIntoSelf},
		{"onto an existing name", kernel, dense0, "bias", ErrExist},
		{"dir onto an existing dir", dense0, params, "Dense_1", ErrExist},
		{"to a reserved root name", dense0, tr.Root, "__metadata__", ErrReserved},
		{"bad name", kernel, dense0, "a/b", ErrInvalidName},
		{"into a file", dense0, mean, "x", ErrNotDir},
		{"the root", tr.Root, params, "x", ErrRoot},
		{"nil", nil, params, "x", ErrNotInTree},
	}
	for _, tc := range tests {
		if _, err := tr.Move(tc.n, tc.dir, tc.newName); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if after := shape(tr); after != before || tr.next != next {
		t.Errorf("refused moves changed the tree:\n%s\nvs\n%s", before, after)
	}
	// Onto itself is a no-op, as with rename(2).
	if got, err := tr.Move(kernel, dense0, "kernel"); err != nil || got != nil || shape(tr) != before {
		t.Errorf("move onto itself: %v %v", got, err)
	}
}

// A directory move that ends at the same key renames nothing.
func TestMoveSameKey(t *testing.T) {
	t.Parallel()
	tr := mustBuild(t, []string{"a.b.c"}, Options{})
	got, err := tr.Move(find(t, tr, "a/b"), tr.Root, "a.b")
	if err != nil || len(got) != 0 {
		t.Errorf("%v %q", err, keysOf(got))
	}
	if f := tr.Find("a.b/c"); f == nil || f.Key != "a.b.c" {
		t.Errorf("tree:\n%s", layout(tr))
	}
}

// Keys that mix separators: directory a/b holds "a.b.c" and "a/b/d", and its
// Key can be the prefix of only one. Moving it must still replace exactly
// the directory's part of each key.
func TestMoveMixedSeparators(t *testing.T) {
	t.Parallel()
	tr := mustBuild(t, []string{"a.b.c", "a/b/d"}, Options{})
	got, err := tr.Move(find(t, tr, "a"), tr.Root, "z")
	if err != nil || !slices.Equal(keysOf(got), []string{"z.b.c", "z/b/d"}) {
		t.Fatalf("%v %q", err, keysOf(got))
	}
	got, err = tr.Move(find(t, tr, "z/b"), tr.Root, "q")
	if err != nil || !slices.Equal(keysOf(got), []string{"q.c", "q/d"}) {
		t.Fatalf("%v %q", err, keysOf(got))
	}
	if len(tr.odd) != 0 {
		t.Errorf("keys agree again but %d still recorded as odd", len(tr.odd))
	}
	checkInvariants(t, tr)

	// A multi-byte Sep makes the two prefixes differ in length too.
	tr = mustBuild(t, []string{"a::b::c", "a/b/d"}, Options{Sep: "::"})
	got, err = tr.Move(find(t, tr, "a"), tr.Root, "zz")
	if err != nil || !slices.Equal(keysOf(got), []string{"zz::b::c", "zz/b/d"}) {
		t.Fatalf("%v %q", err, keysOf(got))
	}
	got, err = tr.Move(find(t, tr, "zz/b"), find(t, tr, "zz"), "y")
	if err != nil || !slices.Equal(keysOf(got), []string{"zz::y::c", "zz::y/d"}) {
		t.Fatalf("%v %q", err, keysOf(got))
	}
	got, err = tr.Move(find(t, tr, "zz/y"), tr.Root, "q")
	if err != nil || !slices.Equal(keysOf(got), []string{"q::c", "q/d"}) {
		t.Fatalf("%v %q", err, keysOf(got))
	}
	checkInvariants(t, tr)
}

// AddFile with a key outside its directory: moving the directory has no
// prefix to replace in it, so the key stays.
func TestMoveLooseKey(t *testing.T) {
	t.Parallel()
	tr := mustBuild(t, flaxKeys, Options{})
	dense := find(t, tr, "params/Dense_0")
	loose, _ := tr.AddFile(dense, "odd", "elsewhere.odd", 5)
	got, err := tr.Move(dense, tr.Root, "D")
	if err != nil || !slices.Equal(keysOf(got), []string{"D.bias", "D.kernel"}) || loose.Key != "elsewhere.odd" {
		t.Errorf("%v %q, loose key %q", err, keysOf(got), loose.Key)
	}
	// Moving the file itself gives it a proper key again.
	got, _ = tr.Move(loose, dense, "even")
	if len(got) != 1 || loose.Key != "D.even" {
		t.Errorf("%q", loose.Key)
	}
	if _, ok := tr.odd[loose]; ok {
		t.Error("still recorded as odd")
	}
	checkInvariants(t, tr)
}

// PlanMove decides without changing anything, its keys are the ones Apply
// makes, and replace follows rename(2): a file over a file, an empty
// directory over an empty directory, nothing else.
func TestPlanMove(t *testing.T) {
	t.Parallel()
	tr := mustBuild(t, []string{"a.b.c", "a/b/d", "a.x", "e.f", "g.h"}, Options{})
	before := shape(tr)
	p, err := tr.PlanMove(find(t, tr, "a"), tr.Root, "z", nil)
	if err != nil {
		t.Fatal(err)
	}
	if shape(tr) != before {
		t.Fatalf("PlanMove changed the tree:\n%s", layout(tr))
	}
	planned := slices.Clone(p.Keys)
	got := tr.Apply(p)
	if !slices.Equal(keysOf(got), planned) || !slices.Equal(planned, []string{"z.b.c", "z/b/d", "z.x"}) {
		t.Errorf("planned %q, applied %q", planned, keysOf(got))
	}
	checkInvariants(t, tr)

	// A file over a file.
	f, h := find(t, tr, "e/f"), find(t, tr, "g/h")
	p, err = tr.PlanMove(f, find(t, tr, "g"), "h", h)
	if err != nil || p.Replaced() != h {
		t.Fatalf("%v %v", err, p)
	}
	tr.Apply(p)
	if tr.Find("g/h") != f || f.Key != "g.h" || tr.Find("e/f") != nil || h.Parent != nil {
		t.Errorf("file over file:\n%s", layout(tr))
	}
	checkInvariants(t, tr)

	// The refusals change nothing.
	empty, err := tr.AddDir(tr.Root, "empty")
	if err != nil {
		t.Fatal(err)
	}
	before = shape(tr)
	z, x := find(t, tr, "z"), find(t, tr, "z/x")
	for _, tc := range []struct {
		name       string
		n, dir, to *Node
		newName    string
		want       error
	}{
		{"file over a dir", x, tr.Root, empty, "empty", ErrIsDir},
		{"dir over a file", find(t, tr, "z/b"), find(t, tr, "g"), f, "h", ErrNotDir},
		{"dir over a full dir", empty, tr.Root, z, "z", ErrNotEmpty},
		{"replace is not at the name", x, tr.Root, f, "other", ErrNotInTree},
	} {
		if _, err := tr.PlanMove(tc.n, tc.dir, tc.newName, tc.to); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if shape(tr) != before {
		t.Errorf("refused plans changed the tree:\n%s", layout(tr))
	}
	// An empty dir over an empty dir.
	other, _ := tr.AddDir(tr.Root, "other")
	p, err = tr.PlanMove(other, tr.Root, "empty", empty)
	if err != nil {
		t.Fatal(err)
	}
	tr.Apply(p)
	if tr.Find("empty") != other || tr.Find("other") != nil {
		t.Errorf("dir over dir:\n%s", layout(tr))
	}
	checkInvariants(t, tr)
}
