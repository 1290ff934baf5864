package session

import (
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/session/tracker"
	"github.com/pgtoken/pgtoken/wire"
)

// streamThreshold is the size above which a relayed message is streamed to
// the client in pieces instead of being read whole.
const streamThreshold = 64 << 10

// outFlushThreshold is how much client output may accumulate before the
// reader flushes it even though more server data is waiting.
const outFlushThreshold = 64 << 10

// ServerMessage handles one message from the attached server connection.
// It runs on the conn's reader goroutine. The message is read whole before
// mu is taken (a large row is routed under mu and then streamed without
// it), so mu is never held while waiting for the server.
func (s *Session) ServerMessage(c *pool.Conn, typ byte, n int) error {
	if n > streamThreshold && streamable(typ) {
		return s.streamMessage(c, typ)
	}
	frame, err := c.R.Frame()
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.conn != c {
		s.mu.Unlock()
		return fmt.Errorf("%w: message %q for a detached session", tracker.ErrDesync, typ)
	}
	s.out.buf, err = s.t.Server(s.out.buf, frame)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	s.afterServer(typ)
	if len(s.out.buf) > outFlushThreshold {
		err = s.flushLocked(true)
	}
	s.mu.Unlock()
	_ = err // a client that cannot take output ends on its own read
	return nil
}

// streamable reports whether a message may be too large to buffer and is
// streamed to the client instead.
func streamable(typ byte) bool {
	switch typ {
	case 'D', 'd', 'T', 't', 'N':
		return true
	}
	return false
}

// streamMessage passes a large message through (or skips it) without
// holding mu while it is read.
func (s *Session) streamMessage(c *pool.Conn, typ byte) error {
	s.mu.Lock()
	if s.conn != c {
		s.mu.Unlock()
		return fmt.Errorf("%w: message %q for a detached session", tracker.ErrDesync, typ)
	}
	relay, err := s.t.Route(typ)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if relay {
		err = s.streamOut(c.R.Stream)
	} else {
		err = c.R.Skip()
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.conn == c {
		s.out.buf = s.t.AfterRoute(typ, s.out.buf)
		s.afterServer(typ)
	}
	s.mu.Unlock()
	return nil
}

// afterServer acts on what a server message changed (under mu): the
// completions, the waiters, the release.
func (s *Session) afterServer(typ byte) {
	s.handleDone()
	if typ == 'Z' || typ == 'E' {
		if s.t.Quiet() && s.t.Status() != 'I' && s.srv.cfg.IdleTransactionTimeout > 0 {
			s.idleSince = time.Now()
		}
		if typ == 'Z' && s.srv.cfg.Mode == ModeSession && s.t.Idle() && !s.ended {
			s.pool.NoteTransaction(0) // session mode: a transaction ended (metrics, SHOW STATS)
		}
		s.cond.Broadcast()
		s.maybeRelease()
	}
}

// ServerIdle runs once the reader goroutine has handed on every server
// byte it read: the conn may now be let go, and the client output is
// flushed.
func (s *Session) ServerIdle(c *pool.Conn) {
	s.mu.Lock()
	if !s.writing && s.queueOwedSync(c) {
		// The client goroutine is not writing (it may wait for the
		// answer this Sync brings): the reader sends it.
		s.writing, s.syncing = true, true
		s.mu.Unlock()
		s.flushServer(c)
		s.mu.Lock()
		s.writing, s.syncing = false, false
		s.cond.Broadcast()
	}
	if s.conn == c {
		s.maybeRelease()
	}
	_ = s.flushLocked(false)
	s.mu.Unlock()
}

// ServerGone handles the loss of the attached server connection: every
// outstanding answer becomes an error, the session stays usable.
func (s *Session) ServerGone(c *pool.Conn, err error) {
	s.mu.Lock()
	if s.conn != c {
		s.mu.Unlock()
		return
	}
	s.reportDesync(err)
	s.log.Info("server connection lost", zap.Uint32("server_pid", c.PID), zap.Error(err))
	lost := wire.Errorf(wire.CodeConnectionFailure, "pgtoken: the server connection was lost; the transaction did not complete")
	lost.Hint = "Retry the transaction; pgtoken opens a new server connection for it."
	var txLost bool
	s.out.buf, txLost, _ = s.t.Lost(s.out.buf, lost)
	s.txLost = txLost
	s.handleDone()
	s.conn = nil
	s.hold = false
	s.cond.Broadcast()
	_ = s.flushLocked(false)
	s.mu.Unlock()
}

// handleDone acts on completed units (under mu).
func (s *Session) handleDone() {
	for _, d := range s.t.TakeDone() {
		s.done(d)
	}
}

// done acts on one completed unit (under mu).
func (s *Session) done(d tracker.Done) {
	lost := d.Err == tracker.ErrLost
	switch d.Purpose {
	case pOwnParse:
		if r := d.Ref.(ownParseRef); d.Err != nil {
			delete(r.c.Prepared, r.name)
		}
	case pOwnBind:
		if d.Err != nil && d.Err.Code == wire.CodeInvalidSQLStatementName {
			// Something dropped pgtoken's statements (a function that
			// runs DEALLOCATE ALL): parse them all again.
			clear(d.Ref.(*pool.Conn).Prepared)
		}
	case pStmtParse:
		r := d.Ref.(stmtRef)
		if d.Err == nil {
			r.st.deferred = false // the server took it: from now on it exists as on Postgres
			return
		}
		r.c.Stmts.Remove(r.st.server)
		// A lost connection or a skipped Parse says nothing about the
		// statement; a deferred one the server refused never existed.
		if r.st.deferred && s.stmts[r.st.name] == r.st && d.Err != tracker.ErrSkipped && !lost {
			delete(s.stmts, r.st.name)
		}
	case pUnnamedParse:
		if r := d.Ref.(stmtRef); d.Err != nil && r.c.UnnamedGen == r.st.gen {
			r.c.UnnamedOwner = 0
		}
	case pClientParse:
		r := d.Ref.(stmtRef)
		r.st.unconfirmed = false
		if d.Err != nil {
			if !r.again || d.Err != tracker.ErrSkipped {
				r.c.Stmts.Remove(r.st.server)
			}
			s.forgetStmt(r.name, r.st)
		} else {
			r.st.replaced = nil
		}
	case pClientUnnamed:
		r := d.Ref.(stmtRef)
		r.st.unconfirmed = false
		switch {
		case d.Err == tracker.ErrSkipped:
			// Never ran: the unnamed statement before it is still there.
			s.forgetStmt("", r.st)
		case d.Err != nil:
			// A Parse of the unnamed statement drops the old one first.
			r.st.closed = true
			if r.st.replaced != nil {
				r.st.replaced.closed = true
			}
			if s.unnamedStmt == r.st {
				s.unnamedStmt = nil
			}
		default:
			r.st.replaced = nil
		}
		if d.Err != nil && r.c.UnnamedGen == r.st.gen {
			r.c.UnnamedOwner = 0
		}
	case pResetAhead:
		if c := d.Ref.(*pool.Conn); d.Err != nil && !lost && s.conn == c {
			s.log.Warn("the hand-over reset failed; dropping the server connection", zap.String("sqlstate", d.Err.Code), zap.String("message", d.Err.Message))
			s.letGo(c, true)
		}
	case pTxDefaults:
		if r := d.Ref.(txDefaultsRef); d.Err != nil {
			// Not set: the replay inside the transaction sets them.
			for _, n := range r.names {
				delete(r.c.Params, n)
			}
			if d.Err != tracker.ErrLost {
				s.log.Warn("setting the transaction defaults failed", zap.String("sqlstate", d.Err.Code), zap.String("message", d.Err.Message))
			}
		}
	case pCloseStmt:
		r := d.Ref.(closeRef)
		if r.st != nil {
			r.st.closing = false
		}
		switch {
		case d.Err == tracker.ErrSkipped || lost:
		case d.Err != nil && r.name != "":
			// A Close fails only when skipped; a Query that dropped
			// the unnamed statement did so however it ended.
		case r.st != nil:
			r.st.closed = true
			if r.name == "" && s.unnamedStmt == r.st {
				s.unnamedStmt = nil
			} else if r.name != "" && s.stmts[r.name] == r.st {
				delete(s.stmts, r.name)
			}
		case r.name != "":
			delete(s.stmts, r.name)
		}
	case pSQLPrepare:
		r := d.Ref.(stmtRef)
		if d.Err != nil && !lost {
			if s.stmts[r.name] == r.st {
				delete(s.stmts, r.name)
			}
			r.c.Stmts.Remove(r.st.server)
		}
	case pSQLReprepare:
		if r := d.Ref.(stmtRef); d.Err != nil {
			r.c.Stmts.Remove(r.st.server)
		}
	case pUse:
		if d.Err == nil || d.Ref == nil || !stale(d.Err) {
			return
		}
		r := d.Ref.(useRef)
		if r.server == "" {
			if r.c.UnnamedGen == r.gen {
				r.c.UnnamedOwner = 0
			}
			return
		}
		if r.c.Stmts.Remove(r.server) {
			r.c.Stale = append(r.c.Stale, r.server)
		}
		r.c.Pool().MarkStale(r.server) // and on every other conn of the pool
	case pCapture:
		s.captured(d.Ref.(captureRef), d)
	case pOutside:
		d.Ref.(*outsideState).err = d.Err
	case pOutsideReset:
		if c := d.Ref.(*pool.Conn); d.Err != nil && !lost && s.conn == c {
			s.log.Warn("resetting the session identity failed; dropping the server connection", zap.String("message", d.Err.Message))
			s.letGo(c, true)
		}
	case pEnd:
		r := d.Ref.(endRef)
		switch {
		case d.Err != nil && !lost && s.conn == r.c:
			s.letGo(r.c, true)
		case d.Err == nil && r.discardAll:
			wipe(r.c)
			s.wiped = true
		}
	case pDiscardAll:
		if c := d.Ref.(*pool.Conn); d.Err == nil {
			wipe(c)
			s.params = cloneMap(s.startParams)
			s.settingsChanged(false)
			s.lastReset = s.settingsGen
		}
	case pCheck:
		cs := d.Ref.(*checkState)
		cs.err, cs.rows, cs.done = d.Err, d.Rows, true
	}
}

// endRef is the conn a rollback or DISCARD ALL runs on after the client
// left.
type endRef struct {
	c          *pool.Conn
	discardAll bool
}

// wipe forgets what a server connection held once DISCARD ALL ran on it:
// every prepared statement, setting, temporary object, lock and LISTEN.
func wipe(c *pool.Conn) {
	c.Stmts.Clear()
	clear(c.Prepared)
	clear(c.Params)
	c.UnnamedOwner = 0
	c.IdentityOf = 0
	c.Stale = c.Stale[:0]
}
