package session

import (
	"time"

	"github.com/pgtoken/pgtoken/wire"
)

// armExpiry makes the session end when its token has expired for longer
// than jwt.leeway while a transaction (or a batch) is still open: no
// transaction runs on past its token's lifetime. A session between
// transactions is left alone; its next message ends it (checkTokenLifetime,
// and no transaction starts after exp).
func (s *Session) armExpiry() {
	exp := s.ident.ExpiresAt
	if exp.IsZero() {
		return
	}
	s.mu.Lock()
	s.expiry = time.AfterFunc(time.Until(exp.Add(s.srv.cfg.TokenLeeway)), s.expire)
	s.mu.Unlock()
}

// expire ends the session if it is inside a transaction.
func (s *Session) expire() {
	s.mu.Lock()
	open := !s.ended && (s.t.InTransaction() || !s.t.Quiet() || s.t.Dropping())
	s.mu.Unlock()
	if !open {
		return
	}
	s.log.Info("token expired inside a transaction; ending the session")
	s.srv.terminateSession(s, wire.Fatalf(wire.CodeInvalidAuthorization, "token expired"))
}
