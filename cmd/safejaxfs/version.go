package main

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// version describes this build from what the Go toolchain recorded in it:
// the module version ("(devel)" for a build from a checkout), the VCS
// revision and time, whether the tree had uncommitted changes, and the Go
// version.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "safejaxfs (no build information)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	parts := []string{"safejaxfs " + v}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if rev := settings["vcs.revision"]; rev != "" {
		r := "revision " + rev
		if t := settings["vcs.time"]; t != "" {
			r += " (" + t + ")"
		}
		if settings["vcs.modified"] == "true" {
			r += " with uncommitted changes"
		}
		parts = append(parts, r)
	}
	parts = append(parts, bi.GoVersion)
	return strings.Join(parts, ", ")
}

func runVersion(args []string) error {
	fl := newFlags("version", "", "Print the version of this safejaxfs build.")
	if _, err := parseFlags(fl, args, 0, 0); err != nil {
		return err
	}
	fmt.Println(version())
	return nil
}
