package main

import (
	"slices"
	"strings"

	"github.com/spf13/pflag"
)

// Mount options given with -o, as mount(8), fstab, systemd and the other
// FUSE file systems (sshfs, rclone mount) take them:
//
//   - ro and rw, and every long flag of mount as -o name or -o name=value,
//     '_' standing for '-' (-o npy, -o cache_size=20G, -o allow_other);
//   - the kernel's generic options (noatime, nodev, nosuid, ...), passed
//     through to it;
//   - the options meant for mount(8), systemd and fstab (noauto, nofail,
//     _netdev, x-systemd.*, comment=...), which reach a mount helper too:
//     accepted and ignored;
//   - default_permissions: accepted, always on (permissions.go).
//
// Anything else is refused with the list of what is known, unless mount(8)
// said -s (sloppy). Options are comma separated; a comma inside a value is
// written "\," (as libfuse and fstab take it).

// optionAliases are -o names that set a flag to a fixed value.
var optionAliases = map[string]struct{ flag, value string }{
	"ro": {"read-only", "true"},
	"rw": {"read-only", "false"},
}

// kernelPassOptions are passed to the kernel as they are (go-fuse turns
// dev/suid/exec into mount flags as root; fusermount3 checks them for
// others).
var kernelPassOptions = []string{
	"dev", "nodev", "suid", "nosuid", "exec", "noexec",
	"atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime",
	"strictatime", "nostrictatime", "lazytime", "nolazytime",
	"sync", "async", "dirsync",
}

// kernelValueOptions are kernel options with a value (SELinux labels).
var kernelValueOptions = []string{"context", "fscontext", "defcontext", "rootcontext"}

// ignoredOptions are for mount(8), systemd and fstab, not for the file
// system; mount.fuse3 drops some of them, libmount others, and what is
// left reaches us.
var ignoredOptions = []string{"defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail", "_netdev", "loud", "silent"}

// ignoredPrefixes: x-systemd.automount, x-systemd.requires=..., x-gvfs-*,
// comment=systemd.automount.
var ignoredPrefixes = []string{"x-", "comment="}

// notOptions are flags that make no sense as -o (they are about this
// command line, not the mount).
var notOptions = []string{"options", "help", "foreground", "sloppy", "fake", "verbose", "progress", "quiet"}

// splitOptions splits -o values at commas ("\," is a comma inside a
// value) and drops empty ones; both -o a,b and -o a -o b work.
func splitOptions(opts []string) []string {
	var out []string
	for _, o := range opts {
		var cur strings.Builder
		flush := func() {
			if s := strings.TrimSpace(cur.String()); s != "" {
				out = append(out, s)
			}
			cur.Reset()
		}
		for i := 0; i < len(o); i++ {
			switch {
			case o[i] == '\\' && i+1 < len(o) && (o[i+1] == ',' || o[i+1] == '\\'):
				cur.WriteByte(o[i+1])
				i++
			case o[i] == ',':
				flush()
			default:
				cur.WriteByte(o[i])
			}
		}
		flush()
	}
	return out
}

// applyOptions applies the -o options to the mount's flags and returns
// those for the kernel. sloppy (mount -s) skips unknown options instead of
// refusing them; skipped lists what it skipped.
func applyOptions(fl *pflag.FlagSet, opts []string, sloppy bool) (kernel, skipped []string, err error) {
	for _, o := range splitOptions(opts) {
		name, value, hasValue := strings.Cut(o, "=")
		switch {
		case name == "default_permissions" && !hasValue:
			// Always on (permissions.go).
			continue
		case slices.Contains(kernelPassOptions, name) && !hasValue,
			slices.Contains(kernelValueOptions, name) && hasValue:
			kernel = append(kernel, o)
			continue
		case slices.Contains(ignoredOptions, name) && !hasValue:
			continue
		case slices.ContainsFunc(ignoredPrefixes, func(p string) bool { return strings.HasPrefix(o, p) }):
			continue
		}
		if a, ok := optionAliases[name]; ok && !hasValue {
			if err := fl.Set(a.flag, a.value); err != nil {
				return nil, nil, fail(exitUsage, "-o %s: %v", o, err)
			}
			continue
		}
		flag := strings.ReplaceAll(name, "_", "-")
		f := fl.Lookup(flag)
		if f == nil || slices.Contains(notOptions, flag) {
			if sloppy {
				skipped = append(skipped, o)
				continue
			}
			return nil, nil, fail(exitUsage, "unknown mount option %q; known: %s", o, knownOptions(fl))
		}
		if !hasValue {
			if f.Value.Type() != "bool" {
				return nil, nil, fail(exitUsage, "-o %s needs a value: -o %s=%s", name, name, valueName(f))
			}
			value = "true"
		}
		if err := fl.Set(flag, value); err != nil {
			return nil, nil, fail(exitUsage, "-o %s: %v", o, err)
		}
	}
	return kernel, skipped, nil
}

// knownOptions lists the -o options for the refusal of an unknown one.
func knownOptions(fl *pflag.FlagSet) string {
	names := []string{"ro", "rw", "default_permissions"}
	fl.VisitAll(func(f *pflag.Flag) {
		if f.Hidden || slices.Contains(notOptions, f.Name) {
			return
		}
		n := strings.ReplaceAll(f.Name, "-", "_")
		if f.Value.Type() != "bool" {
			n += "=" + valueName(f)
		}
		names = append(names, n)
	})
	return strings.Join(names, ", ") +
		"; the kernel's " + strings.Join(kernelPassOptions, ", ") + ", context=...; " +
		"and, ignored, those of mount(8), fstab and systemd: " + strings.Join(ignoredOptions, ", ") + ", x-*, comment=..."
}

// valueName is how a flag's value is named in messages.
func valueName(f *pflag.Flag) string {
	if n, _ := pflag.UnquoteUsage(f); n != "" {
		return strings.ToUpper(n)
	}
	return "VALUE"
}
