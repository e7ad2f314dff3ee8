package main

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// explainMountError turns what mounting failed with into something a user
// can act on. go-fuse reports a failed fusermount3 as "fusermount exited
// with code 256" (a raw wait status); the real exit status is 1, and the
// reason is what fusermount3 printed, which the caller appends. A
// permission error on /dev/fuse gets the usual fixes.
func explainMountError(err error, tail string) string {
	msg := strings.TrimSpace(err.Error())
	if m := fusermountCode.FindStringSubmatch(msg); m != nil {
		if n, convErr := strconv.Atoi(m[1]); convErr == nil {
			ws := syscall.WaitStatus(n)
			status := fmt.Sprintf("exit status %d", ws.ExitStatus())
			if ws.Signaled() {
				status = "killed by " + ws.Signal().String()
			}
			msg = fusermountCode.ReplaceAllString(msg, "fusermount3 failed ("+status+")")
		}
	}
	if tail != "" {
		msg += ": " + tail
	}
	if devFuseDenied(err, tail) {
		msg += "; " + devFuseHint()
	}
	return msg
}

var fusermountCode = regexp.MustCompile(`fusermount exited with code (\d+)`)

func devFuseDenied(err error, tail string) bool {
	if strings.Contains(tail, "/dev/fuse") && (strings.Contains(tail, "ermission denied") || strings.Contains(tail, "ot permitted")) {
		return true
	}
	var pe *os.PathError
	return err != nil && errors.As(err, &pe) && pe.Path == "/dev/fuse" && (errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM))
}

// devFuseHint says how a user gets to mount.
func devFuseHint() string {
	if os.Geteuid() == 0 {
		return "/dev/fuse cannot be opened even as root: in a container, pass the device in (docker run --device /dev/fuse --cap-add SYS_ADMIN)"
	}
	return "mounting as a normal user needs read-write access to /dev/fuse through the setuid-root fusermount3 (Debian package fuse3: check that /usr/bin/fusermount3 is -rwsr-xr-x root and /dev/fuse is crw-rw-rw-), or run as root"
}
