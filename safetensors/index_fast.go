package safetensors

import (
	"encoding/json"
	"slices"
)

// fastIndex parses an index that breaks no rule in one pass of the header
// parser (parse.go), several times faster than ParseIndex's json.Decoder
// path, which decodes every member as a token and a RawMessage: 35-90 ms for
// a 6,400-key index against 3-4 ms here, and most of the time a 100-shard
// remote mount took. Each shard name is stored once, not once per key
// (DeepSeek-V3 maps 92k keys to 163 names).
//
// It returns false on anything unexpected (not JSON, a member twice, a
// weight_map value that is not a string or not a safe shard name, nesting
// the parser does not take): ParseIndex then runs the careful path, which
// names the problem. So the two agree on every input by construction: this
// one only ever accepts what that one accepts, with the same result.
func fastIndex(b []byte) (*Index, bool) {
	p := &parser{b: b}
	idx := &Index{}
	seen := map[string]bool{}
	ok := p.members(func(key string) bool {
		if seen[key] {
			return false
		}
		seen[key] = true
		start := p.i
		if p.skip(1) != nil {
			return false
		}
		val := b[start:p.i]
		switch key {
		case "weight_map":
			idx.WeightMap = fastWeightMap(val)
			return idx.WeightMap != nil
		case "metadata":
			idx.Metadata = rawMembers(val)
			return idx.Metadata != nil
		default:
			if idx.Extra == nil {
				idx.Extra = map[string]json.RawMessage{}
			}
			idx.Extra[key] = json.RawMessage(slices.Clone(val))
			return true
		}
	})
	if !ok || idx.WeightMap == nil {
		return nil, false
	}
	return idx, true
}

// members walks the object p is at (after leading whitespace), calling fn
// with each key, p at the value; fn steps over the value. It reports
// whether the object was well formed, fn accepted every member, and
// nothing but whitespace follows it.
func (p *parser) members(fn func(key string) bool) bool {
	if p.expect('{', "") != nil {
		return false
	}
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
	} else {
		for {
			if p.i >= len(p.b) || p.b[p.i] != '"' {
				return false
			}
			k, err := p.str()
			if err != nil || p.expect(':', "") != nil || !fn(string(k)) {
				return false
			}
			more, err := p.next('}', "")
			if err != nil {
				return false
			}
			if !more {
				break
			}
		}
	}
	p.ws()
	return p.i == len(p.b)
}

// fastWeightMap reads a weight_map: an object of shard names, each a safe
// relative path, no key twice. nil when it is anything else.
func fastWeightMap(raw []byte) map[string]string {
	p := &parser{b: raw}
	m := make(map[string]string, len(raw)/64)
	names := map[string]string{}
	ok := p.members(func(key string) bool {
		if _, dup := m[key]; dup || p.i >= len(raw) || raw[p.i] != '"' {
			return false
		}
		v, err := p.str()
		if err != nil {
			return false
		}
		shard, ok := names[string(v)]
		if !ok {
			if CheckShardName(string(v)) != nil {
				return false
			}
			shard = string(v)
			names[shard] = shard
		}
		m[key] = shard
		return true
	})
	if !ok {
		return nil
	}
	return m
}

// rawMembers reads an object's members as raw JSON values, no key twice;
// nil when it is anything else.
func rawMembers(raw []byte) map[string]json.RawMessage {
	p := &parser{b: raw}
	m := map[string]json.RawMessage{}
	ok := p.members(func(key string) bool {
		if _, dup := m[key]; dup {
			return false
		}
		start := p.i
		if p.skip(1) != nil {
			return false
		}
		m[key] = json.RawMessage(slices.Clone(raw[start:p.i]))
		return true
	})
	if !ok {
		return nil
	}
	return m
}
