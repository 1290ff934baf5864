//go:build race

package wire

// poisonReleased overwrites a buffer as it goes back to the pool, so that
// under the race detector (the CI's test runs) code that keeps bytes of a
// message past the next read sees garbage instead of passing by luck.
const poisonReleased = true

// raceEnabled reports whether the race detector is on.
const raceEnabled = true
