package fs

import (
	"bytes"
	"os"
	"strconv"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// interruptFS passes the kernel's interrupt of a request on to the code
// serving it only once the caller has given up.
//
// The kernel sends FUSE_INTERRUPT when any signal arrives that the waiting
// caller does not ignore: its Ctrl-C, but also the SIGCHLD, SIGWINCH or
// SIGALRM that programs catch for their own bookkeeping, and SIGURG, which
// the Go runtime sends its threads to preempt them. Answering those with
// EINTR fails a read or a sync that a local file would have completed: a
// program that does not retry (rsync, perl's sysread, a C loop) reports
// an error, or worse, a short file. So the requests that can wait long (a
// read of a remote checkpoint, which waits on the network; a sync, which
// waits for the write-back) go on after an interrupt until the caller
// gives up (callerGivesUp); the kernel sends one interrupt per request, so
// its pending signals are looked at again every givenUpPoll meanwhile.
// Other requests answer in microseconds and keep go-fuse's channel.
type interruptFS struct {
	fuse.RawFileSystem
	// reads: reads wait on something (a remote checkpoint's network).
	reads bool
}

// givenUpPoll is how often a caller interrupted by a signal it goes on
// after is looked at again: how late a Ctrl-C after a SIGCHLD takes
// effect.
const givenUpPoll = 50 * time.Millisecond

func (r *interruptFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	if !r.reads {
		return r.RawFileSystem.Read(cancel, in, buf)
	}
	c, done := untilGivenUp(cancel, in.Pid)
	defer done()
	return r.RawFileSystem.Read(c, in, buf)
}

func (r *interruptFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	c, done := untilGivenUp(cancel, in.Pid)
	defer done()
	return r.RawFileSystem.SetXAttr(c, in, attr, data)
}

// untilGivenUp returns a channel closed once cancel is and the caller
// (thread tid) has given up; done ends the watch when the request does.
func untilGivenUp(cancel <-chan struct{}, tid uint32) (c <-chan struct{}, done func()) {
	out, end := make(chan struct{}), make(chan struct{})
	go func() {
		select {
		case <-end:
			return
		case <-cancel:
		}
		t := time.NewTicker(givenUpPoll)
		defer t.Stop()
		for !callerGivesUp(tid) {
			select {
			case <-end:
				return
			case <-t.C:
			}
		}
		close(out)
	}()
	return out, func() { close(end) }
}

// stopSignals are the signals after which a caller does not want its
// call to go on, caught or not: SIGKILL (which every fatal signal becomes
// for a process without a handler for it), SIGINT (Ctrl-C; Python raises
// KeyboardInterrupt only once the call returns), SIGTERM, SIGHUP and
// SIGQUIT. A stop signal (Ctrl-Z) is not one: a local read would finish,
// then the process stops, and so it does here.
const stopSignals = 1<<(9-1) | 1<<(2-1) | 1<<(15-1) | 1<<(1-1) | 1<<(3-1)

// callerGivesUp reports whether thread tid has one of stopSignals pending
// (its own or its process's) and not blocked. A caller this daemon cannot
// look at (gone, another PID namespace, /proc mounted hidepid) has given
// up, as every interrupted caller was taken to have before.
func callerGivesUp(tid uint32) bool {
	if tid == 0 {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(tid), 10) + "/status")
	if err != nil {
		return true
	}
	pending, ok1 := statusMask(b, "SigPnd:")
	shared, ok2 := statusMask(b, "ShdPnd:")
	blocked, ok3 := statusMask(b, "SigBlk:")
	if !ok1 || !ok2 || !ok3 {
		return true
	}
	return (pending|shared)&^blocked&stopSignals != 0
}

// statusMask reads a signal mask line ("SigPnd:\t0000000000000002") of a
// /proc status file.
func statusMask(status []byte, field string) (uint64, bool) {
	i := bytes.Index(status, []byte("\n"+field))
	if i < 0 {
		return 0, false
	}
	rest := bytes.TrimLeft(status[i+1+len(field):], " \t")
	if j := bytes.IndexByte(rest, '\n'); j >= 0 {
		rest = rest[:j]
	}
	m, err := strconv.ParseUint(string(rest), 16, 64)
	return m, err == nil
}
