//go:build !faults

package faults

// fullSuite is off in make test: only the short scenarios run, shortened.
const fullSuite = false
