package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// TestForkedChildsCloseDecidesNothing: a process that starts a subprocess
// while it writes a file in the mount gives the child a copy of the
// descriptor, which the child closes when it execs; the kernel sends FLUSH
// for that close. It must not commit (or fsync) the parent's half-done
// work: here the parent wrote into a tensor, started /bin/true, and keeps
// the file open, unsynced, when the daemon is killed. Nothing acknowledged
// the write, so after recovery the tensor holds its old bytes. (Before,
// the child's close committed it: a large write arrives in several
// requests, and a commit between them then kept half of it after a crash.)
func TestForkedChildsCloseDecidesNothing(t *testing.T) {
	if !isolated(t) {
		return
	}
	py := numpy(t)
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	pid := daemonOf(t, mnt)
	script := `
import os, subprocess, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, bytes(range(16)), 0)
subprocess.run(['/bin/true'], check=True)
print('ready', flush=True)
sys.stdin.read()
`
	cmd := exec.Command(py, "-c", script, filepath.Join(mnt, "params", "Dense_1", "bias"))
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, _ := bufio.NewReader(out).ReadString('\n'); strings.TrimSpace(line) != "ready" {
		t.Fatalf("the writer said %q", line)
	}
	if err := unix.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	stdin.Close()
	cmd.Wait() // its own close meets a dead mount: an error, ignored
	if r := cli(t, "unmount", mnt); r.code != 0 {
		t.Fatalf("unmount of the dead mount: exit %d %s", r.code, r.stderr)
	}
	checkFile(t, ckpt, flaxMeta, flaxTensors()...)
}

// TestRewriteHandedToAChild: a parent opens a tensor for rewriting and
// hands the file to a child (subprocess.Popen(..., stdout=f)), closing its
// own copy before the child has written (that close sees the rewrite at
// the wrong size: EINVAL, as it says). The child writes the tensor whole
// and exits; the last close commits it.
func TestRewriteHandedToAChild(t *testing.T) {
	if !isolated(t) {
		return
	}
	numpy(t)
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	bias := raw("params.Dense_1.bias", safetensors.F32, bytes.Repeat([]byte{7}, 16), 4)
	src := filepath.Join(t.TempDir(), "bias.bin")
	if err := os.WriteFile(src, bias.data, 0o644); err != nil {
		t.Fatal(err)
	}
	script := `
import subprocess, sys
f = open(sys.argv[1], 'wb')
p = subprocess.Popen(['/bin/sh', '-c', 'read x; cat "$0"', sys.argv[2]], stdin=subprocess.PIPE, stdout=f)
try:
    f.close()
except OSError as e:
    print('parent close:', e.errno)
p.stdin.write(b'go\n'); p.stdin.close()
sys.exit(p.wait())
`
	runPython(t, script, filepath.Join(mnt, "params", "Dense_1", "bias"), src)
	unmountOK(t, mnt)
	want := flaxTensors()
	want[3] = bias
	checkFile(t, ckpt, flaxMeta, want...)
}
