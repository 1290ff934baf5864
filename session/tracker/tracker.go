// Package tracker is the transaction tracker of one client session: the one
// place that decides where the server's transactions start, where the
// prelude (the client's role and claims) goes, which server answer belongs
// to which message, and when the server connection may be let go.
//
// It does no I/O and takes no locks: the session's client goroutine asks it
// what must precede each client message (Query, Extended, FuncCall) and
// tells it what it queued (Push); the server connection's reader goroutine
// feeds it every server message (Server, Route) and gets back the bytes the
// client must see. The session serialises the two.
//
// # Where the server stands
//
// The tracker follows the server's transaction state at the point where
// the next message will be processed:
//
//	none    no transaction: the next statement starts one
//	bare    a transaction is open and the prelude has not run in it
//	        (after BEGIN, which must come first; after COMMIT AND CHAIN;
//	        after a procedure, which may have committed)
//	open    a transaction is open with the prelude in force
//	failed  an explicit transaction failed
//
// Inside an extended-protocol batch the position is certain: an error makes
// the server skip everything up to Sync, so what follows an error never
// runs and the tracker may assume success. At a sync point (Sync, a Query,
// a FunctionCall) it keeps the set of positions the answers in flight may
// leave; the next message may rely on it only when every member agrees on
// whether the prelude is needed, and otherwise waits for the answers
// (ReadyForQuery is always flushed by the server, so the wait ends).
//
// The prelude goes in front of every message that may run code or resolve
// names while the position is none or bare: any statement but BEGIN, SET
// TRANSACTION, COMMIT, ROLLBACK and PREPARE TRANSACTION (SAVEPOINT
// included, so the prelude never runs inside a subtransaction that a
// ROLLBACK TO could undo); before a Sync that would leave an explicit
// transaction bare; and after each statement that ends a transaction in the
// middle of a Query string. A CALL or DO outside an explicit transaction
// gets the prelude for the session, since a procedure that commits starts
// transactions of its own.
//
// # The hand-over reset
//
// A server connection that last served another client (or whose state is
// unknown) is reset at this client's first prelude on it, in the same
// transaction (at the start of the batch when that does not begin with
// BEGIN or SET TRANSACTION, so that its CLOSE ALL cannot close a portal the
// client bound before the prelude). Until that transaction is known to have committed, every
// prelude carries the reset again and the next sync point waits for the
// outcome: a transaction that rolled back restores whatever the reset
// removed.
package tracker

import (
	"github.com/pgtoken/pgtoken/wire"
)

// state is a set of positions of the server (see the package comment).
type state uint8

const (
	none state = 1 << iota
	bare
	open
	failed
)

// position is where the server stands inside a batch or Query.
type position struct {
	st       state // exactly one bit
	explicit bool  // inside BEGIN ... COMMIT
}

// failState is where an error at this position leaves the server once the
// batch or Query is over.
func (p position) failState() state {
	if p.explicit {
		return failed
	}
	return none
}

// needsPrelude reports whether a statement run at this position would run
// without the client's identity.
func (p position) needsPrelude() bool { return p.st == none || p.st == bare }

// Done reports the completion of a unit whose Purpose is not zero.
type Done struct {
	Purpose Purpose
	Ref     any
	// Err is nil when the server took the message, the server's error, or
	// ErrSkipped / ErrLost.
	Err *wire.Error
	// Rows are the DataRow bodies of a Collect unit; Status the
	// transaction status of its ReadyForQuery.
	Rows   [][]byte
	Status byte
}

// ErrSkipped is a Done's error for a message the server never ran: an
// earlier error made it skip the message.
var ErrSkipped = &wire.Error{Severity: wire.SeverityError, Code: wire.CodeInternal, Message: "skipped after an earlier error"}

// ErrLost is a Done's error for a message whose server connection broke
// before it was answered.
var ErrLost = &wire.Error{Severity: wire.SeverityError, Code: wire.CodeConnectionFailure, Message: "the server connection was lost"}

// Tracker follows one client's conversation with its server connection.
// The zero value is not ready; use New.
type Tracker struct {
	// Send side: what the client goroutine has sent.
	inBatch bool     // extended messages sent since the last sync point
	cur     position // where the server stands in the current batch
	fails   state    // where an error in the current batch would leave it
	poss    state    // where the server may stand once everything sent is answered
	drop    bool     // the client's batch failed locally: its messages are dropped until Sync
	doomed  bool     // a message sure to fail was sent in the current batch: the server will skip the rest until Sync
	carried bool     // the current batch began inside a transaction opened before it that ran nothing yet
	reset   bool     // the server connection may hold another client's (or unknown) state

	// Receive side: the server's answers.
	q        queue
	seq      uint64
	attached bool
	status   byte   // the last ReadyForQuery's transaction status
	syncs    int    // queued units that end with ReadyForQuery
	clients  int    // ... of those, the ones that are not pgtoken's upkeep
	answered uint64 // ReadyForQuery answers received
	cmpl     int    // statement completions seen in the head Query unit
	errored  bool   // the head unit failed
	skipping bool   // the server skips everything until a Sync that is not queued yet
	syncOwed bool   // pgtoken's own message failed before a client's Query or FunctionCall: send a Sync
	barriers int    // queued Barrier units

	// The hand-over reset (and settings replay) sent and not yet known
	// to have committed.
	// stickySeq is the first unit that carries it, and stickyCmpl, when
	// that unit is a Query, the statement completion at which the reset
	// begins in it: what completes before does not bear on it.
	sticky     bool
	stickySeq  uint64
	stickyCmpl int
	doubt      bool

	relayAsync bool
	done       []Done
}

// New returns a tracker for a session that holds no server connection.
// relayAsync says whether notifications (LISTEN) reach the client: in
// session pooling mode they do; in transaction mode no client listens.
func New(relayAsync bool) *Tracker {
	return &Tracker{status: 'I', poss: none, relayAsync: relayAsync}
}

// Attach starts following a server connection that is idle. foreign says
// it may hold another client's state or state nobody knows: the hand-over
// reset goes with this client's first prelude on it, or in front of its
// first batch (Extended).
func (t *Tracker) Attach(foreign bool) {
	t.restart(ErrLost, true)
	t.reset = foreign
}

// Detach stops following the server connection. clean reports whether the
// connection holds nothing but this client's state: every reset it needed
// committed. Units still queued complete with err.
func (t *Tracker) Detach(err *wire.Error) (clean bool) {
	clean = !t.reset && !t.sticky
	t.restart(err, false)
	return clean
}

// restart forgets the server connection followed so far.
func (t *Tracker) restart(err *wire.Error, attached bool) {
	t.clearQueue(err)
	t.attached = attached
	t.status, t.poss = 'I', none
	t.inBatch, t.fails, t.doomed = false, 0, false
	t.skipping, t.syncOwed = false, false
	t.cmpl, t.errored = 0, false
	t.reset, t.sticky, t.doubt = false, false, false
}

// Attached reports whether a server connection is followed.
func (t *Tracker) Attached() bool { return t.attached }

// Status is the transaction status of the server's last ReadyForQuery
// ('I' without a server connection).
func (t *Tracker) Status() byte { return t.status }

// Quiet reports whether nothing is outstanding: no answer expected and no
// batch open.
func (t *Tracker) Quiet() bool { return t.q.len() == 0 && !t.inBatch }

// Answered counts the ReadyForQuery answers received: it moves whenever
// the server finishes something.
func (t *Tracker) Answered() uint64 { return t.answered }

// Settled reports whether every sync point sent has been answered, so the
// status is the server's own word.
func (t *Tracker) Settled() bool { return t.syncs == 0 }

// Idle reports whether the server connection could be let go: nothing
// outstanding, outside any transaction, no Sync owed, and the server not
// skipping messages until a Sync (it would skip the next client's too).
func (t *Tracker) Idle() bool {
	return t.attached && t.q.len() == 0 && !t.inBatch && t.status == 'I' && !t.syncOwed && !t.skipping
}

// Skipping reports whether the server skips every message until a Sync
// that pgtoken has not sent: an extended message failed.
func (t *Tracker) Skipping() bool { return t.skipping }

// InBatch reports whether extended messages were sent since the last sync
// point.
func (t *Tracker) InBatch() bool { return t.inBatch }

// Barred reports whether a Barrier unit is still unanswered.
func (t *Tracker) Barred() bool { return t.barriers > 0 }

// SyncOwed reports whether pgtoken must send a Sync of its own (and
// TakeSyncOwed resets it): a message of pgtoken's failed in front of a
// client's Query or FunctionCall, which the server then ignores, so the
// client would never get its answer.
func (t *Tracker) SyncOwed() bool { return t.syncOwed }

// InTransaction reports whether the client is, or may be once the answers
// in flight are in, inside a transaction (or a batch), as the client sees
// it: pgtoken's own upkeep does not count.
func (t *Tracker) InTransaction() bool {
	if t.inBatch || t.drop || t.skipping {
		return true // a batch the server skips is open until the client's Sync
	}
	if !t.attached {
		return false
	}
	if t.clients == 0 {
		return t.status != 'I'
	}
	return t.poss != none
}

// ResetPending reports whether the server connection still needs (or
// awaits the commit of) the hand-over reset.
func (t *Tracker) ResetPending() bool { return t.reset || t.sticky }

// resetDue reports whether the next prelude carries the reset: it is
// needed, or the one sent has not committed yet.
func (t *Tracker) resetDue() bool { return t.reset || t.sticky }

// TakeDone returns the completions since the last call.
func (t *Tracker) TakeDone() []Done {
	d := t.done
	t.done = nil
	return d
}

// Unanswered lists the kinds and owners of the queued units, for
// diagnostics.
func (t *Tracker) Unanswered() []string {
	out := make([]string, 0, t.q.len())
	for i := 0; i < t.q.len(); i++ {
		u := t.q.at(i)
		s := u.Kind.String()
		switch u.Own {
		case OwnPrelude:
			s += "/prelude"
		case OwnMaint:
			s += "/maint"
		}
		out = append(out, s)
	}
	return out
}

// clearQueue completes every queued unit with err.
func (t *Tracker) clearQueue(err *wire.Error) {
	for t.q.len() > 0 {
		u := t.q.peek()
		t.finish(u, err, 0)
		t.q.pop()
	}
	t.syncs, t.clients = 0, 0
	t.barriers = 0
}

// finish records a unit's Done if it has a purpose.
func (t *Tracker) finish(u *Unit, err *wire.Error, status byte) {
	if u.Barrier {
		t.barriers--
		u.Barrier = false
	}
	if u.Purpose == 0 {
		return
	}
	t.done = append(t.done, Done{Purpose: u.Purpose, Ref: u.Ref, Err: err, Rows: u.rows, Status: status})
	u.Purpose = 0
}

// State is a snapshot of the tracker for diagnostics.
type State struct {
	Units       []UnitState `json:"units"`       // expected answers, head first
	Status      string      `json:"status"`      // the server's last reported transaction status
	Pending     int         `json:"pending"`     // ReadyForQuery answers outstanding
	Completions int         `json:"completions"` // statement completions seen in the head Query unit
	InBatch     bool        `json:"in_batch"`    // extended messages sent since the last sync point
	Skipping    bool        `json:"skipping"`    // the server skips everything until Sync
	SyncOwed    bool        `json:"sync_owed"`   // pgtoken owes the server a Sync
	Dropping    bool        `json:"dropping"`    // the client's batch failed locally
	Reset       bool        `json:"reset"`       // the hand-over reset is still due or unconfirmed
	Attached    bool        `json:"attached"`    // a server connection is followed
}

// UnitState is one queued unit, for diagnostics.
type UnitState struct {
	Kind string `json:"kind"`
	Own  string `json:"own"`
}

// State returns a snapshot for diagnostics.
func (t *Tracker) State() State {
	st := State{Status: string(rune(t.status)), Pending: t.syncs, Completions: t.cmpl, InBatch: t.inBatch,
		Skipping: t.skipping, SyncOwed: t.syncOwed, Dropping: t.drop, Reset: t.reset || t.sticky, Attached: t.attached}
	st.Units = make([]UnitState, 0, t.q.len())
	for i := 0; i < t.q.len(); i++ {
		u := t.q.at(i)
		own := "client"
		switch u.Own {
		case OwnPrelude:
			own = "prelude"
		case OwnMaint:
			own = "maint"
		}
		st.Units = append(st.Units, UnitState{Kind: u.Kind.String(), Own: own})
	}
	return st
}
