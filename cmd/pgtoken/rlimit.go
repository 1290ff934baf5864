//go:build unix

package main

import "syscall"

// raiseFileLimit raises the soft limit on open files (RLIMIT_NOFILE) to the
// hard limit: every client and every server connection takes a file
// descriptor, and the usual soft limit of 1024 would cap pgtoken near a
// thousand clients. (Go's runtime already does this at start on Linux since
// Go 1.19; doing it here as well makes it explicit, covers other systems
// and lets serve log the limit it runs with.) It returns the limits in
// effect afterwards.
func raiseFileLimit() (soft, hard uint64, err error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0, err
	}
	if rl.Cur < rl.Max {
		want := rl
		want.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return uint64(rl.Cur), uint64(rl.Max), err
		}
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, 0, err
		}
	}
	return uint64(rl.Cur), uint64(rl.Max), nil
}
