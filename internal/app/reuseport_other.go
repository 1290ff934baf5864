//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package app

import (
	"errors"
	"syscall"
)

func reusePortControl(_, _ string, _ syscall.RawConn) error {
	return errors.New("reuse_port: SO_REUSEPORT is not supported on this system")
}
