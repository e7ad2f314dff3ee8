package remote

import "sync"

// readahead recognises sequential readers of an Object and says what to
// fetch ahead of them. Several readers (or the kernel's parallel readahead
// requests, which arrive somewhat out of order) are tracked as up to
// maxStreams streams. A read that continues no stream is random: it starts
// a new stream with no window and fetches only the chunks it touches. The
// second read of a stream opens a MinWindow window ahead of it; each time
// the reader is within half a window of the end of what was fetched, the
// next window is fetched and the window doubles, up to MaxWindow (hf-mount
// and mountpoint-s3 do the same from 8 MiB).
type readahead struct {
	mu       sync.Mutex
	min, max int64
	slack    int64 // how far out of order a read may be and still continue a stream
	streams  [maxStreams]stream
	clock    uint64
}

const maxStreams = 8

type stream struct {
	next   int64 // end of the furthest read
	ahead  int64 // end of what was asked for ahead
	window int64
	used   uint64 // for LRU replacement; 0 = empty slot
}

func (r *readahead) init(opt *Options) {
	r.min, r.max = opt.MinWindow, min(opt.MaxWindow, opt.CacheSize/4)
	r.min = min(r.min, r.max)
	r.slack = 2 * opt.ChunkSize
}

// observe records a read of [off, end) and returns the range to fetch
// ahead, empty when none.
func (r *readahead) observe(off, end, size int64) (int64, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clock++
	var s *stream
	for i := range r.streams {
		t := &r.streams[i]
		if t.used != 0 && off >= t.next-r.slack && off <= max(t.next, t.ahead)+r.slack {
			s = t
			break
		}
	}
	if s == nil {
		s = &r.streams[0]
		for i := range r.streams {
			if r.streams[i].used < s.used {
				s = &r.streams[i]
			}
		}
		*s = stream{next: end, ahead: end, used: r.clock}
		return 0, 0
	}
	s.used = r.clock
	s.next = max(s.next, end)
	if s.window == 0 {
		s.window = r.min
	}
	if s.ahead-s.next > s.window/2 || s.ahead >= size {
		return 0, 0
	}
	a := max(s.ahead, s.next)
	b := min(s.next+s.window, size)
	s.ahead = b
	s.window = min(2*s.window, r.max)
	return a, b
}
