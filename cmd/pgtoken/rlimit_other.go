//go:build !unix

package main

// raiseFileLimit has nothing to raise on this system.
func raiseFileLimit() (soft, hard uint64, err error) { return 0, 0, nil }
