//go:build race

package sqlscan

// raceSlowdown scales time limits in tests: the race detector makes the
// lexer many times slower.
const raceSlowdown = 20
