//go:build race

package tests

// raceEnabled says the tests were built with -race.
const raceEnabled = true
