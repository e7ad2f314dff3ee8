//go:build race

package main

// raceEnabled: this test binary is race-instrumented (go test -race), so
// the packages' race builds are in the build cache (help_test.go).
const raceEnabled = true
