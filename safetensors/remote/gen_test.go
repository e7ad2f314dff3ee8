package remote

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// genCheckpoint writes a safetensors file of F32 tensors of the given
// element counts, with random bytes, through the project's own writer, and
// returns its bytes (the truth every read is compared with).
func genCheckpoint(t testing.TB, path string, seed uint64, keyPrefix string, counts ...int) []byte {
	t.Helper()
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	r := rand.NewChaCha8(s)
	var src []safetensors.Source
	for i, n := range counts {
		b := make([]byte, 4*n)
		r.Read(b)
		src = append(src, safetensors.Source{
			Key: fmt.Sprintf("%s.layer_%05d.weight", keyPrefix, i), DType: safetensors.F32,
			Shape: []uint64{uint64(n)}, Data: safetensors.Bytes(b),
		})
	}
	var buf bytes.Buffer
	if _, err := safetensors.Write(&buf, src, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, buf.Bytes())
	return buf.Bytes()
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// genSharded writes model-0000k-of-0000N.safetensors shards and their
// model.safetensors.index.json into dir, like save_pretrained, and returns
// the shard contents by name plus the index bytes.
func genSharded(t testing.TB, dir string, shards int, counts ...int) (map[string][]byte, []byte) {
	t.Helper()
	out := map[string][]byte{}
	wm := map[string]string{}
	total := 0
	for s := range shards {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", s+1, shards)
		b := genCheckpoint(t, filepath.Join(dir, name), uint64(100+s), fmt.Sprintf("shard%d", s), counts...)
		out[name] = b
		for i, n := range counts {
			wm[fmt.Sprintf("shard%d.layer_%05d.weight", s, i)] = name
			total += 4 * n
		}
	}
	idx, err := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": wm})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "model.safetensors.index.json"), idx)
	return out, idx
}

// manyTensors returns counts for a checkpoint whose header is longer than
// the 128 KiB probe (about 100 bytes of JSON per tensor).
func manyTensors(n int) []int {
	c := make([]int, n)
	for i := range c {
		c[i] = 1 + i%5
	}
	return c
}
