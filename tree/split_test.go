package tree

import (
	"math/rand"
	"slices"
	"strings"
	"testing"
)

func TestSplitKey(t *testing.T) {
	t.Parallel()
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
		if got := segments(tc.key, tc.sep); !slices.Equal(got, tc.want) {
			t.Errorf("splitKey(%q, sep %q) = %q, want %q", tc.key, tc.sep, got, tc.want)
		}
	}
}

// A long key with many '/' and a multi-byte Sep must split in linear time:
// the scanner remembers where the next Sep is.
func TestSplitKeyLinear(t *testing.T) {
	t.Parallel()
	key := strings.Repeat("a/", 200000) + "::b"
	b := splitKey(nil, key, "::")
	if len(b) != 200000 { // the last is "a/::b": an empty piece before "::"
		t.Fatalf("got %d segments", len(b)/2)
	}
}

// segments returns key's segments under rule 1.
func segments(key, sep string) []string {
	var segs []string
	start := 0
	for _, end := range splitKey(nil, key, sep) {
		segs = append(segs, key[start:end])
		if end < len(key) {
			start = segStart(key, sep, end)
		}
	}
	return segs
}

// splitByte and the general scanner must agree.
func TestSplitByteMatchesScanner(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewSource(5))
	tokens := []string{"a", "b", ".", "/", "..", "//", ""}
	for range 20000 {
		var b strings.Builder
		for range r.Intn(10) {
			b.WriteString(tokens[r.Intn(len(tokens))])
		}
		key := b.String()
		for _, sep := range []string{".", "/"} {
			fast, _ := splitByte(nil, key, sep[0])
			sc := splitKeyScanner(key, sep)
			if !slices.Equal(fast, sc) {
				t.Fatalf("key %q sep %q: splitByte %v, scanner %v", key, sep, fast, sc)
			}
		}
	}
}

// splitKeyScanner runs the general path even for a one-byte Sep.
func splitKeyScanner(key, sep string) []int {
	// A two-byte Sep that never occurs plus the same byte as '/' would not do;
	// instead map the one-byte Sep to a unique two-byte one in a copy.
	k := strings.ReplaceAll(key, sep, "\x01"+sep)
	ends := splitKey(nil, k, "\x01"+sep)
	// Translate offsets back: each Sep before an offset added one byte.
	var out []int
	for _, e := range ends {
		out = append(out, e-strings.Count(k[:e], "\x01"))
	}
	return out
}

// TestMaxEnds checks that maxEnds bounds the segment ends of any keys, so
// prepare allocates them once: keys dense in separators, '/' beside
// another Sep, Seps of more than one byte, and Seps with a '/' in them.
func TestMaxEnds(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewSource(1))
	const alphabet = "ab./:_"
	for _, sep := range []string{".", "/", "::", "_._", "./", "/:/"} {
		tight := false
		for round := 0; round < 500; round++ {
			keys := make([]string, 1+rng.Intn(4))
			for i := range keys {
				var k strings.Builder
				for n := rng.Intn(24); n > 0; n-- {
					k.WriteByte(alphabet[rng.Intn(len(alphabet))])
				}
				keys[i] = k.String()
			}
			ends := 0
			for _, k := range keys {
				ends += len(splitKey(nil, k, sep))
			}
			bound := maxEnds(keys, sep)
			if bound < ends {
				t.Fatalf("sep %q keys %q: bound %d, %d ends", sep, keys, bound, ends)
			}
			tight = tight || bound == ends
		}
		if !tight {
			t.Errorf("sep %q: the bound was never reached; is it too loose to test?", sep)
		}
	}
}
