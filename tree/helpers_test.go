package tree

import (
	"fmt"
	"sort"
	"strings"
	"testing"
)

// pathsByKey maps every file's key to its path; duplicates keys get a list.
func pathsByKey(t *Tree) map[string][]string {
	m := map[string][]string{}
	for _, f := range t.Files() {
		m[f.Key] = append(m[f.Key], f.Path())
	}
	return m
}

// layout renders the tree as sorted "path\tkey" lines, dirs ending in "/".
func layout(t *Tree) string {
	var lines []string
	var walk func(n *Node)
	walk = func(n *Node) {
		for _, c := range n.Children() {
			if c.IsDir() {
				lines = append(lines, fmt.Sprintf("%s/\t%s", c.Path(), c.Key))
				walk(c)
			} else {
				lines = append(lines, fmt.Sprintf("%s\t%s", c.Path(), c.Key))
			}
		}
	}
	walk(t.Root)
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func mustBuild(tb testing.TB, keys []string, opt Options) *Tree {
	tb.Helper()
	tr, err := Build(keys, opt)
	if err != nil {
		tb.Fatalf("Build(%q): %v", keys, err)
	}
	checkInvariants(tb, tr)
	return tr
}

// checkInvariants checks what every tree must satisfy, however it was made:
// valid and unique names, sorted children, parent links, unique IDs, dirs
// with Tensor -1, directory Keys that prefix their children's (what Move
// relies on), reserved root names unused.
func checkInvariants(tb testing.TB, tr *Tree) {
	tb.Helper()
	if tr.Root.ID != 0 || tr.Root.Parent != nil || tr.Root.Key != "" || !tr.Root.IsDir() {
		tb.Fatalf("bad root %+v", tr.Root)
	}
	ids := map[uint64]*Node{}
	var walk func(n *Node)
	walk = func(n *Node) {
		if o, ok := ids[n.ID]; ok {
			tb.Fatalf("ID %d used by %q and %q", n.ID, o.Path(), n.Path())
		}
		ids[n.ID] = n
		if n.ID >= tr.next {
			tb.Fatalf("%q: ID %d >= next %d", n.Path(), n.ID, tr.next)
		}
		kids := n.Children()
		if len(kids) != n.Len() {
			tb.Fatalf("%q: Len %d, %d children", n.Path(), n.Len(), len(kids))
		}
		for i, c := range kids {
			if !ValidName(c.Name) {
				tb.Fatalf("invalid name %q at %q", c.Name, c.Path())
			}
			if i > 0 && kids[i-1].Name >= c.Name {
				tb.Fatalf("%q: children not sorted or duplicate: %q, %q", n.Path(), kids[i-1].Name, c.Name)
			}
			if c.Parent != n {
				tb.Fatalf("%q: wrong parent", c.Path())
			}
			if n.Lookup(c.Name) != c {
				tb.Fatalf("Lookup(%q) in %q failed", c.Name, n.Path())
			}
			if n == tr.Root && tr.opt.reserved(c.Name) {
				tb.Fatalf("reserved name %q used", c.Name)
			}
			if c.IsDir() {
				if c.Tensor != -1 {
					tb.Fatalf("dir %q has Tensor %d", c.Path(), c.Tensor)
				}
				if c.Key == "" || !strings.HasPrefix(c.Key, n.Key) {
					tb.Fatalf("dir %q: Key %q does not extend parent's %q", c.Path(), c.Key, n.Key)
				}
				walk(c)
			} else if c.Len() != 0 {
				tb.Fatalf("file %q has children", c.Path())
			}
		}
	}
	walk(tr.Root)
}
