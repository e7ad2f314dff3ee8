package testsrv

import (
	"net"
	"testing"
)

// A port another process holds is not taken for nginx's, though a
// connection to it succeeds (the kernel completes it into the holder's
// backlog): tryNginx fails, and StartNginx picks other ports. It used to
// report nginx ready, and a test then read the holder's answers.
func TestNginxPortTaken(t *testing.T) {
	bin := nginxBinary(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	if _, err := tryNginx(t, bin, []string{StaticServer(t.TempDir())}, []int{FreePort(t), taken}); err == nil {
		t.Fatalf("nginx was taken for ready with its status port %d held by another", taken)
	}
}
