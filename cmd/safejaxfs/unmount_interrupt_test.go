package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUnmountInterrupted: Ctrl-C during unmount's write-back ends unmount
// at once (exit 130, saying why), not when the write-back ends: the kernel
// waits for the daemon's answer to a request it has read, so the signal
// must reach the thread that waits, and the daemon must answer it. The
// daemon goes on writing back, the mount stays, and the next unmount
// finishes. The write-back rewrites a 1 GiB checkpoint (a new tensor sorts
// before its one big tensor): seconds of copying, during which unmount is
// interrupted.
func TestUnmountInterrupted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "big.safetensors")
	const n = 1 << 30
	header := fmt.Sprintf(`{"b":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}`, n, n)
	header += strings.Repeat(" ", (8-len(header)%8)%8)
	f, err := os.Create(ckpt)
	if err != nil {
		t.Fatal(err)
	}
	binary.Write(f, binary.LittleEndian, uint64(len(header)))
	f.WriteString(header)
	if err := f.Truncate(int64(8 + len(header) + n)); err != nil { // sparse: zeros
		t.Fatal(err)
	}
	f.Close()

	mnt := mount(t, ckpt)
	if err := os.WriteFile(filepath.Join(mnt, "a.npy"), npyFile(t, f32("a", 1, 4)), 0o644); err != nil {
		t.Fatal(err)
	}
	unmount := cliCmd("unmount", mnt)
	var stderr strings.Builder
	unmount.Stderr = &stderr
	exited := startCmd(t, unmount)
	// The rewrite has begun once its temp file is there.
	tmp := filepath.Join(dir, ".big.safetensors.safejaxfs-tmp-*")
	waitUntil(t, "the write-back to begin", func() bool { m, _ := filepath.Glob(tmp); return len(m) > 0 })
	unmount.Process.Signal(syscall.SIGINT)
	var err2 error
	select {
	case err2 = <-exited:
	case <-time.After(time.Minute):
		t.Fatal("unmount did not end after its SIGINT")
	}
	// Still under way: unmount did not wait for it.
	stillWriting, _ := filepath.Glob(tmp)
	var ee *exec.ExitError
	if !errors.As(err2, &ee) || ee.ExitCode() != exitInterrupted || !strings.Contains(stderr.String(), "interrupted: the daemon goes on writing the edits back") {
		t.Errorf("unmount interrupted: %v %q, want exit %d saying the write-back goes on", err2, stderr.String(), exitInterrupted)
	}
	if len(stillWriting) == 0 {
		t.Error("unmount ended only once the write-back was done (its temp file was gone)")
	}
	if !mounted(t, mnt) {
		t.Fatal("an interrupted unmount unmounted")
	}
	// The next unmount waits for the write-back under way (or finds it
	// done) and unmounts; the checkpoint holds the new tensor.
	if r := cli(t, "unmount", mnt); r.code != 0 || mounted(t, mnt) {
		t.Fatalf("unmount after the interrupted one: exit %d %s", r.code, r.stderr)
	}
	cliOK(t, "verify", ckpt)
	if ls := cliOK(t, "ls", ckpt).stdout; !strings.Contains(ls, "a ") || !strings.Contains(ls, "F32") {
		t.Errorf("the new tensor is not in the checkpoint:\n%s", ls)
	}
}
