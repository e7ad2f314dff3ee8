package fs

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func TestStatusMask(t *testing.T) {
	status := []byte("Name:\tcat\nSigQ:\t0/95000\nSigPnd:\t0000000000000002\nShdPnd:\t0000000000000100\nSigBlk:\t0000000000000000\n")
	for field, want := range map[string]uint64{"SigPnd:": 2, "ShdPnd:": 0x100, "SigBlk:": 0} {
		if got, ok := statusMask(status, field); !ok || got != want {
			t.Errorf("%s: %#x %v, want %#x", field, got, ok, want)
		}
	}
	if _, ok := statusMask(status, "SigCgt:"); ok {
		t.Error("a missing field was read")
	}
}

// A caller with nothing pending goes on; one that cannot be seen has
// given up (as every interrupted caller was taken to have before).
func TestCallerGivesUp(t *testing.T) {
	if callerGivesUp(uint32(syscall.Gettid())) {
		t.Error("this thread, with no signal pending, gave up")
	}
	if !callerGivesUp(0) {
		t.Error("a caller in another PID namespace (pid 0) did not give up")
	}
	if !callerGivesUp(1 << 30) { // above any pid_max: no such thread
		t.Error("a caller that is gone did not give up")
	}
}

// A stopped process keeps the signals sent to it pending: caught ones
// until it runs again, so the look at them can be checked.
func TestCallerGivesUpPending(t *testing.T) {
	cmd := exec.Command("perl", "-e", `use POSIX; $| = 1; $SIG{INT} = $SIG{WINCH} = sub {};
sigprocmask(SIG_BLOCK, POSIX::SigSet->new(SIGTERM)); print "ready\n"; sleep 60`)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	syscall.Kill(pid, syscall.SIGSTOP)
	waitState := func(want byte) {
		for i := 0; i < 500; i++ {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if f := bytes.Fields(b[bytes.LastIndexByte(b, ')')+1:]); len(f) > 0 && f[0][0] == want {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("process %d never reached state %c", pid, want)
	}
	waitState('T')
	for _, c := range []struct {
		sig  syscall.Signal
		want bool
	}{
		{syscall.SIGWINCH, false}, // caught, bookkeeping
		{syscall.SIGTERM, false},  // blocked
		{syscall.SIGINT, true},    // caught, but Ctrl-C
	} {
		syscall.Kill(pid, c.sig)
		if got := callerGivesUp(uint32(pid)); got != c.want {
			t.Errorf("after %v: gives up %v, want %v", c.sig, got, c.want)
		}
	}
}
