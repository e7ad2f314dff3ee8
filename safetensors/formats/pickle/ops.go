package pickle

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

var opNames = map[byte]string{
	0x80: "PROTO", 0x95: "FRAME", '.': "STOP", '(': "MARK", '0': "POP", '1': "POP_MARK", '2': "DUP",
	'J': "BININT", 'K': "BININT1", 'M': "BININT2", 0x8a: "LONG1", 0x8b: "LONG4", 'G': "BINFLOAT",
	'T': "BINSTRING", 'U': "SHORT_BINSTRING", 'X': "BINUNICODE", 0x8c: "SHORT_BINUNICODE", 0x8d: "BINUNICODE8",
	'B': "BINBYTES", 'C': "SHORT_BINBYTES", 0x8e: "BINBYTES8", 0x96: "BYTEARRAY8",
	'N': "NONE", 0x88: "NEWTRUE", 0x89: "NEWFALSE",
	')': "EMPTY_TUPLE", 't': "TUPLE", 0x85: "TUPLE1", 0x86: "TUPLE2", 0x87: "TUPLE3",
	']': "EMPTY_LIST", 'l': "LIST", 'a': "APPEND", 'e': "APPENDS",
	'}': "EMPTY_DICT", 'd': "DICT", 's': "SETITEM", 'u': "SETITEMS",
	0x8f: "EMPTY_SET", 0x90: "ADDITEMS", 0x91: "FROZENSET",
	'q': "BINPUT", 'r': "LONG_BINPUT", 'h': "BINGET", 'j': "LONG_BINGET", 0x94: "MEMOIZE",
	'c': "GLOBAL", 0x93: "STACK_GLOBAL", 'R': "REDUCE", 'b': "BUILD", 0x81: "NEWOBJ", 0x92: "NEWOBJ_EX",
	'Q': "BINPERSID",
	// Refused:
	'I': "INT", 'L': "LONG", 'F': "FLOAT", 'S': "STRING", 'V': "UNICODE", 'p': "PUT", 'g': "GET",
	'P': "PERSID", 'i': "INST", 'o': "OBJ", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4",
	0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
}

func opName(op byte) string {
	if n, ok := opNames[op]; ok {
		return n
	}
	return "unknown"
}

// step runs one opcode; done at STOP.
func (m *machine) step(op byte) (done bool, err error) {
	switch op {
	case 0x80: // PROTO
		v, err := m.u8()
		if err != nil {
			return false, err
		}
		if v < 2 || v > 5 {
			return false, fmt.Errorf("protocol %d: only protocols 2 to 5 are read", v)
		}
	case 0x95: // FRAME: a length hint, nothing to do
		_, err = m.u64()
	case '.':
		return true, nil
	case '(':
		if len(m.marks) >= m.lim.MaxMarks {
			return false, fmt.Errorf("more than %d MARKs open", m.lim.MaxMarks)
		}
		m.marks = append(m.marks, len(m.stack))
	case '0':
		_, err = m.pop()
	case '1':
		_, err = m.popMark()
	case '2':
		var v Value
		if v, err = m.top(); err == nil {
			err = m.push(v)
		}
	case 'J':
		var u uint32
		if u, err = m.u32(); err == nil {
			err = m.push(int64(int32(u)))
		}
	case 'K':
		var v int
		if v, err = m.u8(); err == nil {
			err = m.push(int64(v))
		}
	case 'M':
		var p []byte
		if p, err = m.read(2); err == nil {
			err = m.push(int64(binary.LittleEndian.Uint16(p)))
		}
	case 0x8a, 0x8b: // LONG1, LONG4
		n := 0
		if op == 0x8a {
			n, err = m.u8()
		} else {
			var u uint32
			u, err = m.u32()
			n = int(min(u, math.MaxInt32))
		}
		if err != nil {
			return false, err
		}
		var p []byte
		if p, err = m.read(n); err == nil {
			err = m.pushLong(p)
		}
	case 'G':
		var p []byte
		if p, err = m.read(8); err == nil {
			err = m.push(math.Float64frombits(binary.BigEndian.Uint64(p)))
		}
	case 'T', 'U', 'B', 'C', 0x8e, 0x96: // byte strings
		err = m.bytesOp(op)
	case 'X', 0x8c, 0x8d: // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
		var n uint64
		switch op {
		case 'X':
			var u uint32
			u, err = m.u32()
			n = uint64(u)
		case 0x8c:
			var v int
			v, err = m.u8()
			n = uint64(v)
		default:
			n, err = m.u64()
		}
		if err != nil {
			return false, err
		}
		if n > uint64(len(m.b)-m.pos) {
			return false, errShort
		}
		var s string
		if s, err = m.str(int(n)); err == nil {
			err = m.push(s)
		}
	case 'N':
		err = m.push(nil)
	case 0x88:
		err = m.push(true)
	case 0x89:
		err = m.push(false)
	case ')':
		err = m.push(Tuple{})
	case 't':
		var vs []Value
		if vs, err = m.popMark(); err == nil {
			err = m.push(Tuple(vs))
		}
	case 0x85, 0x86, 0x87:
		n := int(op - 0x84)
		if len(m.stack)-m.base() < n {
			return false, errors.New("stack underflow")
		}
		t := append(Tuple(nil), m.stack[len(m.stack)-n:]...)
		m.stack = m.stack[:len(m.stack)-n]
		err = m.push(t)
	case ']':
		err = m.push(&List{})
	case 'l':
		var vs []Value
		if vs, err = m.popMark(); err == nil {
			err = m.push(&List{Items: vs})
		}
	case 'a', 'e':
		err = m.appendOp(op)
	case '}':
		err = m.push(&Dict{})
	case 'd':
		var vs []Value
		if vs, err = m.popMark(); err == nil {
			d := &Dict{}
			if err = setPairs(d, vs); err == nil {
				err = m.push(d)
			}
		}
	case 's', 'u':
		err = m.setItemOp(op)
	case 0x8f:
		err = m.push(&Set{})
	case 0x90:
		var vs []Value
		if vs, err = m.popMark(); err != nil {
			return false, err
		}
		var t Value
		if t, err = m.top(); err != nil {
			return false, err
		}
		s, ok := t.(*Set)
		if !ok {
			return false, fmt.Errorf("ADDITEMS to a %s", TypeName(t))
		}
		s.Items = append(s.Items, vs...)
	case 0x91:
		var vs []Value
		if vs, err = m.popMark(); err == nil {
			err = m.push(&Set{Items: vs})
		}
	case 'q', 'r', 0x94: // BINPUT, LONG_BINPUT, MEMOIZE
		var idx uint32
		switch op {
		case 'q':
			var v int
			v, err = m.u8()
			idx = uint32(v)
		case 'r':
			idx, err = m.u32()
		default:
			idx = uint32(len(m.memo))
		}
		if err != nil {
			return false, err
		}
		var v Value
		if v, err = m.top(); err == nil {
			if _, had := m.memo[idx]; !had {
				err = m.addItems(1) // the memo is bounded with the values
			}
			m.memo[idx] = v
		}
	case 'h', 'j':
		var idx uint32
		if op == 'h' {
			var v int
			v, err = m.u8()
			idx = uint32(v)
		} else {
			idx, err = m.u32()
		}
		if err != nil {
			return false, err
		}
		v, ok := m.memo[idx]
		if !ok {
			return false, fmt.Errorf("memo entry %d was never stored", idx)
		}
		err = m.push(v)
	case 'c':
		err = m.globalText()
	case 0x93:
		err = m.stackGlobal()
	case 'R':
		err = m.reduce()
	case 'b':
		var state, obj Value
		if state, err = m.pop(); err != nil {
			return false, err
		}
		if obj, err = m.pop(); err != nil {
			return false, err
		}
		var built Value
		if built, err = m.hooks.Build(obj, state); err == nil {
			err = m.push(built)
		}
	case 0x81, 0x92:
		err = m.newObj(op)
	case 'Q':
		var pid Value
		if pid, err = m.pop(); err != nil {
			return false, err
		}
		var v Value
		if v, err = m.hooks.Persistent(pid); err == nil {
			err = m.push(v)
		}
	default:
		return false, fmt.Errorf("%w: opcode %s is not read (only the binary opcodes of protocols 2 to 5 that a tensor checkpoint uses)", ErrRefused, opName(op))
	}
	return false, err
}

func (m *machine) bytesOp(op byte) error {
	var n uint64
	var err error
	switch op {
	case 'T':
		var u uint32
		u, err = m.u32()
		n = uint64(int32(u))
		if int32(u) < 0 {
			return errors.New("BINSTRING with a negative length")
		}
	case 'U', 'C':
		var v int
		v, err = m.u8()
		n = uint64(v)
	case 'B':
		var u uint32
		u, err = m.u32()
		n = uint64(u)
	default:
		n, err = m.u64()
	}
	if err != nil {
		return err
	}
	if n > uint64(len(m.b)-m.pos) {
		return errShort
	}
	p, _ := m.read(int(n))
	return m.push(p)
}

func (m *machine) appendOp(op byte) error {
	var vs []Value
	var err error
	if op == 'a' {
		var v Value
		if v, err = m.pop(); err != nil {
			return err
		}
		vs = []Value{v}
	} else if vs, err = m.popMark(); err != nil {
		return err
	}
	t, err := m.top()
	if err != nil {
		return err
	}
	l, ok := t.(*List)
	if !ok {
		return fmt.Errorf("APPEND to a %s", TypeName(t))
	}
	if err := m.addItems(len(vs)); err != nil {
		return err
	}
	l.Items = append(l.Items, vs...)
	return nil
}

func (m *machine) setItemOp(op byte) error {
	var vs []Value
	var err error
	if op == 's' {
		var k, v Value
		if v, err = m.pop(); err != nil {
			return err
		}
		if k, err = m.pop(); err != nil {
			return err
		}
		vs = []Value{k, v}
	} else if vs, err = m.popMark(); err != nil {
		return err
	}
	t, err := m.top()
	if err != nil {
		return err
	}
	d, ok := t.(*Dict)
	if !ok {
		return fmt.Errorf("SETITEM on a %s", TypeName(t))
	}
	if err := m.addItems(len(vs)); err != nil {
		return err
	}
	return setPairs(d, vs)
}

func setPairs(d *Dict, vs []Value) error {
	if len(vs)%2 != 0 {
		return errors.New("an odd number of values for dict items")
	}
	for i := 0; i < len(vs); i += 2 {
		if err := d.Set(vs[i], vs[i+1]); err != nil {
			return err
		}
	}
	return nil
}

// globalText reads GLOBAL's "module\nname\n".
func (m *machine) globalText() error {
	line := func() (string, error) {
		for i := m.pos; i < len(m.b) && i-m.pos < 256; i++ {
			if m.b[i] == '\n' {
				s, err := m.str(i - m.pos)
				m.pos++
				return s, err
			}
		}
		return "", errors.New("GLOBAL's names are not newline-terminated within 256 bytes")
	}
	mod, err := line()
	if err != nil {
		return err
	}
	name, err := line()
	if err != nil {
		return err
	}
	v, err := m.hooks.Global(mod, name)
	if err != nil {
		return err
	}
	return m.push(v)
}

func (m *machine) stackGlobal() error {
	name, err := m.pop()
	if err != nil {
		return err
	}
	mod, err := m.pop()
	if err != nil {
		return err
	}
	ms, ok1 := mod.(string)
	ns, ok2 := name.(string)
	if !ok1 || !ok2 {
		return errors.New("STACK_GLOBAL of values that are not strings")
	}
	v, err := m.hooks.Global(ms, ns)
	if err != nil {
		return err
	}
	return m.push(v)
}

func (m *machine) reduce() error {
	args, err := m.pop()
	if err != nil {
		return err
	}
	fn, err := m.pop()
	if err != nil {
		return err
	}
	t, ok := args.(Tuple)
	if !ok {
		return fmt.Errorf("REDUCE with arguments of type %s, not a tuple", TypeName(args))
	}
	v, err := m.hooks.Call(fn, t)
	if err != nil {
		return err
	}
	return m.push(v)
}

func (m *machine) newObj(op byte) error {
	if op == 0x92 {
		kw, err := m.pop()
		if err != nil {
			return err
		}
		if d, ok := kw.(*Dict); !ok || len(d.Keys) > 0 {
			return fmt.Errorf("%w: NEWOBJ_EX with keyword arguments", ErrRefused)
		}
	}
	args, err := m.pop()
	if err != nil {
		return err
	}
	cls, err := m.pop()
	if err != nil {
		return err
	}
	t, ok := args.(Tuple)
	if !ok {
		return fmt.Errorf("NEWOBJ with arguments of type %s, not a tuple", TypeName(args))
	}
	v, err := m.hooks.New(cls, t)
	if err != nil {
		return err
	}
	return m.push(v)
}
