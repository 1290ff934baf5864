package session

import (
	"slices"
	"time"
)

// SessionDebug is one logged-in session's state as its shared fields hold
// it (read under the session's mutex): enough to say where a client that
// waits for an answer is stuck. It carries no token, claim value or SQL
// text.
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

	// Units is the queue of answers expected from the server, head first.
	Units []UnitDebug `json:"units"`
	// Pending counts ReadyForQuery answers outstanding; Completions the
	// statement completions seen in the head Query unit.
	Pending     int `json:"pending"`
	Completions int `json:"completions"`

	// Batch and connection state.
	Status     string `json:"status"`     // last transaction status reported on the server connection
	MidBatch   bool   `json:"mid_batch"`  // extended messages sent since the last Sync
	Writing    bool   `json:"writing"`    // the client goroutine is filling the server connection's write buffer
	Maint      bool   `json:"maint"`      // pgtoken's upkeep query runs
	Skipping   bool   `json:"skipping"`   // the server ignores messages until Sync
	LostBatch  bool   `json:"lost_batch"` // the server connection broke mid-batch
	TxLost     bool   `json:"tx_lost"`    // it broke while the client sat in a transaction
	Errored    bool   `json:"errored"`    // the head unit's batch failed
	Capture    bool   `json:"capture"`    // settings are read back before release
	Hold       bool   `json:"hold"`       // the connection must not be released now
	Ended      bool   `json:"ended"`      // the client is gone
	Cancelling int    `json:"cancelling"` // cancel requests in flight
	IdleSince  string `json:"idle_since"` // when the last answer left nothing in flight (idle_transaction_timeout only)
	ClientOut  int    `json:"client_out"` // bytes of client output not yet handed to the socket
	Flushing   bool   `json:"flushing"`   // a write to the client socket is under way
	ClientErr  string `json:"client_err"` // the first write error to the client (when not flushing)
	OutSpare   int    `json:"out_spare"`  // capacity of the spare output buffer
	OutCap     int    `json:"out_cap"`    // capacity of the output buffer
	Orphaned   bool   `json:"orphaned"`   // answers expected but no server connection to give them
}

// UnitDebug is one queued unit.
type UnitDebug struct {
	Kind  string `json:"kind"`
	Own   string `json:"own"`
	Skip  int    `json:"skip,omitempty"`  // leading completions that are pgtoken's
	Local int    `json:"local,omitempty"` // bytes of a local answer
	RFQ   bool   `json:"rfq,omitempty"`   // a local answer ends with ReadyForQuery
}

var unitKindNames = [...]string{uQuery: "query", uParse: "parse", uBind: "bind", uDescribeS: "describe_s",
	uDescribeP: "describe_p", uExecute: "execute", uClose: "close", uSync: "sync", uFunc: "func", uLocal: "local"}

var ownKindNames = [...]string{ownClient: "client", ownPrelude: "prelude", ownMaint: "maint"}

// DebugSessions returns the state of every logged-in session (consoles
// excluded), ordered by id. It only reads, each session under its mutex,
// and never waits for a session's network I/O.
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
	d := SessionDebug{ID: s.id, Database: s.db, Started: s.start, Sub: s.ident.Sub}
	// flushMu is held for the whole of a write to the client socket; when
	// it is free, clientErr may be read.
	flushing := !s.flushMu.TryLock()
	if !flushing {
		if s.clientErr != nil {
			d.ClientErr = s.clientErr.Error()
		}
		s.flushMu.Unlock()
	}
	d.Flushing = flushing
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		d.ServerPID, d.ServerDead = s.conn.PID, s.conn.Dead()
	}
	d.Units = make([]UnitDebug, 0, s.q.len())
	for i := 0; i < s.q.len(); i++ {
		u := s.q.at(i)
		ud := UnitDebug{Skip: u.skip, Local: len(u.local), RFQ: u.rfq}
		if int(u.kind) < len(unitKindNames) {
			ud.Kind = unitKindNames[u.kind]
		}
		if int(u.own) < len(ownKindNames) {
			ud.Own = ownKindNames[u.own]
		}
		d.Units = append(d.Units, ud)
	}
	d.Pending, d.Completions = s.pending, s.cmpl
	d.Status = string(rune(s.status))
	d.MidBatch, d.Writing, d.Maint, d.Skipping = s.midBatch, s.writing, s.maint, s.skipping
	d.LostBatch, d.TxLost, d.Errored, d.Capture = s.lostBatch, s.txLost, s.errored, s.capture
	d.Hold, d.Ended, d.Cancelling = s.hold, s.ended, s.cancelling
	if !s.idleSince.IsZero() {
		d.IdleSince = s.idleSince.Format(time.RFC3339Nano)
	}
	d.ClientOut, d.OutCap, d.OutSpare = len(s.out), cap(s.out), cap(s.spare)
	d.Orphaned = s.conn == nil && (s.pending > 0 || s.q.len() > 0)
	return d
}
