package main

import (
	"slices"
	"strings"

	"github.com/safejaxfs/safejaxfs/tree"
)

// sortedChildren returns n's children in the order people read numbered
// layers in: runs of digits compare as numbers (layers/2 before
// layers/10), everything else byte by byte.
func sortedChildren(n *tree.Node) []*tree.Node {
	c := slices.Clone(n.Children())
	slices.SortStableFunc(c, func(a, b *tree.Node) int { return naturalCompare(a.Name, b.Name) })
	return c
}

// naturalCompare orders a and b with digit runs compared by value; equal
// values with more leading zeros come after, and byte order breaks the
// remaining ties, so distinct names never compare equal.
func naturalCompare(a, b string) int {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		if isDigit(a[i]) && isDigit(b[j]) {
			ei, ej := digitsEnd(a, i), digitsEnd(b, j)
			da, db := strings.TrimLeft(a[i:ei], "0"), strings.TrimLeft(b[j:ej], "0")
			if len(da) != len(db) {
				return len(da) - len(db)
			}
			if c := strings.Compare(da, db); c != 0 {
				return c
			}
			if c := (ei - i) - (ej - j); c != 0 {
				return c
			}
			i, j = ei, ej
			continue
		}
		if a[i] != b[j] {
			return int(a[i]) - int(b[j])
		}
		i++
		j++
	}
	if c := (len(a) - i) - (len(b) - j); c != 0 {
		return c
	}
	return strings.Compare(a, b)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func digitsEnd(s string, i int) int {
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return i
}
