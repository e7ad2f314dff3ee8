package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// readyEnv names the fd on which a daemon reports to the parent that started
// it: "note <message>" lines for the user (printed by the parent), then
// "ok" once the mount answers, or "<exit code> <message>".
const readyEnv = "SAFEJAXFS_READY_FD"

// mountWait bounds how long the parent waits for the daemon to mount a
// local checkpoint (remoteMountWait a remote one).
const mountWait = 60 * time.Second

// daemonExecutable is the program a mount re-runs as its daemon: this one.
// The tests run their commands from a plain build and point this at the
// race-instrumented one, so daemons, where the concurrency is, keep the
// race detector.
var daemonExecutable = os.Executable

// spawnDaemon re-runs this mount in the foreground as a detached child (its
// own session, no terminal) and waits until the child says the mount answers
// or why it could not mount. The parent's exit code is the child's verdict.
func spawnDaemon(args []string, mnt string, wait time.Duration, pf progressFlags) error {
	r, w, err := os.Pipe()
	if err != nil {
		return fail(exitMount, "%v", err)
	}
	defer r.Close()
	exe, err := daemonExecutable()
	if err != nil {
		return fail(exitMount, "%v", err)
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return fail(exitMount, "%v", err)
	}
	defer devnull.Close()
	// Until it is ready the daemon's stderr goes to an unlinked temp file:
	// what fusermount3 says when it refuses is the reason the user needs.
	startErr, err := os.CreateTemp("", "safejaxfs-start-")
	if err != nil {
		return fail(exitMount, "%v", err)
	}
	os.Remove(startErr.Name())
	defer startErr.Close()
	cmd := exec.Command(exe, append([]string{"mount", "--foreground"}, args...)...)
	cmd.Env = append(os.Environ(), readyEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, startErr
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
		br := bufio.NewReader(r)
		var prog *progress
		defer func() { prog.finish() }()
		for {
			line, err := br.ReadString('\n')
			if note, ok := strings.CutPrefix(line, "note "); ok && err == nil {
				prog.finish()
				fmt.Fprintf(os.Stderr, "safejaxfs: %s\n", strings.TrimSpace(note))
				continue
			}
			if p, ok := strings.CutPrefix(line, "progress "); ok && err == nil {
				var d, t int64
				if _, serr := fmt.Sscan(p, &d, &t); serr == nil {
					if prog == nil {
						prog = newProgress(pf.show(true), "fetching headers", unitCount, t).items("shards", 0)
					}
					prog.set(d, t, "")
				}
				continue
			}
			prog.finish()
			done <- verdict{strings.TrimSpace(line), err}
			return
		}
	}()
	verdictOf := func(v verdict) error {
		if v.line == "ok" {
			cmd.Process.Release()
			return nil
		}
		code, msg, found := strings.Cut(v.line, " ")
		n, convErr := strconv.Atoi(code)
		if !found || convErr != nil {
			// The daemon died without a word: reap it for its status.
			cleanupDeadDaemon(mnt)
			werr := cmd.Wait()
			return fail(exitMount, "daemon exited before the mount was ready: %v%s", errors.Join(werr, v.err), stderrTail(startErr))
		}
		cmd.Wait()
		msg += stderrTail(startErr)
		if devFuseDenied(nil, msg) {
			msg += "; " + devFuseHint()
		}
		return &exitError{code: n, err: errors.New(msg)}
	}
	// The daemon may die before it says anything (killed while mounting):
	// then no mount it may have made can be left for no one to answer.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(wait)
	for {
		select {
		case v := <-done:
			return verdictOf(v)
		case <-tick.C:
			if !dying(cmd.Process.Pid) {
				continue
			}
			// Gone: its last words are in the pipe, which its exit
			// closed. Unless it is stuck dying on its own mount, and the
			// pipe never closes.
			select {
			case v := <-done:
				return verdictOf(v)
			case <-time.After(200 * time.Millisecond):
			}
			cleanupDeadDaemon(mnt)
			werr := cmd.Wait()
			return fail(exitMount, "daemon died before the mount was ready: %v%s", werr, stderrTail(startErr))
		case <-deadline:
			cmd.Process.Kill()
			cleanupDeadDaemon(mnt)
			cmd.Wait()
			return fail(exitMount, "mount at %s did not answer within %v", mnt, wait)
		}
	}
}

// cleanupDeadDaemon removes a mount a daemon that died while starting may
// have left (see abort.go).
func cleanupDeadDaemon(mnt string) {
	if err := abortMount(mnt); err != nil {
		fmt.Fprintf(os.Stderr, "safejaxfs: cleaning up the mount at %s: %v\n", mnt, err)
	}
}

// stderrTail returns the last lines the daemon wrote before failing, as a
// suffix for the error message.
func stderrTail(f *os.File) string {
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<20))
	if err != nil {
		return ""
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		// The daemon's own error comes through the pipe already.
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "safejaxfs ") {
			lines = append(lines, l)
		}
	}
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	tail := strings.Join(lines, "; ")
	if tail == "" {
		return ""
	}
	return " (" + tail + ")"
}

// ready is the write end of the readiness pipe; nil in a foreground run that
// nobody waits for.
type ready struct {
	mu sync.Mutex // progress is written from several goroutines
	f  *os.File
}

func readyPipe() *ready {
	fd, err := strconv.Atoi(os.Getenv(readyEnv))
	if err != nil {
		return nil
	}
	os.Unsetenv(readyEnv)
	return &ready{f: os.NewFile(uintptr(fd), "ready")}
}

func (r *ready) ok() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// From now on nobody reads the start-up stderr: stop writing to it.
	if devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0); err == nil {
		syscall.Dup2(int(devnull.Fd()), 2)
		devnull.Close()
	}
	r.f.WriteString("ok\n")
	r.f.Close()
	r.f = nil
}

// progress passes how many of a remote set's headers have arrived to the
// waiting parent, which shows it (remote.Options.HeaderProgress: called
// concurrently).
func (r *ready) progress(done, total int) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f != nil {
		fmt.Fprintf(r.f, "progress %d %d\n", done, total)
	}
}

// note passes a message for the user to the waiting parent.
func (r *ready) note(msg string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return
	}
	r.f.WriteString("note " + escapeControl(msg) + "\n")
}

func (r *ready) fail(err error) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return
	}
	code := exitMount
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	r.f.WriteString(strconv.Itoa(code) + " " + escapeControl(err.Error()) + "\n")
	r.f.Close()
	r.f = nil
}
