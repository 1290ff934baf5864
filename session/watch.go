package session

import (
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/session/tracker"
)

// stallBound is how long server answers may sit in a client's output with
// nobody writing them before that counts as a bug.
const stallBound = 5 * time.Second

// stallWatch is the watch's memory of one session (under Session.mu).
type stallWatch struct {
	flushes uint64    // out.flushes when output was first seen waiting
	since   time.Time // zero: no output waiting at the last look

	// The query timeout: answered is the tracker's count of answers when
	// a query was first seen running, at busy.
	answered uint64
	busy     time.Time
}

// watch looks at every session once a second for answers that reached
// pgtoken but not the client: output waiting with no flush under way or
// since the last look. That must never happen (every path that adds
// output flushes it); when it does, it is logged at ERROR with the
// session's state, counted (pgtoken_internal_errors_total), and flushed.
func (s *Server) watch() {
	defer s.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-tick.C:
			limit := s.ClientTimeouts().Query
			for _, sess := range s.sessions() {
				sess.checkStall(now)
				if limit > 0 {
					sess.checkQueryTimeout(now, limit)
				}
			}
		}
	}
}

// sessions lists the logged-in sessions.
func (s *Server) sessions() []*Session {
	s.sessMu.RLock()
	defer s.sessMu.RUnlock()
	out := make([]*Session, 0, len(s.clients))
	for _, c := range s.clients {
		if c.sess != nil {
			out = append(out, c.sess)
		}
	}
	return out
}

// checkStall is one look at the session (see watch).
func (s *Session) checkStall(now time.Time) {
	s.mu.Lock()
	w := &s.stall
	waiting := len(s.out.buf) > 0 && !s.out.flushing && s.out.err == nil
	switch {
	case !waiting:
		w.since = time.Time{}
	case w.since.IsZero() || w.flushes != s.out.flushes:
		w.since, w.flushes = now, s.out.flushes
	case now.Sub(w.since) >= stallBound:
		state, waited := s.debugLocked(), now.Sub(w.since)
		w.since = time.Time{}
		s.mu.Unlock()
		s.log.Error("answers from the server waited for the client with nobody writing them (a pgtoken bug); flushing them now",
			zap.Duration("waited", waited), zap.Any("state", state))
		s.srv.obs.InternalError(BugStalledAnswer)
		_ = s.flushClient()
		return
	}
	s.mu.Unlock()
}

// reportDesync logs and counts a server connection lost because the
// server said something no pending request expects (under mu).
func (s *Session) reportDesync(err error) {
	if !errors.Is(err, tracker.ErrDesync) {
		return
	}
	s.log.Error("pgtoken lost track of its server connection (a pgtoken bug); dropping it",
		zap.Error(err), zap.Any("state", s.debugLocked()))
	s.srv.obs.InternalError(BugDesync)
}

// checkQueryTimeout cancels what the session's server connection has been
// running for longer than limit without answering anything
// (pool.query_timeout, PgBouncer's), and again after each further limit.
func (s *Session) checkQueryTimeout(now time.Time, limit time.Duration) {
	s.mu.Lock()
	w := &s.stall
	running := s.conn != nil && !s.t.Settled()
	n := s.t.Answered()
	switch {
	case !running:
		w.busy = time.Time{}
	case w.busy.IsZero() || w.answered != n:
		w.busy, w.answered = now, n
	case now.Sub(w.busy) >= limit:
		w.busy = now
		s.mu.Unlock()
		s.log.Info("cancelling a query that ran longer than pool.query_timeout", zap.Duration("query_timeout", limit))
		go s.cancel()
		return
	}
	s.mu.Unlock()
}
