package tree

import "strings"

// splitKey appends to dst the end offsets of key's segments under rule 1 and
// returns the extended slice. Offsets, not substrings, so that Build keeps
// one flat slice for all keys instead of a slice per key; where a segment
// starts follows from the end of the one before (see segStart).
func splitKey(dst []int, key, sep string) []int {
	if len(sep) == 1 {
		dst, _ = splitByte(dst, key, sep[0])
		return dst
	}
	sc := sepScanner{key: key, sep: sep, nextSep: -1, nextSlash: -1}
	pieceStart := 0
	pendAt := -1       // the separator before the current piece
	prevEmpty := false // whether the piece before that separator was empty
	for {
		at, n := sc.next(pieceStart)
		if n == 0 {
			at = len(key)
		}
		empty := at == pieceStart
		if pendAt >= 0 && !prevEmpty && !empty {
			dst = append(dst, pendAt)
		}
		if n == 0 {
			break
		}
		prevEmpty = empty
		pendAt = at
		pieceStart = at + n
	}
	return append(dst, len(key))
}

// Flags that splitByte reports about a key, so Build can skip work for the
// common keys that need no escaping.
const (
	hasSlash = 1 << iota // a '/' anywhere
	hasLow               // a 0x00 or 0x01 byte (NUL needs escaping; both need care when sorting)
)

// splitByte is splitKey for a one-byte Sep, the usual case: one pass over
// the bytes, which also notes which flags apply to the key. (Typical keys
// are short with a separator every few bytes, where a plain loop beats
// calling a vectorized search per piece.)
func splitByte(dst []int, key string, sep byte) ([]int, int) {
	pieceStart := 0
	pendAt := -1
	prevEmpty := false
	flags := 0
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c > '/' && c != sep {
			continue
		}
		if c <= 1 {
			flags |= hasLow
		}
		if c == '/' {
			flags |= hasSlash
		} else if c != sep {
			continue
		}
		empty := i == pieceStart
		if pendAt >= 0 && !prevEmpty && !empty {
			dst = append(dst, pendAt)
		}
		prevEmpty = empty
		pendAt = i
		pieceStart = i + 1
	}
	if pendAt >= 0 && !prevEmpty && pieceStart < len(key) {
		dst = append(dst, pendAt)
	}
	return append(dst, len(key)), flags
}

// segStart returns where the segment after the one ending at end starts:
// past the separator there, which is Sep if Sep matches at end (the scanner
// prefers it) and '/' otherwise.
func segStart(key, sep string, end int) int {
	if strings.HasPrefix(key[end:], sep) {
		return end + len(sep)
	}
	return end + 1
}

// sepScanner finds separators left to right. It remembers the next match of
// each kind, so a long key with many '/' and a rare Sep (or the reverse) is
// scanned in linear time.
type sepScanner struct {
	key, sep           string
	nextSep, nextSlash int // absolute positions; -1 unknown, len(key) none
}

// next returns the position and length of the first separator at or after
// i, or n == 0 if there is none. Sep wins over '/' at the same position.
func (s *sepScanner) next(i int) (at, n int) {
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
