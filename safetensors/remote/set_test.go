package remote

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
	"github.com/safejaxfs/safejaxfs/safetensors"
)

// OpenSet of a sharded checkpoint: the same headers as the local set, the
// shards' headers from their probes (one request each, plus the index),
// and no byte of tensor data.
func TestOpenSetSharded(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	dir := filepath.Join(root, "sharded")
	genSharded(t, dir, 4, 300_000, 20_000, 3)
	ng, ports := testsrv.StartNginx(t, testsrv.StaticServer(root))
	opt, _ := testOpts(t)
	opt.MaxConns = 2
	s, err := OpenSet(ctxT(t), fmt.Sprintf("http://127.0.0.1:%d/sharded/", ports[0]), opt)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	local, err := safetensors.OpenSet(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	if !s.Sharded() || !reflect.DeepEqual(s.Names, local.Names) || !strings.HasSuffix(s.URL, "/sharded/model.safetensors.index.json") {
		t.Fatalf("URL %q names %v, want the index and %v", s.URL, s.Names, local.Names)
	}
	var size int64
	for i, f := range local.Files {
		if !reflect.DeepEqual(*s.Headers[i], f.Header) {
			t.Fatalf("%s: header differs from the local parse", s.Names[i])
		}
		size += f.Size
	}
	if s.Size() != size || s.ModTime.IsZero() {
		t.Fatalf("Size %d (want %d), ModTime %v", s.Size(), size, s.ModTime)
	}
	l := ng.Log(t)
	// Every byte reads back (the probe was trimmed to the header: the
	// bytes after it come from range requests now).
	for i, o := range s.Objects {
		b, err := os.ReadFile(filepath.Join(dir, s.Names[i]))
		if err != nil {
			t.Fatal(err)
		}
		if len(o.probeBytes()) != int(s.Headers[i].DataOffset()) {
			t.Errorf("%s: %d probe bytes kept, want the %d of the header", s.Names[i], len(o.probeBytes()), s.Headers[i].DataOffset())
		}
		sameBytes(t, s.Names[i], readAllAt(t, o, 300_000), b)
	}
	if len(l) != 1+len(s.Names) {
		t.Fatalf("%d requests for an index and %d shards: %v", len(l), len(s.Names), l)
	}
	for _, x := range l {
		if x.Range != "bytes=0-131071" {
			t.Fatalf("request %+v is not a probe", x)
		}
	}
}

// A remote set is refused by the rules of a local one, naming the shard
// and the key, and leaves nothing open.
func TestOpenSetRefusals(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	_, ports := testsrv.StartNginx(t, testsrv.StaticServer(root))
	base := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	opt, _ := testOpts(t)
	mk := func(name string) string {
		d := filepath.Join(root, name)
		genSharded(t, d, 3, 1000, 10)
		return d
	}
	setIndex := func(d string, edit func(wm map[string]string)) {
		var ix map[string]any
		b, _ := os.ReadFile(filepath.Join(d, "model.safetensors.index.json"))
		json.Unmarshal(b, &ix)
		wm := map[string]string{}
		for k, v := range ix["weight_map"].(map[string]any) {
			wm[k] = v.(string)
		}
		edit(wm)
		ix["weight_map"] = wm
		b, _ = json.Marshal(ix)
		writeFile(t, filepath.Join(d, "model.safetensors.index.json"), b)
	}
	cases := []struct {
		name  string
		setup func(d string)
		rule  error
		want  []string // in the message
	}{
		{"missing", func(d string) { os.Remove(filepath.Join(d, "model-00002-of-00003.safetensors")) },
			safetensors.ErrShardMissing, []string{"model-00002-of-00003.safetensors", `"shard1.layer_00000.weight"`, "404"}},
		{"notinindex", func(d string) {
			setIndex(d, func(wm map[string]string) { delete(wm, "shard2.layer_00001.weight") })
		}, safetensors.ErrKeyNotInIndex, []string{"model-00003-of-00003.safetensors", `"shard2.layer_00001.weight"`}},
		{"wrongshard", func(d string) {
			setIndex(d, func(wm map[string]string) { wm["shard0.layer_00000.weight"] = "model-00002-of-00003.safetensors" })
		}, safetensors.ErrKeyNotInShard, []string{"shard0.layer_00000.weight", "model-00002-of-00003.safetensors"}},
		{"badheader", func(d string) {
			p := filepath.Join(d, "model-00003-of-00003.safetensors")
			b, _ := os.ReadFile(p)
			writeFile(t, p, b[:len(b)-1]) // truncated data
		}, safetensors.ErrShardInvalid, []string{"model-00003-of-00003.safetensors", base + "/badheader/model-00003-of-00003.safetensors"}},
		{"escape", func(d string) {
			setIndex(d, func(wm map[string]string) { wm["shard0.layer_00000.weight"] = "../missing/x.safetensors" })
		}, safetensors.ErrIndexShardName, []string{"../missing/x.safetensors"}},
	}
	for _, c := range cases {
		d := mk(c.name)
		c.setup(d)
		_, err := OpenSet(ctxT(t), base+"/"+c.name+"/model.safetensors.index.json", opt)
		t.Logf("%s: %v", c.name, err)
		if err == nil || !errors.Is(err, c.rule) {
			t.Fatalf("%s: %v, want %v", c.name, err, c.rule)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not name %s", c.name, err, w)
			}
		}
	}
	// A single file is checked like a local one.
	b := genCheckpoint(t, filepath.Join(root, "one.safetensors"), 5, "w", 100)
	writeFile(t, filepath.Join(root, "trailing.safetensors"), append(b, 0))
	_, err := OpenSet(ctxT(t), base+"/trailing.safetensors", opt)
	var fe *safetensors.FormatError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), base+"/trailing.safetensors") {
		t.Fatalf("trailing byte: %v, want a FormatError naming the URL", err)
	}
	s, err := OpenSet(ctxT(t), base+"/one.safetensors", opt)
	if err != nil || s.Sharded() || len(s.Headers) != 1 || s.Names[0] != "one.safetensors" {
		t.Fatalf("one file: %v %+v", err, s)
	}
	s.Close()
}
