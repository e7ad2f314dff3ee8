package fs

import "sync"

// uploadSet tracks a node's open uploads. Without atomic O_TRUNC the kernel
// truncates after OPEN with a SETATTR that carries no file handle, so the
// truncate must reach the uploads through the node.
type uploadSet struct {
	mu   sync.Mutex
	open map[*upload]struct{}
}

func (s *uploadSet) add(u *upload) *upload {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open == nil {
		s.open = map[*upload]struct{}{}
	}
	s.open[u] = struct{}{}
	return u
}

func (s *uploadSet) remove(u *upload) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.open, u)
}

// truncate applies a handle-less truncate to every open upload; false if
// there is none (a truncate by path of something that is not being written).
func (s *uploadSet) truncate(size int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for u := range s.open {
		u.truncate(size)
	}
	return len(s.open) > 0
}
