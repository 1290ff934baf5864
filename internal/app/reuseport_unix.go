//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package app

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePortControl sets SO_REUSEPORT on a listening socket, so several
// pgtoken processes can listen on one port (the kernel spreads new
// connections among them) and a new one can start before the old one stops.
func reusePortControl(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("reuse_port: %w", serr)
	}
	return nil
}
