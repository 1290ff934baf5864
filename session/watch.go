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
			for _, sess := range s.sessions() {
				sess.checkStall(now)
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
