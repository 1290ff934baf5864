// Package wire frames the Postgres protocol: it reads and writes whole
// messages as bytes after a 5-byte header peek, so the proxy decodes only the
// messages it must understand (with pgproto3) and relays the rest untouched.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ErrMessageTooLarge is returned when a message that must be buffered whole
// is longer than the reader's limit.
var ErrMessageTooLarge = errors.New("message too large")

// ErrBadLength is returned for a length field smaller than the length field
// itself: the stream is out of sync or hostile.
var ErrBadLength = errors.New("invalid message length")

// Reader reads Postgres protocol messages from a stream into one reusable
// buffer. A message's bytes are valid until the next call that reads.
//
// Typical use: Next to learn the type and body length, then either Frame
// (the whole message, header included, when it fits the limit) or Stream to
// pass a message of any size through in pieces.
type Reader struct {
	r     io.Reader
	buf   []byte
	start int // first unread byte
	end   int // end of buffered bytes
	base  int // the buffer size to shrink back to
	limit int // largest body Frame will buffer

	typ  byte
	n    int  // body length of the current message
	have bool // a header has been consumed and its body not yet

	idle *idleRead // set by ReleaseWhenIdle
}

// NewReader returns a Reader with an initial buffer of size bytes that
// buffers bodies of at most limit bytes whole.
func NewReader(r io.Reader, size, limit int) *Reader {
	if size < 64 {
		size = 64
	}
	return &Reader{r: r, buf: make([]byte, size), base: size, limit: limit}
}

// Reset points the reader at a new stream; buffered bytes are dropped.
func (r *Reader) Reset(src io.Reader) {
	r.r = src
	r.start, r.end = 0, 0
	r.have = false
}

// SetLimit changes the largest body Frame will buffer.
func (r *Reader) SetLimit(limit int) { r.limit = limit }

// Buffered reports how many unread bytes are already in memory.
func (r *Reader) Buffered() int { return r.end - r.start }

// fill makes at least n bytes available from r.start, reading as much as the
// stream offers. n must not exceed the buffer size.
func (r *Reader) fill(n int) error {
	if r.end-r.start >= n {
		return nil
	}
	if r.start+n > len(r.buf) {
		copy(r.buf, r.buf[r.start:r.end])
		r.end -= r.start
		r.start = 0
	}
	for r.end-r.start < n {
		var m int
		var err error
		if r.idle != nil && r.start == r.end && len(r.buf) == r.base {
			r.start, r.end = 0, 0
			m, err = r.idle.read(r)
		} else {
			m, err = r.r.Read(r.buf[r.end:])
		}
		r.end += m
		if err != nil {
			if r.end-r.start >= n {
				return nil
			}
			if errors.Is(err, io.EOF) && r.end > r.start {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// grow makes the buffer able to hold n bytes from r.start.
func (r *Reader) grow(n int) {
	if n <= len(r.buf) {
		return
	}
	nb := make([]byte, n)
	r.end = copy(nb, r.buf[r.start:r.end])
	r.start = 0
	if r.idle != nil {
		r.idle.release(r.buf)
	}
	r.buf = nb
}

// shrink returns an oversized buffer to its base size once it is drained.
func (r *Reader) shrink() {
	if len(r.buf) > r.base && r.start == r.end {
		if r.idle != nil {
			r.idle.get()
		} else {
			r.buf = make([]byte, r.base)
		}
		r.start, r.end = 0, 0
	}
}

// Next reads the next message header and returns its type and body length.
// The previous message, if not consumed, is skipped first. The header stays
// in the buffer until the message is consumed, so Frame can return it whole.
func (r *Reader) Next() (typ byte, n int, err error) {
	if r.have {
		if err := r.Skip(); err != nil {
			return 0, 0, err
		}
	}
	r.shrink()
	if err := r.fill(5); err != nil {
		return 0, 0, err
	}
	typ = r.buf[r.start]
	l := int(binary.BigEndian.Uint32(r.buf[r.start+1:]))
	if l < 4 || l > 1<<30 {
		return 0, 0, fmt.Errorf("%w: %d for message %q", ErrBadLength, l, typ)
	}
	r.typ, r.n, r.have = typ, l-4, true
	return typ, l - 4, nil
}

// Frame returns the current message whole, header included, so it can be
// relayed verbatim. It fails with ErrMessageTooLarge (leaving the message
// unread) when the body exceeds the limit.
func (r *Reader) Frame() ([]byte, error) {
	if !r.have {
		return nil, errors.New("wire: Frame without Next")
	}
	if r.n > r.limit {
		return nil, fmt.Errorf("%w: %d bytes (limit %d)", ErrMessageTooLarge, r.n, r.limit)
	}
	need := r.n + 5
	r.grow(need)
	if err := r.fill(need); err != nil {
		return nil, err
	}
	b := r.buf[r.start : r.start+need]
	r.start += need
	r.have = false
	return b, nil
}

// Body returns the current message's body, buffering it whole; same limit
// as Frame.
func (r *Reader) Body() ([]byte, error) {
	b, err := r.Frame()
	if err != nil {
		return nil, err
	}
	return b[5:], nil
}

// Stream copies the current message, header included, to w in pieces no
// larger than the buffer, so a message of any size passes with bounded memory.
func (r *Reader) Stream(w io.Writer) error {
	if !r.have {
		return errors.New("wire: Stream without Next")
	}
	if _, err := w.Write(r.buf[r.start : r.start+5]); err != nil {
		return err
	}
	r.start += 5
	return r.pipe(w)
}

// Skip discards the current message.
func (r *Reader) Skip() error {
	if !r.have {
		return nil
	}
	r.start += 5
	return r.pipe(io.Discard)
}

// pipe moves the rest of the current body (r.n bytes from r.start) to w.
func (r *Reader) pipe(w io.Writer) error {
	left := r.n
	r.have = false
	var werr error
	for left > 0 {
		if r.start == r.end {
			r.start, r.end = 0, 0
			if err := r.fill(1); err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
		}
		k := min(left, r.end-r.start)
		if werr == nil {
			// After a write error keep draining so the stream stays in sync.
			_, werr = w.Write(r.buf[r.start : r.start+k])
		}
		r.start += k
		left -= k
	}
	return werr
}

// ReadStartup reads an untyped startup-phase packet (StartupMessage,
// SSLRequest, GSSENCRequest, CancelRequest) and returns its body after the
// length word. Packets longer than limit fail with ErrMessageTooLarge.
func (r *Reader) ReadStartup(limit int) ([]byte, error) {
	if err := r.fill(4); err != nil {
		return nil, err
	}
	l := int(binary.BigEndian.Uint32(r.buf[r.start:]))
	if l < 8 {
		return nil, fmt.Errorf("%w: startup packet length %d", ErrBadLength, l)
	}
	if l > limit {
		return nil, fmt.Errorf("%w: startup packet of %d bytes (limit %d)", ErrMessageTooLarge, l, limit)
	}
	r.start += 4
	n := l - 4
	r.grow(n)
	if err := r.fill(n); err != nil {
		return nil, err
	}
	b := r.buf[r.start : r.start+n]
	r.start += n
	return b, nil
}
