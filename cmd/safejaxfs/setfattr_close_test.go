package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSetfattrAfterCloseIsDecided: close(2) returns after FLUSH, but the
// kernel releases the file in the background, so a setfattr right after a
// close can reach the daemon while the file still counts as open. It must
// be decided on the bytes as closed, never deferred and answered with
// success (issue 17 item 1: success must mean applied). A dup kept open
// holds the release back for as long as the test needs, so the race is
// not left to chance.
func TestSetfattrAfterCloseIsDecided(t *testing.T) {
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	odd := filepath.Join(mnt, "odd")
	f, err := os.OpenFile(odd, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	held, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-registered first: closed before the unmount.
	t.Cleanup(func() { syscall.Close(held) })
	if err := f.Close(); err != nil { // FLUSH; no RELEASE while held is open
		t.Fatal(err)
	}
	if err := unix.Setxattr(odd, "user.safetensors.dtype", []byte("F32"), 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("10 closed bytes as F32: %v, want EINVAL", err)
	}
	if msg := getxattr(t, mnt, "user.safejaxfs.error"); !strings.Contains(msg, `"odd"`) {
		t.Errorf("user.safejaxfs.error after the refusal: %q", msg)
	}
	// A hint that fits is applied at once, and says so.
	if err := unix.Setxattr(odd, "user.safetensors.dtype", []byte("I16"), 0); err != nil {
		t.Fatalf("10 bytes as I16: %v", err)
	}
	if d, s := getxattr(t, odd, "user.safetensors.dtype"), getxattr(t, odd, "user.safetensors.shape"); d != "I16" || s != "[5]" {
		t.Errorf("after setting I16: %s %s, want I16 [5]", d, s)
	}
}
