package session

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/wire"
)

// streamThreshold is the size above which a relayed message is streamed to
// the client in pieces instead of being copied into the output buffer.
const streamThreshold = 64 << 10

// outFlushThreshold is how much client output may accumulate before the
// reader flushes it even though more server data is waiting.
const outFlushThreshold = 64 << 10

// errDesync means the server sent something no queued unit expects: pgtoken
// has lost track of the conversation and must drop the connection.
var errDesync = errors.New("protocol desynchronised")

// errSkipped is what a queued unit's done hears when an earlier error made
// the server skip its message.
var errSkipped = wire.Errorf(wire.CodeInternal, "skipped after an earlier error")

// ServerMessage handles one message from the attached server connection. It
// runs on the conn's reader goroutine.
func (s *Session) ServerMessage(c *pool.Conn, typ byte, n int) error {
	err := s.serverMessage(c, typ, n)
	if err == nil && s.outLen() > outFlushThreshold {
		_ = s.flushClient() // a client that cannot take output ends on its own read
	}
	return err
}

// outLen reports how much client output is buffered.
func (s *Session) outLen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.out)
}

func (s *Session) serverMessage(c *pool.Conn, typ byte, n int) error {
	s.mu.Lock()
	if s.conn != c {
		s.mu.Unlock()
		return fmt.Errorf("%w: message %q for a detached session", errDesync, typ)
	}
	u := s.q.peek()
	if u == nil {
		err := s.unsolicited(c, typ)
		s.mu.Unlock()
		return err
	}
	switch typ {
	case 'D', 'd', 'T', 't', 'n', 'G', 'H', 'W', 'c', 'V', 'N', 'S', 'A':
		own := u.own != ownClient || (u.kind == uQuery && u.ownCompletion(s.cmpl))
		if typ == 'N' && !own && u.kind == uQuery && u.prefix+len(injected(u)) > 0 {
			err := s.relayNotice(c, u)
			s.afterPartial(u, typ)
			s.mu.Unlock()
			return err
		}
		if u.collect != nil && typ == 'D' {
			body, err := c.R.Body()
			if err != nil {
				s.mu.Unlock()
				return err
			}
			u.collect(body)
		} else if own {
			if err := c.R.Skip(); err != nil {
				s.mu.Unlock()
				return err
			}
		} else if n > streamThreshold {
			s.mu.Unlock()
			return s.streamToClient(c)
		} else if err := s.relay(c); err != nil {
			s.mu.Unlock()
			return err
		}
		s.afterPartial(u, typ)
		s.mu.Unlock()
		return nil
	case 'C', 'I', 's', '1', '2', '3':
		return s.completion(c, u, typ)
	case 'E':
		return s.serverError(c, u)
	case 'Z':
		return s.readyForQuery(c, u)
	default:
		s.mu.Unlock()
		return fmt.Errorf("%w: unexpected message %q", errDesync, typ)
	}
}

// afterPartial updates the head unit after a message that may complete a
// Describe.
func (s *Session) afterPartial(u *unit, typ byte) {
	if (typ == 'T' || typ == 'n') && (u.kind == uDescribeS || u.kind == uDescribeP) {
		s.popUnit()
	}
}

// planCuts returns the injected ranges of a unit's plan, if any.
func injected(u *unit) []charRange {
	if u.plan == nil {
		return nil
	}
	return u.plan.cuts
}

// unsolicited handles a server message while no unit is queued: notices and
// parameter reports are dropped (they belong to nobody); anything else means
// pgtoken and the server disagree.
func (s *Session) unsolicited(c *pool.Conn, typ byte) error {
	switch typ {
	case 'N', 'S':
		return c.R.Skip()
	case 'A':
		if s.srv.cfg.Mode == ModeSession {
			return s.relay(c)
		}
		return c.R.Skip()
	case 'E':
		body, err := c.R.Body()
		if err != nil {
			return err
		}
		var e pgproto3.ErrorResponse
		_ = e.Decode(body)
		return fmt.Errorf("%w: server error with nothing pending: %s (SQLSTATE %s)", pool.ErrConnLost, e.Message, e.Code)
	}
	return fmt.Errorf("%w: unexpected message %q with nothing pending", errDesync, typ)
}

// completion handles CommandComplete, EmptyQueryResponse, PortalSuspended,
// ParseComplete, BindComplete and CloseComplete.
func (s *Session) completion(c *pool.Conn, u *unit, typ byte) error {
	defer s.mu.Unlock()
	switch u.kind {
	case uQuery:
		if typ != 'C' && typ != 'I' {
			return fmt.Errorf("%w: %q inside a simple query", errDesync, typ)
		}
		own := u.ownCompletion(s.cmpl)
		s.cmpl++
		if own {
			return c.R.Skip()
		}
		return s.relay(c)
	case uExecute:
		if typ != 'C' && typ != 'I' && typ != 's' {
			return fmt.Errorf("%w: %q answering Execute", errDesync, typ)
		}
	case uParse:
		if typ != '1' {
			return fmt.Errorf("%w: %q answering Parse", errDesync, typ)
		}
	case uBind:
		if typ != '2' {
			return fmt.Errorf("%w: %q answering Bind", errDesync, typ)
		}
	case uClose:
		if typ != '3' {
			return fmt.Errorf("%w: %q answering Close", errDesync, typ)
		}
	case uFunc:
		return fmt.Errorf("%w: %q answering a function call", errDesync, typ)
	default:
		return fmt.Errorf("%w: %q answering unit %d", errDesync, typ, u.kind)
	}
	var err error
	if u.own != ownClient {
		err = c.R.Skip()
	} else {
		err = s.relay(c)
	}
	if u.done != nil {
		u.done(nil)
	}
	s.popUnit()
	return err
}

// serverError handles an ErrorResponse.
func (s *Session) serverError(c *pool.Conn, u *unit) error {
	defer s.mu.Unlock()
	body, err := c.R.Body()
	if err != nil {
		return err
	}
	var e pgproto3.ErrorResponse
	if err := e.Decode(body); err != nil {
		return fmt.Errorf("%w: malformed ErrorResponse: %v", errDesync, err)
	}
	fatal := e.Severity == wire.SeverityFatal || e.Severity == "PANIC"
	if fatal {
		// The server is closing this connection (terminated, shut down).
		// The client's session goes on: tell it its transaction is lost.
		s.log.Info("server connection terminated", zap.Uint32("server_pid", c.PID),
			zap.String("sqlstate", e.Code), zap.String("message", e.Message))
		return fmt.Errorf("%w: %s (SQLSTATE %s)", pool.ErrConnLost, e.Message, e.Code)
	}
	werr := &wire.Error{Severity: e.Severity, Code: e.Code, Message: e.Message}
	s.errored = true
	switch {
	case u.rewrite != nil:
		s.sendError(u.rewrite)
	case u.own == ownMaint:
		s.log.Warn("pgtoken upkeep query failed", zap.String("sqlstate", e.Code), zap.String("message", e.Message))
	case u.kind == uQuery && u.noPosition:
		e.Position = 0
		s.appendMsg(&e)
	case u.kind == uQuery && e.Position > 0:
		// A position says whose text failed (a syntax error fails the
		// whole string before any statement runs).
		if p, ok := u.mapPosition(int(e.Position)); ok {
			e.Position = int32(p)
		} else {
			e.Position = 0
			s.log.Warn("prelude failed", zap.String("sqlstate", e.Code), zap.String("message", e.Message))
		}
		s.appendMsg(&e)
	case u.kind == uQuery && u.ownCompletion(s.cmpl), u.own == ownPrelude:
		// The prelude failed: the client sees why, and nothing of its own
		// statements runs (the server skips the rest).
		s.log.Warn("prelude failed", zap.String("sqlstate", e.Code), zap.String("message", e.Message))
		s.appendMsg(&e)
	default:
		s.appendError(body)
	}
	if u.done != nil {
		u.done(werr)
		u.done = nil
	}
	if u.kind == uQuery || u.kind == uFunc {
		return nil // the rest of the query is skipped; ReadyForQuery follows
	}
	// Extended protocol: the server now ignores everything until Sync,
	// local answers included (Postgres would not have given them).
	for s.q.len() > 0 && s.q.peek().kind != uSync {
		v := s.q.peek()
		if v.kind == uLocal && v.rfq {
			s.pending--
		}
		if v.done != nil {
			v.done(errSkipped)
		}
		s.q.pop()
	}
	s.cmpl = 0
	if s.q.len() == 0 {
		s.skipping = true
	}
	return nil
}

// readyForQuery handles ReadyForQuery: the end of a Query or a Sync.
func (s *Session) readyForQuery(c *pool.Conn, u *unit) error {
	defer s.mu.Unlock()
	body, err := c.R.Body()
	if err != nil {
		return err
	}
	if len(body) != 1 || !u.syncPoint() {
		return fmt.Errorf("%w: ReadyForQuery while expecting unit %d", errDesync, u.kind)
	}
	s.status = body[0]
	s.pending--
	if u.own == ownClient {
		rfq := wire.ReadyForQuery(s.status)
		s.out = append(s.out, rfq[:]...)
	}
	done := u.done
	s.popUnit()
	if done != nil {
		done(nil)
	}
	if s.pending == 0 {
		if s.status != 'I' && s.srv.cfg.IdleTransactionTimeout > 0 {
			s.idleSince = time.Now()
		}
		s.cond.Broadcast()
		s.maybeRelease()
	}
	return nil
}

// popUnit removes the head unit and then sends any local answers queued
// behind it, so they reach the client in order.
func (s *Session) popUnit() {
	s.q.pop()
	s.cmpl = 0
	s.errored = false
	s.emitLocal()
}

// emitLocal sends the local answers at the head of the queue.
func (s *Session) emitLocal() {
	for {
		u := s.q.peek()
		if u == nil || u.kind != uLocal {
			return
		}
		s.out = append(s.out, u.local...)
		if u.rfq {
			rfq := wire.ReadyForQuery(s.localStatus())
			s.out = append(s.out, rfq[:]...)
			s.pending--
		}
		if u.done != nil {
			u.done(nil)
		}
		s.q.pop()
	}
}

// localStatus is the transaction status to report in a ReadyForQuery that
// pgtoken answers itself.
func (s *Session) localStatus() byte {
	if s.conn == nil {
		return 'I'
	}
	return s.status
}

// ServerIdle flushes client output once the server has nothing more queued.
func (s *Session) ServerIdle(*pool.Conn) {
	_ = s.flushClient()
}

// ServerGone handles the loss of the attached server connection: every
// outstanding answer becomes an error, the session stays usable.
func (s *Session) ServerGone(c *pool.Conn, err error) {
	s.mu.Lock()
	if s.conn != c {
		s.mu.Unlock()
		return
	}
	s.log.Info("server connection lost", zap.Uint32("server_pid", c.PID), zap.Error(err))
	lost := wire.Errorf(wire.CodeConnectionFailure, "pgtoken: the server connection was lost; the transaction did not complete")
	lost.Hint = "Retry the transaction; pgtoken opens a new server connection for it."
	sent := s.errored || s.skipping
	// The units' done callbacks run once every unit was answered for: a
	// done may detach the session (a failed upkeep does), which clears the
	// queue, and the client's units behind it must still get their error.
	type doneCall struct {
		done func(*wire.Error)
		err  *wire.Error
	}
	var dones []doneCall
	for s.q.len() > 0 {
		u := *s.q.peek()
		s.q.pop()
		var uerr *wire.Error = lost
		switch {
		case u.kind == uLocal:
			// pgtoken's own answer to a later message is still given,
			// unless it would have been skipped after this batch's
			// error; one that ends a Query or batch is always given.
			if !sent || u.rfq {
				s.out = append(s.out, u.local...)
				uerr = nil
			}
			if u.rfq {
				rfq := wire.ReadyForQuery('I')
				s.out = append(s.out, rfq[:]...)
				s.pending--
				sent = false
			}
		case u.own == ownMaint:
		case u.syncPoint():
			if !sent {
				s.sendError(lost)
			}
			rfq := wire.ReadyForQuery('I')
			s.out = append(s.out, rfq[:]...)
			sent = false
		default:
			if !sent && !s.skipping {
				s.sendError(lost)
				sent = true
			}
		}
		if u.done != nil {
			dones = append(dones, doneCall{u.done, uerr})
		}
	}
	for _, d := range dones {
		d.done(d.err)
	}
	if s.midBatch && !sent {
		s.sendError(lost)
	}
	s.lostBatch = s.midBatch
	// A client idle inside a transaction has nothing queued to fail: its
	// next statement must, or it would run outside the transaction it
	// believes it is in.
	s.txLost = s.status != 'I' && !sent && s.pending == 0
	s.conn = nil
	s.pending = 0
	s.midBatch = false
	s.skipping = false
	s.maint = false
	s.status = 'I'
	s.cmpl = 0
	s.errored = false
	s.cond.Broadcast()
	s.mu.Unlock()
	_ = s.flushClient()
}

// relay copies the current server message to the client output.
func (s *Session) relay(c *pool.Conn) error {
	f, err := c.R.Frame()
	if err != nil {
		return err
	}
	s.out = append(s.out, f...)
	return nil
}

// appendError relays an already-read ErrorResponse body.
func (s *Session) appendError(body []byte) {
	s.out = append(s.out, 'E', 0, 0, 0, 0)
	at := len(s.out) - 5
	s.out = append(s.out, body...)
	putLen(s.out[at:])
}

// relayNotice relays a NoticeResponse of a query, mapping its position back
// to the client's text.
func (s *Session) relayNotice(c *pool.Conn, u *unit) error {
	body, err := c.R.Body()
	if err != nil {
		return err
	}
	var nr pgproto3.NoticeResponse
	if err := nr.Decode(body); err != nil {
		return fmt.Errorf("%w: malformed NoticeResponse: %v", errDesync, err)
	}
	if nr.Position > 0 {
		if p, ok := u.mapPosition(int(nr.Position)); ok {
			nr.Position = int32(p)
		} else {
			nr.Position = 0
		}
	}
	s.appendMsg(&nr)
	return nil
}

// streamToClient passes a large message to the client in pieces. Called
// without mu.
func (s *Session) streamToClient(c *pool.Conn) error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	b := s.out
	s.out = s.spare[:0]
	s.mu.Unlock()
	if s.clientErr == nil && len(b) > 0 {
		_, s.clientErr = s.nc.Write(b)
	}
	s.mu.Lock()
	s.spare = b[:0]
	s.mu.Unlock()
	if s.clientErr != nil {
		return c.R.Skip()
	}
	// A write error to the client is kept; the stream is still drained so
	// the server connection stays in sync.
	if err := c.R.Stream(clientWriter{s}); err != nil && s.clientErr == nil {
		return err
	}
	return nil
}

// clientWriter writes to the client socket, remembering the first error and
// then discarding, so a vanished client never desynchronises the server
// side. Used under flushMu.
type clientWriter struct{ s *Session }

func (w clientWriter) Write(p []byte) (int, error) {
	if w.s.clientErr == nil {
		_, w.s.clientErr = w.s.nc.Write(p)
	}
	return len(p), nil
}

// sendError queues an ErrorResponse for the client (under mu).
func (s *Session) sendError(err error) {
	s.appendMsg(wire.ToResponse(err))
}

// appendMsg encodes a pgproto3 message into the client output (under mu).
func (s *Session) appendMsg(m wire.Message) {
	b, err := m.Encode(s.out)
	if err != nil {
		s.log.Error("encoding a message for the client failed", zap.Error(err))
		return
	}
	s.out = b
}

// flushClient writes the client output. Safe to call from either goroutine
// without mu.
func (s *Session) flushClient() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	b := s.out
	if len(b) == 0 {
		s.mu.Unlock()
		return s.clientErr
	}
	s.out = s.spare[:0]
	s.mu.Unlock()
	if s.clientErr == nil {
		_, s.clientErr = s.nc.Write(b)
	}
	s.mu.Lock()
	if cap(b) <= 1<<20 {
		s.spare = b[:0]
	} else {
		s.spare = nil
	}
	s.mu.Unlock()
	return s.clientErr
}

func putLen(msg []byte) {
	n := uint32(len(msg) - 1)
	msg[1], msg[2], msg[3], msg[4] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
}
