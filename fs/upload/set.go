package upload

import (
	"errors"
	"sync"
)

// ErrNotOpen: a truncate by path (truncate(1), no open file) of a file
// nobody is uploading to. Only whole uploads replace such a file's
// content.
var ErrNotOpen = errors.New("no upload of this file is open")

// Set is a file's open uploads, so that a truncate by path reaches them.
// The zero Set is empty and ready.
type Set struct {
	mu   sync.Mutex
	open map[*Buffer]struct{}
}

// Add records b as open and returns it.
func (s *Set) Add(b *Buffer) *Buffer {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open == nil {
		s.open = map[*Buffer]struct{}{}
	}
	s.open[b] = struct{}{}
	return b
}

// Release forgets a closed upload and frees what it held.
func (s *Set) Release(b *Buffer) {
	s.mu.Lock()
	delete(s.open, b)
	s.mu.Unlock()
	b.Close()
}

// TruncateAll truncates every open upload to size: ErrNotOpen if there
// is none, else the first refusal.
func (s *Set) TruncateAll(size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.open) == 0 {
		return ErrNotOpen
	}
	for b := range s.open {
		if err := b.Truncate(size); err != nil {
			return err
		}
	}
	return nil
}
