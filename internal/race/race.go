// Package race says whether this binary was built with the race detector,
// for the two places that care: the daemon, which skips what only costs
// time under the detector (cmd/safejaxfs/hugepages.go), and tests that walk
// an exhaustive enumeration (every byte of a log cut, every system call of
// a commit, every crash point, rounds of kill -9).
//
// Such a walk gains nothing from the detector after its first steps: it is
// one goroutine doing the same thing at the next offset, at 5-10 times the
// plain build's cost. So under -race a test walks a sample of it (Sample,
// Rounds), and scripts/test.sh walks all of it again in a plain build. A
// test that calls either must be in that plain pass (test.sh refuses one
// that is not).
package race

// Enabled: this binary is race-instrumented (go build -race, go test -race).
const Enabled = enabled

// Stride is the step of the sample a walk takes under the race detector.
const Stride = 8

// Sample reports whether step i of a walk of n steps runs in this build:
// every step in a plain build; under -race every Stride-th, and the first
// and the last, so that a walk's checks of order (once a crash point
// leaves the new state, every later one does) still see both ends.
func Sample(i, n int) bool {
	return !Enabled || i%Stride == 0 || i == n-1
}

// Rounds is how many of n rounds of a randomized test (kill -9 at a random
// moment, then check) run in this build: all n in a plain build; under
// -race n/Stride, and at least 3.
func Rounds(n int) int {
	if !Enabled {
		return n
	}
	return max(n/Stride, 3)
}
