package fs

import (
	"bytes"
	"context"
	"os"
	"strconv"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// A close decides (commits a rewrite or an upload, makes pending writes
// durable: see tensorNode.Flush, flushUpload) only when the process that
// opened the file closes it. A process forked while the file is open gets
// a copy of the descriptor, and closes it when it execs (a descriptor with
// close-on-exec, which every language runtime sets) or exits; the kernel
// sends FLUSH for that close too. If that close decided, every subprocess
// a program starts while it writes would commit (and fsync) its half-done
// work: a large write reaches the daemon as several requests, and a commit
// between two of them, followed by a crash, would keep half of it; a
// rewrite half written would be refused at that close, and the refusal
// recorded. So a close from another process decides nothing: the owner's
// own close does, or, if the owner closed first (a parent handing a file
// to a child: `subprocess.run(..., stdout=f)`), the last close (Release).
//
// The kernel names the calling thread; its process (thread group) is read
// from /proc. When it cannot be (a caller in another pid namespace shows
// as 0, or a thread that already exited), the close decides, as before.

// opener is the thread group of the process that opened a file; 0 when
// unknown.
type opener int

// openerOf is the process making the request.
func openerOf(ctx context.Context) opener {
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return 0
	}
	return opener(tgidOf(c.Pid))
}

// decides reports whether a close made by ctx's caller decides: it is the
// opener's, or either is unknown.
func (o opener) decides(ctx context.Context) bool {
	if o == 0 {
		return true
	}
	by := openerOf(ctx)
	return by == 0 || by == o
}

// tgidOf is the thread group of thread tid (/proc/TID/status), 0 if it
// cannot be read.
func tgidOf(tid uint32) int {
	if tid == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(tid), 10) + "/status")
	if err != nil {
		return 0
	}
	i := bytes.Index(b, []byte("\nTgid:"))
	if i < 0 {
		return 0
	}
	b = bytes.TrimLeft(b[i+len("\nTgid:"):], " \t")
	if j := bytes.IndexByte(b, '\n'); j >= 0 {
		b = b[:j]
	}
	n, err := strconv.Atoi(string(bytes.TrimSpace(b)))
	if err != nil {
		return 0
	}
	return n
}
