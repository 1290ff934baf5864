package tracker

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/wire"
)

// ErrDesync means the server sent something no queued unit expects:
// pgtoken has lost track of the conversation and must drop the connection.
var ErrDesync = errors.New("protocol desynchronised")

// ErrServerFatal wraps a FATAL (or PANIC) ErrorResponse: the server is
// closing the connection.
var ErrServerFatal = errors.New("server ended the connection")

// Push queues the expected answer to a message about to be sent. While the
// server skips everything until a Sync that is not queued yet, a unit that
// is not a Sync is never answered: it completes at once as skipped (and a
// local answer is not given, as Postgres would not give it).
func (t *Tracker) Push(u Unit) {
	t.seq++
	u.seq = t.seq
	if t.sticky && u.seq == t.stickySeq {
		t.stickyCmpl = u.ResetAt
	}
	if t.skipping && u.Kind != Sync {
		if t.sticky && u.seq >= t.stickySeq {
			t.doubt = true // the reset (or what must commit with it) is skipped
		}
		t.finish(&u, ErrSkipped, 0)
		return
	}
	if u.Kind == Sync {
		t.skipping = false
		t.syncOwed = false
	}
	if u.syncPoint() {
		t.syncs++
		if u.Own != OwnMaint {
			t.clients++
		}
	}
	if u.Barrier {
		t.barriers++
	}
	t.q.push(u)
}

// Answer gives the client bytes pgtoken answers itself, in order with what
// the server still owes it: at once when nothing is queued, else queued
// behind the server's answers. rfq adds a ReadyForQuery with the current
// transaction status. Ref and purpose come back in a Done when the answer
// is given (not when an earlier error means Postgres would have skipped
// the message).
func (t *Tracker) Answer(out, b []byte, rfq bool, purpose Purpose, ref any) []byte {
	if t.q.len() == 0 {
		if t.skipping {
			// Postgres ignores the message (a Query too) until Sync.
			if purpose != 0 {
				t.done = append(t.done, Done{Purpose: purpose, Ref: ref, Err: ErrSkipped})
			}
			return out
		}
		out = append(out, b...)
		if rfq {
			r := wire.ReadyForQuery(t.localStatus())
			out = append(out, r[:]...)
		}
		if purpose != 0 {
			t.done = append(t.done, Done{Purpose: purpose, Ref: ref})
		}
		return out
	}
	t.Push(Unit{Kind: Local, Bytes: append([]byte(nil), b...), RFQ: rfq, Purpose: purpose, Ref: ref})
	return out
}

// localStatus is the transaction status of a ReadyForQuery pgtoken answers
// itself.
func (t *Tracker) localStatus() byte {
	if !t.attached {
		return 'I'
	}
	return t.status
}

// Route decides about a message too large to buffer, of which only the
// header is read (a DataRow, CopyData or RowDescription): relay reports
// whether it goes to the client (streamed) or is skipped. AfterRoute must
// follow once it is through.
func (t *Tracker) Route(typ byte) (relay bool, err error) {
	u := t.q.peek()
	if u == nil {
		return false, fmt.Errorf("%w: large message %q with nothing pending", ErrDesync, typ)
	}
	switch typ {
	case 'D', 'd', 'T', 't', 'N':
		return !t.own(u) && !(u.Own == OwnMaint && u.Collect), nil
	}
	return false, fmt.Errorf("%w: large message %q", ErrDesync, typ)
}

// AfterRoute finishes a message handled with Route.
func (t *Tracker) AfterRoute(typ byte, out []byte) []byte {
	if u := t.q.peek(); u != nil && (typ == 'T') && (u.Kind == DescribeStmt || u.Kind == DescribePortal) {
		return t.popUnit(out)
	}
	return out
}

// own reports whether the head unit's current answers are pgtoken's.
func (t *Tracker) own(u *Unit) bool {
	return u.Own != OwnClient || (u.Kind == Query && u.ownCompletion(t.cmpl))
}

// Server handles one whole server message (frame: type, length and body)
// and appends what the client must see to out. An error means the
// connection must be dropped: ErrDesync when the server said something
// unexpected, ErrServerFatal when it is closing the connection.
func (t *Tracker) Server(out []byte, frame []byte) ([]byte, error) {
	typ := frame[0]
	body := frame[5:]
	u := t.q.peek()
	if u == nil {
		return t.unsolicited(out, typ, frame, body)
	}
	switch typ {
	case 'A':
		if t.relayAsync {
			out = append(out, frame...)
		}
		return out, nil
	case 'N':
		if t.own(u) {
			return out, nil
		}
		if u.Kind == Query && u.injected() {
			return t.relayNotice(out, u, body)
		}
		return append(out, frame...), nil
	case 'D':
		if u.Own == OwnMaint && u.Collect {
			u.rows = append(u.rows, append([]byte(nil), body...))
			return out, nil
		}
		if t.own(u) {
			return out, nil
		}
		return append(out, frame...), nil
	case 'T', 'n', 't', 'S', 'G', 'H', 'W', 'c', 'd', 'V':
		if !t.own(u) {
			out = append(out, frame...)
		}
		if (typ == 'T' || typ == 'n') && (u.Kind == DescribeStmt || u.Kind == DescribePortal) {
			out = t.popUnit(out)
		}
		return out, nil
	case 'C', 'I', 's', '1', '2', '3':
		return t.completion(out, u, typ, frame, body)
	case 'E':
		return t.serverError(out, u, body)
	case 'Z':
		return t.readyForQuery(out, u, body)
	}
	return out, fmt.Errorf("%w: unexpected message %q", ErrDesync, typ)
}

// unsolicited handles a server message while nothing is queued.
func (t *Tracker) unsolicited(out []byte, typ byte, frame, body []byte) ([]byte, error) {
	switch typ {
	case 'N', 'S':
		return out, nil
	case 'A':
		if t.relayAsync {
			out = append(out, frame...)
		}
		return out, nil
	case 'E':
		var e pgproto3.ErrorResponse
		_ = e.Decode(body)
		return out, fmt.Errorf("%w: %s (SQLSTATE %s)", ErrServerFatal, e.Message, e.Code)
	}
	return out, fmt.Errorf("%w: unexpected message %q with nothing pending", ErrDesync, typ)
}

// completion handles CommandComplete, EmptyQueryResponse, PortalSuspended,
// ParseComplete, BindComplete and CloseComplete.
func (t *Tracker) completion(out []byte, u *Unit, typ byte, frame, body []byte) ([]byte, error) {
	if typ == 'C' && t.sticky && t.afterReset(u) {
		t.noteTag(body)
	}
	switch u.Kind {
	case Query:
		if typ != 'C' && typ != 'I' {
			return out, fmt.Errorf("%w: %q inside a simple query", ErrDesync, typ)
		}
		own := t.own(u)
		t.cmpl++
		if own {
			return out, nil
		}
		return append(out, frame...), nil
	case Execute:
		if typ != 'C' && typ != 'I' && typ != 's' {
			return out, fmt.Errorf("%w: %q answering Execute", ErrDesync, typ)
		}
	case Parse:
		if typ != '1' {
			return out, fmt.Errorf("%w: %q answering Parse", ErrDesync, typ)
		}
	case Bind:
		if typ != '2' {
			return out, fmt.Errorf("%w: %q answering Bind", ErrDesync, typ)
		}
	case Close:
		if typ != '3' {
			return out, fmt.Errorf("%w: %q answering Close", ErrDesync, typ)
		}
	default:
		return out, fmt.Errorf("%w: %q answering %s", ErrDesync, typ, u.Kind)
	}
	if u.Own == OwnClient {
		out = append(out, frame...)
	}
	t.finish(u, nil, 0)
	return t.popUnit(out), nil
}

// afterReset reports whether what the head unit completes now comes at or
// after the start of the hand-over reset awaiting its commit.
func (t *Tracker) afterReset(u *Unit) bool {
	return u.seq > t.stickySeq || (u.seq == t.stickySeq && (u.Kind != Query || t.cmpl >= t.stickyCmpl))
}

// noteTag watches the command tags of the transaction that carries the
// hand-over reset: a ROLLBACK (or a PREPARE TRANSACTION, which takes the
// transaction away) may undo it; a COMMIT confirms it.
func (t *Tracker) noteTag(body []byte) {
	tag, _, _ := bytes.Cut(body, []byte{0})
	switch {
	case bytes.Equal(tag, []byte("COMMIT")):
		if !t.doubt {
			t.sticky = false
		}
	case bytes.Equal(tag, []byte("ROLLBACK")), bytes.HasPrefix(tag, []byte("PREPARE TRANSACTION")):
		t.doubt = true
	}
}

// serverError handles an ErrorResponse.
func (t *Tracker) serverError(out []byte, u *Unit, body []byte) ([]byte, error) {
	var e pgproto3.ErrorResponse
	if err := e.Decode(body); err != nil {
		return out, fmt.Errorf("%w: malformed ErrorResponse: %v", ErrDesync, err)
	}
	if e.Severity == wire.SeverityFatal || e.Severity == "PANIC" {
		return out, fmt.Errorf("%w: %s (SQLSTATE %s)", ErrServerFatal, e.Message, e.Code)
	}
	if t.sticky && u.seq >= t.stickySeq {
		t.doubt = true
	}
	werr := &wire.Error{Severity: e.Severity, Code: e.Code, Message: e.Message, Detail: e.Detail, Hint: e.Hint}
	t.errored = true
	var err error
	switch {
	case u.Rewrite != nil:
		out = wire.AppendError(out, u.Rewrite)
	case u.Own == OwnMaint:
		// pgtoken's own upkeep: the session hears of it in the Done.
	case u.Kind == Query && u.NoPosition:
		e.Position = 0
		out, err = appendMsg(out, &e)
	case u.Kind == Query && e.Position > 0:
		// A position says whose text failed (a syntax error fails the
		// whole string before any statement runs).
		if p, ok := u.mapPosition(int(e.Position)); ok {
			e.Position = int32(p)
		} else {
			e.Position = 0
		}
		out, err = appendMsg(out, &e)
	case u.Kind == Query && u.injected() || u.Own == OwnPrelude:
		// pgtoken's part failed: the client sees why, and nothing of its
		// own statements runs (the server skips the rest).
		out, err = appendMsg(out, &e)
	default:
		out = append(out, 'E', 0, 0, 0, 0)
		at := len(out) - 5
		out = append(out, body...)
		putLen(out[at:])
	}
	if err != nil {
		return out, err
	}
	if u.Kind == Query || u.Kind == Func || u.Kind == Sync {
		// The rest of the query is skipped, or the batch's commit at
		// Sync failed (a deferred constraint): ReadyForQuery follows.
		if u.Kind != Sync {
			t.finish(u, werr, 0)
		}
		return out, nil
	}
	t.finish(u, werr, 0)
	// Extended protocol: the server now ignores everything until Sync,
	// a Query or FunctionCall included (it gets no answer at all), and
	// pgtoken's own answers to the skipped messages are not given either.
	failedOwn := u.Own != OwnClient
	t.q.pop()
	t.cmpl, t.errored = 0, false
	for t.q.len() > 0 && t.q.peek().Kind != Sync {
		v := t.q.peek()
		if t.sticky && v.seq >= t.stickySeq {
			t.doubt = true // the reset itself was skipped
		}
		if v.syncPoint() {
			t.unsync(v)
			if failedOwn && v.Own == OwnClient && (v.Kind == Query || v.Kind == Func) {
				// The client's call never runs because pgtoken's own
				// message failed: pgtoken ends the skipping with a Sync
				// of its own, whose ReadyForQuery answers the call.
				t.syncOwed = true
			}
		}
		t.finish(v, ErrSkipped, 0)
		t.q.pop()
	}
	if t.q.len() == 0 {
		t.skipping = true
	}
	return out, nil
}

// readyForQuery handles ReadyForQuery: the end of a Query, a Sync or a
// FunctionCall.
func (t *Tracker) readyForQuery(out []byte, u *Unit, body []byte) ([]byte, error) {
	if len(body) != 1 || !u.syncPoint() || u.Kind == Local {
		return out, fmt.Errorf("%w: ReadyForQuery while expecting %s", ErrDesync, u.Kind)
	}
	st := body[0]
	if st != 'I' && st != 'T' && st != 'E' {
		return out, fmt.Errorf("%w: ReadyForQuery status %q", ErrDesync, st)
	}
	t.status = st
	t.unsync(u)
	t.answered++
	if t.sticky && u.seq >= t.stickySeq {
		switch {
		case st == 'I' && !t.doubt:
			t.sticky = false
		case st == 'I':
			// The transaction that carried the reset may have rolled
			// back: whatever it removed may be back.
			t.sticky, t.reset = false, true
		}
	}
	if u.Own == OwnClient {
		if !t.errored {
			out = append(out, u.Answer...)
			out = append(out, u.Append...)
		}
		r := wire.ReadyForQuery(st)
		out = append(out, r[:]...)
	}
	t.finish(u, nil, st)
	return t.popUnit(out), nil
}

// popUnit removes the head unit and gives the local answers queued behind
// it, so they reach the client in order.
func (t *Tracker) popUnit(out []byte) []byte {
	if u := t.q.peek(); u != nil {
		t.finish(u, nil, 0)
	}
	t.q.pop()
	t.cmpl, t.errored = 0, false
	for {
		u := t.q.peek()
		if u == nil || u.Kind != Local {
			return out
		}
		out = append(out, u.Bytes...)
		if u.RFQ {
			r := wire.ReadyForQuery(t.localStatus())
			out = append(out, r[:]...)
			t.unsync(u)
		}
		t.finish(u, nil, 0)
		t.q.pop()
	}
}

// relayNotice relays a NoticeResponse of a Query whose text pgtoken
// changed, mapping its position back to the client's text.
func (t *Tracker) relayNotice(out []byte, u *Unit, body []byte) ([]byte, error) {
	var nr pgproto3.NoticeResponse
	if err := nr.Decode(body); err != nil {
		return out, fmt.Errorf("%w: malformed NoticeResponse: %v", ErrDesync, err)
	}
	if nr.Position > 0 {
		if p, ok := u.mapPosition(int(nr.Position)); ok {
			nr.Position = int32(p)
		} else {
			nr.Position = 0
		}
	}
	return appendMsg(out, &nr)
}

// Lost handles the loss of the server connection: every outstanding answer
// becomes err, in the shape the client expects (one error per batch or
// Query, a ReadyForQuery for each sync point), and the tracker detaches.
// txLost reports that the client sat inside a transaction with nothing in
// flight: its next statement must fail, or it would run outside the
// transaction it believes it is in. batchLost: the client was in the middle
// of a batch, whose rest must be dropped until its Sync.
func (t *Tracker) Lost(out []byte, err *wire.Error) (_ []byte, txLost, batchLost bool) {
	sent := t.errored || t.skipping
	told := false // a ReadyForQuery 'I' told the client its transaction is over
	for t.q.len() > 0 {
		u := *t.q.peek()
		t.q.pop()
		uerr := err
		switch {
		case u.Kind == Local:
			// pgtoken's own answer to a later message is still given,
			// unless it would have been skipped after this batch's error;
			// one that ends a Query or batch is always given.
			if !sent || u.RFQ {
				out = append(out, u.Bytes...)
				uerr = nil
			}
			if u.RFQ {
				r := wire.ReadyForQuery('I')
				out = append(out, r[:]...)
				sent, told = false, true
			}
		case u.Own == OwnMaint:
		case u.syncPoint():
			if !sent {
				out = wire.AppendError(out, err)
			}
			r := wire.ReadyForQuery('I')
			out = append(out, r[:]...)
			sent, told = false, true
		default:
			if !sent {
				out = wire.AppendError(out, err)
				sent = true
			}
		}
		t.finish(&u, uerr, 0)
	}
	t.syncs, t.clients, t.barriers = 0, 0, 0
	if t.inBatch && !sent {
		out = wire.AppendError(out, err)
	}
	batchLost = t.inBatch
	txLost = t.status != 'I' && !sent && !told && !t.inBatch
	t.Detach(err)
	t.drop = batchLost
	return out, txLost, batchLost
}

// appendMsg encodes a pgproto3 message onto out.
func appendMsg(out []byte, m interface{ Encode([]byte) ([]byte, error) }) ([]byte, error) {
	b, err := m.Encode(out)
	if err != nil {
		return out, fmt.Errorf("encoding a message for the client: %w", err)
	}
	return b, nil
}

func putLen(msg []byte) {
	n := uint32(len(msg) - 1)
	msg[1], msg[2], msg[3], msg[4] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
}

// unsync counts a sync-point unit as answered (or skipped).
func (t *Tracker) unsync(u *Unit) {
	t.syncs--
	if u.Own != OwnMaint {
		t.clients--
	}
}
