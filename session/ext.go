package session

import (
	"strings"

	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/session/sqlscan"
	"github.com/pgtoken/pgtoken/session/tracker"
	"github.com/pgtoken/pgtoken/wire"
)

// extMsg is what onExtended learned from one extended-protocol message
// before touching any server connection.
type extMsg struct {
	name, portal   []byte
	stmt           *clientStmt // Parse: the new statement; Bind/Describe S: the statement; Execute, Describe P: the portal's statement
	refuse         *wire.Error // answer with this error (the batch then fails as Postgres would)
	local          []byte      // answer this without the server
	purpose        tracker.Purpose
	ref            any
	replaced       *clientStmt // Parse: the closing statement of the same name it replaces
	describePortal bool        // Describe('P')
	wait           bool        // decide only once the answers in flight are in
}

// onExtended handles Parse, Bind, Describe, Execute, Close, Flush and Sync.
func (s *Session) onExtended(typ byte, frame []byte) error {
	s.mu.Lock()
	if s.t.Dropping() {
		// The batch failed locally (or lost its server connection): its
		// messages are dropped, and its Sync answered, as Postgres does
		// after an error.
		if typ == 'S' {
			s.t.EndDrop()
			s.answer(nil, true, 0, nil)
		}
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	body := frame[5:]
	var m extMsg
	if err := s.readExtended(typ, body, &m, false); err != nil {
		return err
	}
	if m.wait {
		// A Parse reuses the name of a statement whose own Parse is still
		// unanswered: whether the name is free depends on that answer,
		// once it is in. (If that Parse is in this very batch, the name is
		// taken: had it failed, the server would skip this one anyway.)
		s.waitSettled()
		m = extMsg{}
		if err := s.readExtended(typ, body, &m, true); err != nil {
			return err
		}
	}
	if m.refuse != nil {
		return s.refuse(m.refuse, false)
	}
	if m.local != nil {
		s.mu.Lock()
		s.answer(m.local, false, m.purpose, m.ref)
		s.mu.Unlock()
		return nil
	}
	s.mu.Lock()
	idle := s.conn == nil
	s.mu.Unlock()
	if idle {
		switch {
		case typ == 'S':
			return s.localAnswer(nil, true)
		case typ == 'H':
			return nil
		case typ == 'P' && len(m.name) > 0 && !s.transparent() && !s.pool.Available():
			return s.deferParse(string(m.name), m.stmt)
		}
		if s.takeTxLost() {
			return s.localError(errTxLost(), false)
		}
	}
	c, err := s.claim()
	if err != nil {
		return s.claimFailed(err, false)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	kind, flags := m.stmt.kindOf(), m.stmt.flagsOf()
	var step tracker.Step
	for {
		if s.conn != c {
			s.mu.Unlock()
			err := s.localError(errLost(), typ == 'S')
			s.mu.Lock()
			return err
		}
		first := !s.t.InBatch()
		if step = s.t.Extended(typ, kind, flags); !step.Wait {
			if first {
				s.closeStale(c)
				s.newUnit(step)
			}
			break
		}
		s.waitFor(c, s.settled)
	}
	if step.Prelude != tracker.NoPrelude && !step.Bare && s.expired() { // a new transaction: an open one gets the leeway
		return errTokenExpired()
	}
	if step.IdentityAhead {
		s.identityAhead(c, step.ResetAhead)
		step.IdentityAhead, step.ResetAhead, step.Reset = false, false, false
	}
	if step.NeedIdentity && c.IdentityOf != uint64(s.id) {
		// A procedure in the middle of a batch that did not begin with
		// one: if it rolls back, what it runs next falls back to what
		// was committed before the batch, which is not this client's
		// identity. Fail closed; the server skips the rest of the batch.
		s.t.Failing(false)
		s.t.Push(tracker.Unit{Kind: tracker.Parse, Rewrite: errProcedureMidBatch()})
		c.W.Parse(refusedName, refusedText, nil)
		return nil
	}
	// The prelude must not take the unnamed portal from a message that
	// uses it: one that looked live when the message was read may have
	// ended with its transaction since (newUnit), and then the server must
	// say so rather than run pgtoken's portal.
	s.extendedPrelude(c, step, len(m.portal) == 0 && (typ == 'E' || m.describePortal))
	s.sendExtended(typ, c, frame, &m)
	return nil
}

// sendExtended writes an extended-protocol message (its prelude already
// written) and queues its answer (under mu).
func (s *Session) sendExtended(typ byte, c *pool.Conn, frame []byte, m *extMsg) {
	switch typ {
	case 'P':
		s.clientParse(c, string(m.name), m.stmt)
	case 'B':
		s.sendBind(c, frame, m)
	case 'D':
		s.sendDescribe(c, frame, m)
	case 'E':
		c.W.AppendBytes(frame)
		s.t.Push(tracker.Unit{Kind: tracker.Execute, Purpose: pUse, Ref: useOf(c, m.stmt)})
		s.afterExecute(m.stmt)
	case 'C':
		c.W.AppendBytes(frame)
		s.t.Push(tracker.Unit{Kind: tracker.Close, Purpose: m.purpose, Ref: m.ref})
	case 'H':
		c.W.AppendBytes(frame)
	case 'S':
		c.W.AppendBytes(frame)
		s.t.Push(tracker.Unit{Kind: tracker.Sync})
		s.capturePipelined(c)
	}
}

func (s *Session) sendBind(c *pool.Conn, frame []byte, m *extMsg) {
	if !s.stmtReady(c, m.stmt) {
		return
	}
	if m.stmt.server == "" {
		c.W.AppendBytes(frame)
	} else {
		rewriteBind(c, frame[5:], m.portal, m.stmt.server)
	}
	s.setPortal(m.portal, m.stmt)
	if len(m.portal) == 0 {
		s.unnamedPortalLive = true
	}
	s.t.Push(tracker.Unit{Kind: tracker.Bind, Purpose: pUse, Ref: useOf(c, m.stmt)})
}

func (s *Session) sendDescribe(c *pool.Conn, frame []byte, m *extMsg) {
	switch {
	case m.describePortal:
		c.W.AppendBytes(frame)
		s.t.Push(tracker.Unit{Kind: tracker.DescribePortal})
	case !s.stmtReady(c, m.stmt):
	case m.stmt.server == "":
		c.W.AppendBytes(frame)
		s.t.Push(tracker.Unit{Kind: tracker.DescribeStmt, Purpose: pUse, Ref: useOf(c, m.stmt)})
	default:
		rewriteDescribeStmt(c, m.stmt.server)
		s.t.Push(tracker.Unit{Kind: tracker.DescribeStmt, Purpose: pUse, Ref: useOf(c, m.stmt)})
	}
}

// stmtReady makes sure the statement a Bind or Describe uses exists on c
// (ensureStmt); one that cannot be used there fails the batch, as any
// error would.
func (s *Session) stmtReady(c *pool.Conn, st *clientStmt) bool {
	werr := s.ensureStmt(c, st)
	if werr == nil {
		return true
	}
	s.t.Push(tracker.Unit{Kind: tracker.Parse, Rewrite: werr})
	c.W.Parse(refusedName, refusedText, nil)
	return false
}

// readExtended decodes and checks one extended-protocol message.
func (s *Session) readExtended(typ byte, body []byte, m *extMsg, waited bool) error {
	switch typ {
	case 'P':
		return s.readParse(body, m, waited)
	case 'B':
		return s.readBind(body, m, waited)
	case 'D':
		return s.readDescribe(body, m, waited)
	case 'E':
		return s.readExecute(body, m)
	case 'C':
		return s.readClose(body, m)
	}
	return nil // Flush, Sync
}

// readParse decodes a Parse: the guard, the pooling mode and the names
// decide whether it may go; the statement is kept for the client.
func (s *Session) readParse(body []byte, m *extMsg, waited bool) error {
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
	if isReserved(n) {
		m.refuse = wire.Errorf(wire.CodeInvalidSQLStatementName, "statement names beginning with pgtoken_ are reserved")
		return nil
	}
	if n != "" {
		s.mu.Lock()
		old := s.stmts[n]
		s.mu.Unlock()
		switch {
		case old != nil && old.closing && (old.closeAt == s.syncPoints || waited):
			// Closed before this Parse in the same batch: the name is
			// free (had the Close been skipped, so would this Parse).
			m.replaced = old
		case old != nil && old.closing:
			m.wait = true // whether the Close was skipped decides
			return nil
		case old != nil && old.unconfirmed && !waited:
			m.wait = true
			return nil
		case old != nil:
			m.refuse = wire.Errorf(wire.CodeDuplicatePreparedStmt, "prepared statement %q already exists", n)
			return nil
		}
	}
	types := body[len(name)+1+len(query)+1:]
	st := &clientStmt{text: strings.Clone(sql), types: append([]byte(nil), types...), parsedAt: s.syncPoints}
	if len(s.scan) == 1 {
		st.kind, st.flags = s.scan[0].Kind, s.scan[0].Flags
	}
	for i := range s.scan {
		if s.scan[i].Kind == sqlscan.KindSet || s.scan[i].Kind == sqlscan.KindReset || s.scan[i].Flags&sqlscan.FlagSessionSetConfig != 0 {
			st.setsSession = true
			st.custom = append(st.custom, s.scan[i].Name)
			st.custom = append(st.custom, sqlscan.SetConfigNames(sql, &s.scan[i])...)
		}
	}
	switch {
	case n != "" && s.transparent():
		st.server = strings.Clone(n) // n is a view of the client's read buffer
	case n != "":
		st.server = serverStmtName(s.ident.Role, st.types, st.text, "parse")
	}
	st.replaced = m.replaced
	m.name, m.stmt = name, st
	return nil
}

func (s *Session) readBind(body []byte, m *extMsg, waited bool) error {
	portal, stmt, ok := wire.BindHead(body)
	if !ok {
		return wire.Fatalf(wire.CodeProtocolViolation, "malformed Bind message")
	}
	m.portal, m.name = portal, stmt
	if isReserved(text(portal)) {
		m.refuse = wire.Errorf(wire.CodeInvalidSQLStatementName, "portal names beginning with pgtoken_ are reserved")
		return nil
	}
	s.useStmt(stmt, m, waited)
	return nil
}

func (s *Session) readDescribe(body []byte, m *extMsg, waited bool) error {
	k, name, ok := wire.TargetName(body)
	if !ok {
		return wire.Fatalf(wire.CodeProtocolViolation, "malformed Describe message")
	}
	if k == 'S' {
		m.name = name
		s.useStmt(name, m, waited)
		return nil
	}
	m.portal, m.describePortal = name, true
	if m.stmt = s.portal(name); m.stmt == nil {
		m.refuse = noSuchPortal(name)
	}
	return nil
}

func (s *Session) readExecute(body []byte, m *extMsg) error {
	s.pool.NoteQuery() // metrics and SHOW STATS: one atomic add
	portal, ok := wire.ExecutePortal(body)
	if !ok {
		return wire.Fatalf(wire.CodeProtocolViolation, "malformed Execute message")
	}
	m.portal = portal
	if m.stmt = s.portal(portal); m.stmt == nil {
		m.refuse = noSuchPortal(portal)
	}
	return nil
}

func (s *Session) readClose(body []byte, m *extMsg) error {
	k, name, ok := wire.TargetName(body)
	if !ok {
		return wire.Fatalf(wire.CodeProtocolViolation, "malformed Close message")
	}
	if k == 'S' {
		if isReserved(text(name)) || !s.transparent() {
			// The statement lives in pgtoken: closing it is the
			// client's business only. Postgres answers CloseComplete
			// even for a name that does not exist.
			m.local = wire.MsgCloseComplete
		}
		if isReserved(text(name)) {
			return nil
		}
		ref := closeRef{name: string(name)}
		s.mu.Lock()
		if ref.st = s.stmtNamed(name); ref.st != nil {
			ref.st.closing, ref.st.closeAt = true, s.syncPoints
		}
		s.mu.Unlock()
		m.purpose, m.ref = pCloseStmt, ref
		return nil
	}
	if s.portal(name) == nil {
		// Not a portal of the client's (pgtoken's own included):
		// closing a portal that does not exist is not an error.
		m.local = wire.MsgCloseComplete
	}
	return nil
}

// useStmt finds the statement a Bind or Describe uses. One the client
// closed since its last sync point is gone (had the Close been skipped
// after an error, this message would be skipped too); one it closed, or
// parsed, before that is gone or not depending on the answer: the message
// waits for it (m.wait).
func (s *Session) useStmt(name []byte, m *extMsg, waited bool) {
	s.mu.Lock()
	st := s.stmtNamed(name)
	closing := st != nil && st.closing
	// A statement parsed, or closed, before the last sync point exists or
	// not depending on that Parse's or Close's answer.
	undecided := st != nil && (closing && st.closeAt != s.syncPoints || st.unconfirmed && st.parsedAt != s.syncPoints)
	if undecided && !waited {
		s.mu.Unlock()
		m.wait = true
		return
	}
	s.mu.Unlock()
	if st == nil || closing {
		st, m.refuse = s.unknownStmt(name)
	}
	m.stmt = st
}

// closeRef is a Close of a client statement: its name, and the statement
// pgtoken knew by that name.
type closeRef struct {
	name string
	st   *clientStmt
}

// isReserved reports whether a statement or portal name is pgtoken's.
func isReserved(name string) bool {
	return len(name) >= 8 && strings.EqualFold(name[:8], "pgtoken_")
}

// unknownStmt decides about a Bind or Describe of a statement the client
// did not Parse: on its own connection (session mode) it may be one the
// client made with SQL PREPARE, so it goes to the server, which knows;
// otherwise it does not exist.
func (s *Session) unknownStmt(name []byte) (*clientStmt, *wire.Error) {
	if s.transparent() && len(name) > 0 && !isReserved(text(name)) {
		return &clientStmt{server: string(name)}, nil
	}
	return nil, noSuchStatement(name)
}

func noSuchStatement(name []byte) *wire.Error {
	if len(name) == 0 {
		return wire.Errorf(wire.CodeInvalidSQLStatementName, "unnamed prepared statement does not exist")
	}
	return wire.Errorf(wire.CodeInvalidSQLStatementName, "prepared statement %q does not exist", name)
}

// noSuchPortal is Postgres's error for a portal the client did not bind
// (pgtoken's own portals are not the client's).
func noSuchPortal(name []byte) *wire.Error {
	return wire.Errorf(codeUndefinedCursor, "portal %q does not exist", name)
}

// codeUndefinedCursor is SQLSTATE 34000.
const codeUndefinedCursor = "34000"

// afterExecute notes what an executed statement means for the client's
// portals and settings (under mu).
func (s *Session) afterExecute(st *clientStmt) {
	switch st.kindOf() {
	case sqlscan.KindCommit, sqlscan.KindRollback, sqlscan.KindPrepareTransaction:
		s.unnamedPortalLive = false // portals end with the transaction
		clear(s.portals)
	}
	if st != nil && st.setsSession {
		s.settingsChanged(true)
		for _, n := range st.custom {
			s.noteCustom(n)
		}
	}
}

func (st *clientStmt) kindOf() sqlscan.Kind {
	if st == nil {
		return sqlscan.KindOther
	}
	return st.kind
}

func (st *clientStmt) flagsOf() sqlscan.Flags {
	if st == nil {
		return 0
	}
	return st.flags
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

// portal returns the statement a portal runs, if the client bound it.
func (s *Session) portal(name []byte) *clientStmt {
	if len(name) == 0 {
		if !s.unnamedPortalLive {
			return nil
		}
		return s.unnamedPortal
	}
	return s.portals[text(name)]
}

// extendedPrelude writes, for an extended-protocol message or a
// FunctionCall, what the tracker said goes in front of it: the hand-over
// reset, the prelude (for the transaction, or for the session before a
// procedure) and the settings replay, each a bound statement of pgtoken's
// (parsed once per server connection) executed into the unnamed portal —
// or into a portal of its own when the client's unnamed portal is live or
// the message uses it (keepPortal). Their answers are swallowed; an error
// reaches the client, and the server skips the client's messages up to
// Sync. Under mu.
func (s *Session) extendedPrelude(c *pool.Conn, step tracker.Step, keepPortal bool) {
	if step.ResetAhead {
		s.resetAhead(c)
	}
	if step.Prelude == tracker.NoPrelude {
		if step.Reset {
			// The reset alone: the settings replay comes with the
			// prelude, which c now lacks, as it lacks any settings.
			s.noteOwnConn()
			w := stickyWork{reset: true, settingsOnly: s.ownConn}
			for _, st := range w.resetStmts() {
				s.runOwn(c, st, nil, keepPortal)
			}
			s.afterSticky(c, w)
		}
		return
	}
	work := s.stickyWork(c, step.Reset)
	if work.reset {
		for _, st := range work.resetStmts() {
			s.runOwn(c, st, nil, keepPortal)
		}
	}
	if step.Prelude == tracker.SessionPrelude {
		s.runOwn(c, s.srv.sessionStmts.get(s.pre.settings()), s.pre.args, keepPortal)
	} else {
		s.runOwn(c, s.pre.stmt, s.pre.args, keepPortal)
	}
	if len(work.replay) > 0 {
		s.runOwn(c, s.srv.sessionStmts.get(len(work.replay)), work.args(), keepPortal)
	}
	s.afterSticky(c, work)
}

// runOwn writes one of pgtoken's statements, bound with args (encoded
// Bind parameters) and executed, parsing it first if c lacks it. The Parse
// follows a Close of the name: whatever pgtoken believed, a statement of
// that name may exist (a DEALLOCATE ALL that failed part-way, say), and
// closing a statement that does not exist is no error. A Bind that finds
// the statement gone makes every own statement parse again. Under mu.
func (s *Session) runOwn(c *pool.Conn, st *ownStmt, args []byte, keepPortal bool) {
	if !c.Prepared[st.name] {
		c.W.Target('C', 'S', st.name)
		s.t.Push(tracker.Unit{Kind: tracker.Close, Own: tracker.OwnPrelude})
		c.W.Parse(st.name, st.sql, nil)
		c.Prepared[st.name] = true // later uses in this batch must not Parse again
		s.t.Push(tracker.Unit{Kind: tracker.Parse, Own: tracker.OwnPrelude, Purpose: pOwnParse, Ref: ownParseRef{c, st.name}})
	}
	if args == nil {
		args = noArgs
	}
	portal := ""
	if s.unnamedPortalLive || keepPortal {
		portal = ownPortal
	}
	c.W.Bind(portal, st.name, args)
	c.W.Execute(portal)
	s.t.Push(tracker.Unit{Kind: tracker.Bind, Own: tracker.OwnPrelude, Purpose: pOwnBind, Ref: c})
	s.t.Push(tracker.Unit{Kind: tracker.Execute, Own: tracker.OwnPrelude})
	if portal != "" {
		c.W.Target('C', 'P', portal)
		s.t.Push(tracker.Unit{Kind: tracker.Close, Own: tracker.OwnPrelude})
	}
}

// noArgs is the parameter section of a Bind without parameters.
var noArgs = []byte{0, 0, 0, 0, 0, 0}
