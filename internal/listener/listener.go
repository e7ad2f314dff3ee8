// Package listener says which process holds a loopback port: for the
// test servers (internal/testsrv) and the bench's nginx
// (scripts/benchtool), which are ready only once the process they started
// holds its port.
//
// A port picked free (listening on port 0, then closing) can be taken by
// another program before the server started on it binds it: the test
// processes of other packages start servers of their own at the same
// moment, and outgoing connections take ports from the same range. A
// connection to the port then reaches that program (one test read another
// nginx's 404 as its own status page), and the server started on it fails
// to bind and exits, seconds later. Only the listening socket's owner
// tells the two apart, so readiness is that.
package listener

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// HeldBy reports whether process pid holds the socket listening on
// 127.0.0.1:port.
func HeldBy(pid, port int) bool {
	inode := listenerInode(port)
	if inode == "" {
		return false
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	want := "socket:[" + inode + "]"
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && l == want {
			return true
		}
	}
	return false
}

// listenerInode is the inode of the socket listening on 127.0.0.1:port, from
// /proc/net/tcp; "" if there is none.
func listenerInode(port int) string {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return ""
	}
	defer f.Close()
	local := fmt.Sprintf("0100007F:%04X", port) // 127.0.0.1, as the kernel prints it
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		f := strings.Fields(sc.Text())
		if len(f) >= 10 && f[1] == local && f[3] == "0A" { // TCP_LISTEN
			return f[9]
		}
	}
	return ""
}
