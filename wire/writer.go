package wire

import (
	"encoding/binary"
	"io"
)

// Writer buffers outgoing messages so that many small ones leave in one
// write. It is not safe for concurrent use; callers serialize access.
type Writer struct {
	w     io.Writer
	buf   []byte
	limit int // flush when the buffer grows past this
	err   error
}

// NewWriter returns a Writer that flushes once more than limit bytes are
// buffered (and whenever Flush is called).
func NewWriter(w io.Writer, limit int) *Writer {
	return &Writer{w: w, buf: make([]byte, 0, limit), limit: limit}
}

// Reset points the writer at a new stream, dropping buffered bytes and any
// sticky error.
func (w *Writer) Reset(dst io.Writer) {
	w.w = dst
	w.buf = w.buf[:0]
	w.err = nil
}

// Buffered reports how many bytes wait to be flushed.
func (w *Writer) Buffered() int { return len(w.buf) }

// Err returns the first write error; once set, every later write fails.
func (w *Writer) Err() error { return w.err }

// Write appends p, flushing first when the buffer would grow past its limit.
// Large p bypass the buffer. It implements io.Writer so a Reader can Stream
// into it.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if len(w.buf)+len(p) > w.limit && len(w.buf) > 0 {
		if err := w.Flush(); err != nil {
			return 0, err
		}
	}
	if len(p) >= w.limit {
		if _, err := w.w.Write(p); err != nil {
			w.err = err
			return 0, err
		}
		return len(p), nil
	}
	w.buf = append(w.buf, p...)
	return len(p), nil
}

// Flush writes the buffered bytes.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.w.Write(w.buf)
	w.buf = w.buf[:0]
	if err != nil {
		w.err = err
	}
	return err
}

// Begin starts a message of type typ in the buffer and returns its offset
// for End. Body bytes are then appended with the Append* methods.
func (w *Writer) Begin(typ byte) int {
	at := len(w.buf)
	w.buf = append(w.buf, typ, 0, 0, 0, 0)
	return at
}

// End fills in the length of the message begun at offset at.
func (w *Writer) End(at int) {
	binary.BigEndian.PutUint32(w.buf[at+1:], uint32(len(w.buf)-at-1))
}

// AppendBytes appends raw body bytes.
func (w *Writer) AppendBytes(b []byte) { w.buf = append(w.buf, b...) }

// AppendString appends raw body bytes from a string.
func (w *Writer) AppendString(s string) { w.buf = append(w.buf, s...) }

// AppendCString appends s and a terminating NUL.
func (w *Writer) AppendCString(s string) { w.buf = append(append(w.buf, s...), 0) }

// AppendInt16 appends a big-endian 16-bit integer.
func (w *Writer) AppendInt16(v int16) { w.buf = binary.BigEndian.AppendUint16(w.buf, uint16(v)) }

// AppendInt32 appends a big-endian 32-bit integer.
func (w *Writer) AppendInt32(v int32) { w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(v)) }

// Message is anything pgproto3 can encode.
type Message interface {
	Encode(dst []byte) ([]byte, error)
}

// Send appends an encoded pgproto3 message. Encoding errors (a field too
// long for the protocol) are returned and leave the buffer unchanged.
func (w *Writer) Send(m Message) error {
	b, err := m.Encode(w.buf)
	if err != nil {
		return err
	}
	w.buf = b
	return nil
}
