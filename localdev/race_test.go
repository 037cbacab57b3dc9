//go:build race

package localdev_test

// raceFlags build asyncdev with the race detector when the tests run with
// it, so the end-to-end test also looks for races in the harness.
var raceFlags = []string{"-race"}
