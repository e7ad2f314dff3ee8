package formats

import (
	"errors"
	"fmt"
	"strconv"
)

// dictLit parses the one dict literal np.save writes, never evaluating
// it: keys 'descr', 'fortran_order' and 'shape' once each, in any order;
// quoted strings without escapes; True or False; a tuple of non-negative
// ints; trailing commas and whitespace where Python allows them.
type dictLit struct {
	s   []byte
	pos int
}

func (d *dictLit) ws() {
	for d.pos < len(d.s) && (d.s[d.pos] == ' ' || d.s[d.pos] == '\t' || d.s[d.pos] == '\n' || d.s[d.pos] == '\r') {
		d.pos++
	}
}

func (d *dictLit) peek() byte {
	d.ws()
	if d.pos < len(d.s) {
		return d.s[d.pos]
	}
	return 0
}

func (d *dictLit) expect(c byte) error {
	if d.peek() != c {
		return fmt.Errorf("expected %q at byte %d", c, d.pos)
	}
	d.pos++
	return nil
}

func (d *dictLit) str() (string, error) {
	q := d.peek()
	if q != '\'' && q != '"' {
		return "", fmt.Errorf("expected a string at byte %d", d.pos)
	}
	d.pos++
	start := d.pos
	for d.pos < len(d.s) && d.s[d.pos] != q {
		if d.s[d.pos] == '\\' {
			return "", errors.New("escapes in a string are not read")
		}
		d.pos++
	}
	if d.pos >= len(d.s) {
		return "", errors.New("unterminated string")
	}
	s := string(d.s[start:d.pos])
	d.pos++
	return s, nil
}

func (d *dictLit) parse() (descr string, fortran bool, shape []uint64, err error) {
	if err = d.expect('{'); err != nil {
		return
	}
	seen := map[string]bool{}
	for d.peek() != '}' {
		var k string
		if k, err = d.str(); err != nil {
			return
		}
		if seen[k] {
			return "", false, nil, fmt.Errorf("key %q twice", printableName(k))
		}
		seen[k] = true
		if err = d.expect(':'); err != nil {
			return
		}
		switch k {
		case "descr":
			if d.peek() == '[' {
				return "", false, nil, errors.New("structured (record) dtypes cannot be read")
			}
			descr, err = d.str()
		case "fortran_order":
			fortran, err = d.boolean()
		case "shape":
			shape, err = d.tuple()
		default:
			return "", false, nil, fmt.Errorf("unknown key %q", printableName(k))
		}
		if err != nil {
			return
		}
		if d.peek() == ',' {
			d.pos++
		} else if d.peek() != '}' {
			return "", false, nil, fmt.Errorf("expected ',' or '}' at byte %d", d.pos)
		}
	}
	d.pos++
	d.ws()
	if d.pos != len(d.s) {
		return "", false, nil, fmt.Errorf("%d bytes after the dict", len(d.s)-d.pos)
	}
	if !seen["descr"] || !seen["fortran_order"] || !seen["shape"] {
		return "", false, nil, errors.New("the dict lacks descr, fortran_order or shape")
	}
	return descr, fortran, shape, nil
}

func (d *dictLit) boolean() (bool, error) {
	d.ws()
	for _, lit := range []string{"True", "False"} {
		if len(d.s)-d.pos >= len(lit) && string(d.s[d.pos:d.pos+len(lit)]) == lit {
			d.pos += len(lit)
			return lit == "True", nil
		}
	}
	return false, fmt.Errorf("expected True or False at byte %d", d.pos)
}

func (d *dictLit) tuple() ([]uint64, error) {
	if err := d.expect('('); err != nil {
		return nil, err
	}
	shape := []uint64{}
	for d.peek() != ')' {
		if len(shape) >= 64 {
			return nil, errors.New("more than 64 dimensions")
		}
		start := d.pos
		for d.pos < len(d.s) && d.s[d.pos] >= '0' && d.s[d.pos] <= '9' {
			d.pos++
		}
		n, err := strconv.ParseUint(string(d.s[start:d.pos]), 10, 63)
		if err != nil {
			return nil, fmt.Errorf("a dimension at byte %d is not a non-negative int", start)
		}
		shape = append(shape, n)
		if d.peek() == ',' {
			d.pos++
		} else if d.peek() != ')' {
			return nil, fmt.Errorf("expected ',' or ')' at byte %d", d.pos)
		}
	}
	d.pos++
	return shape, nil
}
