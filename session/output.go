package session

import (
	"io"
	"time"

	"go.uber.org/zap"
)

// output is what the client is sent, written to its socket by one goroutine
// at a time: whoever finds nobody writing becomes the flusher and writes
// until the buffer is empty, without holding Session.mu; anyone else only
// appends (under mu) and leaves, so the flusher writes it too. The buffer
// is double: the flusher writes one while the other fills.
type output struct {
	buf      []byte
	spare    []byte
	flushing bool
	err      error  // the first write error; the client is gone
	flushes  uint64 // completed flushes, for the stall watch (watch.go)
}

// maxOutput is how much output may wait for a flusher that is blocked on a
// client that does not read before the server reader stops adding to it
// (and so stops reading the server, as Postgres stops when its client does
// not read).
const maxOutput = 1 << 20

// flushClient writes the client output unless another goroutine is doing
// so already. Called without mu; it returns the first write error.
func (s *Session) flushClient() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flushLocked(false)
}

// flushLocked is flushClient with mu held; it releases mu while writing.
// wait makes it wait for another flusher while the output is over
// maxOutput (the server reader's backpressure).
func (s *Session) flushLocked(wait bool) error {
	for s.out.flushing {
		if !wait || len(s.out.buf) <= maxOutput || s.out.err != nil {
			return s.out.err
		}
		s.cond.Wait()
	}
	if len(s.out.buf) == 0 || s.out.err != nil {
		s.out.buf = s.out.buf[:0]
		return s.out.err
	}
	s.out.flushing = true
	for len(s.out.buf) > 0 && s.out.err == nil {
		b := s.out.buf
		s.out.buf = s.out.spare[:0]
		s.mu.Unlock()
		err := s.write(b)
		if err != nil {
			s.cutOff(err)
		}
		s.mu.Lock()
		if cap(b) <= maxOutput {
			s.out.spare = b[:0]
		}
		if err != nil {
			s.out.err = err
			s.out.buf = s.out.buf[:0]
		}
	}
	s.out.flushing = false
	s.out.flushes++
	s.cond.Broadcast()
	return s.out.err
}

// write writes to the client socket within limits.client_write_timeout.
func (s *Session) write(b []byte) error {
	if t := s.srv.cfg.ClientWriteTimeout; t > 0 {
		_ = s.nc.SetWriteDeadline(time.Now().Add(t))
	}
	_, err := s.nc.Write(b)
	return err
}

// streamOut passes a large message to the client in pieces from src (the
// server reader's Stream). It takes the flusher's place first, so the
// bytes before it go first. A client that is gone gets nothing, but the
// message is still read to its end so the server connection stays in sync.
func (s *Session) streamOut(stream func(io.Writer) error) error {
	s.mu.Lock()
	for s.out.flushing {
		s.cond.Wait()
	}
	s.out.flushing = true
	b := s.out.buf
	s.out.buf = s.out.spare[:0]
	failed := s.out.err
	s.mu.Unlock()
	if failed == nil && len(b) > 0 {
		failed = s.write(b)
	}
	w := &clientWriter{s: s, err: failed}
	err := stream(w)
	s.mu.Lock()
	s.out.spare = b[:0]
	if w.err != nil && s.out.err == nil {
		s.out.err = w.err
	}
	s.out.flushing = false
	s.cond.Broadcast()
	s.mu.Unlock()
	return err
}

// clientWriter writes to the client socket, keeping the first error and
// then discarding, so a vanished client never desynchronises the server
// side.
type clientWriter struct {
	s   *Session
	err error
}

func (w *clientWriter) Write(p []byte) (int, error) {
	if w.err == nil {
		if w.err = w.s.write(p); w.err != nil {
			w.s.cutOff(w.err)
		}
	}
	return len(p), nil
}

// cutOff ends a session whose client cannot take its output (it stopped
// reading for limits.client_write_timeout, or is gone): its socket is
// closed, so the client goroutine's read fails and the session ends, its
// server connection dropped with what runs on it cancelled.
func (s *Session) cutOff(err error) {
	s.log.Info("client does not read its answers; disconnecting it", zap.Error(err))
	_ = s.nc.Close()
}
