package main

import (
	"net"
	"os"
	"sync"
	"time"
)

// sdNotify tells systemd about a foreground daemon (a Type=notify
// service running safejaxfs mount -f): READY=1 once the mount answers, so
// units ordered after it start only then; STOPPING=1 when a signal starts
// the write-back and unmount. Nothing happens without NOTIFY_SOCKET, or in
// a background daemon (whose pid is not the service's).
func sdNotify(foreground bool, state string) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if !foreground || addr == "" {
		return
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:] // an abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	c.Write([]byte(state))
}

var extending sync.Once

// extendStop keeps systemd from killing a stopping foreground daemon
// while it writes edits back (TimeoutStopSec, 90 s by default, counts
// from SIGTERM): every extendEvery it asks for extendBy more, until the
// process exits. A write-back of many GB takes minutes.
func extendStop(foreground bool) {
	if !foreground || os.Getenv("NOTIFY_SOCKET") == "" {
		return
	}
	extending.Do(func() {
		go func() {
			for {
				sdNotify(foreground, "EXTEND_TIMEOUT_USEC=30000000")
				time.Sleep(10 * time.Second)
			}
		}()
	})
}
