//go:build unix

package main

import (
	"syscall"
	"testing"
)

func TestRaiseFileLimit(t *testing.T) {
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig) }()
	if orig.Max <= 256 {
		t.Skipf("hard limit %d", orig.Max)
	}
	low := orig
	low.Cur = 256
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	soft, hard, err := raiseFileLimit()
	if err != nil {
		t.Fatal(err)
	}
	var now syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &now)
	if soft != uint64(orig.Max) || hard != uint64(orig.Max) || uint64(now.Cur) != uint64(orig.Max) {
		t.Fatalf("after raising: soft %d hard %d (limit now %d), want %d", soft, hard, now.Cur, orig.Max)
	}
}
