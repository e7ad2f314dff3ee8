package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEscapeControl(t *testing.T) {
	for in, want := range map[string]string{
		"plain /path ü":        "plain /path ü",
		"a\nb\rc\td":           `a\nb\rc\td`,
		"\x1b[2Jclear":         `\x1b[2Jclear`,
		"del\x7f c1\u009bx":    `del\x7f c1\u009bx`,
		"bad utf8 \xff\xfe ok": `bad utf8 \xff\xfe ok`,
	} {
		if got := escapeControl(in); got != want {
			t.Errorf("escapeControl(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestErrorsEscaped: an error naming something a hostile checkpoint holds
// (here a shard name with a terminal escape and a newline) reaches the
// terminal escaped, as one line.
func TestErrorsEscaped(t *testing.T) {
	dir := t.TempDir()
	idx := `{"metadata": {}, "weight_map": {"a": "x\u001b[2J\nsafejaxfs verify: OK.safetensors"}}`
	if err := os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), []byte(idx), 0o644); err != nil {
		t.Fatal(err)
	}
	r := cli(t, "verify", dir)
	if r.code != exitInvalid || strings.ContainsAny(r.stderr, "\x1b") || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, `x\x1b[2J\nsafejaxfs verify: OK`) {
		t.Errorf("verify of an index naming a hostile shard: exit %d %q", r.code, r.stderr)
	}
}
