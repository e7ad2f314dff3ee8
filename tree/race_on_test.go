//go:build race

package tree

// raceEnabled: the race detector slows Build several times over, so timing
// checks are off.
const raceEnabled = true
