package main

import (
	"os"
	"testing"
)

// TestMain lets the test binary stand in for benchtool's hidden
// subcommands, which the code under test runs through os.Executable.
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == spawnCmd {
		os.Exit(spawn(os.Args[2:]))
	}
	if len(os.Args) > 2 && os.Args[1] == parseRSSCmd {
		os.Exit(parseRSS(os.Args[2]))
	}
	os.Exit(m.Run())
}
