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

// Query writes a Query message.
func (w *Writer) Query(sql string) {
	at := w.Begin('Q')
	w.AppendCString(sql)
	w.End(at)
}

// Parse writes a Parse message; types is the parameter-type section as
// the client sent it (count and OIDs), nil for none.
func (w *Writer) Parse(name, query string, types []byte) {
	at := w.Begin('P')
	w.AppendCString(name)
	w.AppendCString(query)
	if types == nil {
		types = []byte{0, 0}
	}
	w.AppendBytes(types)
	w.End(at)
}

// Bind writes a Bind message of statement stmt into portal; params is the
// rest of the message: format codes, values and result format codes.
func (w *Writer) Bind(portal, stmt string, params []byte) {
	at := w.Begin('B')
	w.AppendCString(portal)
	w.AppendCString(stmt)
	w.AppendBytes(params)
	w.End(at)
}

// Execute writes an Execute of portal for all rows.
func (w *Writer) Execute(portal string) {
	at := w.Begin('E')
	w.AppendCString(portal)
	w.buf = binary.BigEndian.AppendUint32(w.buf, 0)
	w.End(at)
}

// Target writes a Describe ('D') or Close ('C') message of a statement
// (kind 'S') or portal ('P').
func (w *Writer) Target(typ, kind byte, name string) {
	at := w.Begin(typ)
	w.buf = append(w.buf, kind)
	w.AppendCString(name)
	w.End(at)
}

// Sync writes a Sync message.
func (w *Writer) Sync() { w.buf = append(w.buf, 'S', 0, 0, 0, 4) }
