package session

import (
	"errors"
	"io"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/session/sqlscan"
	"github.com/pgtoken/pgtoken/wire"
)

// run is the client goroutine: it reads the client until it leaves.
func (s *Session) run() error {
	for {
		if s.cr.Buffered() == 0 {
			if err := s.endBatch(); err != nil {
				return err
			}
			if err := s.checkTokenLifetime(); err != nil {
				return err
			}
			s.setIdleDeadline()
		}
		typ, n, err := s.cr.Next()
		if err != nil {
			if s.idleWakeup(err) {
				continue
			}
			return s.readError(err)
		}
		_ = s.nc.SetReadDeadline(time.Time{})
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
		return s.onCopy(typ, n)
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
	case 'Q':
		return s.onQuery(frame)
	case 'P', 'B', 'D', 'E', 'C', 'H', 'S':
		return s.onExtended(typ, frame)
	case 'F':
		return s.onFunctionCall(frame)
	default:
		return wire.Fatalf(wire.CodeProtocolViolation, "invalid frontend message type %q", typ)
	}
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
		return s.localError(e, true)
	case 'P', 'B', 'D', 'E', 'C':
		return s.localError(e, false)
	}
	return wire.Fatalf(wire.CodeProgramLimitExceeded, "message of %d bytes exceeds pgtoken's limit", n)
}

// readError turns a failed client read into the session's end.
func (s *Session) readError(err error) error {
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return wire.Fatalf(wire.CodeIdleInTransactionTimeout,
			"terminating connection due to idle-in-transaction timeout (pgtoken idle_transaction_timeout %s)", s.srv.cfg.IdleTransactionTimeout)
	}
	if errors.Is(err, wire.ErrBadLength) {
		return wire.Fatalf(wire.CodeProtocolViolation, "invalid message length")
	}
	return err
}

// setIdleDeadline arms the idle-in-transaction timeout while the client
// holds a server connection. A transaction's answers are usually still in
// flight when the client goroutine goes back to reading, so the deadline
// is armed then too (a timeout from now) and checked when it passes
// (idleWakeup): only a client that has sat idle inside a transaction for
// the whole timeout is cut off.
func (s *Session) setIdleDeadline() {
	t := s.srv.cfg.IdleTransactionTimeout
	if t <= 0 || s.srv.cfg.Mode == ModeSession {
		return
	}
	now := time.Now()
	s.lastActive = now
	var at time.Time
	s.mu.Lock()
	switch {
	case s.conn == nil:
	case s.idleInTransaction():
		at = s.idleFrom().Add(t)
	default:
		at = now.Add(t)
	}
	s.mu.Unlock()
	_ = s.nc.SetReadDeadline(at) // zero: none
}

// idleInTransaction reports whether the session holds a server connection
// inside a transaction with nothing in flight (under mu).
func (s *Session) idleInTransaction() bool {
	return s.conn != nil && s.pending == 0 && s.q.len() == 0 && s.status != 'I'
}

// idleFrom is when the client went idle: its last message or the last
// answer, whichever came later (under mu).
func (s *Session) idleFrom() time.Time {
	if s.idleSince.After(s.lastActive) {
		return s.idleSince
	}
	return s.lastActive
}

// idleWakeup reports whether a failed client read was the idle deadline
// passing while the client is not (or not yet for the whole timeout) idle
// in a transaction: reading then goes on.
func (s *Session) idleWakeup(err error) bool {
	t := s.srv.cfg.IdleTransactionTimeout
	var ne interface{ Timeout() bool }
	if t <= 0 || !errors.As(err, &ne) || !ne.Timeout() {
		return false
	}
	s.mu.Lock()
	expired := s.idleInTransaction() && time.Since(s.idleFrom()) >= t
	s.mu.Unlock()
	return !expired
}

// checkTokenLifetime ends a session whose token has expired once it is
// between transactions; a transaction in flight completes. (claimUnit checks
// again where a transaction starts.)
func (s *Session) checkTokenLifetime() error {
	if !s.expired() {
		return nil
	}
	s.mu.Lock()
	between := s.conn == nil || (s.pending == 0 && s.status == 'I' && !s.midBatch)
	s.mu.Unlock()
	if !between {
		return nil
	}
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

// onQuery handles a simple Query.
func (s *Session) onQuery(frame []byte) error {
	s.pool.NoteQuery() // metrics and SHOW STATS: one atomic add
	body := frame[5:]
	q, ok := wire.QueryText(body)
	if !ok {
		return wire.Fatalf(wire.CodeProtocolViolation, "malformed Query message")
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
	cuts, err := planCuts(sql, stmts, s.cuts[:0])
	if err != nil {
		return s.refuse(err.(*wire.Error), true)
	}
	s.cuts = cuts
	if s.takeTxLost() {
		return s.localError(errTxLost(), true)
	}
	c, err := s.claimUnit()
	if err != nil {
		return s.localError(acquireError(err), true)
	}
	base := s.unitBase
	if base == 'I' && len(stmts) == 1 && stmts[0].Kind == sqlscan.KindNoTxBlock {
		return s.outsideTransaction(c, frame)
	}
	needPrelude := base == 'I'
	u := unit{kind: uQuery}
	if k := stmts[0].Kind; len(stmts) == 1 && (k == sqlscan.KindPrepare || k == sqlscan.KindExecute) {
		r, werr := s.sqlPrepared(c, sql, &stmts[0])
		if werr != nil {
			s.mu.Unlock()
			return s.refuse(werr, true)
		}
		if r.local {
			s.mu.Unlock()
			return s.localAnswer(wire.AppendCommandComplete(nil, "PREPARE"), true)
		}
		sql, cuts, u.done, u.noPosition = r.text, nil, r.done, true
		u.skip = r.own
	}
	beginQuery(c)
	s.unnamedStmt = nil // as on a direct connection: a Query drops it
	w := c.W
	at := w.Begin('Q')
	if needPrelude {
		w.AppendString(s.pre.simple)
		u.skip += s.pre.statements
		u.prefix = len(s.pre.simple)
	}
	s.appendInjected(w, sql, cuts, &u)
	w.AppendBytes([]byte{0})
	w.End(at)
	s.q.push(u)
	s.pending++
	s.noteSettings(stmts)
	s.predicted = predict(base, stmts)
	s.mu.Unlock()
	return nil
}

// claimUnit claims the server connection for a Query or the first message of
// a batch and settles how that unit starts (under mu on success): it waits
// out answers in flight when the transaction status cannot be predicted
// safely, and at a transaction's start brings the connection's settings in
// line with the client's and forgets the portals of the last transaction.
// s.unitBase is the status the unit starts from.
func (s *Session) claimUnit() (*pool.Conn, error) {
	c, _, err := s.claim()
	if err != nil {
		return nil, err
	}
	base, wait := s.baseStatus()
	if wait {
		s.mu.Unlock()
		s.waitQuiet()
		if c, _, err = s.claim(); err != nil {
			return nil, err
		}
		base, _ = s.baseStatus()
	}
	s.batchGen++
	s.unitBase = base
	if base == 'I' && s.expired() {
		// A new transaction under an expired token: the session ends (a
		// transaction in flight was allowed to complete).
		s.mu.Unlock()
		return nil, wire.Fatalf(wire.CodeInvalidAuthorization, "token expired")
	}
	if base == 'I' {
		s.syncParams(c)
		clear(s.portals)
		s.unnamedPortalLive = false
	}
	return c, nil
}

// cut is a place in a Query's text where the prelude goes again: after a
// statement that ends the transaction when more follows it (or when it
// chains a new transaction), since Postgres runs whatever follows a COMMIT
// in the same string in a new transaction, without the settings.
type cut struct {
	at    int  // byte offset in the client's text
	semi  bool // the text ended without ';': one is added before the prelude
	stmts int  // client statements before the cut
}

// planCuts finds the cuts of a Query. It fails when it cannot be sure where
// a statement ends; the query is then refused rather than risk a statement
// running without the prelude.
func planCuts(sql string, stmts []sqlscan.Statement, dst []cut) ([]cut, error) {
	for i := range stmts {
		st := &stmts[i]
		if !txEnds(st.Kind) || (i == len(stmts)-1 && st.Flags&sqlscan.FlagChain == 0) {
			continue
		}
		at := terminator(sql, st.End)
		switch at {
		case -2:
			return nil, wire.Errorf(wire.CodeSyntaxError, "pgtoken could not tell where a transaction-ending statement ends; send it as a query of its own")
		case -1:
			dst = append(dst, cut{at: len(sql), semi: true, stmts: i + 1})
		default:
			dst = append(dst, cut{at: at, stmts: i + 1})
		}
	}
	return dst, nil
}

// appendInjected appends the client's text with the prelude at each cut,
// and records in u which statements and characters are pgtoken's.
func (s *Session) appendInjected(w *wire.Writer, sql string, cuts []cut, u *unit) {
	if len(cuts) == 0 {
		w.AppendString(sql)
		return
	}
	plan := &queryPlan{}
	if u.skip > 0 {
		plan.segs = append(plan.segs, planSeg{own: true, n: u.skip})
		plan.cuts = append(plan.cuts, charRange{at: 0, n: u.prefix})
	}
	last, done, chars := 0, 0, u.prefix
	for _, c := range cuts {
		w.AppendString(sql[last:c.at])
		chars += utf8.RuneCountInString(sql[last:c.at])
		inject := s.pre.simple
		if c.semi {
			inject = ";" + inject
		}
		w.AppendString(inject)
		plan.segs = append(plan.segs, planSeg{own: false, n: c.stmts - done}, planSeg{own: true, n: s.pre.statements})
		plan.cuts = append(plan.cuts, charRange{at: chars, n: len(inject)})
		chars += len(inject)
		last, done = c.at, c.stmts
	}
	w.AppendString(sql[last:])
	u.plan = plan
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

// baseStatus returns the transaction status the next message starts from
// (under mu): the server's last report when nothing is in flight, else what
// the messages in flight should leave. wait is true when that prediction
// is not safe to rely on (inside a transaction, where an error would leave
// it aborted), so the caller must wait for the answers first.
func (s *Session) baseStatus() (st byte, wait bool) {
	if s.pending == 0 && !s.midBatch {
		return s.status, false
	}
	if s.midBatch {
		return s.status, false // same batch: the caller does not decide here
	}
	return s.predicted, s.predicted != 'I'
}

// noteSettings remembers that the client changed session-level settings, so
// they are read back when the transaction ends (under mu).
func (s *Session) noteSettings(stmts []sqlscan.Statement) {
	for i := range stmts {
		st := &stmts[i]
		switch {
		case st.Kind == sqlscan.KindSet || st.Kind == sqlscan.KindReset || st.Flags&sqlscan.FlagSessionSetConfig != 0:
			s.capture = true
			if strings.Contains(st.Name, ".") {
				if s.custom == nil {
					s.custom = map[string]bool{}
				}
				s.custom[strings.Clone(strings.ToLower(st.Name))] = true // Name may alias the read buffer
			}
		}
	}
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

// batchLost reports whether the server connection broke in the middle of
// the client's current batch (under mu).
func (s *Session) batchLost() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lostBatch
}

// inBatch reports whether extended messages were sent since the last Sync.
func (s *Session) inBatch() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.midBatch
}

// dropUntilSync drops the rest of a batch that failed locally or lost its
// server connection; its Sync is answered with ReadyForQuery, as Postgres
// does after an error.
func (s *Session) dropUntilSync(typ byte) error {
	if typ != 'S' {
		return nil
	}
	s.mu.Lock()
	s.lostBatch = false
	s.mu.Unlock()
	s.skipUntilSync = false
	return s.localAnswer(nil, true)
}

// attached reports whether a server connection is attached.
func (s *Session) attached() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn != nil
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

// refuse answers a refused Query (simple) or Parse (extended). When no
// server connection is involved the answer is local; inside a transaction
// a harmless statement that fails to parse goes to the server so the
// transaction ends up aborted exactly as after any error, and the server's
// error is replaced with the refusal.
func (s *Session) refuse(e *wire.Error, simple bool) error {
	s.mu.Lock()
	attached := s.conn != nil && (s.status != 'I' || s.pending > 0 || s.midBatch)
	s.mu.Unlock()
	if !attached {
		return s.localError(e, simple)
	}
	c, _, err := s.claim()
	if err != nil {
		return s.localError(acquireError(err), simple)
	}
	if s.skipping && !simple {
		s.mu.Unlock()
		return nil
	}
	const bogus = "pgtoken refused this statement"
	if simple {
		beginQuery(c)
		at := c.W.Begin('Q')
		c.W.AppendCString(bogus)
		c.W.End(at)
		s.q.push(unit{kind: uQuery, rewrite: e})
		s.pending++
	} else {
		at := c.W.Begin('P')
		c.W.AppendCString("")
		c.W.AppendCString(bogus)
		c.W.AppendInt16(0)
		c.W.End(at)
		s.q.push(unit{kind: uParse, rewrite: e})
		s.midBatch = true
	}
	s.mu.Unlock()
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
	if !simple {
		s.skipUntilSync = true
	}
	resp := wire.ToResponse(err)
	b, encErr := resp.Encode(nil)
	if encErr != nil {
		return encErr
	}
	if we := (*wire.Error)(nil); !errors.As(err, &we) {
		s.log.Error("internal error", zap.Error(err))
	}
	return s.localAnswer(b, simple)
}

// localAnswer sends bytes pgtoken answers itself, in order with whatever
// the server still owes the client; rfq adds a ReadyForQuery.
func (s *Session) localAnswer(b []byte, rfq bool) error {
	return s.localAnswerApply(b, rfq, nil)
}

// localAnswerApply is localAnswer with an effect that happens when the
// answer is given — not if an earlier error in the batch means Postgres
// would have skipped the message.
func (s *Session) localAnswerApply(b []byte, rfq bool, apply func()) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.q.len() == 0 {
		if s.skipping && !rfq {
			return nil
		}
		s.out = append(s.out, b...)
		if rfq {
			r := wire.ReadyForQuery(s.localStatus())
			s.out = append(s.out, r[:]...)
		}
		if apply != nil {
			apply()
		}
		return nil
	}
	u := unit{kind: uLocal, local: append([]byte(nil), b...), rfq: rfq}
	if apply != nil {
		u.done = func(err *wire.Error) {
			if err == nil {
				apply()
			}
		}
	}
	s.q.push(u)
	if rfq {
		s.pending++
	}
	return nil
}

// onExtended handles Parse, Bind, Describe, Execute, Close, Flush and Sync.
func (s *Session) onExtended(typ byte, frame []byte) error {
	if s.skipUntilSync || s.batchLost() {
		return s.dropUntilSync(typ)
	}
	body := frame[5:]
	var m extMsg
	if err := s.readExtended(typ, body, &m); err != nil {
		return err
	}
	if m.wait {
		// A Parse reuses the name of a statement whose own Parse is still
		// unanswered: whether the name is free depends on that answer.
		s.waitQuiet()
		m = extMsg{}
		if err := s.readExtended(typ, body, &m); err != nil {
			return err
		}
	}
	if m.refuse != nil {
		return s.refuse(m.refuse, false)
	}
	if m.local != nil {
		return s.localAnswerApply(m.local, false, m.apply)
	}
	if typ == 'H' || typ == 'S' {
		s.mu.Lock()
		idle := s.conn == nil && !s.midBatch
		s.mu.Unlock()
		if idle {
			if typ == 'S' {
				return s.localAnswer(nil, true)
			}
			return nil
		}
	}
	mid := s.inBatch()
	if !mid && s.takeTxLost() {
		return s.localError(errTxLost(), typ == 'S')
	}
	if typ == 'P' && len(m.name) > 0 && !mid && !s.attached() && !s.pool.Available() {
		return s.deferParse(string(m.name), m.stmt)
	}
	var c *pool.Conn
	var err error
	if mid {
		c, _, err = s.claim()
	} else {
		c, err = s.claimUnit()
		if err == nil {
			s.preludePending = s.unitBase == 'I'
			s.chainOpen = false
			s.predicted = s.unitBase
		}
	}
	if errors.Is(err, errLostBatch) {
		return s.dropUntilSync(typ)
	}
	if err != nil {
		return s.localError(acquireError(err), typ == 'S')
	}
	if s.skipping {
		// The server ignores everything up to Sync; so do the answers.
		if typ != 'S' {
			s.mu.Unlock()
			_, err := c.W.Write(frame)
			return toServer(c, err)
		}
		s.skipping = false
	}
	if s.preludePending {
		switch {
		case typ == 'S':
			// The batch opened a transaction (BEGIN, or COMMIT AND CHAIN)
			// and ran nothing else in it yet: the prelude goes in before
			// Sync, or the transaction's later batches would run without it.
			if s.predicted == 'T' {
				s.appendExtendedPrelude(c)
			}
			s.preludePending = false
		case typ == 'P' || typ == 'B' || typ == 'D' || typ == 'E':
			if !needsNoRole(m.stmt.kindOf()) {
				s.appendExtendedPrelude(c)
				s.preludePending = false
			}
		}
	}
	switch typ {
	case 'P':
		s.clientParse(c, string(m.name), m.stmt)
	case 'B':
		if werr := s.ensureStmt(c, m.stmt); werr != nil {
			s.mu.Unlock()
			return s.refuse(werr, false)
		}
		if m.stmt.server == "" {
			_, err = c.W.Write(frame)
		} else {
			rewriteBind(c, body, m.portal, m.stmt.server)
		}
		s.setPortal(m.portal, m.stmt)
		if len(m.portal) == 0 {
			s.unnamedPortalLive = true
		}
		s.q.push(unit{kind: uBind})
	case 'D':
		if !m.describePortal {
			if werr := s.ensureStmt(c, m.stmt); werr != nil {
				s.mu.Unlock()
				return s.refuse(werr, false)
			}
			if m.stmt.server == "" {
				_, err = c.W.Write(frame)
			} else {
				rewriteDescribeStmt(c, m.stmt.server)
			}
			s.q.push(unit{kind: uDescribeS})
		} else {
			_, err = c.W.Write(frame)
			s.q.push(unit{kind: uDescribeP})
		}
	case 'E':
		_, err = c.W.Write(frame)
		s.q.push(unit{kind: uExecute})
		s.afterExecute(m.stmt)
	case 'C':
		_, err = c.W.Write(frame)
		s.q.push(unit{kind: uClose})
	case 'H':
		_, err = c.W.Write(frame)
	case 'S':
		_, err = c.W.Write(frame)
		s.q.push(unit{kind: uSync})
		s.pending++
	}
	if typ == 'S' {
		s.midBatch = false
	} else if typ != 'H' {
		s.midBatch = true
	}
	s.mu.Unlock()
	return toServer(c, err)
}

// extMsg is what onExtended learned from one extended-protocol message
// before touching any server connection.
type extMsg struct {
	name, portal   []byte
	stmt           *clientStmt // Parse: the new statement; Bind/Describe S: the statement; Execute: the portal's statement
	refuse         *wire.Error // answer with this error (the batch then fails as Postgres would)
	local          []byte      // answer this without the server
	describePortal bool        // Describe('P')
	apply          func()      // run when the local answer is given (not if the batch failed first)
	wait           bool        // decide only once the answers in flight are in
}

// readExtended decodes and checks one extended-protocol message.
func (s *Session) readExtended(typ byte, body []byte, m *extMsg) error {
	switch typ {
	case 'P':
		name, query, ok := wire.ParseHead(body)
		if !ok {
			return wire.Fatalf(wire.CodeProtocolViolation, "malformed Parse message")
		}
		sql := text(query)
		s.scan = sqlscan.Split(sql, s.scan[:0])
		if v := s.srv.cfg.Policy.Check(sql, s.scan); v != nil {
			s.srv.obs.GuardRejected()
			m.refuse = guardError(v.Reason)
			return nil
		}
		if e := s.notInTransactionMode(s.scan); e != nil {
			m.refuse = e
			return nil
		}
		for i := range s.scan {
			switch s.scan[i].Kind {
			case sqlscan.KindPrepare, sqlscan.KindExecute, sqlscan.KindDeallocate, sqlscan.KindDiscard, sqlscan.KindResetAll:
				m.refuse = wire.Errorf(wire.CodeFeatureNotSupported,
					"pgtoken handles PREPARE, EXECUTE, DEALLOCATE, DISCARD and RESET ALL only as simple queries")
				return nil
			}
		}
		n := text(name)
		if strings.HasPrefix(n, "pgtoken_") {
			m.refuse = wire.Errorf(wire.CodeInvalidSQLStatementName, "statement names beginning with pgtoken_ are reserved")
			return nil
		}
		if n != "" {
			s.mu.Lock()
			old := s.stmts[n]
			s.mu.Unlock()
			switch {
			case old != nil && old.unconfirmed:
				m.wait = true
				return nil
			case old != nil:
				m.refuse = wire.Errorf(wire.CodeDuplicatePreparedStmt, "prepared statement %q already exists", n)
				return nil
			}
		}
		types := body[len(name)+1+len(query)+1:]
		st := &clientStmt{text: strings.Clone(sql), types: append([]byte(nil), types...)}
		if len(s.scan) == 1 {
			st.kind, st.flags = s.scan[0].Kind, s.scan[0].Flags
		}
		if n != "" {
			st.server = serverStmtName(s.ident.Role, st.types, st.text, "parse")
		}
		m.name, m.stmt = name, st
	case 'B':
		portal, stmt, ok := wire.BindHead(body)
		if !ok {
			return wire.Fatalf(wire.CodeProtocolViolation, "malformed Bind message")
		}
		m.portal, m.name = portal, stmt
		if strings.HasPrefix(text(portal), "pgtoken_") {
			m.refuse = wire.Errorf(wire.CodeInvalidSQLStatementName, "portal names beginning with pgtoken_ are reserved")
			return nil
		}
		if m.stmt = s.lookupStmt(stmt); m.stmt == nil {
			m.refuse = noSuchStatement(stmt)
		}
	case 'D':
		k, name, ok := wire.TargetName(body)
		if !ok {
			return wire.Fatalf(wire.CodeProtocolViolation, "malformed Describe message")
		}
		if k == 'S' {
			m.name = name
			if m.stmt = s.lookupStmt(name); m.stmt == nil {
				m.refuse = noSuchStatement(name)
			}
		} else {
			m.portal, m.stmt = name, s.portal(name)
			m.describePortal = true
		}
	case 'E':
		s.pool.NoteQuery() // metrics and SHOW STATS: one atomic add
		portal, ok := wire.ExecutePortal(body)
		if !ok {
			return wire.Fatalf(wire.CodeProtocolViolation, "malformed Execute message")
		}
		m.portal, m.stmt = portal, s.portal(portal)
	case 'C':
		k, name, ok := wire.TargetName(body)
		if !ok {
			return wire.Fatalf(wire.CodeProtocolViolation, "malformed Close message")
		}
		if k == 'S' {
			// The statement lives in pgtoken: closing it is the client's
			// business only. Postgres answers CloseComplete even for a name
			// that does not exist.
			n := string(name)
			m.local = wire.MsgCloseComplete
			m.apply = func() {
				if n == "" {
					s.unnamedStmt = nil
				} else {
					delete(s.stmts, n)
				}
			}
		}
	case 'H', 'S':
	}
	return nil
}

func noSuchStatement(name []byte) *wire.Error {
	if len(name) == 0 {
		return wire.Errorf(wire.CodeInvalidSQLStatementName, "unnamed prepared statement does not exist")
	}
	return wire.Errorf(wire.CodeInvalidSQLStatementName, "prepared statement %q does not exist", name)
}

// afterExecute notes what an executed statement means for the rest of the
// batch (under mu): after COMMIT or ROLLBACK (or CALL/DO, since a procedure
// may commit) the next message runs in a new transaction and needs the
// prelude again.
func (s *Session) afterExecute(st *clientStmt) {
	k := st.kindOf()
	switch {
	case txEnds(k):
		s.preludePending = true
		s.unnamedPortalLive = false // portals end with the transaction
		s.chainOpen = st.flags&sqlscan.FlagChain != 0
		if s.chainOpen {
			s.predicted = 'T'
		} else {
			s.predicted = 'I'
		}
	case k == sqlscan.KindCall || k == sqlscan.KindDo:
		s.preludePending = true
	case k == sqlscan.KindBegin:
		s.predicted = 'T'
	}
	if st != nil && (k == sqlscan.KindSet || k == sqlscan.KindReset || st.flags&sqlscan.FlagSessionSetConfig != 0) {
		s.capture = true
	}
}

func (st *clientStmt) kindOf() sqlscan.Kind {
	if st == nil {
		return sqlscan.KindOther
	}
	return st.kind
}

// appendExtendedPrelude writes the extended-protocol prelude: Parse (once per
// server connection), then Bind and Execute into the unnamed portal. Its
// answers are swallowed; an error reaches the client and the server skips
// the client's messages up to Sync. Under mu.
func (s *Session) appendExtendedPrelude(c *pool.Conn) {
	if name := s.pre.stmt.name; !c.Prepared[name] {
		c.W.AppendBytes(s.pre.stmt.parse)
		c.Prepared[name] = true // later preludes in this batch must not Parse again
		s.q.push(unit{kind: uParse, own: ownPrelude, done: func(err *wire.Error) {
			if err != nil {
				delete(c.Prepared, name)
			}
		}})
	}
	if !s.unnamedPortalLive {
		c.W.AppendBytes(s.pre.bind)
		c.W.AppendBytes(wire.MsgExecuteUnnamedAll)
		s.q.push(unit{kind: uBind, own: ownPrelude})
		s.q.push(unit{kind: uExecute, own: ownPrelude})
		return
	}
	// The client's unnamed portal is live in this batch: bind the prelude
	// into a portal of its own and close it.
	c.W.AppendBytes(s.pre.appendNamed(nil))
	s.q.push(unit{kind: uBind, own: ownPrelude})
	s.q.push(unit{kind: uExecute, own: ownPrelude})
	s.q.push(unit{kind: uClose, own: ownPrelude})
}

// onCopy forwards COPY data from the client to the server in a COPY; outside
// one (after the server ended it with an error, say) Postgres ignores these
// messages, and so does pgtoken.
func (s *Session) onCopy(typ byte, n int) error {
	s.mu.Lock()
	c := s.conn
	if c == nil || s.maint {
		s.mu.Unlock()
		return s.cr.Skip()
	}
	s.writing = true
	s.wconn = c
	s.mu.Unlock()
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
	if !largeObjectFunctions[oid] {
		return s.localError(wire.Errorf(wire.CodeInsufficientPrivilege,
			"pgtoken allows the function-call protocol only for large-object functions (OID %d refused)", oid), true)
	}
	c, err := s.claimUnit()
	if err != nil {
		return s.localError(acquireError(err), true)
	}
	if s.unitBase == 'I' {
		s.appendExtendedPrelude(c)
	}
	s.q.push(unit{kind: uFunc})
	s.pending++
	s.mu.Unlock()
	_, err = c.W.Write(frame)
	return toServer(c, err)
}

// largeObjectFunctions are the OIDs of lo_open, lo_close, loread, lowrite,
// lo_lseek, lo_creat, lo_tell, lo_unlink, lo_truncate, lo_create,
// lo_lseek64, lo_tell64 and lo_truncate64 (fixed in pg_proc.dat).
var largeObjectFunctions = map[uint32]bool{
	952: true, 953: true, 954: true, 955: true, 956: true, 957: true, 958: true,
	964: true, 1004: true, 715: true, 3170: true, 3171: true, 3172: true,
}

// setPortal remembers which statement a portal runs (client goroutine).
func (s *Session) setPortal(name []byte, st *clientStmt) {
	if len(name) == 0 {
		s.unnamedPortal = st
		return
	}
	if s.portals == nil {
		s.portals = map[string]*clientStmt{}
	}
	s.portals[string(name)] = st
}

// portal returns the statement a portal runs, if known.
func (s *Session) portal(name []byte) *clientStmt {
	if len(name) == 0 {
		return s.unnamedPortal
	}
	return s.portals[text(name)]
}
