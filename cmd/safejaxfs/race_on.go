//go:build race

package main

// raceEnabled: this binary is race-instrumented (go build -race, go test
// -race): the tests build their daemons the same way (help_test.go), and
// hugepages.go skips what only costs time under the detector.
const raceEnabled = true
