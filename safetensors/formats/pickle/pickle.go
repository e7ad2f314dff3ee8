// Package pickle is a restricted, bounded unpickler: a stack machine over
// the binary opcodes of protocols 2 to 5 that never imports or calls
// anything. Every global the data names goes to the caller's Hooks, which
// decide (by name) what it stands for and refuse the rest; every call
// (REDUCE, NEWOBJ, BUILD) goes there too. The text opcodes of protocols 0
// and 1 and the object-construction opcodes no tensor checkpoint uses
// (INST, OBJ, the extension registry, out-of-band buffers) are refused.
package pickle

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"
)

// Value is what the machine works with: nil (None), bool, int64, float64,
// string, []byte (a slice of the input: read-only), Tuple, *List, *Dict,
// *Set, or whatever the Hooks return.
type Value = any

// Tuple is a Python tuple.
type Tuple []Value

// List is a Python list (mutable: APPEND changes it in place).
type List struct{ Items []Value }

// Set is a Python set or frozenset.
type Set struct{ Items []Value }

// Dict is a Python dict in insertion order; a key set twice keeps its
// first position and its last value, as Python does.
type Dict struct {
	Keys, Vals []Value
	index      map[Value]int
}

// Get returns the value of a string key.
func (d *Dict) Get(k string) (Value, bool) {
	i, ok := d.index[k]
	if !ok {
		return nil, false
	}
	return d.Vals[i], true
}

// Set stores k: v. Keys must be hashable scalars (None, bool, int,
// float, str, bytes as str).
func (d *Dict) Set(k, v Value) error {
	switch kk := k.(type) {
	case nil, bool, int64, float64, string:
	case []byte:
		k = bytesKey(kk)
	default:
		return fmt.Errorf("a dict key of type %s is not supported", TypeName(k))
	}
	if d.index == nil {
		d.index = map[Value]int{}
	}
	if i, ok := d.index[k]; ok {
		d.Vals[i] = v
		return nil
	}
	d.index[k] = len(d.Keys)
	d.Keys = append(d.Keys, k)
	d.Vals = append(d.Vals, v)
	return nil
}

type bytesKey string

// Hooks give meaning to what a pickle names. Every method may refuse with
// an error, which ends the load.
type Hooks interface {
	// Global resolves module.name (GLOBAL, STACK_GLOBAL).
	Global(module, name string) (Value, error)
	// Call applies a callable to args (REDUCE).
	Call(fn Value, args Tuple) (Value, error)
	// New instantiates cls with args (NEWOBJ, NEWOBJ_EX without kwargs).
	New(cls Value, args Tuple) (Value, error)
	// Build sets obj's state (BUILD) and returns the object to keep.
	Build(obj Value, state Value) (Value, error)
	// Persistent resolves a persistent id (BINPERSID).
	Persistent(pid Value) (Value, error)
}

// Limits bound the work one load may do.
type Limits struct {
	MaxItems int // values pushed and container items added, in all
	MaxMarks int // MARKs open at once
}

// DefaultLimits fit a state dict of a million tensors.
var DefaultLimits = Limits{MaxItems: 1 << 25, MaxMarks: 1 << 12}

// ErrRefused wraps every refusal of content (an opcode or a global), as
// opposed to malformed input.
var ErrRefused = errors.New("refused")

// Error is a failure at byte Off of the pickle.
type Error struct {
	Off int
	Op  byte
	Err error
}

func (e *Error) Error() string {
	return fmt.Sprintf("pickle: at byte %d (opcode 0x%02x %s): %v", e.Off, e.Op, opName(e.Op), e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

type machine struct {
	b     []byte
	pos   int
	hooks Hooks
	lim   Limits
	stack []Value
	marks []int
	memo  map[uint32]Value
	items int
}

// Load runs the pickle at the start of b and returns its value and how
// many bytes it took (up to and including STOP).
func Load(b []byte, hooks Hooks, lim Limits) (Value, int, error) {
	m := &machine{b: b, hooks: hooks, lim: lim, memo: map[uint32]Value{}}
	for {
		if m.pos >= len(b) {
			return nil, m.pos, &Error{Off: m.pos, Err: errors.New("the data ends before STOP")}
		}
		op := b[m.pos]
		start := m.pos
		m.pos++
		done, err := m.step(op)
		if err != nil {
			var pe *Error
			if errors.As(err, &pe) {
				return nil, m.pos, err
			}
			return nil, m.pos, &Error{Off: start, Op: op, Err: err}
		}
		if done {
			if len(m.stack) != 1 || len(m.marks) != 0 {
				return nil, m.pos, &Error{Off: start, Op: op, Err: fmt.Errorf("STOP with %d values on the stack and %d marks open", len(m.stack), len(m.marks))}
			}
			return m.stack[0], m.pos, nil
		}
	}
}

var errShort = errors.New("the data ends inside an opcode's argument")

func (m *machine) read(n int) ([]byte, error) {
	if n < 0 || n > len(m.b)-m.pos {
		return nil, errShort
	}
	p := m.b[m.pos : m.pos+n : m.pos+n]
	m.pos += n
	return p, nil
}

func (m *machine) u8() (int, error) {
	p, err := m.read(1)
	if err != nil {
		return 0, err
	}
	return int(p[0]), nil
}

func (m *machine) u32() (uint32, error) {
	p, err := m.read(4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(p), nil
}

func (m *machine) u64() (uint64, error) {
	p, err := m.read(8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(p), nil
}

func (m *machine) push(v Value) error {
	if m.items++; m.items > m.lim.MaxItems {
		return fmt.Errorf("more than %d values", m.lim.MaxItems)
	}
	m.stack = append(m.stack, v)
	return nil
}

// base is where the current mark's values begin.
func (m *machine) base() int {
	if len(m.marks) == 0 {
		return 0
	}
	return m.marks[len(m.marks)-1]
}

func (m *machine) pop() (Value, error) {
	if len(m.stack) <= m.base() {
		return nil, errors.New("stack underflow")
	}
	v := m.stack[len(m.stack)-1]
	m.stack = m.stack[:len(m.stack)-1]
	return v, nil
}

func (m *machine) top() (Value, error) {
	if len(m.stack) <= m.base() {
		return nil, errors.New("stack underflow")
	}
	return m.stack[len(m.stack)-1], nil
}

// popMark returns the values above the last MARK and removes them and it.
func (m *machine) popMark() ([]Value, error) {
	if len(m.marks) == 0 {
		return nil, errors.New("no MARK to pop to")
	}
	k := m.marks[len(m.marks)-1]
	m.marks = m.marks[:len(m.marks)-1]
	vs := append([]Value(nil), m.stack[k:]...)
	m.stack = m.stack[:k]
	return vs, nil
}

func (m *machine) str(n int) (string, error) {
	p, err := m.read(n)
	if err != nil {
		return "", err
	}
	if !utf8.Valid(p) {
		return "", errors.New("a str is not valid UTF-8")
	}
	return string(p), nil
}

func (m *machine) pushLong(p []byte) error {
	if len(p) > 8 {
		return fmt.Errorf("an int of %d bytes is beyond 64 bits", len(p))
	}
	var v uint64
	for i := len(p) - 1; i >= 0; i-- {
		v = v<<8 | uint64(p[i])
	}
	if len(p) > 0 && len(p) < 8 && p[len(p)-1]&0x80 != 0 {
		v |= math.MaxUint64 << (8 * len(p)) // sign-extend
	}
	return m.push(int64(v))
}

func (m *machine) addItems(n int) error {
	if m.items += n; m.items > m.lim.MaxItems {
		return fmt.Errorf("more than %d values", m.lim.MaxItems)
	}
	return nil
}

// TypeName is a value's Python type name, for messages.
func TypeName(v Value) string {
	switch v.(type) {
	case nil:
		return "None"
	case bool:
		return "bool"
	case int64:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []byte:
		return "bytes"
	case Tuple:
		return "tuple"
	case *List:
		return "list"
	case *Dict:
		return "dict"
	case *Set:
		return "set"
	}
	return fmt.Sprintf("%T", v)
}
