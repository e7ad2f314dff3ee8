package main

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// version is stamped at build time from git:
//
//	go build -ldflags "-X main.version=$(git describe --tags --always --dirty)" ./cmd/safejaxfs
//
// (scripts/demo and scripts/bench build so). Unstamped, the version is
// the module's (go install ...@v0.12.0 records it), else "(devel)".
var version string

// versionString describes this build: the stamped version, else what the
// Go toolchain recorded (the module version, the VCS revision and time,
// whether the tree had uncommitted changes), and the Go version. A build
// with -buildvcs=false records no revision: stamp it.
func versionString() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		if version != "" {
			return "safejaxfs " + version
		}
		return "safejaxfs (no build information)"
	}
	v := version
	if v == "" {
		v = bi.Main.Version
	}
	if v == "" {
		v = "(devel)"
	}
	parts := []string{"safejaxfs " + v}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if rev := settings["vcs.revision"]; rev != "" && version == "" {
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
	fmt.Println(versionString())
	return nil
}
