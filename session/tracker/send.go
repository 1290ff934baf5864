package tracker

import "github.com/pgtoken/pgtoken/session/sqlscan"

// Prelude says what goes in front of a client message.
type Prelude uint8

// Preludes.
const (
	NoPrelude Prelude = iota
	// LocalPrelude sets the client's role and claims for the transaction.
	LocalPrelude
	// SessionPrelude sets them for the session: a procedure (CALL, DO)
	// that commits goes on in transactions of its own, which must keep
	// the identity. The hand-over reset undoes it before another client.
	// For a Query (a procedure alone in it) it goes as a Query of its
	// own, answered before the client's is sent, and is undone after it.
	SessionPrelude
)

// Step is the tracker's decision about the next client message.
type Step struct {
	// Wait: where this message stands depends on answers in flight. Send
	// what is buffered, wait until Settled, and ask again.
	Wait bool
	// Prelude goes in front of the message (for a Query: of its text).
	Prelude Prelude
	// Reset: the hand-over reset goes with every prelude of this message;
	// with no prelude (at the start of a batch), it goes alone.
	Reset bool
	// Barrier: after sending, wait until this message is answered (or
	// known to be skipped) before reading the client again.
	Barrier bool
	// ResetAhead: the hand-over reset goes as a Query of its own in
	// front of the message (which it must not share a transaction with).
	ResetAhead bool
	// IdentityAhead: the message begins a batch that runs a procedure (a
	// CALL or DO outside a transaction block): the client's identity goes
	// for the session, committed in a Query of its own ahead of the batch
	// (with the reset, when due), so that a procedure that rolls back its
	// transaction falls back to it rather than to what was committed
	// before.
	IdentityAhead bool
	// NeedIdentity: the message runs a procedure in the middle of a batch
	// that did not begin with it: it may go only if the client's identity
	// is already committed for the session on the connection.
	NeedIdentity bool
	// Bare: the prelude goes into a transaction the client opened before
	// (BEGIN, in an earlier batch or Query) rather than a new one.
	Bare bool
	// Fresh: the message (the first of a batch, a Query or a
	// FunctionCall) comes where the server has no transaction open: the
	// portals of the one before are gone.
	Fresh bool
}

// runsCode reports whether a statement of this kind may run code or
// resolve names, so it must not run without the client's identity. BEGIN
// and SET TRANSACTION must come before any query that takes a snapshot (so
// the prelude waits for them); COMMIT, ROLLBACK and PREPARE TRANSACTION
// only end what is open.
func runsCode(k sqlscan.Kind) bool {
	switch k {
	case sqlscan.KindBegin, sqlscan.KindSetTransaction, sqlscan.KindCommit, sqlscan.KindRollback, sqlscan.KindPrepareTransaction:
		return false
	}
	return true
}

// boundary returns where the server will stand when it processes the
// first message after the last sync point, or wait when the answers in
// flight decide it.
func (t *Tracker) boundary() (p position, wait bool) {
	if t.sticky && t.syncs > 0 {
		return p, true // whether the reset committed decides
	}
	poss := t.poss
	if t.clients == 0 {
		switch t.status {
		case 'T':
			// The server says only that a transaction is open; whether
			// the prelude ran in it is what was sent.
			poss = open
			if t.poss&bare != 0 && t.poss&open == 0 {
				poss = bare
			}
		case 'E':
			poss = failed
		default:
			poss = none
		}
		t.poss = poss
	}
	switch {
	case poss == none:
		return position{st: none}, false
	case poss == bare:
		return position{st: bare, explicit: true}, false
	case poss&(none|bare) == 0:
		// open or failed: neither needs the prelude, and a batch that
		// starts in a failed transaction fails at once (its COMMIT or
		// ROLLBACK runs as it would in an open one).
		return position{st: open, explicit: true}, false
	}
	return p, true
}

// Query decides where the prelude goes in a simple Query of these
// statements: in front (Step.Prelude) and after the statements whose index
// it appends to cuts. It goes in front of the first statement that runs
// code while no transaction with the prelude is open: at the start, after
// a leading BEGIN or SET TRANSACTION (which must come before any query
// that takes a snapshot), after a statement that ends a transaction when
// more follows, and at the end when the Query leaves an explicit
// transaction open without it. The state moves on as if the Query was
// sent.
func (t *Tracker) Query(stmts []sqlscan.Statement, cuts []int) (Step, []int) {
	if t.skipping || t.doomed {
		return Step{}, cuts // the server ignores it until Sync, as it would directly
	}
	p, fails := t.cur, t.fails
	if !t.inBatch {
		var wait bool
		if p, wait = t.boundary(); wait {
			return Step{Wait: true}, cuts
		}
		fails = 0
	}
	fresh := p.st == none
	if len(stmts) == 1 && !p.explicit && (stmts[0].Kind == sqlscan.KindCall || stmts[0].Kind == sqlscan.KindDo) {
		// A procedure alone in a Query runs outside any transaction
		// block (the implicit transaction of a batch it ends is none),
		// so it may commit, and what it runs after its COMMIT would
		// run without a prelude inside the transaction: the identity
		// goes for the session, in front of the Query, not into its
		// text (two statements in one Query make a transaction block,
		// where COMMIT fails). Mid-batch too.
		reset := t.resetDue()
		if t.inBatch {
			reset = t.reset
		}
		t.endSync(position{st: none}, t.fails|p.failState())
		return Step{Prelude: SessionPrelude, Reset: reset, Barrier: true, Fresh: fresh}, cuts
	}
	s := Step{Fresh: fresh}
	owed := p.needsPrelude()
	owe := func(i int) {
		if i == 0 {
			s.Prelude = LocalPrelude
			s.Bare = p.st == bare
		} else {
			cuts = append(cuts, i-1)
		}
		s.Reset = t.resetDue()
		fails |= p.failState()
		p.st, owed = open, false
	}
	for i := range stmts {
		st := &stmts[i]
		if owed && runsCode(st.Kind) {
			owe(i)
		}
		fails |= p.failState()
		switch st.Kind {
		case sqlscan.KindBegin:
			p.explicit = true
			if p.st == none {
				p.st = bare
			}
		case sqlscan.KindCommit, sqlscan.KindRollback, sqlscan.KindPrepareTransaction:
			if st.Flags&sqlscan.FlagChain != 0 {
				p = position{st: bare, explicit: true}
			} else {
				p = position{st: none}
			}
			owed = true
		}
	}
	// A Query that leaves an explicit transaction open without having run
	// anything in it leaves it bare (endSync): the prelude waits for the
	// first statement that runs code, and a SET TRANSACTION before it
	// still works. A hand-over reset due then goes ahead of this Query,
	// not with that later prelude, where its CLOSE ALL would close the
	// portals the client bound in between.
	if fresh && t.reset && s.Prelude == NoPrelude && len(cuts) == 0 {
		s.ResetAhead = true
	}
	t.endSync(p, fails)
	return s, cuts
}

// endSync records a sync point that leaves the server at p on success, or
// in one of fails.
func (t *Tracker) endSync(p position, fails state) {
	success := none
	if p.explicit {
		success = p.st // open, or bare when nothing ran since BEGIN
	}
	t.poss = success | fails
	t.inBatch, t.doomed = false, false
	t.fails = 0
}

// Extended decides about an extended-protocol message: typ is its type
// ('P', 'B', 'D', 'E', 'C', 'H' or 'S') and k, flags describe the statement
// it parses, binds, describes or executes. The state moves on as if the
// message was sent.
func (t *Tracker) Extended(typ byte, k sqlscan.Kind, flags sqlscan.Flags) Step {
	if typ == 'H' {
		return Step{}
	}
	if t.skipping || t.doomed {
		// The server skips everything until the client's Sync, which
		// ends the batch (failed: its ReadyForQuery tells where).
		if typ == 'S' && t.inBatch {
			t.endSync(t.cur, t.fails|t.cur.failState())
		}
		return Step{}
	}
	var s Step
	if !t.inBatch {
		p, wait := t.boundary()
		if wait {
			return Step{Wait: true}
		}
		t.inBatch, t.cur, t.fails = true, p, 0
		s.Fresh = p.st == none
		t.carried = p.st == bare
		if p.st == none && typ != 'S' && typ != 'C' && (k == sqlscan.KindCall || k == sqlscan.KindDo) {
			s.IdentityAhead, s.ResetAhead = true, t.reset
		} else if p.st == none && t.reset && typ != 'S' {
			// The hand-over reset goes first, before the client binds
			// a portal its CLOSE ALL would close (a COMMIT, or a BEGIN,
			// bound before the statement that brings the prelude). In
			// front of a BEGIN or SET TRANSACTION it goes as a Query of
			// its own: it takes a snapshot, and SET TRANSACTION must
			// come before any in its transaction.
			if k == sqlscan.KindBegin || k == sqlscan.KindSetTransaction {
				s.ResetAhead = true
			} else {
				s.Reset = true
			}
		}
	}
	c := &t.cur
	switch typ {
	case 'S':
		// A transaction the batch opened without running anything stays
		// bare after the Sync (endSync): the next batch's first statement
		// that runs code gets the prelude, and a SET TRANSACTION before
		// it still works (the prelude, a SELECT, takes a snapshot).
		t.endSync(*c, t.fails)
		return s
	case 'C':
		// Close starts a transaction but runs nothing.
		if c.st == none {
			c.st = bare
		}
		t.fails |= c.failState()
		return s
	}
	if c.needsPrelude() && runsCode(k) {
		s.Prelude, s.Reset, s.Bare = LocalPrelude, s.Reset || t.reset, t.carried
		t.fails |= c.failState()
		c.st = open
	}
	if typ == 'E' && (k == sqlscan.KindCall || k == sqlscan.KindDo) && !c.explicit {
		s.Prelude, s.Reset = SessionPrelude, s.Reset || t.reset
		s.NeedIdentity = true
		c.st = open
	}
	if c.st == none {
		c.st = bare // a Parse or Bind of BEGIN starts the transaction, runs nothing
	}
	t.fails |= c.failState()
	if typ == 'E' {
		switch k {
		case sqlscan.KindBegin:
			c.explicit = true
		case sqlscan.KindCommit, sqlscan.KindRollback, sqlscan.KindPrepareTransaction:
			if flags&sqlscan.FlagChain != 0 {
				*c = position{st: bare, explicit: true}
			} else {
				*c = position{st: none}
			}
			t.carried = false
		case sqlscan.KindCall, sqlscan.KindDo:
			if !c.explicit {
				c.st = bare // it may have committed: the prelude goes again
			}
		}
	}
	return s
}

// FuncCall decides about a fast-path FunctionCall. It runs like a one-
// statement Query (and commits like one); the prelude in front of it is a
// bound statement, and if that fails the server ignores the call, so the
// client goroutine must wait for the answer (Barrier) in case pgtoken owes
// a Sync.
func (t *Tracker) FuncCall() Step {
	if t.skipping || t.doomed {
		return Step{}
	}
	p, fails := t.cur, t.fails
	if !t.inBatch {
		var wait bool
		if p, wait = t.boundary(); wait {
			return Step{Wait: true}
		}
		fails = 0
	}
	s := Step{Fresh: p.st == none}
	if p.needsPrelude() {
		s.Prelude, s.Reset, s.Barrier, s.Bare = LocalPrelude, t.reset, true, p.st == bare
		fails |= p.failState()
		p.st = open
	}
	fails |= p.failState()
	t.endSync(p, fails)
	return s
}

// Sticky records that the hand-over reset (or a settings replay) was just
// queued: it must commit before it counts. Until then every prelude
// carries the reset again and the next sync point waits for the outcome.
func (t *Tracker) Sticky() {
	t.reset = false // sent: from now on it awaits its commit
	if !t.sticky {
		t.sticky = true
		t.stickySeq = t.seq + 1 // the next unit pushed
		t.stickyCmpl = 0        // set from that unit (Push)
		t.doubt = false
	}
}

// Foreign marks the server connection's state as unknown (a settings
// replay that may not have happened, say): the next prelude resets it.
func (t *Tracker) Foreign() { t.reset = true }

// DropBatch makes the rest of the client's batch fail locally: its
// messages are dropped until Sync, which is answered with ReadyForQuery,
// as Postgres does after an error. Only for a client without a batch open
// on the server.
func (t *Tracker) DropBatch() { t.drop = true }

// Dropping reports whether the client's batch is being dropped; a Sync
// ends it (EndDrop).
func (t *Tracker) Dropping() bool { return t.drop }

// EndDrop ends a dropped batch at its Sync.
func (t *Tracker) EndDrop() { t.drop = false }

// MayBeIdle reports whether the server may be outside any transaction
// once everything sent is answered.
func (t *Tracker) MayBeIdle() bool { return !t.inBatch && t.poss&none != 0 }

// Failing records a message that is sure to fail on the server (a refused
// statement, sent as one that does not parse): a Query (simple) fails
// alone; an extended-protocol message makes the server skip the rest of
// its batch.
func (t *Tracker) Failing(simple bool) Step {
	if t.skipping || t.doomed {
		return Step{}
	}
	if !t.inBatch {
		p, wait := t.boundary()
		if wait {
			return Step{Wait: true}
		}
		if simple {
			t.poss = p.failState()
			return Step{}
		}
		t.inBatch, t.cur, t.fails = true, p, 0
	}
	if simple {
		t.poss = t.cur.failState() | t.fails
		t.inBatch, t.fails = false, 0
		return Step{}
	}
	t.fails |= t.cur.failState()
	t.doomed = true
	return Step{}
}
