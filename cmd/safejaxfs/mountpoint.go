package main

import (
	"errors"
	"io"
	"os"
	"slices"
)

// optNonempty lets a mount hide what a non-empty mountpoint holds. The
// kernel does not know it (fuse3 dropped it): it is the CLI's to check and
// is not passed on.
const optNonempty = "nonempty"

// checkEmpty refuses a mountpoint that holds files, which the mount would
// hide (and which the user may take for the checkpoint's), unless
// -o nonempty says that is intended.
func checkEmpty(mnt string, options []string) error {
	if slices.Contains(splitOptions(options), optNonempty) {
		return nil
	}
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

// kernelOptions are the -o options to pass to the kernel.
func kernelOptions(options []string) []string {
	return slices.DeleteFunc(splitOptions(options), func(o string) bool { return o == optNonempty })
}
