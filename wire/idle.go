package wire

import (
	"io"
	"os"
	"sync"
	"syscall"
)

// BufferPool lends Readers their base-size buffers while they hold unread
// bytes, so a connection that sits idle holds none (see
// Reader.ReleaseWhenIdle).
type BufferPool struct {
	size int
	p    sync.Pool // of *[]byte, each of length size
}

// NewBufferPool returns a pool of size-byte buffers.
func NewBufferPool(size int) *BufferPool {
	return &BufferPool{size: size}
}

// idleRead reads a socket for a Reader whose buffer is empty, through the
// socket's raw file descriptor: the buffer is given back to the pool before
// the goroutine parks to wait for input, and taken again when input is
// there. Reads that find bytes at once cost what a plain Read does.
type idleRead struct {
	pool *BufferPool
	raw  syscall.RawConn
	r    *Reader
	// box carries r.buf through the pool without allocating (the pool
	// holds pointers): it is the one r.buf came in, nil while r.buf is in
	// the pool.
	box *[]byte
	try func(fd uintptr) bool // ir.tryRead, made once
	n   int
	err error
}

// ReleaseWhenIdle makes r give its buffer back to pool whenever it must
// wait for input on an empty buffer, and take one again when input arrives.
// It does nothing unless r reads a socket that exposes its file descriptor
// (a TCP or Unix connection; not TLS) and r's base size is the pool's.
// Bytes that r returned before are then valid only until the next read, as
// documented on Reader, and may be overwritten by another Reader.
func (r *Reader) ReleaseWhenIdle(pool *BufferPool) {
	sc, ok := r.r.(syscall.Conn)
	if !ok || pool == nil || pool.size != r.base || r.idle != nil {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	ir := &idleRead{pool: pool, raw: raw, r: r}
	ir.try = ir.tryRead
	r.idle = ir
}

// read fills r.buf (empty, at offset 0) from the socket.
func (ir *idleRead) read(r *Reader) (int, error) {
	ir.n, ir.err = 0, nil
	err := ir.raw.Read(ir.try)
	if r.buf == nil {
		ir.get() // the wait failed (deadline, close): the Reader needs a buffer
	}
	if err != nil {
		return 0, err
	}
	return ir.n, ir.err
}

// tryRead is the raw read: false asks the runtime to wait for input.
func (ir *idleRead) tryRead(fd uintptr) bool {
	r := ir.r
	if r.buf == nil {
		ir.get()
	}
	for {
		n, err := syscall.Read(int(fd), r.buf[r.end:])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			ir.put(r)
			return false
		case err != nil:
			ir.err = os.NewSyscallError("read", err)
		case n == 0:
			ir.err = io.EOF
		default:
			ir.n = n
		}
		return true
	}
}

// get gives the Reader a buffer from the pool.
func (ir *idleRead) get() {
	if b, ok := ir.pool.p.Get().(*[]byte); ok {
		ir.box = b
	} else {
		b := make([]byte, ir.pool.size)
		ir.box = &b
	}
	ir.r.buf = *ir.box
}

// put gives the Reader's buffer back to the pool; the Reader must hold no
// unread bytes.
func (ir *idleRead) put(r *Reader) {
	ir.release(r.buf)
	r.buf = nil
}

// release gives buf, no longer the Reader's to read from, back to the pool
// if it is a base-size buffer.
func (ir *idleRead) release(buf []byte) {
	if len(buf) != ir.pool.size {
		return
	}
	if poisonReleased {
		for i := range buf {
			buf[i] = 0xA5
		}
	}
	if ir.box == nil {
		ir.box = new([]byte) // the buffer NewReader made came without one
	}
	*ir.box = buf
	ir.pool.p.Put(ir.box)
	ir.box = nil
}
