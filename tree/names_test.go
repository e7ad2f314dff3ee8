package tree

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestValidName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		want bool
	}{
		{"kernel", true},
		{"...", true},
		{".a", true},
		{"%", true},
		{"模型", true},
		{strings.Repeat("x", 255), true},
		{"", false},
		{".", false},
		{"..", false},
		{"a/b", false},
		{"a\x00b", false},
		{strings.Repeat("x", 256), false},
	}
	for _, tc := range tests {
		if got := ValidName(tc.name); got != tc.want {
			t.Errorf("ValidName(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestEscapeName(t *testing.T) {
	t.Parallel()
	tests := []struct{ text, want string }{
		{"", "%"},
		{".", "%2E"},
		{"..", "%2E%2E"},
		{"...", "..."},
		{"a/b", "a%2Fb"},
		{"a//b", "a%2F%2Fb"},
		{"a\x00b", "a%00b"},
		{"50%", "50%"}, // '%' is not escaped: user-made names survive a remount
		{"%2E", "%2E"},
		{"kernel:0", "kernel:0"},
	}
	for _, tc := range tests {
		if got := escapeName(tc.text); got != tc.want {
			t.Errorf("escapeName(%q) = %q, want %q", tc.text, got, tc.want)
		}
	}
}

func hash8(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:8]
}

func TestFitName(t *testing.T) {
	t.Parallel()
	x400 := strings.Repeat("x", 400)
	e2 := strings.Repeat("é", 200) // 2-byte runes: 246 is a boundary
	e4 := strings.Repeat("🤗", 100) // 4-byte runes: cut back to 244
	tests := []struct {
		esc, suffix, want string
	}{
		{"kernel", "", "kernel"},
		{"kernel", "~1", "kernel~1"},
		{strings.Repeat("x", 255), "", strings.Repeat("x", 255)},
		{strings.Repeat("x", 254), "~1", strings.Repeat("x", 244) + "~" + hash8(strings.Repeat("x", 254)) + "~1"},
		{x400, "", strings.Repeat("x", 246) + "~" + hash8(x400)},
		{x400, "~12", strings.Repeat("x", 243) + "~" + hash8(x400) + "~12"},
		{e2, "", strings.Repeat("é", 123) + "~" + hash8(e2)},
		{e4, "", strings.Repeat("🤗", 61) + "~" + hash8(e4)},
	}
	for _, tc := range tests {
		got := fitName(tc.esc, tc.suffix)
		if got != tc.want {
			t.Errorf("fitName(%.20q... (%d bytes), %q) = %q, want %q", tc.esc, len(tc.esc), tc.suffix, got, tc.want)
		}
		if !ValidName(got) || !utf8.ValidString(got) {
			t.Errorf("fitName(%.20q..., %q) = %q: not a valid UTF-8 file name", tc.esc, tc.suffix, got)
		}
	}
	// Names that differ only after the cut stay apart.
	a, b := fitName(x400+"a", ""), fitName(x400+"b", "")
	if a == b {
		t.Errorf("long names differing at the end both became %q", a)
	}
}

func TestCutUTF8(t *testing.T) {
	t.Parallel()
	tests := []struct {
		s    string
		max  int
		want int
	}{
		{"abc", 5, 3},
		{"abc", 2, 2},
		{"aé", 2, 1}, // é is 2 bytes at 1..2
		{"a🤗", 4, 1}, // inside a 4-byte rune
		{"a🤗b", 5, 5},
		{strings.Repeat("\x80", 10), 6, 6}, // invalid UTF-8: cut where asked
	}
	for _, tc := range tests {
		if got := cutUTF8(tc.s, tc.max); got != tc.want {
			t.Errorf("cutUTF8(%q, %d) = %d, want %d", tc.s, tc.max, got, tc.want)
		}
	}
}
