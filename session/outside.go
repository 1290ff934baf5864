package session

import (
	"fmt"

	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/session/tracker"
	"github.com/pgtoken/pgtoken/wire"
)

// outsideState follows a statement run outside a transaction.
type outsideState struct {
	err *wire.Error
}

// outsideTransaction runs a statement that Postgres refuses inside a
// transaction block (VACUUM, CREATE INDEX CONCURRENTLY, CREATE DATABASE, ...),
// or a procedure that may commit (CALL, DO), and that came as a Query of its
// own outside a transaction: the role and
// claims are set for the session first (with the hand-over reset and the
// settings replay when due), and only once that succeeded does the
// statement go, followed by a reset in the same write. The connection is
// held until the reset is answered (a failed reset drops it), so no other
// client ever gets it with this client's identity. Called with mu held;
// returns with it released.
func (s *Session) outsideTransaction(c *pool.Conn, frame []byte, step tracker.Step) error {
	s.hold = true
	st := &outsideState{}
	w := s.stickyWork(c, step.Reset)
	var text string
	if w.reset {
		text, _ = w.resetText()
	}
	text += s.pre.sessionSet()
	if len(w.replay) > 0 {
		text += replayText(w.replay, w.values)
	}
	beginQuery(c)
	s.t.Push(tracker.Unit{Kind: tracker.Query, Own: tracker.OwnPrelude, Purpose: pOutside, Ref: st})
	s.afterSticky(c, w)
	c.W.Query(text)
	s.waitFor(c, func() bool { return s.t.Quiet() })
	s.hold = false
	defer s.mu.Unlock()
	if s.conn != c {
		if st.err == nil {
			// It broke after the identity was set: nothing of the
			// client's was queued, so nobody told it.
			s.answer(wire.AppendError(nil, errLost()), true, 0, nil)
		}
		return nil
	}
	if st.err != nil {
		// The client has the error; nothing of its statement ran. Its
		// ReadyForQuery was pgtoken's own, swallowed: answer it.
		s.answer(nil, true, 0, nil)
		s.maybeRelease()
		return nil
	}
	beginQuery(c)
	s.unnamedStmt = nil
	s.t.Push(tracker.Unit{Kind: tracker.Query})
	c.W.AppendBytes(frame)
	beginQuery(c)
	s.t.Push(tracker.Unit{Kind: tracker.Query, Own: tracker.OwnMaint, Purpose: pOutsideReset, Ref: c})
	c.W.Query(s.pre.sessionReset())
	c.IdentityOf = 0
	return nil
}

// checkState follows a query pgtoken runs for a session at login.
type checkState struct {
	done bool
	err  *wire.Error
	rows [][]byte
}

// roundTrip runs one of pgtoken's own queries for this session and waits
// for it; it returns the rows, the server's error, or an error when no
// server connection could be had or it broke.
func (s *Session) roundTrip(sql string) ([][]byte, *wire.Error, error) {
	c, err := s.claim()
	if err != nil {
		return nil, nil, err
	}
	cs := &checkState{}
	s.mu.Lock()
	if s.conn == c {
		beginQuery(c)
		s.t.Push(tracker.Unit{Kind: tracker.Query, Own: tracker.OwnMaint, Collect: true, Purpose: pCheck, Ref: cs})
		c.W.Query(sql)
		s.waitFor(c, func() bool { return cs.done })
	}
	s.writing = false
	s.wconn = nil
	if s.conn == c {
		s.maybeRelease()
	}
	s.mu.Unlock()
	if !cs.done || cs.err == tracker.ErrLost {
		return nil, nil, fmt.Errorf("%w while checking startup settings", pool.ErrConnLost)
	}
	return cs.rows, cs.err, nil
}
