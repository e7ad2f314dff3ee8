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
		m := fuzzModel()
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

// fuzzModel is a small checkpoint: small logs make quick cases.
func fuzzModel() *ckModel {
	return &ckModel{tensors: map[string]ckTensor{
		"embed": {safetensors.U8, []uint64{300}, ctPattern(1, 300)},
		"step":  {safetensors.I64, []uint64{}, ctPattern(2, 8)},
		"w":     {safetensors.F32, []uint64{2, 4}, ctPattern(3, 32)},
	}, meta: map[string]string{"framework": "flax"}}
}

// fuzzSeeds are logs of real persistence: edits logged, and a compaction
// committed (crash after its record).
func fuzzSeeds(f *testing.F) [][]byte {
	var out [][]byte
	for _, compact := range []bool{false, true} {
		m := fuzzModel()
		path := ckFile(f, m)
		c := ckOpen(f, path, Options{})
		id := ckID(f, c, "embed")
		if err := c.WriteAt(id, ctPattern(3, 200), 10); err != nil {
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

// FuzzLogRecords reaches past the checksums and the identity check: the
// input is a list of records (type byte, u16 length, payload), which the
// harness writes as a log of the fuzz case's own checkpoint, with a real
// base record and the CRC chain computed. Whatever the records say, an
// open never panics, and a checkpoint it accepts is left valid and opens
// again.
func FuzzLogRecords(f *testing.F) {
	f.Add(fuzzRecords(
		walRecord{typ: recData, head: dataHead("embed", 0), data: [][]byte{ctPattern(5, 100)}},
		walRecord{typ: recCommit, head: commitBody(2)},
	))
	f.Add(fuzzRecords(
		walRecord{typ: recPut, head: putHead("new", 0, safetensors.U8, []uint64{3}), data: [][]byte{[]byte("abc")}},
		walRecord{typ: recRename, head: renameBody([][2]string{{"step", "s2"}})},
		walRecord{typ: recReshape, head: reshapeBody("w", safetensors.I32, []uint64{8})},
		walRecord{typ: recMeta, head: metaBody(0, map[string]string{"a": "b"})},
		walRecord{typ: recDelete, head: deleteBody("embed")},
		walRecord{typ: recCommit, head: commitBody(2)},
	))
	f.Add(fuzzRecords(
		walRecord{typ: recCompact, head: compactBody(&compactRec{patches: []patchedFile{{File: 0, Runs: []patchRun{{Off: 200, N: 10, Old: []uint32{1}, New: []uint32{2}}}}}})},
		walRecord{typ: recCommit, head: commitBody(2)},
	))
	f.Fuzz(func(t *testing.T, in []byte) {
		m := fuzzModel()
		path := ckFile(t, m)
		d, name := dirOfPath(t, path)
		wf, err := walFileOf(d, name, headerLen(t, path))
		if err != nil {
			t.Fatal(err)
		}
		w, err := createWAL(d, walNameOf(name), []walFile{wf}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		var recs []walRecord
		for len(in) >= 3 {
			n := int(in[1]) | int(in[2])<<8
			typ := uint32(in[0])
			in = in[3:]
			n = min(n, len(in))
			recs = append(recs, walRecord{typ: typ, head: bytes.Clone(in[:n])})
			in = in[n:]
		}
		if len(recs) > 0 {
			if _, err := w.write(recs); err != nil {
				t.Fatal(err)
			}
		}
		w.close()
		for _, m := range w.maps {
			m.release()
		}
		c, err := Open(path, Options{})
		if err != nil {
			return // refused, or a record that does not make sense: fine
		}
		if err := c.Close(); err != nil {
			return // could not write back: the log is kept
		}
		got, _ := os.ReadFile(path)
		if _, err := safetensors.ReadHeader(bytes.NewReader(got), int64(len(got))); err != nil {
			t.Fatalf("a log the open accepted left an invalid checkpoint: %v", err)
		}
		ro, err := Open(path, Options{ReadOnly: true})
		if err != nil {
			t.Fatalf("reopening after an accepted log: %v", err)
		}
		ro.Close()
	})
}

// fuzzRecords encodes records as FuzzLogRecords reads them (payloads of
// up to 64 KiB; data and put bytes follow their heads).
func fuzzRecords(recs ...walRecord) []byte {
	var out []byte
	for _, r := range recs {
		body := bytes.Join(append([][]byte{r.head}, r.data...), nil)
		out = append(out, byte(r.typ), byte(len(body)), byte(len(body)>>8))
		out = append(out, body...)
	}
	return out
}
