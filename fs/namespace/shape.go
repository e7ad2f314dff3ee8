package namespace

import (
	"strconv"
	"strings"
)

// parseShape reads a shape the way users write one: the JSON array
// getfattr shows and cp -a restores ("[2, 2]", "[]" for a scalar),
// numpy's tuple, as print(a.shape) gives it ("(2, 2)", "(4,)", "()"), or
// the bare list ("2,2", "4"). Whitespace around the numbers does not
// matter. ok is false for anything else, an empty value included.
func parseShape(v []byte) (shape []uint64, ok bool) {
	s := strings.TrimSpace(string(v))
	switch {
	case s == "":
		return nil, false
	case s[0] == '[' && s[len(s)-1] == ']':
		s = s[1 : len(s)-1]
	case s[0] == '(' && s[len(s)-1] == ')':
		// A tuple of one ends in a comma; "(,)" is no tuple.
		s = strings.TrimSpace(s[1 : len(s)-1])
		if t := strings.TrimSuffix(s, ","); t != s && strings.TrimSpace(t) != "" {
			s = t
		}
	}
	shape = []uint64{}
	if strings.TrimSpace(s) == "" {
		return shape, true
	}
	for f := range strings.SplitSeq(s, ",") {
		// ParseUint takes decimal digits only: no sign, no 0x, no "2.0".
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 64)
		if err != nil {
			return nil, false
		}
		shape = append(shape, n)
	}
	return shape, true
}
