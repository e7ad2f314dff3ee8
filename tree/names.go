package tree

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxName is the longest file name in bytes that Linux (NAME_MAX) and FUSE
// accept.
const MaxName = 255

// hashLen is the length of the "~" + 8 hex digits rule 4 appends.
const hashLen = 1 + 8

// ValidName reports whether name can be a directory entry: not "", "." or
// "..", no '/' or NUL, at most MaxName bytes.
func ValidName(name string) bool {
	if name == "" || name == "." || name == ".." || len(name) > MaxName {
		return false
	}
	return strings.IndexByte(name, '/') < 0 && strings.IndexByte(name, 0) < 0
}

// escapeName applies rule 3 to the text a key gives a name. The result can
// still be too long; fitName deals with that.
func escapeName(text string) string {
	switch text {
	case "":
		return "%"
	case ".":
		return "%2E"
	case "..":
		return "%2E%2E"
	}
	if strings.IndexByte(text, '/') < 0 && strings.IndexByte(text, 0) < 0 {
		return text // the common case: the name is a substring of the key, no copy
	}
	var b strings.Builder
	b.Grow(len(text) + 8)
	for i := 0; i < len(text); i++ {
		switch c := text[i]; c {
		case 0:
			b.WriteString("%00")
		case '/':
			b.WriteString("%2F")
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// fitName returns esc+suffix, or, when that is longer than MaxName, esc cut
// at a character boundary + "~" + the first 8 hex digits of SHA-256(esc) +
// suffix (rule 4). The hash is of the whole escaped name, so long names that
// differ only after the cut still get different names.
func fitName(esc, suffix string) string {
	if len(esc)+len(suffix) <= MaxName {
		return esc + suffix
	}
	sum := sha256.Sum256([]byte(esc))
	cut := cutUTF8(esc, MaxName-hashLen-len(suffix))
	return esc[:cut] + "~" + hex.EncodeToString(sum[:4]) + suffix
}

// cutUTF8 returns the largest n <= max at which s can be cut without
// splitting a UTF-8 sequence. It gives up after 3 steps back, as no valid
// sequence is longer, so invalid UTF-8 is cut at max.
func cutUTF8(s string, max int) int {
	if max >= len(s) {
		return len(s)
	}
	for i := max; i > max-utf8.UTFMax && i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			return i
		}
	}
	return max
}

// suffixName returns the name rule 5 gives the n-th collision of esc.
func suffixName(esc string, n int) string {
	return fitName(esc, "~"+strconv.Itoa(n))
}
