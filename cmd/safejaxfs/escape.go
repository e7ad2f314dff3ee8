package main

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// escapeControl writes control characters (C0, DEL, C1) and bytes that are
// not UTF-8 in s as Go escapes (\n, \x1b, \u009b, \xff), so that text from
// an untrusted source — a tensor key, a shard name, a path, a server's
// message — printed on the user's terminal can neither break a line
// (forging one) nor send an escape sequence. A backslash stays as it is:
// the result is for reading, not for parsing back.
func escapeControl(s string) string {
	clean := true
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if isControl(r) || (r == utf8.RuneError && n == 1) {
			clean = false
			break
		}
		i += n
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x80 && isControl(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case isControl(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) }
