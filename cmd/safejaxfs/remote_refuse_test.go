package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// stallingServer serves ckpt over http; once armed, data requests (not
// the header probe) get their headers and then nothing, until the client
// goes away, which closes gone.
type stallingServer struct {
	url     string
	armed   atomic.Bool
	asked   chan struct{} // closed at the first stalled request
	gone    chan struct{} // closed when that request's client went away
	release chan struct{} // closing it sends the stalled requests' bytes
	n       atomic.Int32
}

func startStallingServer(t *testing.T, ckpt []byte) *stallingServer {
	s := &stallingServer{asked: make(chan struct{}), gone: make(chan struct{}), release: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.armed.Load() {
			w.Header().Set("ETag", `"v1"`)
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(ckpt))
			return
		}
		first := s.n.Add(1) == 1
		var from, to int
		rng := r.Header.Get("Range")[len("bytes="):]
		fmt.Sscanf(rng, "%d-%d", &from, &to)
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %s/%d", rng, len(ckpt)))
		w.Header().Set("Content-Length", strconv.Itoa(to+1-from))
		w.WriteHeader(http.StatusPartialContent)
		w.(http.Flusher).Flush()
		if first {
			close(s.asked)
		}
		select {
		case <-r.Context().Done():
			if first {
				close(s.gone)
			}
		case <-s.release:
			w.Write(ckpt[from : to+1])
		}
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	s.url = srv.URL + "/model.safetensors"
	return s
}

// stalledReader is a reader of a remote file whose bytes do not come: its
// server, the reader's process and what it printed, its exit, and the
// daemon's log.
type stalledReader struct {
	s         *stallingServer
	cmd       *exec.Cmd
	out, errb bytes.Buffer
	exited    <-chan error
	mnt, log  string
}

// startStalledReader mounts ckpt from a fresh stalling server (--debug:
// should a read hang, the log shows which requests the daemon got and
// answered), arms it, runs argv with the path of name under the mount
// appended, and returns once the daemon has asked for the bytes.
func startStalledReader(t *testing.T, ckpt []byte, name string, argv ...string) *stalledReader {
	t.Helper()
	r := &stalledReader{s: startStallingServer(t, ckpt)}
	r.mnt, r.log = remoteMount(t, r.s.url, "--debug")
	r.s.armed.Store(true)
	r.cmd = exec.Command(argv[0], append(argv[1:], filepath.Join(r.mnt, name))...)
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.errb
	r.exited = startCmd(t, r.cmd)
	select {
	case <-r.s.asked:
	case err := <-r.exited:
		t.Fatalf("%s ended before the bytes were asked for: %v: %s", argv[0], err, r.errb.String())
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon never asked for the bytes")
	}
	return r
}

// TestRemoteReadInterrupted: Ctrl-C on a cat of a remote tensor whose
// bytes do not arrive ends the cat at once (the daemon answers the
// interrupted read with EINTR instead of waiting for the network), and the
// fetch nobody waits for any more is cancelled: the server sees the
// request go away. The same holds for the tensor's .npy view and the
// checkpoint's file in the files view.
func TestRemoteReadInterrupted(t *testing.T) {
	big := make([]byte, 8<<20)
	ckpt := canonical(t, nil, f32("small", 1, 4), raw("big", safetensors.U8, big, uint64(len(big))))
	for _, name := range []string{"big", "big.npy", ".files/model.safetensors"} {
		t.Run(strings.ReplaceAll(name, "/", "_"), func(t *testing.T) {
			r := startStalledReader(t, ckpt, name, "cat")
			r.cmd.Process.Signal(syscall.SIGINT)
			select {
			case err := <-r.exited:
				if ws, ok := r.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGINT {
					t.Errorf("cat ended with %v, not by its SIGINT", err)
				}
			case <-time.After(20 * time.Second):
				// Where cat waits (its kernel stack), and what the daemon did.
				stack, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stack", r.cmd.Process.Pid))
				wchan, _ := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", r.cmd.Process.Pid))
				r.cmd.Process.Kill()
				t.Fatalf("cat did not end after SIGINT: the read waited for the network\ncat waits in %s:\n%s\nthe daemon's log:\n%s",
					wchan, stack, lastLines(readLog(t, r.log), 60))
			}
			select {
			case <-r.s.gone:
			case <-time.After(20 * time.Second):
				t.Fatal("the remote fetch was not cancelled")
			}
			// The mount lives on and serves what it has.
			r.s.armed.Store(false)
			if got, err := os.ReadFile(filepath.Join(r.mnt, "small")); err != nil || !bytes.Equal(got, f32("", 1, 4).data) {
				t.Errorf("small after the interrupted read: %v", err)
			}
		})
	}
}

// perlReader reads its file to stdout with read(2) calls of its own and
// exits 3 with the errno's text if one fails: unlike Go, Python, cat or dd
// it does not retry after EINTR. It catches SIGWINCH, SIGUSR1 and SIGINT
// with handlers that do nothing, as programs catch SIGCHLD or SIGWINCH for
// their own bookkeeping (and Python catches SIGINT).
const perlReader = `$| = 1; $SIG{WINCH} = $SIG{USR1} = $SIG{INT} = sub {};
open(my $f, "<", $ARGV[0]) or die "open: $!"; binmode $f; binmode STDOUT;
while (1) { my $n = sysread($f, my $buf, 1 << 20);
  if (!defined $n) { print STDERR "read failed: $!\n"; exit 3 }
  last if $n == 0; print $buf }`

// TestRemoteReadCaughtSignal: a signal the reader catches for its own
// bookkeeping (SIGWINCH here, SIGCHLD for a shell) does not fail a remote
// read that waits for the network: as a read of a local file, it returns
// the bytes once they arrive; so does Ctrl-Z then fg (SIGTSTP, SIGCONT),
// after which the read finishes. A Ctrl-C after such a signal still ends the
// wait, though the kernel tells the daemon of one interrupt per request,
// and even when the reader catches SIGINT (as Python does).
func TestRemoteReadCaughtSignal(t *testing.T) {
	big := make([]byte, 8<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	ckpt := canonical(t, nil, f32("small", 1, 4), raw("big", safetensors.U8, big, uint64(len(big))))
	// settle: long enough for the daemon to have answered an interrupt
	// (it looks at the caller again every 50 ms).
	const settle = 200 * time.Millisecond
	// stalledRead starts the reader on a fresh mount whose server holds
	// the bytes back, sends it sigs once the daemon asked for them, and
	// returns once it is sure the reader still waits.
	stalledRead := func(t *testing.T, sigs ...syscall.Signal) *stalledReader {
		r := startStalledReader(t, ckpt, "big", "perl", "-e", perlReader)
		for _, sig := range sigs {
			r.cmd.Process.Signal(sig)
			time.Sleep(settle)
		}
		select {
		case err := <-r.exited:
			t.Fatalf("%v ended the read: %v: %s\nthe daemon's log:\n%s", sigs, err, r.errb.String(), lastLines(readLog(t, r.log), 20))
		case <-time.After(settle):
		}
		return r
	}

	t.Run("bytes arrive", func(t *testing.T) {
		r := stalledRead(t, syscall.SIGWINCH, syscall.SIGUSR1, syscall.SIGTSTP, syscall.SIGCONT, syscall.SIGWINCH)
		close(r.s.release)
		select {
		case err := <-r.exited:
			if err != nil {
				t.Fatalf("the read failed after the bytes came: %v: %s\nthe daemon's log:\n%s", err, r.errb.String(), lastLines(readLog(t, r.log), 20))
			}
		case <-time.After(30 * time.Second):
			r.cmd.Process.Kill()
			t.Fatal("the reader did not end once the bytes came")
		}
		if !bytes.Equal(r.out.Bytes(), big) {
			t.Errorf("read %d bytes, not the tensor's %d", r.out.Len(), len(big))
		}
	})
	t.Run("Ctrl-C after", func(t *testing.T) {
		r := stalledRead(t, syscall.SIGWINCH)
		r.cmd.Process.Signal(syscall.SIGINT)
		select {
		case err := <-r.exited:
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(r.errb.String(), "Interrupted system call") {
				t.Errorf("the reader's Ctrl-C: %v: %s, want the read to fail with EINTR", err, r.errb.String())
			}
		case <-time.After(20 * time.Second):
			r.cmd.Process.Kill()
			t.Fatal("a caught SIGINT after a SIGWINCH did not end the read")
		}
		select {
		case <-r.s.gone:
		case <-time.After(20 * time.Second):
			t.Fatal("the remote fetch was not cancelled")
		}
	})
	// numpy's process has threads of its own (OpenBLAS): Ctrl-C, sent to
	// the process as a terminal does, is pending for all of them until one
	// takes it, and Python catches it; the read still ends, and Python
	// raises KeyboardInterrupt.
	t.Run("numpy Ctrl-C", func(t *testing.T) {
		r := startStalledReader(t, ckpt, "big", numpy(t), "-c", "import numpy as np, sys; np.fromfile(sys.argv[1], dtype=np.uint8)")
		r.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-r.exited:
			if !strings.Contains(r.errb.String(), "KeyboardInterrupt") {
				t.Errorf("numpy's Ctrl-C: %s, want KeyboardInterrupt", r.errb.String())
			}
		case <-time.After(20 * time.Second):
			r.cmd.Process.Kill()
			t.Fatal("Ctrl-C did not end numpy's read")
		}
	})
}

// TestRemoteUnversioned: a server with neither ETag nor Last-Modified is
// refused with a hint; --allow-unversioned mounts it, and the log says
// versions can mix.
func TestRemoteUnversioned(t *testing.T) {
	ckpt := canonical(t, nil, f32("a", 1, 4))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(ckpt))
	}))
	t.Cleanup(srv.Close)
	url := srv.URL + "/model.safetensors"
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	r := cli(t, "mount", "--cache-dir", t.TempDir(), url, mnt)
	if r.code != exitInvalid || !strings.Contains(r.stderr, "neither ETag nor Last-Modified") || !strings.Contains(r.stderr, "--allow-unversioned") {
		t.Fatalf("mount of an unversioned server: exit %d %q", r.code, r.stderr)
	}
	if r := cli(t, "verify", url); r.code != exitInvalid || !strings.Contains(r.stderr, "--allow-unversioned") {
		t.Errorf("verify of an unversioned server: exit %d %q", r.code, r.stderr)
	}
	mnt, logFile := remoteMount(t, url, "--allow-unversioned")
	if got, err := os.ReadFile(filepath.Join(mnt, "a")); err != nil || !bytes.Equal(got, f32("", 1, 4).data) {
		t.Fatalf("a: %v", err)
	}
	if l := readLog(t, logFile); !strings.Contains(l, "may mix versions") {
		t.Errorf("the log does not say versions can mix:\n%s", l)
	}
}
