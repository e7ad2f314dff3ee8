package main

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
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
	url   string
	armed atomic.Bool
	asked chan struct{} // closed at the first stalled request
	gone  chan struct{} // closed when that request's client went away
	n     atomic.Int32
}

func startStallingServer(t *testing.T, ckpt []byte) *stallingServer {
	s := &stallingServer{asked: make(chan struct{}), gone: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.armed.Load() {
			w.Header().Set("ETag", `"v1"`)
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(ckpt))
			return
		}
		first := s.n.Add(1) == 1
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %s/%d", r.Header.Get("Range")[len("bytes="):], len(ckpt)))
		w.WriteHeader(http.StatusPartialContent)
		w.(http.Flusher).Flush()
		if first {
			close(s.asked)
		}
		<-r.Context().Done()
		if first {
			close(s.gone)
		}
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	s.url = srv.URL + "/model.safetensors"
	return s
}

// TestRemoteReadInterrupted: Ctrl-C on a cat of a remote tensor whose
// bytes do not arrive ends the cat at once (the daemon answers the
// interrupted read with EINTR instead of waiting for the network), and the
// fetch nobody waits for any more is cancelled: the server sees the
// request go away.
func TestRemoteReadInterrupted(t *testing.T) {
	big := make([]byte, 8<<20)
	ckpt := canonical(t, nil, f32("small", 1, 4), raw("big", safetensors.U8, big, uint64(len(big))))
	s := startStallingServer(t, ckpt)
	// --debug: should cat ever hang, the log shows which requests the
	// daemon got and answered (the READ, its INTERRUPT).
	mnt, logFile := remoteMount(t, s.url, "--debug")
	s.armed.Store(true)
	cat := exec.Command("cat", filepath.Join(mnt, "big"))
	exited := startCmd(t, cat)
	select {
	case <-s.asked:
	case err := <-exited:
		t.Fatalf("cat ended before its bytes were asked for: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon never asked for the tensor's bytes")
	}
	cat.Process.Signal(syscall.SIGINT)
	select {
	case err := <-exited:
		if ws, ok := cat.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGINT {
			t.Errorf("cat ended with %v, not by its SIGINT", err)
		}
	case <-time.After(20 * time.Second):
		// Where cat waits (its kernel stack), and what the daemon did.
		stack, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stack", cat.Process.Pid))
		wchan, _ := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", cat.Process.Pid))
		cat.Process.Kill()
		t.Fatalf("cat did not end after SIGINT: the read waited for the network\ncat waits in %s:\n%s\nthe daemon's log:\n%s",
			wchan, stack, lastLines(readLog(t, logFile), 60))
	}
	select {
	case <-s.gone:
	case <-time.After(20 * time.Second):
		t.Fatal("the remote fetch was not cancelled")
	}
	// The mount lives on and serves what it has.
	s.armed.Store(false)
	if got, err := os.ReadFile(filepath.Join(mnt, "small")); err != nil || !bytes.Equal(got, f32("", 1, 4).data) {
		t.Errorf("small after the interrupted read: %v", err)
	}
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
