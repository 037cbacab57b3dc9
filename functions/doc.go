// Package functions holds the four deployable handlers, one subpackage each
// (submit, status, processtick, deliverwebhook), each with a lambda/ entry
// point that template.yaml deploys and the Makefile builds.
//
// The package itself has no code; its tests check that template.yaml routes
// every SPEC route to the right function and that the Makefile builds each one.
package functions
