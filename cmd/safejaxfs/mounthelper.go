package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/safejaxfs/safejaxfs/safetensors/remote"
)

// safejaxfs as mount(8)'s helper, so that
//
//	mount -t fuse.safejaxfs /data/model.safetensors /mnt/m -o ro
//	/data/model.safetensors /mnt/m fuse.safejaxfs ro,allow_other,noauto 0 0   (fstab)
//
// work. mount(8) (libmount) looks for /sbin/mount.fuse.safejaxfs and runs
//
//	/sbin/mount.fuse.safejaxfs SOURCE DIR [-sfnvrw] [-N NS] [-o OPTIONS] [-t fuse.safejaxfs]
//
// with the options it does not keep for itself (it drops noauto, nofail
// and x-*; _netdev stays). Without that helper it runs mount.fuse3 (Debian's
// fuse3), which drops noauto, nofail, _netdev and user(s), keeps x-* and
// comment=, adds dev,suid as root (nosuid,nodev for a user mount), and runs
// "safejaxfs SOURCE DIR -o OPTIONS" through /bin/sh with mount(8)'s PATH
// (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin): so the
// binary must be installed in one of those, or linked as the helper. (Both
// observed on Debian 12, util-linux 2.38, fuse3 3.14.) The old fstab form
// "safejaxfs#SOURCE DIR fuse OPTIONS" reaches us through mount.fuse3 too.

// helperNames are the names mount(8) runs a helper by.
var helperNames = []string{"mount.fuse.safejaxfs", "mount.safejaxfs"}

func isMountHelper(argv0 string) bool {
	b := filepath.Base(argv0)
	for _, n := range helperNames {
		if b == n {
			return true
		}
	}
	return false
}

// helperCall reports whether args, which name no command, are
// mount.fuse3's "SOURCE DIR [-o OPTIONS]": two operands, the first an
// existing path or a URL.
func helperCall(args []string) bool {
	pos, _, err := splitHelperArgs(args)
	if err != nil || len(pos) != 2 {
		return false
	}
	src := strings.TrimPrefix(pos[0], "safejaxfs#")
	if remote.IsURL(src) {
		return true
	}
	_, err = os.Stat(src)
	return err == nil
}

// helperFlags are mount(8)'s single-letter flags a helper gets.
type helperFlags struct {
	sloppy, fake, verbose, readOnly, readWrite bool
	options                                    []string
}

// splitHelperArgs separates a helper's operands from its flags, which
// libmount passes after the operands and mount.fuse3 before or after.
func splitHelperArgs(args []string) (pos []string, hf helperFlags, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			pos = append(pos, args[i+1:]...)
			return pos, hf, nil
		case a == "-o" || a == "-t" || a == "-N":
			if i+1 == len(args) {
				return nil, hf, fail(exitUsage, "%s needs a value", a)
			}
			i++
			switch a {
			case "-o":
				hf.options = append(hf.options, args[i])
			case "-t":
				if err := checkHelperType(args[i]); err != nil {
					return nil, hf, err
				}
			case "-N":
				return nil, hf, fail(exitUsage, "mounting in another namespace (-N %s) is not supported: run mount inside that namespace (nsenter)", args[i])
			}
		case strings.HasPrefix(a, "-o"):
			hf.options = append(hf.options, a[2:])
		case strings.HasPrefix(a, "-t"):
			if err := checkHelperType(a[2:]); err != nil {
				return nil, hf, err
			}
		case strings.HasPrefix(a, "-") && len(a) > 1:
			for _, c := range a[1:] {
				switch c {
				case 's':
					hf.sloppy = true
				case 'f':
					hf.fake = true
				case 'v':
					hf.verbose = true
				case 'n': // no /etc/mtab to write: nothing to do
				case 'r':
					hf.readOnly = true
				case 'w':
					hf.readWrite = true
				default:
					return nil, hf, fail(exitUsage, "unknown flag -%c for a mount helper (known: -s -f -n -v -r -w -o OPTIONS -t TYPE)", c)
				}
			}
		default:
			pos = append(pos, a)
		}
	}
	return pos, hf, nil
}

func checkHelperType(t string) error {
	switch t {
	case "fuse.safejaxfs", "safejaxfs", "fuse":
		return nil
	}
	return fail(exitUsage, "file system type %q is not safejaxfs's (fuse.safejaxfs)", t)
}

// runMountHelper mounts as mount(8) asked, in the background, returning
// once the mount answers (mount(8) and systemd wait for the helper).
func runMountHelper(args []string) error {
	pos, hf, err := splitHelperArgs(args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return fail(exitUsage, "usage: mount.fuse.safejaxfs CHECKPOINT MOUNTPOINT [-o OPTIONS] (as mount -t fuse.safejaxfs runs it); got %d operands", len(pos))
	}
	margs := []string{}
	for _, o := range hf.options {
		margs = append(margs, "-o", o)
	}
	if hf.readOnly {
		margs = append(margs, "-o", "ro")
	}
	if hf.readWrite {
		margs = append(margs, "-o", "rw")
	}
	if hf.sloppy {
		margs = append(margs, "--sloppy")
	}
	if hf.fake {
		margs = append(margs, "--fake")
	}
	// "safejaxfs#SOURCE" is fstab's old form for type fuse.
	margs = append(margs, "--", strings.TrimPrefix(pos[0], "safejaxfs#"), pos[1])
	if hf.verbose {
		fmt.Fprintf(os.Stderr, "safejaxfs mount %s\n", escapeControl(strings.Join(margs, " ")))
	}
	return runMount(margs)
}
