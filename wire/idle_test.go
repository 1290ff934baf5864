package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		ch <- res{c, err}
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { client.Close(); r.c.Close() })
	return client, r.c
}

// msg builds a message of type 'Q' whose body is n copies of b.
func msg(n int, b byte) []byte {
	m := []byte{'Q', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(m[1:], uint32(4+n))
	return append(m, bytes.Repeat([]byte{b}, n)...)
}

// TestReleaseWhenIdle reads messages of many sizes (smaller and larger than
// the buffer) that arrive while the reader waits with its buffer given
// back, and after a read deadline passed during such a wait.
func TestReleaseWhenIdle(t *testing.T) {
	client, server := tcpPair(t)
	pool := NewBufferPool(64)
	r := NewReader(server, 64, 1<<20)
	r.ReleaseWhenIdle(pool)
	if r.idle == nil {
		t.Fatal("ReleaseWhenIdle did nothing on a TCP connection")
	}
	sizes := []int{0, 1, 10, 59, 60, 61, 200, 3000, 5, 64, 70000, 2}
	errs := make(chan error, 1)
	go func() {
		for i, n := range sizes {
			time.Sleep(time.Millisecond) // the reader is waiting, buffer given back
			m := msg(n, byte('a'+i))
			// Split the message so the reader also waits in the middle.
			if _, err := client.Write(m[:3]); err != nil {
				errs <- err
				return
			}
			time.Sleep(time.Millisecond)
			if _, err := client.Write(m[3:]); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	for i, n := range sizes {
		typ, l, err := r.Next()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if typ != 'Q' || l != n {
			t.Fatalf("message %d: %q of %d bytes, want 'Q' of %d", i, typ, l, n)
		}
		body, err := r.Body()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(body, bytes.Repeat([]byte{byte('a' + i)}, n)) {
			t.Fatalf("message %d: body differs", i)
		}
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}

	// A deadline that passes while the reader waits with no buffer.
	_ = server.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
	if _, _, err := r.Next(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Next past the deadline: %v, want a deadline error", err)
	}
	_ = server.SetReadDeadline(time.Time{})
	if _, err := client.Write(msg(7, 'z')); err != nil {
		t.Fatal(err)
	}
	if _, l, err := r.Next(); err != nil || l != 7 {
		t.Fatalf("Next after the deadline: %d bytes, %v", l, err)
	}
	if body, err := r.Body(); err != nil || !bytes.Equal(body, []byte("zzzzzzz")) {
		t.Fatalf("Body after the deadline: %q, %v", body, err)
	}

	// The peer leaving ends the stream as a plain Read would.
	client.Close()
	if _, _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("Next after the peer closed: %v, want EOF", err)
	}
}

// TestReleaseWhenIdleAllocs: waiting without a buffer costs no allocation
// per message once the pool is warm.
func TestReleaseWhenIdleAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	client, server := tcpPair(t)
	r := NewReader(server, 64, 1<<20)
	r.ReleaseWhenIdle(NewBufferPool(64))
	m := msg(20, 'x')
	next := make(chan struct{})
	go func() {
		for range next {
			time.Sleep(50 * time.Microsecond) // let the reader park first
			if _, err := client.Write(m); err != nil {
				return
			}
		}
	}()
	defer close(next)
	allocs := testing.AllocsPerRun(200, func() {
		next <- struct{}{}
		if _, _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Frame(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.2f allocs per message, want 0", allocs)
	}
}

// TestReleaseWhenIdleNotASocket: on a stream without a file descriptor the
// Reader keeps its buffer and reads as before.
func TestReleaseWhenIdleNotASocket(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	r := NewReader(b, 64, 1<<20)
	r.ReleaseWhenIdle(NewBufferPool(64))
	if r.idle != nil {
		t.Fatal("ReleaseWhenIdle took a net.Pipe for a socket")
	}
	go func() { _, _ = a.Write(msg(3, 'p')) }()
	if _, l, err := r.Next(); err != nil || l != 3 {
		t.Fatalf("Next: %d, %v", l, err)
	}
}
