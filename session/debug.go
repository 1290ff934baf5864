package session

import (
	"slices"
	"time"

	"github.com/pgtoken/pgtoken/session/tracker"
)

// SessionDebug is one logged-in session's state as pgtoken holds it (read
// under the session's mutex): enough to say where a client that waits for
// an answer is stuck. It carries no token, claim value or SQL text.
type SessionDebug struct {
	ID       uint32    `json:"id"`
	Database string    `json:"database"`
	Started  time.Time `json:"started"`
	// Sub is the token's subject, for tests; the JSON view leaves it out.
	Sub string `json:"-"`

	// ServerPID is the backend pid of the attached server connection (0:
	// none); ServerDead says that connection is known to be broken.
	ServerPID  uint32 `json:"server_pid,omitempty"`
	ServerDead bool   `json:"server_dead,omitempty"`

	// Tracker is the transaction tracker's view: expected answers, status,
	// batch state.
	Tracker tracker.State `json:"tracker"`

	Writing    bool   `json:"writing"`    // the client goroutine is filling the server connection's write buffer
	Capture    bool   `json:"capture"`    // session settings are to be read back
	Hold       bool   `json:"hold"`       // the connection must not be released now
	Ended      bool   `json:"ended"`      // the client is gone
	Cancelling bool   `json:"cancelling"` // a cancel request is on its way
	TxLost     bool   `json:"tx_lost"`    // the conn broke while the client sat in a transaction
	IdleSince  string `json:"idle_since"` // when the last answer left nothing in flight (idle_transaction_timeout only)
	ClientOut  int    `json:"client_out"` // bytes of client output not yet handed to the socket
	Flushing   bool   `json:"flushing"`   // a write to the client socket is under way
	ClientErr  string `json:"client_err"` // the first write error to the client
	Orphaned   bool   `json:"orphaned"`   // answers expected but no server connection to give them
}

// DebugSessions returns the state of every logged-in session (consoles
// excluded), ordered by id. It only reads, each session under its mutex,
// which no goroutine holds across network I/O.
func (s *Server) DebugSessions() []SessionDebug {
	s.sessMu.RLock()
	var sess []*Session
	for _, c := range s.clients {
		if c.sess != nil {
			sess = append(sess, c.sess)
		}
	}
	s.sessMu.RUnlock()
	out := make([]SessionDebug, 0, len(sess))
	for _, ss := range sess {
		out = append(out, ss.debug())
	}
	slices.SortFunc(out, func(a, b SessionDebug) int { return int(a.ID) - int(b.ID) })
	return out
}

// debug reads the session's shared state.
func (s *Session) debug() SessionDebug {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.debugLocked()
}

// debugLocked is debug under mu.
func (s *Session) debugLocked() SessionDebug {
	d := SessionDebug{ID: s.id, Database: s.db, Started: s.start, Sub: s.ident.Sub}
	if s.conn != nil {
		d.ServerPID, d.ServerDead = s.conn.PID, s.conn.Dead()
	}
	d.Tracker = s.t.State()
	d.Writing, d.Capture, d.Hold, d.Ended, d.Cancelling, d.TxLost = s.writing, s.capture, s.hold, s.ended, s.cancelling, s.txLost
	if !s.idleSince.IsZero() {
		d.IdleSince = s.idleSince.Format(time.RFC3339Nano)
	}
	d.ClientOut, d.Flushing = len(s.out.buf), s.out.flushing
	if s.out.err != nil {
		d.ClientErr = s.out.err.Error()
	}
	d.Orphaned = s.conn == nil && len(d.Tracker.Units) > 0
	return d
}
