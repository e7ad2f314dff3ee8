package listener

import (
	"net"
	"os"
	"testing"
)

// This process's listener is found as its own; a port nobody listens on,
// or another process's listener, is not.
func TestListening(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if !HeldBy(os.Getpid(), port) {
		t.Errorf("this process's listener on %d is not found", port)
	}
	if HeldBy(os.Getppid(), port) {
		t.Errorf("the parent process is said to listen on %d", port)
	}
	l.Close()
	if HeldBy(os.Getpid(), port) {
		t.Errorf("a closed listener on %d is still found", port)
	}
}
