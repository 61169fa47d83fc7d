//go:build faults

package faults

// fullSuite runs every scenario at full length (make faults).
const fullSuite = true
