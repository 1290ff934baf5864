package session

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/session/sqlscan"
	"github.com/pgtoken/pgtoken/session/tracker"
	"github.com/pgtoken/pgtoken/wire"
)

// run is the client goroutine: it reads the client until it leaves.
func (s *Session) run() error {
	s.lastActive = time.Now()
	for {
		if s.cr.Buffered() == 0 {
			if err := s.endBatch(); err != nil {
				return err
			}
			if err := s.checkTokenLifetime(); err != nil {
				return err
			}
			_ = s.nc.SetReadDeadline(s.idleDeadline(time.Now()))
		}
		typ, n, err := s.cr.Next()
		if err != nil {
			if goOn, err := s.idleTimeout(err); !goOn {
				return err
			}
			continue
		}
		_ = s.nc.SetReadDeadline(time.Time{})
		s.lastActive = time.Now()
		if err := s.dispatch(typ, n); err != nil {
			return err
		}
	}
}

// dispatch handles one client message. A returned error ends the session
// (it is sent to the client first when it is a wire.Error).
func (s *Session) dispatch(typ byte, n int) error {
	switch typ {
	case 'd', 'c', 'f':
		return s.onCopy(n)
	case 'X':
		return io.EOF
	}
	frame, err := s.cr.Frame()
	if err != nil {
		if errors.Is(err, wire.ErrMessageTooLarge) {
			return s.tooLarge(typ, n)
		}
		return err
	}
	switch typ {
	case 'Q', 'S', 'F':
		s.syncPoints++
	}
	switch typ {
	case 'Q':
		return s.onQuery(frame)
	case 'P', 'B', 'D', 'E', 'C', 'H', 'S':
		return s.onExtended(typ, frame)
	case 'F':
		return s.onFunctionCall(frame)
	}
	return wire.Fatalf(wire.CodeProtocolViolation, "invalid frontend message type %q", typ)
}

// tooLarge refuses a message larger than the limit: its bytes are skipped
// and the client gets an error, as after any failed statement.
func (s *Session) tooLarge(typ byte, n int) error {
	if err := s.cr.Skip(); err != nil {
		return err
	}
	e := wire.Errorf(wire.CodeProgramLimitExceeded, "message of %d bytes exceeds pgtoken's limit of %d bytes", n, s.srv.cfg.MaxMessage)
	switch typ {
	case 'Q':
		return s.refuse(e, true)
	case 'P', 'B', 'D', 'E', 'C':
		return s.refuse(e, false)
	}
	return wire.Fatalf(wire.CodeProgramLimitExceeded, "message of %d bytes exceeds pgtoken's limit", n)
}

// readError turns a failed client read into the session's end.
func (s *Session) readError(err error) error {
	if errors.Is(err, wire.ErrBadLength) {
		return wire.Fatalf(wire.CodeProtocolViolation, "invalid message length")
	}
	return err
}

// idleDeadline is when the client's read must wake up to check its idle
// timeouts, or zero for none: pool.idle_transaction_timeout while it holds
// a server connection (inside a transaction from its last message or the
// last answer on, whichever came later; otherwise a timeout from now, to
// look again), and pool.client_idle_timeout from its last message.
func (s *Session) idleDeadline(now time.Time) time.Time {
	var at time.Time
	earliest := func(t time.Time) {
		if at.IsZero() || t.Before(at) {
			at = t
		}
	}
	s.mu.Lock()
	if t := s.srv.cfg.IdleTransactionTimeout; t > 0 && s.srv.cfg.Mode != ModeSession {
		switch {
		case s.conn == nil:
		case s.idleInTransaction():
			earliest(s.idleFrom().Add(t))
		default:
			earliest(now.Add(t))
		}
	}
	if t := s.srv.ClientTimeouts().Idle; t > 0 {
		d := s.lastActive.Add(t)
		if !d.After(now) {
			d = now.Add(t) // not idle between transactions yet: look again later
		}
		earliest(d)
	}
	s.mu.Unlock()
	return at
}

// idleTimeout decides about a failed client read: the session ends (with
// the error to send) unless it was a deadline passing before any idle
// timeout is really due, when reading goes on.
func (s *Session) idleTimeout(err error) (goOn bool, _ error) {
	var ne interface{ Timeout() bool }
	if !errors.As(err, &ne) || !ne.Timeout() {
		return false, s.readError(err)
	}
	now := time.Now()
	s.mu.Lock()
	inTx := s.idleInTransaction()
	between := s.between()
	idleFrom := s.idleFrom()
	s.mu.Unlock()
	if t := s.srv.cfg.IdleTransactionTimeout; t > 0 && s.srv.cfg.Mode != ModeSession && inTx && now.Sub(idleFrom) >= t {
		return false, wire.Fatalf(wire.CodeIdleInTransactionTimeout,
			"terminating connection due to idle-in-transaction timeout (pgtoken idle_transaction_timeout %s)", t)
	}
	if t := s.srv.ClientTimeouts().Idle; t > 0 && between && now.Sub(s.lastActive) >= t {
		return false, wire.Fatalf(codeIdleSessionTimeout,
			"terminating connection due to idle-session timeout (pgtoken client_idle_timeout %s)", t)
	}
	return true, nil
}

// between reports whether the client is between transactions with
// nothing in flight (under mu).
func (s *Session) between() bool {
	return s.conn == nil && !s.t.Dropping() || !s.t.InTransaction() && s.t.Quiet()
}

// codeIdleSessionTimeout is SQLSTATE 57P05.
const codeIdleSessionTimeout = "57P05"

// idleInTransaction reports whether the session holds a server connection
// inside a transaction (or a batch) with nothing in flight (under mu).
func (s *Session) idleInTransaction() bool {
	return s.conn != nil && s.t.Settled() && (s.t.Status() != 'I' || s.t.InBatch())
}

// idleFrom is when the client went idle: its last message or the last
// answer, whichever came later (under mu).
func (s *Session) idleFrom() time.Time {
	if s.idleSince.After(s.lastActive) {
		return s.idleSince
	}
	return s.lastActive
}

// checkTokenLifetime ends a session whose token has expired once it is
// between transactions; a transaction in flight completes (within
// jwt.leeway, see expire).
func (s *Session) checkTokenLifetime() error {
	if !s.expired() {
		return nil
	}
	s.mu.Lock()
	between := !s.t.InTransaction() && s.t.Quiet()
	s.mu.Unlock()
	if !between {
		return nil
	}
	return errTokenExpired()
}

func errTokenExpired() *wire.Error {
	return wire.Fatalf(wire.CodeInvalidAuthorization, "token expired")
}

// expired reports whether the session's token is past its exp.
func (s *Session) expired() bool {
	exp := s.ident.ExpiresAt
	return !exp.IsZero() && !time.Now().Before(exp)
}

// text views a byte slice as a string without copying; the string must not
// outlive the bytes (the current client message).
func text(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// claim returns the server connection this client's next message goes to,
// taking one from the pool when none is attached. On success the client
// goroutine owns conn.W until endBatch (writing is set); mu is not held.
func (s *Session) claim() (*pool.Conn, error) {
	s.mu.Lock()
	s.waitSyncing()
	if c := s.conn; c != nil {
		s.writing = true
		if !s.t.InTransaction() {
			s.presetTxDefaults(c) // the client's SET, or session mode's first use
		}
		s.mu.Unlock()
		s.wconn = c
		return c, nil
	}
	if s.t.Dropping() {
		s.mu.Unlock()
		return nil, errLostBatch
	}
	s.mu.Unlock()
	for {
		c, err := s.acquire()
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		if !s.attach(c) {
			// The server closed it as it left the pool: take another.
			s.mu.Unlock()
			s.pool.Discard(c)
			continue
		}
		s.writing = true
		fence := c.CancelSent && c.Owner != uint64(s.id)
		c.CancelSent = false
		if fence {
			// A cancel request for another client may still be on its
			// way to this server process: let it hit a statement of
			// pgtoken's own.
			s.t.Push(tracker.Unit{Kind: tracker.Query, Own: tracker.OwnMaint})
			c.W.Query("SELECT 1")
		}
		s.closeStale(c)
		s.presetTxDefaults(c)
		s.mu.Unlock()
		s.wconn = c
		return c, nil
	}
}

// acquire waits for a server connection; a cancel request from the client
// ends the wait with 57014, as Postgres cancels a statement.
func (s *Session) acquire() (*pool.Conn, error) {
	ctx, cancel := context.WithCancel(s.ctx)
	s.mu.Lock()
	s.acquiring = cancel
	s.mu.Unlock()
	c, err := s.srv.acquire(ctx, s.pool)
	s.mu.Lock()
	s.acquiring = nil
	s.mu.Unlock()
	cancelled := ctx.Err() != nil && s.ctx.Err() == nil
	cancel()
	if err != nil && cancelled {
		return nil, errQueryCanceled()
	}
	return c, err
}

func errQueryCanceled() *wire.Error {
	return wire.Errorf("57014", "canceling statement due to user request")
}

// errLostBatch is claim's answer while the client is still sending the rest
// of a batch that failed locally or whose server connection broke.
var errLostBatch = errors.New("batch lost with its server connection")

// attach makes c this session's server connection (under mu). It fails
// when c broke before the session was attached: its reader goroutine may
// have ended without seeing the session, so nobody would ever answer for
// it. (The reader marks the conn dead before it looks for a session to
// tell, and attach looks after attaching, so one of the two always sees
// the other.)
func (s *Session) attach(c *pool.Conn) bool {
	c.Attach(s)
	if c.Dead() {
		c.Detach() // a ServerGone the reader may still send finds s.conn != c
		return false
	}
	s.conn = c
	s.t.Attach(c.Owner != 0 && c.Owner != uint64(s.id))
	s.unnamedPortalLive = false
	s.ownConn = false
	return true
}

// endBatch is called by the client goroutine before it blocks on the client:
// it writes what it queued for the server, lets the conn go if the
// transaction is over, and flushes the client output.
func (s *Session) endBatch() error {
	if c := s.wconn; c != nil {
		s.wconn = nil
		s.flushServer(c)
		s.mu.Lock()
		for s.queueOwedSync(c) {
			// An answer that arrived meanwhile says pgtoken owes a Sync
			// (the reader goroutine left it to the writer).
			s.mu.Unlock()
			s.flushServer(c)
			s.mu.Lock()
		}
		s.writing = false
		if s.conn == c {
			s.maybeRelease()
		}
		s.mu.Unlock()
	}
	return s.flushClient()
}

// flushServer writes what the client goroutine queued for c.
func (s *Session) flushServer(c *pool.Conn) {
	if err := c.Flush(); err != nil {
		s.log.Debug("write to server failed", zap.Error(err))
	}
}

// waitFor flushes c and the client output and waits until ready (under
// mu) reports true or c is gone; mu is held on return. A Sync that pgtoken
// owes is sent meanwhile.
func (s *Session) waitFor(c *pool.Conn, ready func() bool) {
	s.mu.Unlock()
	s.flushServer(c)
	_ = s.flushClient()
	s.mu.Lock()
	for s.conn == c && !ready() {
		if s.queueOwedSync(c) {
			s.mu.Unlock()
			s.flushServer(c)
			s.mu.Lock()
			continue
		}
		s.cond.Wait()
	}
}

// queueOwedSync queues on c the Sync pgtoken owes the server, if it owes
// one (tracker.SyncOwed): a message of pgtoken's failed in front of a
// client's Query or FunctionCall, which the server then skips, and only a
// Sync's ReadyForQuery answers the client. The caller may write c (and
// flushes it); under mu.
func (s *Session) queueOwedSync(c *pool.Conn) bool {
	if s.conn != c || !s.t.SyncOwed() {
		return false
	}
	s.t.Push(tracker.Unit{Kind: tracker.Sync})
	c.W.Sync()
	return true
}

// waitSyncing waits while the reader goroutine writes an owed Sync (under
// mu): the client goroutine writes to the conn only after it.
func (s *Session) waitSyncing() {
	for s.syncing {
		s.cond.Wait()
	}
}

// settled reports whether the answers the tracker waits for are in.
func (s *Session) settled() bool { return s.t.Settled() && !s.t.SyncOwed() }

// unbarred reports whether no barrier unit is unanswered.
func (s *Session) unbarred() bool { return !s.t.Barred() && !s.t.SyncOwed() }

// onQuery handles a simple Query.
func (s *Session) onQuery(frame []byte) error {
	s.pool.NoteQuery() // metrics and SHOW STATS: one atomic add
	q, ok := wire.QueryText(frame[5:])
	if !ok {
		return wire.Fatalf(wire.CodeProtocolViolation, "malformed Query message")
	}
	s.mu.Lock()
	dropping := s.t.Dropping()
	s.mu.Unlock()
	if dropping {
		return nil // inside a failed batch Postgres ignores it until Sync
	}
	sql := text(q)
	s.scan = sqlscan.Split(sql, s.scan[:0])
	stmts := s.scan
	if len(stmts) == 0 {
		return s.localAnswer(wire.MsgEmptyQueryResponse, true)
	}
	if done, err := s.ownStatement(sql, stmts); done {
		return err
	}
	if v := s.srv.cfg.Policy.Check(sql, stmts); v != nil {
		s.srv.obs.GuardRejected()
		return s.refuse(guardError(v.Reason), true)
	}
	if e := s.notInTransactionMode(stmts); e != nil {
		return s.refuse(e, true)
	}
	if err := checkCuts(sql, stmts); err != nil {
		return s.refuse(err, true)
	}
	if s.takeTxLost() {
		return s.localError(errTxLost(), true)
	}
	c, err := s.claim()
	if err != nil {
		return s.claimFailed(err, true)
	}
	s.mu.Lock()
	var r sqlRewrite
	if k := stmts[0].Kind; len(stmts) == 1 && (k == sqlscan.KindPrepare || k == sqlscan.KindExecute) && !s.transparent() {
		var werr *wire.Error
		if r, werr = s.sqlPrepared(c, sql, &stmts[0]); werr != nil {
			s.mu.Unlock()
			return s.refuse(werr, true)
		}
		if r.local {
			s.answer(wire.AppendCommandComplete(nil, "PREPARE"), true, 0, nil)
			s.mu.Unlock()
			return nil
		}
	}
	var step tracker.Step
	for {
		if s.conn != c {
			s.mu.Unlock()
			return s.localError(errLost(), true)
		}
		step, s.cuts = s.t.Query(stmts, s.cuts[:0])
		if !step.Wait {
			break
		}
		s.waitFor(c, s.settled)
	}
	if step.Prelude != tracker.NoPrelude && !step.Bare && s.expired() { // a new transaction: an open one gets the leeway
		s.mu.Unlock()
		return errTokenExpired() // a new transaction under an expired token
	}
	s.newUnit(step)
	s.closeStale(c)
	if step.ResetAhead {
		s.resetAhead(c)
	}
	if step.Prelude == tracker.SessionPrelude || step.Prelude == tracker.LocalPrelude && step.Fresh && len(stmts) == 1 && stmts[0].Kind == sqlscan.KindNoTxBlock {
		// A procedure alone in a Query (also in the middle of a batch,
		// whose transaction the identity's own Query then ends): the
		// identity is committed for the session before it runs, so a
		// procedure that rolls back falls back to it.
		return s.outsideTransaction(c, frame, step) // releases mu
	}
	u := tracker.Unit{Kind: tracker.Query}
	if r.stmt.st != nil {
		u.NoPosition = true
		switch {
		case r.exec == "":
			// PREPARE: the prelude goes as bound statements, in the same
			// transaction, so that the stored statement text holds nothing
			// but the client's statement (pg_prepared_statements shows
			// the whole Query text).
			s.extendedPrelude(c, step, false)
			u.Purpose, u.Ref, u.Barrier = pSQLPrepare, r.stmt, step.Prelude != tracker.NoPrelude
			beginQuery(c)
			s.t.Push(u)
			c.W.Query(r.prepare)
			if u.Barrier {
				s.waitFor(c, s.unbarred)
			}
			s.mu.Unlock()
			return nil
		case r.prepare != "":
			// EXECUTE on a conn that lacks the statement: PREPARE it first,
			// in a transaction of its own that has the prelude.
			s.extendedPrelude(c, step, false)
			beginQuery(c)
			s.t.Push(tracker.Unit{Kind: tracker.Query, Own: tracker.OwnPrelude, NoPosition: true, Purpose: pSQLReprepare, Ref: r.stmt})
			c.W.Query(r.prepare)
			u.Barrier = step.Prelude != tracker.NoPrelude
		}
		sql = r.exec
	}
	beginQuery(c)
	// As on a direct connection, a Query drops the unnamed statement, if
	// it runs: one the server skips (after an error in its batch) leaves
	// it. A Bind after it waits for its answer (closeAt: before this
	// Query's sync point).
	if st := s.unnamedStmt; st != nil && u.Purpose == 0 {
		st.closing, st.closeAt = true, s.syncPoints-1
		u.Purpose, u.Ref = pCloseStmt, closeRef{st: st}
	} else {
		s.unnamedStmt = nil
	}
	at := c.W.Begin('Q')
	s.appendQueryText(c, step, sql, stmts, &u)
	c.W.AppendBytes([]byte{0})
	c.W.End(at)
	s.t.Push(u)
	if s.transparent() && deallocatesAll(stmts) {
		// Session mode: the client's DEALLOCATE ALL drops pgtoken's own
		// statements on its connection too; they are parsed again (after
		// a Close, as the DEALLOCATE may not run) before their next use.
		clear(c.Prepared)
	}
	s.noteSettings(sql, stmts)
	s.capturePipelined(c)
	if u.Barrier {
		s.waitFor(c, s.unbarred)
	}
	s.mu.Unlock()
	return nil
}

// newUnit notes, at a Query or the first message of a batch, what starts
// with it (under mu).
func (s *Session) newUnit(step tracker.Step) {
	s.batchGen++
	if step.Fresh {
		clear(s.portals)
		s.unnamedPortalLive = false
	}
}

// checkCuts refuses a Query in which the lexer cannot tell where a
// transaction-ending statement ends, rather than risk a statement running
// without the prelude.
func checkCuts(sql string, stmts []sqlscan.Statement) *wire.Error {
	for i := range stmts {
		st := &stmts[i]
		switch st.Kind {
		case sqlscan.KindCommit, sqlscan.KindRollback, sqlscan.KindPrepareTransaction:
			if terminator(sql, st.End) == -2 {
				return wire.Errorf(wire.CodeSyntaxError, "pgtoken could not tell where a transaction-ending statement ends; send it as a query of its own")
			}
		}
	}
	return nil
}

// terminator returns the offset just past the ';' that ends the statement
// whose last token ends at end, -1 when the text ends first, or -2 when
// something other than whitespace and comments comes first (which the
// lexer's statement boundaries rule out).
func terminator(sql string, end int) int {
	i := skipTrivia(sql, end)
	switch {
	case i >= len(sql):
		return -1
	case sql[i] == ';':
		return i + 1
	}
	return -2
}

// appendQueryText appends the text of a Query: the prelude (with the reset
// and the settings replay when due) in front when the tracker says so,
// the client's text, and the prelude again after each cut. u learns which
// completions and characters are pgtoken's (under mu).
func (s *Session) appendQueryText(c *pool.Conn, step tracker.Step, sql string, stmts []sqlscan.Statement, u *tracker.Unit) {
	// The first prelude carries the hand-over reset and the settings
	// replay when due; those after a cut, the prelude alone (a reset
	// there would undo what the client set in the transactions before).
	var pre string
	var preStmts int
	if step.Prelude != tracker.NoPrelude || len(s.cuts) > 0 {
		pre, preStmts = s.simplePrelude(c, step.Reset)
	}
	chars := 0
	if step.Prelude != tracker.NoPrelude {
		c.W.AppendString(pre)
		u.Segs = append(u.Segs, tracker.Seg{Own: true, N: preStmts})
		u.Cuts = append(u.Cuts, tracker.Range{At: 0, N: len(pre)})
		chars = len(pre)
		pre, preStmts = s.pre.simple, s.pre.statements
	}
	last, done := 0, 0
	for n, i := range s.cuts {
		if n == 1 || (n == 0 && step.Prelude != tracker.NoPrelude) {
			pre, preStmts = s.pre.simple, s.pre.statements
		}
		if n == 0 && step.Prelude == tracker.NoPrelude {
			u.ResetAt = i + 1 // the client's completions before the first prelude
		}
		at := terminator(sql, stmts[i].End)
		inject := pre
		if at == -1 {
			at = len(sql)
			inject = ";" + pre
		}
		c.W.AppendString(sql[last:at])
		c.W.AppendString(inject)
		chars += utf8.RuneCountInString(sql[last:at])
		u.Segs = append(u.Segs, tracker.Seg{N: i + 1 - done}, tracker.Seg{Own: true, N: preStmts})
		u.Cuts = append(u.Cuts, tracker.Range{At: chars, N: len(inject)})
		chars += len(inject)
		last, done = at, i+1
	}
	c.W.AppendString(sql[last:])
	if len(u.Segs) > 0 {
		u.Segs = append(u.Segs, tracker.Seg{N: len(stmts) - done})
	}
}

// noteSettings remembers that the client changed session-level settings,
// so they are read back once the transaction may have ended (under mu).
func (s *Session) noteSettings(sql string, stmts []sqlscan.Statement) {
	for i := range stmts {
		st := &stmts[i]
		switch {
		case st.Kind == sqlscan.KindSet || st.Kind == sqlscan.KindReset:
			s.settingsChanged(true)
			s.noteCustom(st.Name)
		case st.Flags&sqlscan.FlagSessionSetConfig != 0:
			s.settingsChanged(true)
			for _, n := range sqlscan.SetConfigNames(sql, st) {
				s.noteCustom(n)
			}
		}
	}
}

// noteCustom remembers a placeholder setting's name (under mu).
func (s *Session) noteCustom(name string) {
	if !strings.Contains(name, ".") {
		return
	}
	if s.custom == nil {
		s.custom = map[string]bool{}
	}
	s.custom[strings.ToLower(name)] = true // ToLower copies: name may alias the read buffer
}

// notInTransactionMode refuses what cannot work when transactions of one
// client run on different server connections.
func (s *Session) notInTransactionMode(stmts []sqlscan.Statement) *wire.Error {
	if s.srv.cfg.Mode != ModeTransaction {
		return nil
	}
	for i := range stmts {
		st := &stmts[i]
		var what string
		switch {
		case st.Kind == sqlscan.KindListen:
			what = "LISTEN"
		case st.Flags&sqlscan.FlagAdvisoryLock != 0:
			what = "session-level advisory locks"
		case st.Flags&sqlscan.FlagWithHold != 0:
			what = "cursors WITH HOLD"
		case st.Flags&sqlscan.FlagTempObject != 0:
			what = "temporary objects that outlive the transaction"
		case (st.Kind == sqlscan.KindPrepare || st.Kind == sqlscan.KindExecute) && len(stmts) > 1:
			return wire.Errorf(wire.CodeFeatureNotSupported,
				"pgtoken runs SQL-level PREPARE and EXECUTE only as a query of their own")
		default:
			continue
		}
		return wire.Errorf(wire.CodeFeatureNotSupported,
			"%s cannot work in pgtoken's transaction pooling mode", what).
			WithHint("Each transaction may run on a different server connection. Use pool.mode: session for a database that needs this.")
	}
	return nil
}

// takeTxLost reports (once) that the server connection broke while the
// client sat inside a transaction.
func (s *Session) takeTxLost() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	lost := s.txLost
	s.txLost = false
	return lost
}

// errTxLost is what the client hears about a transaction that vanished
// with its server connection.
func errTxLost() *wire.Error {
	return wire.Errorf(wire.CodeConnectionFailure, "pgtoken: the server connection was lost; the open transaction was rolled back").
		WithHint("Start the transaction again.")
}

// errLost is what the client hears about a message whose server
// connection broke before it was sent.
func errLost() *wire.Error {
	return wire.Errorf(wire.CodeConnectionFailure, "pgtoken: the server connection was lost; the statement did not run").
		WithHint("Retry the transaction; pgtoken opens a new server connection for it.")
}

// guardError is the error for a statement the guard refused.
func guardError(reason string) *wire.Error {
	return wire.Errorf(wire.CodeInsufficientPrivilege, "%s", reason)
}

// acquireError turns a failure to get a server connection into what the
// client sees.
func acquireError(err error) error {
	var we *wire.Error
	switch {
	case errors.As(err, &we):
		return we
	case errors.Is(err, pool.ErrWaitTimeout):
		return wire.Errorf(wire.CodeTooManyConnections, "pgtoken: %v", err).
			WithHint("All server connections were busy; retry, or raise pool.size or pool.wait_timeout.")
	case errors.Is(err, pool.ErrClosed):
		return wire.Fatalf(wire.CodeAdminShutdown, "pgtoken is shutting down")
	}
	return err
}

// claimFailed answers a message for which no server connection could be
// had.
func (s *Session) claimFailed(err error, simple bool) error {
	if errors.Is(err, errLostBatch) {
		return nil // dropped with the rest of its batch
	}
	return s.localError(acquireError(err), simple)
}

// refuse answers a refused Query (simple) or extended-protocol message.
// When the client has no transaction or batch open on a server connection
// the answer is local; otherwise a harmless statement that fails to parse
// goes to the server, so the transaction (or batch) ends up failed exactly
// as after any error, and the server's error is replaced with the refusal.
func (s *Session) refuse(e *wire.Error, simple bool) error {
	s.mu.Lock()
	onServer := s.conn != nil && (s.t.InTransaction() || !s.t.Quiet())
	s.mu.Unlock()
	if !onServer {
		return s.localError(e, simple)
	}
	c, err := s.claim()
	if err != nil {
		return s.claimFailed(err, simple)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.conn != c {
			s.mu.Unlock()
			err := s.localError(e, simple)
			s.mu.Lock()
			return err
		}
		if !s.t.Failing(simple).Wait {
			break
		}
		s.waitFor(c, s.settled)
	}
	if simple {
		beginQuery(c)
		s.t.Push(tracker.Unit{Kind: tracker.Query, Rewrite: e})
		c.W.Query(refusedText)
		return nil
	}
	s.t.Push(tracker.Unit{Kind: tracker.Parse, Rewrite: e})
	c.W.Parse(refusedName, refusedText, nil)
	return nil
}

// localError answers an error without the server. For a simple Query the
// answer ends with ReadyForQuery; in the extended protocol the rest of the
// batch is dropped until Sync, as Postgres does. A FATAL error ends the
// session.
func (s *Session) localError(err error, simple bool) error {
	if wire.IsFatal(err) {
		return err
	}
	if we := (*wire.Error)(nil); !errors.As(err, &we) {
		s.log.Error("internal error", zap.Error(err))
	}
	b := wire.AppendError(nil, err)
	s.mu.Lock()
	if !simple {
		s.t.DropBatch()
	}
	s.answer(b, simple, 0, nil)
	s.mu.Unlock()
	return nil
}

// localAnswer sends bytes pgtoken answers itself, in order with whatever
// the server still owes the client; rfq adds a ReadyForQuery.
func (s *Session) localAnswer(b []byte, rfq bool) error {
	s.mu.Lock()
	s.answer(b, rfq, 0, nil)
	s.mu.Unlock()
	return nil
}

// onCopy forwards COPY data from the client to the server in a COPY; outside
// one (after the server ended it with an error, say) Postgres ignores these
// messages, and so does pgtoken.
func (s *Session) onCopy(n int) error {
	s.mu.Lock()
	s.waitSyncing()
	c := s.conn
	if c == nil {
		s.mu.Unlock()
		return s.cr.Skip()
	}
	s.writing = true
	s.mu.Unlock()
	s.wconn = c
	if n > streamThreshold {
		return toServer(c, s.cr.Stream(c.W))
	}
	f, err := s.cr.Frame()
	if err != nil {
		return err
	}
	_, err = c.W.Write(f)
	return toServer(c, err)
}

// toServer keeps a failed write to the server connection from ending the
// session: the connection is closed, its reader goroutine reports the loss
// (ServerGone) and the client hears 08006 for what was in flight. Other
// errors (reading the client) pass.
func toServer(c *pool.Conn, err error) error {
	if err != nil && c.W.Err() != nil {
		c.Close()
		return nil
	}
	return err
}

// onFunctionCall handles the fast-path function call. It could call any
// function by OID, set_config included, so only the large-object functions
// libpq uses are let through.
func (s *Session) onFunctionCall(frame []byte) error {
	body := frame[5:]
	if len(body) < 4 {
		return wire.Fatalf(wire.CodeProtocolViolation, "malformed FunctionCall message")
	}
	oid := uint32(body[0])<<24 | uint32(body[1])<<16 | uint32(body[2])<<8 | uint32(body[3])
	s.mu.Lock()
	dropping := s.t.Dropping()
	s.mu.Unlock()
	if dropping {
		return nil // inside a failed batch Postgres ignores it until Sync, refused or not
	}
	if !largeObjectFunctions[oid] {
		return s.refuse(wire.Errorf(wire.CodeInsufficientPrivilege,
			"pgtoken allows the function-call protocol only for large-object functions (OID %d refused)", oid), true)
	}
	if s.takeTxLost() {
		return s.localError(errTxLost(), true)
	}
	c, err := s.claim()
	if err != nil {
		return s.claimFailed(err, true)
	}
	s.mu.Lock()
	var step tracker.Step
	for {
		if s.conn != c {
			s.mu.Unlock()
			return s.localError(errLost(), true)
		}
		if step = s.t.FuncCall(); !step.Wait {
			break
		}
		s.waitFor(c, s.settled)
	}
	if step.Prelude != tracker.NoPrelude && !step.Bare && s.expired() { // a new transaction: an open one gets the leeway
		s.mu.Unlock()
		return errTokenExpired()
	}
	s.newUnit(step)
	s.extendedPrelude(c, step, false)
	s.t.Push(tracker.Unit{Kind: tracker.Func, Barrier: step.Barrier})
	c.W.AppendBytes(frame)
	s.capturePipelined(c)
	if step.Barrier {
		s.waitFor(c, s.unbarred)
	}
	s.mu.Unlock()
	return nil
}

// largeObjectFunctions are the OIDs of lo_open, lo_close, loread, lowrite,
// lo_lseek, lo_creat, lo_tell, lo_unlink, lo_truncate, lo_create,
// lo_lseek64, lo_tell64 and lo_truncate64 (fixed in pg_proc.dat).
var largeObjectFunctions = map[uint32]bool{
	952: true, 953: true, 954: true, 955: true, 956: true, 957: true, 958: true,
	964: true, 1004: true, 715: true, 3170: true, 3171: true, 3172: true,
}

// refusedText is what goes to the server in place of a statement pgtoken
// refused inside a transaction: it fails to parse, so the transaction
// fails as after any error, and runs nothing.
const refusedText = "pgtoken refused this statement"

// refusedName names the Parse of refusedText: a name of pgtoken's, so that
// the failing Parse leaves the client's unnamed statement alone (a Parse of
// the unnamed statement drops it first, even one that fails).
const refusedName = "pgtoken_refused"

// beginQuery notes that a simple Query is about to go to c: Postgres drops
// the unnamed statement on every Query.
func beginQuery(c *pool.Conn) {
	c.UnnamedOwner = 0
}
