package checkpoint

import (
	"bytes"
	"testing"
)

// ckReadStaged reads a rewrite in progress back whole.
func ckReadStaged(t testing.TB, s *Staged) []byte {
	t.Helper()
	segs, release, err := s.Read(0, int(s.Size())+1)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	return bytes.Join(segs, nil)
}

// ckRewrite does what cp does to tensor id: truncate to trunc, write p at
// off, close; the rewrite must end at the tensor's size.
func ckRewrite(t testing.TB, c *Checkpoint, id ID, trunc int64, p []byte, off int64) {
	t.Helper()
	s, err := c.Stage(id, trunc)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
}
