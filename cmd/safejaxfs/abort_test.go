package main

import (
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/fs"
)

// TestAbortActsOnWhatItChecked: abortMount pins the mount it found in the
// table (so its connection cannot be swapped for another) and detaches it
// only if it is still the one at the path: one mounted over the path after
// the check is left alone (a check-then-act on the path would detach it).
// tmpfs stands in for the dead FUSE mount.
func TestAbortActsOnWhatItChecked(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mounts)")
	}
	d := t.TempDir()
	if err := unix.Mount("tmpfs", d, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for unix.Unmount(d, unix.MNT_DETACH) == nil {
		}
	})
	checked, found, err := fs.FindMount(d)
	if err != nil || !found {
		t.Fatal(found, err)
	}
	pin, err := pinMount(d, checked.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pin)
	// Someone mounts over the path between the check and the act.
	if err := unix.Mount("tmpfs", d, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	over, _, _ := fs.FindMount(d)
	if _, err := pinMount(d, checked.ID); err == nil {
		t.Error("pinMount accepted a mount other than the one checked")
	}
	if err := detachChecked(d, checked.ID); err == nil || !strings.Contains(err.Error(), "changed meanwhile") {
		t.Errorf("detach after the path changed: %v, want a refusal", err)
	}
	if now, found, err := fs.FindMount(d); err != nil || !found || now.ID != over.ID {
		t.Errorf("the mount on top (%s) was touched: now %+v %v", over.ID, now, found)
	}
	// Unchanged: detached.
	if err := unix.Unmount(d, 0); err != nil {
		t.Fatal(err)
	}
	if err := detachChecked(d, checked.ID); err != nil {
		t.Fatal(err)
	}
	if now, found, _ := fs.FindMount(d); found && now.ID == checked.ID {
		t.Error("the checked mount is still attached")
	}
}
