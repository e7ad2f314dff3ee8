package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"

	"github.com/safejaxfs/safejaxfs/fs"
)

// safejaxfsMount resolves a MOUNTPOINT argument (unmount, status): its
// absolute path and the mount table's entry for it, refused (exitUsage,
// exitMount) unless a safejaxfs mount is on top there. It reads the table,
// never the mount, so a hung mount cannot hang it.
func safejaxfsMount(arg string) (string, fs.MountEntry, error) {
	mnt, err := filepath.Abs(arg)
	if err != nil {
		return "", fs.MountEntry{}, fail(exitUsage, "%v", err)
	}
	m, found, err := fs.FindMount(mnt)
	switch {
	case err != nil:
		return "", m, fail(exitMount, "%v", err)
	case !found:
		return "", m, fail(exitMount, "%s is not mounted", mnt)
	case m.FSType != "fuse.safejaxfs":
		return "", m, fail(exitMount, "%s is a %s mount, not safejaxfs", mnt, m.FSType)
	}
	return mnt, m, nil
}

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
