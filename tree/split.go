package tree

import "strings"

// splitKey appends to dst the [start, end) byte offsets of key's segments
// under rule 1 and returns the extended slice. Offsets into the key, not
// substrings, so that Build keeps one flat slice for all keys instead of a
// slice per key.
func splitKey(dst []int, key, sep string) []int {
	sc := sepScanner{key: key, sep: sep, nextSep: -1, nextSlash: -1}
	segStart := 0
	pieceStart := 0
	pendAt, pendEnd := -1, -1 // the separator before the current piece
	prevEmpty := false        // whether the piece before that separator was empty
	for {
		at, n := sc.next(pieceStart)
		if n == 0 {
			at = len(key)
		}
		empty := at == pieceStart
		if pendAt >= 0 && !prevEmpty && !empty {
			dst = append(dst, segStart, pendAt)
			segStart = pendEnd
		}
		if n == 0 {
			break
		}
		prevEmpty = empty
		pendAt, pendEnd = at, at+n
		pieceStart = at + n
	}
	return append(dst, segStart, len(key))
}

// sepScanner finds separators left to right. It remembers the next match of
// each kind, so a long key with many '/' and a rare multi-byte Sep (or the
// reverse) is scanned in linear time.
type sepScanner struct {
	key, sep           string
	nextSep, nextSlash int // absolute positions; -1 unknown, len(key) none
}

// next returns the position and length of the first separator at or after
// i, or n == 0 if there is none. Sep wins over '/' at the same position.
func (s *sepScanner) next(i int) (at, n int) {
	if len(s.sep) == 1 {
		// The usual case ("." or "/"): one pass over the bytes.
		c := s.sep[0]
		for j := i; j < len(s.key); j++ {
			if b := s.key[j]; b == c || b == '/' {
				return j, 1
			}
		}
		return 0, 0
	}
	if s.nextSep < i {
		s.nextSep = index(s.key, s.sep, i)
	}
	if s.nextSlash < i {
		s.nextSlash = index(s.key, "/", i)
	}
	switch {
	case s.nextSep < len(s.key) && s.nextSep <= s.nextSlash:
		return s.nextSep, len(s.sep)
	case s.nextSlash < len(s.key):
		return s.nextSlash, 1
	}
	return 0, 0
}

// index is strings.Index from position i, returning len(s) when absent.
func index(s, sub string, i int) int {
	if j := strings.Index(s[i:], sub); j >= 0 {
		return i + j
	}
	return len(s)
}
