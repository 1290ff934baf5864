//go:build linux

// Command relay measures what a relay with no logic at all adds to
// Postgres's latency, and takes from its throughput, on this machine, in the
// two ways a Go program can wait for sockets. It is an experiment, not a
// proxy: no protocol, no pooling, one server connection per client. See
// "What a relay with no logic costs" in bench/README.md.
//
// From bench/ (its own Go module):
//
//	go run ./experiments/relay -mode copy -listen 127.0.0.1:7001 -upstream 127.0.0.1:5432
//	go run ./experiments/relay -mode epoll -listen 127.0.0.1:7002 -upstream 127.0.0.1:5432
//
// copy: two goroutines per client, io.Copy each way; they wait in Go's
// netpoller, as pgtoken's goroutines do.
// epoll: one locked OS thread waits in epoll_wait(2) for every socket and
// copies what is readable to the peer socket, PgBouncer's shape; the
// sockets are duplicated out of Go's netpoller first.
package main

import (
	"flag"
	"io"
	"log"
	"net"
	"runtime"

	"golang.org/x/sys/unix"
)

func main() {
	mode := flag.String("mode", "copy", "copy (goroutines, netpoller) or epoll (one thread, epoll_wait)")
	listen := flag.String("listen", "127.0.0.1:7001", "address to accept clients on")
	upstream := flag.String("upstream", "127.0.0.1:5432", "Postgres to relay to")
	flag.Parse()
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	switch *mode {
	case "copy":
		log.Fatal(copyRelay(l, *upstream))
	case "epoll":
		log.Fatal(epollRelay(l, *upstream))
	default:
		log.Fatalf("-mode %q: want copy or epoll", *mode)
	}
}

func copyRelay(l net.Listener, upstream string) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			s, err := net.Dial("tcp", upstream)
			if err != nil {
				return
			}
			defer s.Close()
			go func() {
				_, _ = io.Copy(s, c)
				_ = s.Close()
			}()
			_, _ = io.Copy(c, s)
		}()
	}
}

// rawFD duplicates c's socket outside Go's netpoller (the duplicate shares
// the original's O_NONBLOCK) and closes c.
func rawFD(c net.Conn) (int, error) {
	defer c.Close()
	sc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := sc.Control(func(s uintptr) { fd, derr = unix.Dup(int(s)) }); err != nil {
		return -1, err
	}
	return fd, derr
}

func epollRelay(l net.Listener, upstream string) error {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return err
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		return err
	}
	// The accepting goroutine hands pairs to the loop, which registers
	// them itself, so a file descriptor number is never reused under it.
	pairs := make(chan [2]int, 1024)
	go func() {
		one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
		for {
			c, err := l.Accept()
			if err != nil {
				log.Fatal(err)
			}
			s, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			a, err1 := rawFD(c)
			b, err2 := rawFD(s)
			if err1 != nil || err2 != nil {
				log.Fatal(err1, err2)
			}
			pairs <- [2]int{a, b}
			_, _ = unix.Write(wake, one)
		}
	}()

	runtime.LockOSThread()
	peer := map[int]int{}
	buf := make([]byte, 64<<10)
	evs := make([]unix.EpollEvent, 128)
	drop := func(fd int) {
		other, ok := peer[fd]
		if !ok {
			return
		}
		for _, x := range []int{fd, other} {
			_ = unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, x, nil)
			_ = unix.Close(x)
			delete(peer, x)
		}
	}
	for {
		n, err := unix.EpollWait(ep, evs, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		for _, ev := range evs[:n] {
			fd := int(ev.Fd)
			if fd == wake {
				var b [8]byte
				_, _ = unix.Read(wake, b[:])
				for len(pairs) > 0 {
					p := <-pairs
					peer[p[0]], peer[p[1]] = p[1], p[0]
					for _, x := range p {
						if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, x, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(x)}); err != nil {
							return err
						}
					}
				}
				continue
			}
			other, ok := peer[fd]
			if !ok {
				continue // dropped earlier in this batch
			}
			m, err := unix.Read(fd, buf)
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			if m <= 0 {
				drop(fd)
				continue
			}
			if writeAll(other, buf[:m]) != nil {
				drop(fd)
			}
		}
	}
}

// writeAll writes b to a nonblocking socket, waiting in poll(2) while it is
// full.
func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		w, err := unix.Write(fd, b)
		switch {
		case err == unix.EAGAIN:
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if _, err := unix.Poll(pfd, -1); err != nil && err != unix.EINTR {
				return err
			}
			continue
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		}
		b = b[w:]
	}
	return nil
}
