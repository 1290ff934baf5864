//go:build !race

package wire

// poisonReleased: see poison_race.go.
const poisonReleased = false

// raceEnabled reports whether the race detector is on.
const raceEnabled = false
