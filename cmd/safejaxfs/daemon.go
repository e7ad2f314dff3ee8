package main

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// readyEnv names the fd on which a daemon reports to the parent that started
// it: "ok" once the mount answers, or "<exit code> <message>".
const readyEnv = "SAFEJAXFS_READY_FD"

// mountWait bounds how long the parent waits for the daemon to mount.
const mountWait = 60 * time.Second

// spawnDaemon re-runs this mount in the foreground as a detached child (its
// own session, no terminal) and waits until the child says the mount answers
// or why it could not mount. The parent's exit code is the child's verdict.
func spawnDaemon(args []string, mnt string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return fail(exitMount, "%v", err)
	}
	defer r.Close()
	exe, err := os.Executable()
	if err != nil {
		return fail(exitMount, "%v", err)
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return fail(exitMount, "%v", err)
	}
	defer devnull.Close()
	cmd := exec.Command(exe, append([]string{"mount", "--foreground"}, args...)...)
	cmd.Env = append(os.Environ(), readyEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fail(exitMount, "starting daemon: %v", err)
	}
	w.Close()

	type verdict struct {
		line string
		err  error
	}
	done := make(chan verdict, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		done <- verdict{strings.TrimSpace(line), err}
	}()
	select {
	case v := <-done:
		if v.line == "ok" {
			cmd.Process.Release()
			return nil
		}
		code, msg, found := strings.Cut(v.line, " ")
		n, convErr := strconv.Atoi(code)
		if !found || convErr != nil {
			// The daemon died without a word: reap it for its status.
			werr := cmd.Wait()
			return fail(exitMount, "daemon exited before the mount was ready: %v", errors.Join(werr, v.err))
		}
		cmd.Wait()
		return &exitError{code: n, err: errors.New(msg)}
	case <-time.After(mountWait):
		cmd.Process.Kill()
		cmd.Wait()
		return fail(exitMount, "mount at %s did not answer within %v", mnt, mountWait)
	}
}

// ready is the write end of the readiness pipe; nil in a foreground run that
// nobody waits for.
type ready struct{ f *os.File }

func readyPipe() *ready {
	fd, err := strconv.Atoi(os.Getenv(readyEnv))
	if err != nil {
		return nil
	}
	os.Unsetenv(readyEnv)
	return &ready{os.NewFile(uintptr(fd), "ready")}
}

func (r *ready) ok() {
	if r == nil {
		return
	}
	r.f.WriteString("ok\n")
	r.f.Close()
	r.f = nil
}

func (r *ready) fail(err error) {
	if r == nil || r.f == nil {
		return
	}
	code := exitMount
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	msg := strings.ReplaceAll(err.Error(), "\n", "; ")
	r.f.WriteString(strconv.Itoa(code) + " " + msg + "\n")
	r.f.Close()
	r.f = nil
}
