package checkpoint

import (
	"fmt"
	"slices"
	"sync"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Staged is a rewrite of one tensor that began with a truncate (O_TRUNC,
// ftruncate to another size): cp, dd, shell redirection and open('wb')
// write a tensor file whole this way. It belongs to one open file
// description, not to the tensor: other descriptors keep reading and
// writing the committed bytes, and nothing reaches the tensor until the
// owner commits at exactly dtype x shape bytes. An abandoned one is
// dropped and changes nothing.
type Staged struct {
	c  *Checkpoint
	id ID

	mu   sync.Mutex
	data *content
	ref  *mapping // held while data's base may point into it
	// logs are the log mappings data may hold slices of, pinned (a
	// write-back may fold the log and drop it meanwhile).
	logs []*walMap
}

// Stage starts a rewrite of tensor id from its committed bytes cut (or
// grown with zeros) to size.
func (c *Checkpoint) Stage(id ID, size int64) (*Staged, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, err := c.writable(id)
	if err != nil {
		return nil, err
	}
	if size > t.want() {
		return nil, sizeError(t, size)
	}
	d := t.cur.clone()
	d.truncate(size)
	s := &Staged{c: c, id: id, data: d, logs: c.pinLogs()}
	c.staged[s] = struct{}{}
	if len(d.base) > 0 {
		// The prefix kept still reads from the mapping: keep it mapped
		// even if a rewrite retires it meanwhile.
		s.ref = d.ref
		s.ref.acquire()
	}
	return s, nil
}

func sizeError(t *tensor, end int64) error {
	return fmt.Errorf("tensor %q: writing up to byte %d, but %s %s holds %d bytes: %w",
		t.key, end, t.dtype, safetensors.ShapeString(t.shape), t.want(), ErrSize)
}

// want is the size the tensor needs now (its dtype or shape may change
// while the rewrite runs); -1 once it is gone.
func (s *Staged) want() (int64, string) {
	s.c.mu.RLock()
	defer s.c.mu.RUnlock()
	t := s.c.get(s.id)
	if t == nil {
		return -1, ""
	}
	return t.want(), t.key
}

// WriteAt writes into the rewrite; past the tensor's size is refused
// (ErrSize), as for any write into a tensor.
func (s *Staged) WriteAt(p []byte, off int64) error {
	want, key := s.want()
	end := off + int64(len(p))
	if want >= 0 && end > want {
		return fmt.Errorf("tensor %q: writing up to byte %d, but the tensor holds %d bytes: %w", key, end, want, ErrSize)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.data.write(p, off)
}

// Truncate sets the rewrite's size.
func (s *Staged) Truncate(size int64) error {
	want, key := s.want()
	if want >= 0 && size > want {
		return fmt.Errorf("tensor %q: truncating to %d bytes, but the tensor holds %d: %w", key, size, want, ErrSize)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data.truncate(size)
	return nil
}

// Size is the rewrite's current size.
func (s *Staged) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.data.size
}

// Read is Checkpoint.Read of the rewrite (what its owner reads back).
func (s *Staged) Read(off int64, n int) (segs [][]byte, release func(), err error) {
	done := s.c.reads.enter()
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.data
	if off >= d.size || n <= 0 {
		done()
		return nil, nop, nil
	}
	// Only a kept prefix reads from a mapping, and s.ref holds that one.
	m := s.ref
	m.acquire()
	return d.segments(off, int64(n)), func() {
		m.release()
		done()
	}, nil
}

// Commit makes the rewrite the tensor's bytes if it has exactly the size
// dtype x shape needs; otherwise it returns an error wrapping ErrSize and
// the rewrite stays open (a later write and commit may still complete
// it). A tensor deleted meanwhile takes nothing: the bytes go nowhere, as
// writes to an unlinked file do.
func (s *Staged) Commit() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	_, err := s.commitLocked()
	return err
}

// CommitSync is Commit, durable before it returns or not made at all
// (see durably): a close whose rewrite could not be logged fails, and the
// tensor keeps its bytes.
func (s *Staged) CommitSync() error {
	return s.c.durablyUnder(&s.mu, s.commitLocked)
}

// commitLocked is Commit with s.mu and the checkpoint's mu held; it
// returns the undo of what it did.
func (s *Staged) commitLocked() (func(), error) {
	c := s.c
	t := c.get(s.id)
	if t == nil {
		return func() {}, nil
	}
	if s.data.size != t.want() {
		return nil, fmt.Errorf("tensor %q: rewritten with %d bytes, but %s %s needs %d; kept the previous bytes: %w",
			t.key, s.data.size, t.dtype, safetensors.ShapeString(t.shape), t.want(), ErrSize)
	}
	d := s.data.clone()
	cur := c.shards[t.shard].cur
	if c.heldByDroppedLog(d, s.logs) {
		// A write-back folded and dropped the log meanwhile: the bytes
		// that lived there come along in memory.
		m, err := materialized(d)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", t.key, err)
		}
		d = m
	}
	undo := c.undoTensor(t)
	retired := len(c.retired)
	switch {
	case len(d.base) > 0 && d.ref != cur && !slices.Contains(c.retired, d.ref):
		// The prefix reads from a mapping a rewrite retired and
		// released meanwhile (alive through s.ref only): the checkpoint
		// takes a reference of its own, dropped once no tensor reads it.
		d.ref.acquire()
		c.retired = append(c.retired, d.ref)
	case len(d.base) == 0:
		// Nothing reads from a mapping. Where the tensor sits in the
		// current file (for an in-place persist) is that of its
		// committed bytes, or none.
		d.base, d.ref, d.src = nil, t.cur.ref, t.cur.src
	}
	t.cur = d
	t.touch()
	c.mark(t)
	c.edits++
	return func() {
		undo()
		for _, m := range c.retired[retired:] {
			m.release()
		}
		c.retired = c.retired[:retired]
	}, nil
}

// leave makes the rewrite stop reading from mapping old (its file is about
// to be overwritten in place): what it reads from there is copied into
// memory. Called without the checkpoint's mu (Staged.mu comes first).
func (s *Staged) leave(old *mapping) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ref != old {
		return nil
	}
	m, err := materialized(s.data)
	if err != nil {
		return err
	}
	s.data = m
	s.ref.release()
	s.ref = nil
	return nil
}

// Close drops the rewrite (after a commit, or abandoned). It is safe to
// call more than once.
func (s *Staged) Close() {
	s.c.mu.Lock()
	delete(s.c.staged, s)
	s.c.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ref != nil {
		s.ref.release()
		s.ref = nil
	}
	for _, m := range s.logs {
		m.release()
	}
	s.logs = nil
}
