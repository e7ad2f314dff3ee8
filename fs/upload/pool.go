package upload

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Defaults for a Pool.
const (
	// SpillAt is the most one upload holds in memory.
	SpillAt = 64 << 20
	// MemoryBudget is the most all uploads together hold in memory.
	MemoryBudget = 256 << 20
)

// Pool is what a mount's uploads share: the budgets and where they spill.
// Its fields are set before the first New and not changed after.
type Pool struct {
	Dir     string // where uploads spill; "" = os.TempDir()
	Limit   int64  // the most all open uploads may hold together (EFBIG beyond)
	SpillAt int64  // the most one upload holds in memory
	Budget  int64  // the most all uploads together hold in memory
	// Report, if set, is told why a write, truncate or flush was refused:
	// the errno is all the writer gets, so the reason goes to the log.
	Report func(error)

	mu     sync.Mutex
	total  int64 // sizes of all open uploads
	memory int64 // bytes of upload buffers held in memory
}

// ErrLimit: an upload, or all of them together, would pass a limit.
var ErrLimit = errors.New("too large for an upload")

// Usage returns the sizes of all open uploads and the memory their
// buffers hold.
func (p *Pool) Usage() (total, memory int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total, p.memory
}

// reserve accounts for an upload growing from old to size bytes
// (shrinking always succeeds).
func (p *Pool) reserve(name string, old, size int64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if size > old && p.total+size-old > p.Limit {
		return fmt.Errorf("%s: %w: all files being written whole in this mount would hold %d bytes, above the limit of %d (half the RAM: each becomes a tensor in memory when it is closed)", name, ErrLimit, p.total+size-old, p.Limit)
	}
	p.total += size - old
	return nil
}

// holdMemory accounts for an upload's buffer changing from old to now
// bytes of memory, and says whether the uploads held in memory stay within
// the budget.
func (p *Pool) holdMemory(old, now int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if now > old && p.memory+now-old > p.Budget {
		return false
	}
	p.memory += now - old
	return true
}

// add accounts for what an upload holds, unchecked (a buffer that exists
// already, or one given back).
func (p *Pool) add(total, memory int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total += total
	p.memory += memory
}

// report passes a refusal to Report and returns it.
func (p *Pool) report(err error) error {
	if p.Report != nil {
		p.Report(err)
	}
	return err
}

// tempFile creates the private file an upload spills to.
func (p *Pool) tempFile() (*os.File, error) {
	dir := p.Dir
	if dir == "" {
		dir = os.TempDir()
	}
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), dir+"/(upload)"), nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		return nil, fmt.Errorf("temp file in %s: %w", dir, err)
	}
	// A file system without O_TMPFILE: a fresh name (O_EXCL), unlinked
	// at once.
	f, err := os.CreateTemp(dir, ".safejaxfs-upload-")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	return f, nil
}
