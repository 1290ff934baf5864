package session

import (
	"errors"
	"fmt"
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
// holds a server connection in an open transaction and sends nothing.
func (s *Session) setIdleDeadline() {
	t := s.srv.cfg.IdleTransactionTimeout
	if t <= 0 || s.srv.cfg.Mode == ModeSession {
		return
	}
	s.mu.Lock()
	inTx := s.conn != nil && s.pending == 0 && s.status != 'I'
	s.mu.Unlock()
	if inTx {
		_ = s.nc.SetReadDeadline(time.Now().Add(t))
	}
}

// checkTokenLifetime ends a session whose token has expired once it is
// between transactions; a transaction in flight completes.
func (s *Session) checkTokenLifetime() error {
	exp := s.ident.ExpiresAt
	if exp.IsZero() || time.Now().Before(exp) {
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
	if v := s.srv.cfg.Policy.Check(sql, stmts); v != nil {
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
	c, _, err := s.claim()
	if err != nil {
		return s.localError(acquireError(err), true)
	}
	base, wait := s.baseStatus()
	if wait {
		s.mu.Unlock()
		s.waitQuiet()
		if c, _, err = s.claim(); err != nil {
			return s.localError(acquireError(err), true)
		}
		base, _ = s.baseStatus()
	}
	needPrelude := base == 'I'
	u := unit{kind: uQuery}
	w := c.W
	at := w.Begin('Q')
	if needPrelude {
		w.AppendString(s.pre.simple)
		u.skip, u.prefix = s.pre.statements, len(s.pre.simple)
	}
	s.appendInjected(w, sql, cuts, &u)
	w.AppendBytes([]byte{0})
	w.End(at)
	s.q.push(u)
	s.pending++
	s.noteSettings(stmts)
	s.predicted = predict(base, stmts)
	s.mu.Unlock()
	if s.srv.cfg.Mode == ModeTransaction {
		s.resetPortals()
	}
	return nil
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
// whose last token ends at end, or -1 when the text ends first. Between a
// statement and its ';' there is only whitespace and comments.
func terminator(sql string, end int) int {
	i := end
	for i < len(sql) {
		switch c := sql[i]; {
		case c == ';':
			return i + 1
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			for i < len(sql) && sql[i] != '\n' && sql[i] != '\r' {
				i++
			}
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			depth := 0
			for i < len(sql) {
				if sql[i] == '/' && i+1 < len(sql) && sql[i+1] == '*' {
					depth++
					i += 2
				} else if sql[i] == '*' && i+1 < len(sql) && sql[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
		default:
			return -2 // not trivia: the caller refuses the query
		}
	}
	return -1
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
				s.custom[strings.ToLower(st.Name)] = true
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
		case st.Kind == sqlscan.KindPrepare || st.Kind == sqlscan.KindExecute || st.Kind == sqlscan.KindDeallocate:
			what = "SQL-level PREPARE/EXECUTE/DEALLOCATE"
		case st.Kind == sqlscan.KindResetAll || st.Kind == sqlscan.KindDiscard:
			what = strings.ToUpper(strings.Fields(st.Value + " RESET ALL")[0])
			what = "RESET ALL and DISCARD"
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
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.q.len() == 0 {
		s.out = append(s.out, b...)
		if rfq {
			r := wire.ReadyForQuery(s.localStatus())
			s.out = append(s.out, r[:]...)
		}
		return nil
	}
	s.q.push(unit{kind: uLocal, local: append([]byte(nil), b...), rfq: rfq})
	if rfq {
		s.pending++
	}
	return nil
}

// onExtended handles Parse, Bind, Describe, Execute, Close, Flush and Sync.
func (s *Session) onExtended(typ byte, frame []byte) error {
	if s.skipUntilSync || s.lostBatch {
		if typ != 'S' {
			return nil
		}
		s.skipUntilSync, s.lostBatch = false, false
		return s.localAnswer(nil, true)
	}
	body := frame[5:]
	kind := sqlscan.KindOther
	var uk unitKind
	switch typ {
	case 'P':
		name, query, ok := wire.ParseHead(body)
		if !ok {
			return wire.Fatalf(wire.CodeProtocolViolation, "malformed Parse message")
		}
		sql := text(query)
		s.scan = sqlscan.Split(sql, s.scan[:0])
		if v := s.srv.cfg.Policy.Check(sql, s.scan); v != nil {
			return s.refuse(guardError(v.Reason), false)
		}
		if e := s.notInTransactionMode(s.scan); e != nil {
			return s.refuse(e, false)
		}
		if strings.HasPrefix(text(name), "pgtoken_") {
			return s.refuse(wire.Errorf(wire.CodeInvalidSQLStatementName, "statement names beginning with pgtoken_ are reserved"), false)
		}
		if len(s.scan) == 1 {
			kind = s.scan[0].Kind
		}
		s.setStmtKind(name, kind)
		uk = uParse
	case 'B':
		portal, stmt, ok := wire.BindHead(body)
		if !ok {
			return wire.Fatalf(wire.CodeProtocolViolation, "malformed Bind message")
		}
		kind = s.stmtKind(stmt)
		s.setPortalKind(portal, kind)
		uk = uBind
	case 'D':
		k, name, ok := wire.TargetName(body)
		if !ok {
			return wire.Fatalf(wire.CodeProtocolViolation, "malformed Describe message")
		}
		if k == 'S' {
			kind, uk = s.stmtKind(name), uDescribeS
		} else {
			kind, uk = s.portalKind(name), uDescribeP
		}
	case 'E':
		portal, ok := wire.ExecutePortal(body)
		if !ok {
			return wire.Fatalf(wire.CodeProtocolViolation, "malformed Execute message")
		}
		kind, uk = s.portalKind(portal), uExecute
	case 'C':
		k, name, ok := wire.TargetName(body)
		if !ok {
			return wire.Fatalf(wire.CodeProtocolViolation, "malformed Close message")
		}
		if k == 'S' && strings.HasPrefix(text(name), "pgtoken_") {
			return s.refuse(wire.Errorf(wire.CodeInvalidSQLStatementName, "statement names beginning with pgtoken_ are reserved"), false)
		}
		uk = uClose
	case 'H':
		s.mu.Lock()
		idle := s.conn == nil
		s.mu.Unlock()
		if idle {
			return nil
		}
	case 'S':
		s.mu.Lock()
		idle := s.conn == nil && !s.midBatch
		s.mu.Unlock()
		if idle {
			return s.localAnswer(nil, true)
		}
		uk = uSync
	}

	if !s.midBatch && s.takeTxLost() {
		return s.localError(errTxLost(), typ == 'S')
	}
	c, _, err := s.claim()
	if err != nil {
		return s.localError(acquireError(err), typ == 'S')
	}
	if !s.midBatch {
		base, wait := s.baseStatus()
		if wait {
			s.mu.Unlock()
			s.waitQuiet()
			if c, _, err = s.claim(); err != nil {
				return s.localError(acquireError(err), typ == 'S')
			}
			base, _ = s.baseStatus()
		}
		s.preludePending = base == 'I'
		s.chainOpen = false
		s.predicted = base
		if base == 'I' && s.srv.cfg.Mode == ModeTransaction {
			s.resetPortals()
		}
	}
	if s.skipping {
		// The server ignores everything up to Sync; so do the answers.
		if typ == 'S' {
			s.skipping = false
		} else {
			s.mu.Unlock()
			_, err := c.W.Write(frame)
			return err
		}
	}
	if s.preludePending {
		switch {
		case typ == 'S':
			if s.chainOpen {
				s.appendExtendedPrelude(c)
			}
			s.preludePending = false
		case typ == 'P' || typ == 'B' || typ == 'D' || typ == 'E':
			if !needsNoRole(kind) {
				s.appendExtendedPrelude(c)
				s.preludePending = false
			}
		}
	}
	if uk != 0 {
		s.q.push(unit{kind: uk})
	}
	if typ == 'S' {
		s.pending++
		s.midBatch = false
	} else if typ != 'H' {
		s.midBatch = true
	}
	if typ == 'E' {
		switch {
		case txEnds(kind):
			s.preludePending = true
			s.chainOpen = false // set below for chains
			s.predicted = 'I'
		case kind == sqlscan.KindCall || kind == sqlscan.KindDo:
			// A procedure may COMMIT: what follows in the batch gets the
			// prelude again.
			s.preludePending = true
		case kind == sqlscan.KindBegin:
			s.predicted = 'T'
		}
		if txEnds(kind) && s.portalChains(body) {
			s.chainOpen = true
			s.predicted = 'T'
		}
	}
	s.mu.Unlock()
	if typ == 'E' {
		s.noteKind(kind, body)
	}
	_, err = c.W.Write(frame)
	return err
}

// appendExtendedPrelude writes the extended-protocol prelude: Parse (once per
// server connection), then Bind and Execute into the unnamed portal. Its
// answers are swallowed; an error reaches the client and the server skips
// the client's messages up to Sync. Under mu.
func (s *Session) appendExtendedPrelude(c *pool.Conn) {
	if name := s.pre.stmtName; !c.Prepared[name] {
		c.W.AppendBytes(s.pre.parse)
		c.Prepared[name] = true // later preludes in this batch must not Parse again
		s.q.push(unit{kind: uParse, own: ownPrelude, done: func(err *wire.Error) {
			if err != nil {
				delete(c.Prepared, name)
			}
		}})
	}
	c.W.AppendBytes(s.pre.bind)
	c.W.AppendBytes(wire.MsgExecuteUnnamedAll)
	s.q.push(unit{kind: uBind, own: ownPrelude})
	s.q.push(unit{kind: uExecute, own: ownPrelude})
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
		return s.cr.Stream(c.W)
	}
	f, err := s.cr.Frame()
	if err != nil {
		return err
	}
	_, err = c.W.Write(f)
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
	c, _, err := s.claim()
	if err != nil {
		return s.localError(acquireError(err), true)
	}
	base, _ := s.baseStatus()
	if base == 'I' {
		s.appendExtendedPrelude(c)
	}
	s.q.push(unit{kind: uFunc})
	s.pending++
	s.mu.Unlock()
	_, err = c.W.Write(frame)
	return err
}

// largeObjectFunctions are the OIDs of lo_open, lo_close, loread, lowrite,
// lo_lseek, lo_creat, lo_tell, lo_unlink, lo_truncate, lo_create,
// lo_lseek64, lo_tell64 and lo_truncate64 (fixed in pg_proc.dat).
var largeObjectFunctions = map[uint32]bool{
	952: true, 953: true, 954: true, 955: true, 956: true, 957: true, 958: true,
	964: true, 1004: true, 715: true, 3170: true, 3171: true, 3172: true,
}

// Statement and portal kinds, so Execute knows whether it runs BEGIN or
// COMMIT. Client goroutine only.

func (s *Session) setStmtKind(name []byte, k sqlscan.Kind) {
	if len(name) == 0 {
		s.unnamed = k
		return
	}
	if s.stmts == nil {
		s.stmts = map[string]sqlscan.Kind{}
	}
	s.stmts[string(name)] = k
}

func (s *Session) stmtKind(name []byte) sqlscan.Kind {
	if len(name) == 0 {
		return s.unnamed
	}
	return s.stmts[text(name)]
}

func (s *Session) setPortalKind(name []byte, k sqlscan.Kind) {
	if len(name) == 0 {
		s.unnamedPortal = k
		return
	}
	if s.portals == nil {
		s.portals = map[string]sqlscan.Kind{}
	}
	s.portals[string(name)] = k
}

func (s *Session) portalKind(name []byte) sqlscan.Kind {
	if len(name) == 0 {
		return s.unnamedPortal
	}
	return s.portals[text(name)]
}

// resetPortals forgets portals at a transaction's start: Postgres drops them
// when a transaction ends.
func (s *Session) resetPortals() {
	clear(s.portals)
}

// portalChains reports whether the COMMIT/ROLLBACK an Execute runs chains a
// new transaction. The kind alone does not say; the portal's text would.
// Chaining statements are rare in the extended protocol, so pgtoken keeps
// their flags with the statement kind (see noteKind).
func (s *Session) portalChains([]byte) bool { return false }

// noteKind records effects of an executed statement on session settings.
func (s *Session) noteKind(k sqlscan.Kind, _ []byte) {
	if k == sqlscan.KindSet || k == sqlscan.KindReset {
		s.mu.Lock()
		s.capture = true
		s.mu.Unlock()
	}
}

var _ = fmt.Sprintf
