package tracker

import "github.com/pgtoken/pgtoken/wire"

// Kind says which message a unit stands for, and so which server messages
// answer it.
type Kind uint8

// Unit kinds.
const (
	Query          Kind = iota + 1 // simple Query: everything up to ReadyForQuery
	Parse                          // ParseComplete
	Bind                           // BindComplete
	DescribeStmt                   // ParameterDescription, then RowDescription or NoData
	DescribePortal                 // RowDescription or NoData
	Execute                        // rows, then CommandComplete, EmptyQueryResponse or PortalSuspended
	Close                          // CloseComplete
	Sync                           // ReadyForQuery
	Func                           // FunctionCallResponse, then ReadyForQuery
	Local                          // an answer pgtoken gives itself, in order with the server's
)

func (k Kind) String() string {
	switch k {
	case Query:
		return "Query"
	case Parse:
		return "Parse"
	case Bind:
		return "Bind"
	case DescribeStmt:
		return "DescribeStmt"
	case DescribePortal:
		return "DescribePortal"
	case Execute:
		return "Execute"
	case Close:
		return "Close"
	case Sync:
		return "Sync"
	case Func:
		return "Func"
	case Local:
		return "Local"
	}
	return "?"
}

// Owner says whose a unit is, and so what becomes of its answers.
type Owner uint8

// Owners.
const (
	// OwnClient: the client's own message; its answers are relayed.
	OwnClient Owner = iota
	// OwnPrelude: pgtoken's, on the client's behalf (the prelude, the
	// hand-over reset, the settings replay, a statement prepared on this
	// server connection): the answers are swallowed, but an error reaches
	// the client, since the client's own messages behind it do not run.
	OwnPrelude
	// OwnMaint: pgtoken's own upkeep (reading settings back, a cancel fence,
	// a rollback after the client left): everything is swallowed.
	OwnMaint
)

// Purpose tells the session what a unit's completion means; the tracker
// only carries it (with Ref) back in a Done.
type Purpose uint8

// Unit is one expected answer from the server (or a local answer), queued
// in the order the messages were sent, so each server message can be
// matched to the message it answers.
type Unit struct {
	Kind Kind
	Own  Owner

	// Purpose and Ref come back in the unit's Done, for the session.
	Purpose Purpose
	Ref     any

	// Query units: Segs says which statement completions are pgtoken's
	// and which the client's (nil: the first Skip completions are
	// pgtoken's); Cuts are the character ranges of text pgtoken put in,
	// so error positions map back to the client's text.
	Skip       int
	Segs       []Seg
	Cuts       []Range
	NoPosition bool // drop error positions (the text sent is not the client's)
	// ResetAt is the statement completion at which the hand-over reset
	// (or settings replay) begins in a Query unit that carries it.
	ResetAt int

	// Rewrite replaces the server's error for this unit: a statement
	// pgtoken refused was sent as a harmless one that fails, so the
	// transaction state follows as after any error.
	Rewrite *wire.Error

	// Local units: the bytes to send, and whether a ReadyForQuery with the
	// current transaction status follows.
	Bytes []byte
	RFQ   bool

	// Answer, for a client's Query unit, is what the client is told in
	// place of the server's answers, before the server's ReadyForQuery
	// (pgtoken answered the client's Query itself but sent the server a
	// stand-in, which must run where the client's Query would have).
	Answer []byte
	// Append, for a client's Query unit that succeeds, is given to the
	// client after the server's answers, before its ReadyForQuery.
	Append []byte

	// Collect keeps the DataRow bodies of a Maint query in Done.Rows.
	Collect bool

	// Barrier: the client goroutine waits until this unit is answered (or
	// known to be skipped) before it reads the client again.
	Barrier bool

	seq  uint64
	rows [][]byte
}

// Seg is a run of a Query's statement completions that are pgtoken's (Own)
// or the client's.
type Seg struct {
	Own bool
	N   int
}

// Range is a run of characters, 0-based.
type Range struct{ At, N int }

// syncPoint reports whether the unit ends with a ReadyForQuery.
func (u *Unit) syncPoint() bool {
	return u.Kind == Query || u.Kind == Sync || u.Kind == Func || (u.Kind == Local && u.RFQ)
}

// ownCompletion reports whether the i-th statement completion (0-based) of
// a Query unit is pgtoken's.
func (u *Unit) ownCompletion(i int) bool {
	if u.Own != OwnClient || u.Answer != nil {
		return true
	}
	if u.Segs == nil {
		return i < u.Skip
	}
	for _, s := range u.Segs {
		if i < s.N {
			return s.Own
		}
		i -= s.N
	}
	return false
}

// injected reports whether pgtoken put text into the client's Query.
func (u *Unit) injected() bool { return len(u.Cuts) > 0 }

// mapPosition turns a 1-based character position in the text pgtoken sent
// into one in the client's text; ok is false when it falls in injected
// text.
func (u *Unit) mapPosition(p int) (int, bool) {
	shift := 0
	for _, c := range u.Cuts {
		if p-1 < c.At {
			break
		}
		if p-1 < c.At+c.N {
			return 0, false
		}
		shift += c.N
	}
	return p - shift, true
}

// queue is a FIFO of units.
type queue struct {
	buf  []Unit
	head int
}

func (q *queue) len() int { return len(q.buf) - q.head }

func (q *queue) push(u Unit) { q.buf = append(q.buf, u) }

func (q *queue) peek() *Unit {
	if q.head == len(q.buf) {
		return nil
	}
	return &q.buf[q.head]
}

func (q *queue) at(i int) *Unit { return &q.buf[q.head+i] }

func (q *queue) pop() {
	q.buf[q.head] = Unit{}
	q.head++
	if q.head == len(q.buf) {
		q.buf = q.buf[:0]
		q.head = 0
	}
}
