package checkpoint

import (
	"bytes"
	"os"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// FuzzLog: any bytes as the log beside a checkpoint. Opening it never
// panics, and whatever it decides (replay, finish, refuse), the file left
// is a valid checkpoint; a log that is not ours (or does not match) is
// never applied. The seeds are real logs: a batch of edits, and a
// committed compaction.
func FuzzLog(f *testing.F) {
	for _, seed := range fuzzSeeds(f) {
		f.Add(seed)
	}
	f.Add([]byte(walMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, log []byte) {
		m := ckDefault()
		path := ckFile(t, m)
		orig := m.canonical(t)
		if err := os.WriteFile(walPathOf(path), log, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Open(path, Options{})
		if err == nil {
			c.Close()
		}
		got, rerr := os.ReadFile(path)
		if rerr != nil {
			t.Fatal(rerr)
		}
		if _, verr := safetensors.ReadHeader(bytes.NewReader(got), int64(len(got))); verr != nil {
			t.Fatalf("the checkpoint no longer validates (open said %v): %v", err, verr)
		}
		// The seeds were written for other files (other inodes): nothing
		// of them may be applied here.
		if !bytes.Equal(got, orig) {
			t.Fatalf("a log written for other files changed the checkpoint (open said %v)", err)
		}
	})
}

// fuzzSeeds are logs of real persistence: edits logged, and a compaction
// committed (crash after its record).
func fuzzSeeds(f *testing.F) [][]byte {
	var out [][]byte
	for _, compact := range []bool{false, true} {
		m := ckDefault()
		path := ckFile(f, m)
		c := ckOpen(f, path, Options{})
		id := ckID(f, c, "embed")
		if err := c.WriteAt(id, ctPattern(3, 70_000), 1000); err != nil {
			f.Fatal(err)
		}
		if _, err := c.Put("new", safetensors.I32, []uint64{2}, ctPattern(4, 8)); err != nil {
			f.Fatal(err)
		}
		if err := c.Rename(ckID(f, c, "step"), "train.step"); err != nil {
			f.Fatal(err)
		}
		if err := c.SetMetadata(map[string]string{"note": "fuzz"}); err != nil {
			f.Fatal(err)
		}
		if err := c.Sync(); err != nil {
			f.Fatal(err)
		}
		if compact {
			c.hooks = ckCrashAt("log-synced", 1)
			c.Compact()
		}
		ckAbandon(c)
		b, err := os.ReadFile(walPathOf(path))
		if err != nil {
			f.Fatal(err)
		}
		// The zeros written ahead are not part of it.
		if s, err := scanWAL(mustOpen(f, walPathOf(path))); err == nil {
			b = b[:s.end]
		}
		out = append(out, b)
	}
	return out
}
