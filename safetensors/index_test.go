package safetensors

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// Python's json.dumps(indent=2, sort_keys=True) is what transformers writes;
// it is the truth Marshal is compared with, run by a real Python.
func pythonIndent(t *testing.T, doc []byte) []byte {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	cmd := exec.Command(py, "-c", `import json,sys
d = json.loads(sys.stdin.buffer.read().decode("utf-8"))
sys.stdout.write(json.dumps(d, indent=2, sort_keys=True) + "\n")`)
	cmd.Stdin = bytes.NewReader(doc)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v", err)
	}
	return out
}

func TestIndexMarshalMatchesPython(t *testing.T) {
	t.Parallel()
	docs := []string{
		`{"metadata": {"total_size": 123}, "weight_map": {"b": "model-00002-of-00002.safetensors", "a": "model-00001-of-00002.safetensors"}}`,
		`{"weight_map": {}}`,
		`{"metadata": {}, "weight_map": {"x": "m.safetensors"}}`,
		// Keys JSON allows: quotes, backslashes, control characters, DEL,
		// non-ASCII in and beyond the BMP, HTML characters.
		`{"metadata": {"total_size": 0, "format": "pt", "nested": {"z": [1, 2.5, -3e10, 1e16, 1.5e-5, 0.0001, -0.0, -0, 12345678901234567890123, 1E2, 0.1, 1e300, true, null, {}], "a": []}, "note": "<&> é 模型 🙂"},
		  "weight_map": {"a\"b\\c": "s.safetensors", "tab\there": "s.safetensors", "del\u007f": "s.safetensors",
		  "模型.权重": "dir/s2.safetensors", "emoji🙂": "s.safetensors", "ctl\u0001\n": "s.safetensors", "<script>&": "s.safetensors"}}`,
		`{"weight_map": {"k": "s.safetensors"}, "extra_member": {"b": 1, "a": "x"}}`,
	}
	for _, d := range docs {
		idx, err := ParseIndex([]byte(d))
		if err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		got, err := idx.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if want := pythonIndent(t, []byte(d)); !bytes.Equal(got, want) {
			t.Errorf("Marshal differs from Python's json.dumps(indent=2, sort_keys=True):\ngot:\n%s\nwant:\n%s", got, want)
		}
		// And it parses back to the same index.
		back, err := ParseIndex(got)
		if err != nil {
			t.Fatal(err)
		}
		again, _ := back.Marshal()
		if !bytes.Equal(again, got) {
			t.Errorf("Marshal is not stable across a parse")
		}
	}
}

func TestParseIndexRefuses(t *testing.T) {
	t.Parallel()
	cases := []struct {
		doc  string
		rule error
		key  string
		says string
	}{
		{`[]`, ErrIndexJSON, "", "JSON object"},
		{`{"weight_map": {"a": "s.safetensors"}`, ErrIndexJSON, "", "not valid JSON"},
		{`{"metadata": {}}`, ErrIndexJSON, "", `no "weight_map"`},
		{`{"weight_map": []}`, ErrIndexJSON, "", "JSON object"},
		{`{"weight_map": {"a": 1}}`, ErrIndexJSON, "a", "not a string"},
		{`{"weight_map": {"a": "s.safetensors", "a": "t.safetensors"}}`, ErrIndexJSON, "a", "twice"},
		{`{"weight_map": {}, "weight_map": {}}`, ErrIndexJSON, "", "twice"},
		{`{"metadata": [], "weight_map": {}}`, ErrIndexJSON, "", "JSON object"},
		{`{"weight_map": {}} {}`, ErrIndexJSON, "", "more than one"},
		{`{"weight_map": {"a": "../x.safetensors"}}`, ErrIndexShardName, "a", "escapes"},
		{`{"weight_map": {"a": "/etc/x.safetensors"}}`, ErrIndexShardName, "a", "absolute"},
		{`{"weight_map": {"a": "d/../../x"}}`, ErrIndexShardName, "a", "clean"},
		{`{"weight_map": {"a": "./x"}}`, ErrIndexShardName, "a", "clean"},
		{`{"weight_map": {"a": ""}}`, ErrIndexShardName, "a", "empty"},
		{`{"weight_map": {"a": "x\u0000y"}}`, ErrIndexShardName, "a", "NUL"},
		{"{\"weight_map\": {\"a\": \"\xff\"}}", ErrIndexJSON, "", "UTF-8"},
		// The same key spelled two ways: one map entry, two members.
		{`{"weight_map": {"a": "s.safetensors", "\u0061": "s.safetensors"}}`, ErrIndexJSON, "a", "twice"},
		{`{"weight_map": {"a:{": "s.safetensors", "b": "s.safetensors", "b": "s.safetensors"}}`, ErrIndexJSON, "b", "twice"},
		{`{"weight_map": null}`, ErrIndexJSON, "", "JSON object"},
	}
	for _, c := range cases {
		_, err := ParseIndex([]byte(c.doc))
		var ie *IndexError
		if !errors.As(err, &ie) || !errors.Is(err, c.rule) {
			t.Errorf("%s: got %v, want an IndexError for %v", c.doc, err, c.rule)
			continue
		}
		if ie.Key != c.key || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %q (key %q), want key %q and %q in the message", c.doc, err, ie.Key, c.key, c.says)
		}
	}
}

// Keys holding the characters the member count steps over (quotes,
// escapes, colons, braces) parse to the map they spell.
func TestParseIndexOddKeys(t *testing.T) {
	t.Parallel()
	idx, err := ParseIndex([]byte(`{"weight_map": {"a:{\"[": "s.safetensors", "}\\": "t.safetensors", "x": "s.safetensors"}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{`a:{"[`: "s.safetensors", `}\`: "t.safetensors", "x": "s.safetensors"}
	if !maps.Equal(idx.WeightMap, want) {
		t.Fatalf("weight_map %q, want %q", idx.WeightMap, want)
	}
}

func TestParseIndexKeepsUnknownMembers(t *testing.T) {
	t.Parallel()
	idx, err := ParseIndex([]byte(`{"metadata": {"total_size": 5, "format": "pt"}, "weight_map": {"a": "s.safetensors"}, "note": "x"}`))
	if err != nil {
		t.Fatal(err)
	}
	if string(idx.Extra["note"]) != `"x"` || string(idx.Metadata["format"]) != `"pt"` {
		t.Errorf("lost members: %+v", idx)
	}
	b, _ := idx.Marshal()
	var back map[string]json.RawMessage
	if err := json.Unmarshal(b, &back); err != nil || back["note"] == nil {
		t.Errorf("Marshal dropped a member: %s", b)
	}
}

// fastIndex accepts only what the careful parser accepts, with the same
// result (on valid UTF-8: ParseIndex refuses the rest first).
func FuzzIndexFastAgrees(f *testing.F) {
	for _, s := range []string{
		`{"metadata": {"total_size": 123, "format": "pt"}, "weight_map": {"b": "m-2.safetensors", "a": "m-1.safetensors"}}`,
		`{"weight_map": {}}`, `{"weight_map": {"a": "s.safetensors", "a": "s.safetensors"}}`,
		`{"weight_map": {"a\"b\\c\u00e9": "d/s.safetensors"}, "x": [1, {"y": null}], "metadata": {}}`,
		`{"weight_map": {"a": "../s"}}`, `{"weight_map": {"a": 1}}`, `{"weight_map": {}} {}`, ` {"weight_map" : { } } `,
		`{"weight_map": {"a": "s.safetensors", "\u0061": "s.safetensors"}}`, `{"metadata": {"a": 1, "a": 2}, "weight_map": {}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !utf8.Valid(b) {
			return // ParseIndex refuses it before either parser runs
		}
		fast, ok := fastIndex(b)
		careful, err := parseIndexCareful(b)
		if !ok {
			return
		}
		if err != nil {
			t.Fatalf("fastIndex accepted %q, the careful parser says %v", b, err)
		}
		if !reflect.DeepEqual(fast, careful) {
			t.Fatalf("%q: fastIndex %+v, careful %+v", b, fast, careful)
		}
	})
}
