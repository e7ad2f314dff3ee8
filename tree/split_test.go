package tree

import (
	"slices"
	"strings"
	"testing"
)

func TestSplitKey(t *testing.T) {
	tests := []struct {
		key, sep string
		want     []string
	}{
		{"params.Dense_0.kernel", ".", []string{"params", "Dense_0", "kernel"}},
		{"res_net50/~/initial_conv.w", ".", []string{"res_net50", "~", "initial_conv", "w"}},
		{"dense/kernel:0", ".", []string{"dense", "kernel:0"}},
		{"a..b", ".", []string{"a..b"}},
		{".a.b", ".", []string{".a", "b"}},
		{"a.b.", ".", []string{"a", "b."}},
		{".a", ".", []string{".a"}},
		{"a.", ".", []string{"a."}},
		{".", ".", []string{"."}},
		{"..", ".", []string{".."}},
		{"...", ".", []string{"..."}},
		{"", ".", []string{""}},
		{"a", ".", []string{"a"}},
		{"a//b", ".", []string{"a//b"}},
		{"a./b", ".", []string{"a./b"}},
		{"a..b.c", ".", []string{"a..b", "c"}},
		{"x..y.z..", ".", []string{"x..y", "z.."}},
		{"/a/", ".", []string{"/a/"}},
		{"a/b.c", "/", []string{"a", "b.c"}},
		{"a::b::c", "::", []string{"a", "b", "c"}},
		{"a::b/c", "::", []string{"a", "b", "c"}},
		{"a:::b", "::", []string{"a", ":b"}}, // separators are found left to right
		{"a::::b", "::", []string{"a::::b"}}, // empty piece between
		{"res_net50/~/initial_conv.w", "/~/", []string{"res_net50", "initial_conv.w"}},
		{"a/~/b", "~/", []string{"a/~/b"}}, // '/' at 1 comes first, then an empty piece
		{"a\x00b.c", ".", []string{"a\x00b", "c"}},
	}
	for _, tc := range tests {
		b := splitKey(nil, tc.key, tc.sep)
		var got []string
		for i := 0; i < len(b); i += 2 {
			got = append(got, tc.key[b[i]:b[i+1]])
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("splitKey(%q, sep %q) = %q, want %q", tc.key, tc.sep, got, tc.want)
		}
	}
}

// A long key with many '/' and a multi-byte Sep must split in linear time:
// the scanner remembers where the next Sep is.
func TestSplitKeyLinear(t *testing.T) {
	key := strings.Repeat("a/", 200000) + "::b"
	b := splitKey(nil, key, "::")
	if len(b)/2 != 200000 { // the last is "a/::b": an empty piece before "::"
		t.Fatalf("got %d segments", len(b)/2)
	}
}
