// Package testsrv starts the real servers the remote-read tests run
// against: nginx (Debian's nginx-light) for https:// and an hf:// Hub
// layout, versitygw for s3://. Tests of safetensors/remote and the
// end-to-end mount tests share it; nothing else imports it.
//
// A missing server binary fails the test under CI (scripts/test.sh installs
// nginx-light and builds versitygw) and skips it elsewhere.
package testsrv

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safejaxfs/safejaxfs/internal/listener"
)

// Nginx is a real nginx (Debian's nginx-light) on 127.0.0.1, started by a
// test with a generated config and stopped by its Cleanup. Every request is
// logged, one line each: port, method, URI, Range, status, Authorization
// and If-Match, so tests count requests and check what was sent.
//
// nginx writes a request's log line after the last byte of its response
// went out, so a client may see the response before the line exists. Log
// therefore first waits until nginx serves no request (its stub_status,
// on a port of its own that is not logged): every request answered by
// then has been logged.
type Nginx struct {
	dir        string
	logf       string
	statusPort int
}

// LogLine is one logged request.
type LogLine struct {
	Port, Method, URI, Range, Status, Auth, IfMatch string
}

// StartNginx runs nginx with the given server blocks, listening on ports it
// picks and returns in that order; {port0}, {port1}, ... in a block stand
// for those ports.
func StartNginx(t testing.TB, servers ...string) (*Nginx, []int) {
	t.Helper()
	bin := nginxBinary(t)
	for try := 0; ; try++ {
		ports := make([]int, len(servers)+1) // the last: the status page's
		for i := range ports {
			ports[i] = FreePort(t)
		}
		n, err := tryNginx(t, bin, servers, ports)
		if err == nil {
			return n, ports[:len(servers)]
		}
		if try == 3 { // a free port taken between picking and binding
			t.Fatal(err)
		}
	}
}

// nginxBinary is nginx's path; missing, a failure under CI, else a skip.
func nginxBinary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		bin = "/usr/sbin/nginx"
		if _, err := os.Stat(bin); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatal("nginx is not installed (Debian nginx-light; scripts/test.sh installs it)")
			}
			t.Skip("nginx is not installed (apt-get install nginx-light)")
		}
	}
	return bin
}

// tryNginx starts nginx with servers on ports (one more than servers: the
// last is the status page's) and returns once it holds every one.
func tryNginx(t testing.TB, bin string, servers []string, ports []int) (*Nginx, error) {
	dir := t.TempDir()
	n := &Nginx{dir: dir, logf: filepath.Join(dir, "access.log")}
	ports, n.statusPort = ports[:len(servers)], ports[len(servers)]
	var conf strings.Builder
	fmt.Fprintf(&conf, `daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 512; }
http {
  log_format t '$server_port $request_method $request_uri "$http_range" $status "$http_authorization" "$http_if_match"';
  access_log %[1]s/access.log t;
  client_body_temp_path %[1]s/tmp;
  proxy_temp_path %[1]s/tmp;
  fastcgi_temp_path %[1]s/tmp;
  uwsgi_temp_path %[1]s/tmp;
  scgi_temp_path %[1]s/tmp;
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 100000;
`, dir)
	for i, s := range servers {
		for j, p := range ports {
			s = strings.ReplaceAll(s, fmt.Sprintf("{port%d}", j), fmt.Sprint(p))
		}
		fmt.Fprintf(&conf, "  server {\n    listen 127.0.0.1:%d;\n%s\n  }\n", ports[i], s)
	}
	// The status server: not logged, and one nginx process (master_process
	// off) serves it and every other server, so its counters and the log
	// agree.
	fmt.Fprintf(&conf, "  server {\n    listen 127.0.0.1:%d;\n    access_log off;\n    location / { stub_status; }\n  }\n", n.statusPort)
	conf.WriteString("}\n")
	cf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cf, []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "tmp"), 0o755)
	cmd := exec.Command(bin, "-p", dir, "-c", cf, "-e", filepath.Join(dir, "error.log"))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	// Ready once this nginx holds every port (internal/listener: another program
	// may hold one, and answer).
	for _, p := range append(ports, n.statusPort) {
		for !listener.HeldBy(cmd.Process.Pid, p) {
			select {
			case <-exited:
				b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
				return nil, fmt.Errorf("nginx exited: %s", b)
			default:
			}
			if time.Now().After(deadline) {
				stop()
				return nil, fmt.Errorf("nginx did not listen on %d", p)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Cleanup(stop)
	return n, nil
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Log returns the requests logged so far: every request nginx has
// answered, since it first waits for nginx to be idle.
func (n *Nginx) Log(t testing.TB) []LogLine {
	t.Helper()
	n.waitIdle(t)
	f, err := os.Open(n.logf)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		t.Fatal(err)
	}
	defer f.Close()
	var out []LogLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l LogLine
		q := strings.Split(sc.Text(), `"`) // port method uri "range" status "auth" "ifmatch"
		if len(q) < 7 {
			t.Fatalf("bad log line %q", sc.Text())
		}
		f := strings.Fields(q[0])
		l.Port, l.Method, l.URI = f[0], f[1], f[2]
		un := func(s string) string { return strings.ReplaceAll(s, `\x22`, `"`) } // nginx escapes quotes
		l.Range, l.Status, l.Auth, l.IfMatch = q[1], strings.TrimSpace(q[2]), un(q[3]), un(q[5])
		out = append(out, l)
	}
	return out
}

// waitIdle waits until nginx reads and writes no request but the status
// request asking: every request before it has been logged then. A request
// still under way (a read-ahead the client started) is waited for; one a
// client has not sent yet is not, and no test may count on it.
func (n *Nginx) waitIdle(t testing.TB) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	url := fmt.Sprintf("http://127.0.0.1:%d/", n.statusPort)
	var last string
	// Bounded only so that a request that never ends fails the test
	// instead of hanging it; an idle nginx answers at once.
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		resp, err := c.Get(url)
		if err != nil {
			t.Fatalf("nginx status: %v", err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("nginx status: %v", err)
		}
		last = string(b)
		// "Reading: 0 Writing: 1 Waiting: 3": the one written is this.
		var reading, writing, waiting int
		i := strings.Index(last, "Reading:")
		if i < 0 {
			t.Fatalf("nginx status %q", last)
		}
		if _, err := fmt.Sscanf(last[i:], "Reading: %d Writing: %d Waiting: %d", &reading, &writing, &waiting); err != nil {
			t.Fatalf("nginx status %q: %v", last, err)
		}
		if reading == 0 && writing == 1 {
			return
		}
	}
	t.Fatalf("nginx still serves requests after a minute: %s", last)
}

// Since returns the log lines after the first k.
func (n *Nginx) Since(t testing.TB, k int) []LogLine {
	l := n.Log(t)
	return l[min(k, len(l)):]
}

// StaticServer serves root with byte ranges and ETags (nginx's defaults).
func StaticServer(root string) string {
	return fmt.Sprintf("    root %s;", root)
}
