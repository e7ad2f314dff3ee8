package tree

import (
	"errors"
	"fmt"
	"strings"
)

// Options shape the tree Build makes.
type Options struct {
	// Sep is the key separator; "" means ".". '/' is always a separator too
	// (Haiku: "res_net50/~/initial_conv.w").
	Sep string
	// Reserved names may not be taken by any tensor or directory in the root
	// directory (fs reserves "__metadata__" for the header's metadata).
	Reserved []string
}

// ErrOptions is wrapped by the error Build returns for unusable Options.
var ErrOptions = errors.New("tree: bad options")

// normalize applies the defaults and checks what would make the rules
// meaningless: a separator that can never occur in a JSON key, or a reserved
// name no entry could ever take (which points at a caller's mistake).
func (o Options) normalize() (Options, error) {
	if o.Sep == "" {
		o.Sep = "."
	}
	if strings.IndexByte(o.Sep, 0) >= 0 {
		return o, fmt.Errorf("%w: separator %q contains NUL", ErrOptions, o.Sep)
	}
	for _, r := range o.Reserved {
		if !ValidName(r) {
			return o, fmt.Errorf("%w: reserved name %q is not a valid file name", ErrOptions, r)
		}
	}
	o.Reserved = append([]string(nil), o.Reserved...)
	return o, nil
}

func (o *Options) reserved(name string) bool {
	for _, r := range o.Reserved {
		if r == name {
			return true
		}
	}
	return false
}
