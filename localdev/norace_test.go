//go:build !race

package localdev_test

var raceFlags []string
