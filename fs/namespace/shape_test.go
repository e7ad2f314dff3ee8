package namespace

import (
	"slices"
	"testing"
)

// Shapes as users type them: what getfattr shows, what numpy prints, the
// bare list. Anything else is refused, whole.
func TestParseShape(t *testing.T) {
	tests := []struct {
		in   string
		want []uint64 // nil: refused
	}{
		{"[2,2]", []uint64{2, 2}},
		{" [2, 2]\n", []uint64{2, 2}},
		{"[]", []uint64{}},
		{"(2, 2)", []uint64{2, 2}},
		{"(4,)", []uint64{4}},
		{"(2, 3, )", []uint64{2, 3}},
		{"()", []uint64{}},
		{"2,2", []uint64{2, 2}},
		{"48", []uint64{48}},
		{"0", []uint64{0}},
		{"[18446744073709551615]", []uint64{1<<64 - 1}},
		{"", nil},
		{"  ", nil},
		{"[2,", nil},
		{"[2,]", nil},
		{"2,,2", nil},
		{"(,)", nil},
		{"[-1]", nil},
		{"[+1]", nil},
		{"[2.0]", nil},
		{"[0x10]", nil},
		{"[1_000]", nil},
		{"2x2", nil},
		{"[18446744073709551616]", nil},
		{"[[2]]", nil},
		{"(2, 2]", nil},
	}
	for _, tc := range tests {
		got, ok := parseShape([]byte(tc.in))
		if ok != (tc.want != nil) || !slices.Equal(got, tc.want) {
			t.Errorf("parseShape(%q) = %v, %v; want %v", tc.in, got, ok, tc.want)
		}
	}
}
