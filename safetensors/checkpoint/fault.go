package checkpoint

import (
	"fmt"
	"runtime/debug"
	"syscall"
)

// ErrFault: bytes of the mapped checkpoint could not be read, because
// another program truncated the file under the mapping (the kernel then
// sends SIGBUS for the lost pages) or the disk failed. It wraps EIO.
var ErrFault = fmt.Errorf("the mapped checkpoint could not be read (was it truncated by another program?): %w", syscall.EIO)

// copyMapped copies src into dst like copy, where src may be a slice of a
// mapped file. A fault on the mapping (SIGBUS past the end of a file
// truncated meanwhile, an I/O error) would kill the daemon and every edit
// it holds; here it becomes ErrFault. Go turns the fault into a panic only
// for goroutines that ask for it, so the request is made for this copy
// alone.
func copyMapped(dst, src []byte) (n int, err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			if _, ok := r.(interface{ Addr() uintptr }); !ok {
				panic(r)
			}
			n, err = 0, ErrFault
		}
	}()
	return copy(dst, src), nil
}
