package main

import (
	"errors"
	"io"
	"os"
)

// checkEmpty refuses a mountpoint that holds files, which the mount would
// hide (and which the user may take for the checkpoint's), unless
// -o nonempty says that is intended (the kernel does not know that option:
// fuse3 dropped it, so it is the CLI's to check).
func checkEmpty(mnt string) error {
	d, err := os.Open(mnt)
	if err != nil {
		return fail(exitMount, "mountpoint %s: %v", mnt, err)
	}
	defer d.Close()
	if _, err := d.Readdirnames(1); err == nil {
		return fail(exitMount, "mountpoint %s is not empty: the mount would hide its files (use -o nonempty to mount over them anyway)", mnt)
	} else if !errors.Is(err, io.EOF) {
		return fail(exitMount, "mountpoint %s: %v", mnt, err)
	}
	return nil
}
