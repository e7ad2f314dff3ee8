package fs

import "github.com/hanwen/go-fuse/v2/fuse"

// mappedResult hands slices of the checkpoint mapping to go-fuse, which
// writes them to /dev/fuse with writev: the bytes go from the page cache to
// the kernel without a copy in the daemon. release runs once the reply is
// sent, so a rewrite of the checkpoint cannot unmap them mid-write.
type mappedResult struct {
	segs    [][]byte
	release func()
}

var _ fuse.ReadResult = (*mappedResult)(nil)

func (r *mappedResult) Size() int {
	n := 0
	for _, s := range r.segs {
		n += len(s)
	}
	return n
}

// Slices makes go-fuse use writev on the segments (its withSlice interface).
func (r *mappedResult) Slices() ([][]byte, fuse.Status) { return r.segs, fuse.OK }

// Bytes is the fallback for transports that need one buffer.
func (r *mappedResult) Bytes(buf []byte) ([]byte, fuse.Status) {
	buf = buf[:0]
	for _, s := range r.segs {
		buf = append(buf, s...)
	}
	return buf, fuse.OK
}

func (r *mappedResult) Done() {
	if r.release != nil {
		r.release()
		r.release = nil
	}
}
