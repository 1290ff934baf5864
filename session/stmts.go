package session

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/session/sqlscan"
	"github.com/pgtoken/pgtoken/session/tracker"
	"github.com/pgtoken/pgtoken/wire"
)

// clientStmt is a statement a client prepared, by Parse or by SQL PREPARE.
// Transactions of one client run on different server connections, so
// pgtoken keeps the statement itself and prepares it, under its own name, on
// whichever connection needs it. Identical statements (same role, text and
// parameter types) share one server-side statement per connection.
type clientStmt struct {
	text  string // the statement text (for PREPARE: the statement after AS)
	types []byte // Parse's parameter type section, raw (count + OIDs)
	kind  sqlscan.Kind
	flags sqlscan.Flags

	// server is pgtoken's name for it ("" for the unnamed statement).
	server string
	// gen is, for the unnamed statement, the session's Parse generation.
	gen uint64
	// prepare is, for SQL PREPARE, the PREPARE statement under the server
	// name; such a statement is re-created with it rather than with Parse.
	prepare string
	// unconfirmed is set while the Parse that created it is unanswered
	// (under the session mutex); parsedAt is the client's sync point count
	// at that Parse.
	unconfirmed bool
	parsedAt    uint64
	// deferred is set for a Parse pgtoken answered without the server (it
	// came outside a transaction while every server connection was busy):
	// the server parses it at first use, and if that fails the name is
	// free again.
	deferred bool
	// closing is set by the client's Close of it (which pgtoken answers
	// itself in transaction mode) until the answer is given: closeAt is
	// the client's sync point count then (a message before the next sync
	// point sees it gone: had the Close been skipped, so would it). closed
	// is set once the Close was answered, not skipped. replaced is the
	// statement of the same name a Parse after such a Close replaced: if
	// that Parse is skipped, so was the Close, and the old one is back.
	closing  bool
	closed   bool
	closeAt  uint64
	replaced *clientStmt
	name     string // the client's name for it
	// setsSession: it changes session settings (SET, RESET,
	// set_config(..., false)); custom names the placeholders it sets.
	setsSession bool
	custom      []string
}

// serverStmtName derives pgtoken's name for a statement from what makes it
// the same statement: the role it is prepared under, its parameter types and
// its text.
func serverStmtName(role string, types []byte, text, origin string) string {
	h := sha256.New()
	h.Write([]byte(origin))
	h.Write([]byte{0})
	h.Write([]byte(role))
	h.Write([]byte{0})
	h.Write(types)
	h.Write([]byte{0})
	h.Write([]byte(text))
	return "pgtoken_s_" + hex.EncodeToString(h.Sum(nil)[:12])
}

// stmtNamed finds a client statement by its client name ("" = unnamed),
// under mu. A Parse registers its name at once, so a pipelined Bind finds
// it; if that Parse fails, the server fails the Bind as well.
func (s *Session) stmtNamed(name []byte) *clientStmt {
	if len(name) == 0 {
		return s.unnamedStmt
	}
	return s.stmts[text(name)]
}

// forgetStmt forgets a statement whose Parse failed (or was skipped). If
// that Parse followed a Close of the same name in its batch, and the
// Close was skipped too, the closed statement is back. Under mu.
func (s *Session) forgetStmt(name string, st *clientStmt) {
	st.closed = true // it does not exist: a later Parse's failure cannot bring it back
	if name == "" {
		if s.unnamedStmt == st {
			s.unnamedStmt = nil
			if old := st.replaced; old != nil && !old.closed {
				s.unnamedStmt = old
			}
		}
		return
	}
	if s.stmts[name] != st {
		return
	}
	if old := st.replaced; old != nil && !old.closed {
		s.stmts[name] = old
		return
	}
	delete(s.stmts, name)
}

// ensureStmt makes sure st exists on c before a Bind or Describe uses it,
// queueing a Parse (swallowed unless it fails) when it does not, and closing
// the least recently used statements beyond the cache size. Under mu.
func (s *Session) ensureStmt(c *pool.Conn, st *clientStmt) *wire.Error {
	if st.server != "" && s.transparent() {
		return nil // the session's own connection has it
	}
	if st.server == "" {
		if c.UnnamedOwner == uint64(s.id) && c.UnnamedGen == st.gen {
			return nil
		}
		c.W.Parse("", st.text, st.types)
		c.UnnamedOwner, c.UnnamedGen = uint64(s.id), st.gen
		s.t.Push(tracker.Unit{Kind: tracker.Parse, Own: tracker.OwnPrelude, Purpose: pUnnamedParse, Ref: stmtRef{c: c, st: st}})
		return nil
	}
	if c.Stmts.Use(st.server, s.batchGen) {
		return nil
	}
	if st.prepare != "" {
		return wire.Errorf(wire.CodeFeatureNotSupported,
			"a statement prepared with SQL PREPARE can be used through pgtoken only with EXECUTE")
	}
	c.W.Parse(st.server, st.text, st.types)
	s.t.Push(tracker.Unit{Kind: tracker.Parse, Own: tracker.OwnPrelude, Purpose: pStmtParse, Ref: stmtRef{c: c, st: st}})
	s.evict(c, c.Stmts.Add(st.server, s.batchGen))
	return nil
}

// evict closes statements the cache let go. Under mu.
func (s *Session) evict(c *pool.Conn, names []string) {
	for _, n := range names {
		c.W.Target('C', 'S', n)
		s.t.Push(tracker.Unit{Kind: tracker.Close, Own: tracker.OwnMaint})
	}
}

// clientParse handles the client's Parse once the server connection is
// claimed and the prelude decided (under mu). The Parse always reaches the
// server, as on a direct connection a Parse always makes a fresh statement:
// a statement of the same text the connection already has is closed first
// (it may be stale after a schema change).
func (s *Session) clientParse(c *pool.Conn, name string, st *clientStmt) {
	if name == "" {
		s.unnamedGen++
		st.gen = s.unnamedGen
		st.replaced = s.unnamedStmt // back if this Parse is skipped
		st.unconfirmed = true
		s.unnamedStmt = st
		c.W.Parse("", st.text, st.types)
		c.UnnamedOwner, c.UnnamedGen = uint64(s.id), st.gen
		s.t.Push(tracker.Unit{Kind: tracker.Parse, Purpose: pClientUnnamed, Ref: stmtRef{c: c, st: st}})
		return
	}
	if s.stmts == nil {
		s.stmts = map[string]*clientStmt{}
	}
	s.stmts[name] = st
	st.unconfirmed = true
	ref := stmtRef{c: c, st: st, name: name}
	if s.transparent() {
		c.W.Parse(name, st.text, st.types)
		s.t.Push(tracker.Unit{Kind: tracker.Parse, Purpose: pClientParse, Ref: ref})
		return
	}
	if c.Stmts.Use(st.server, s.batchGen) {
		ref.again = true
		c.W.Target('C', 'S', st.server)
		s.t.Push(tracker.Unit{Kind: tracker.Close, Own: tracker.OwnPrelude})
	} else {
		s.evict(c, c.Stmts.Add(st.server, s.batchGen))
	}
	c.W.Parse(st.server, st.text, st.types)
	s.t.Push(tracker.Unit{Kind: tracker.Parse, Purpose: pClientParse, Ref: ref})
}

// transparent reports whether the client's statements keep their own names
// on the server: in session pooling mode the server connection is the
// client's for the whole session, as on a direct connection.
func (s *Session) transparent() bool { return s.srv.cfg.Mode == ModeSession }

// rewriteBind writes the client's Bind with the statement renamed.
func rewriteBind(c *pool.Conn, body []byte, portal []byte, server string) {
	rest := body[len(portal)+1:]
	_, rest, _ = wire.CString(rest)
	c.W.Bind(text(portal), server, rest)
}

// rewriteDescribeStmt writes Describe('S') of the renamed statement.
func rewriteDescribeStmt(c *pool.Conn, server string) {
	c.W.Target('D', 'S', server)
}

// ownStatement answers statements that pgtoken handles for the client
// itself when they come as a Query of their own: DISCARD, RESET ALL and
// DEALLOCATE (they act on the client's own settings and statements, which
// live in pgtoken, never on a shared server connection). It reports whether
// it answered.
func (s *Session) ownStatement(sql string, stmts []sqlscan.Statement) (bool, error) {
	if len(stmts) != 1 {
		for i := range stmts {
			if answeredHere(&stmts[i]) {
				return true, s.refuse(wire.Errorf(wire.CodeFeatureNotSupported,
					"pgtoken answers %s itself: send it as a query of its own", strings.ToUpper(strings.Fields(sql[stmts[i].Start:stmts[i].End])[0])), true)
			}
		}
		return false, nil
	}
	st := &stmts[0]
	switch st.Kind {
	case sqlscan.KindDiscard:
		if st.Name != "all" {
			// DISCARD TEMP, SEQUENCES and PLANS touch nothing but this
			// server process's own state: they run on the server.
			return false, nil
		}
		if s.inTransaction() {
			return true, s.refuse(wire.Errorf(wire.CodeActiveSQLTransaction, "DISCARD ALL cannot run inside a transaction block"), true)
		}
		s.mu.Lock()
		s.stmts, s.unnamedStmt = nil, nil
		s.mu.Unlock()
		if s.transparent() {
			// The client's statements, temporary objects, locks and
			// LISTENs are on its own connection: DISCARD ALL runs there.
			return true, s.discardAll()
		}
		return true, s.resetSettings("DISCARD ALL")
	case sqlscan.KindResetAll:
		if s.inTransaction() {
			return true, s.refuse(wire.Errorf(wire.CodeFeatureNotSupported,
				"pgtoken supports RESET ALL only outside a transaction block"), true)
		}
		return true, s.resetSettings("RESET")
	case sqlscan.KindDeallocate:
		if s.transparent() {
			return false, nil // on the session's own connection
		}
		s.waitSettled() // a pipelined PREPARE's outcome decides
		s.mu.Lock()
		existed := true
		if st.Name == "" {
			s.stmts = nil
		} else {
			_, existed = s.stmts[st.Name]
			delete(s.stmts, st.Name)
		}
		s.mu.Unlock()
		switch {
		case st.Name == "":
			return true, s.localAnswer(wire.AppendCommandComplete(nil, "DEALLOCATE ALL"), true)
		case !existed:
			return true, s.refuse(wire.Errorf(wire.CodeInvalidSQLStatementName, "prepared statement %q does not exist", st.Name), true)
		}
		return true, s.localAnswer(wire.AppendCommandComplete(nil, "DEALLOCATE"), true)
	}
	return false, nil
}

// deallocatesAll reports whether a Query holds DEALLOCATE ALL.
func deallocatesAll(stmts []sqlscan.Statement) bool {
	for i := range stmts {
		if stmts[i].Kind == sqlscan.KindDeallocate && stmts[i].Name == "" {
			return true
		}
	}
	return false
}

// answeredHere reports whether pgtoken answers a statement of this kind
// itself (as a query of its own): it acts on the client's settings or
// statements, which live in pgtoken.
func answeredHere(st *sqlscan.Statement) bool {
	switch st.Kind {
	case sqlscan.KindResetAll, sqlscan.KindDeallocate:
		return true
	case sqlscan.KindDiscard:
		return st.Name == "all"
	}
	return false
}

// inTransaction reports whether the client is inside a transaction (or may
// be, with its answers in flight); pgtoken's own upkeep does not count.
func (s *Session) inTransaction() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.t.InTransaction()
}

// resetSettings makes the client's settings its startup settings again and
// reports the ones the client is told about that change, as Postgres does.
// The server connection catches up at the client's next transaction: it
// has settings the client no longer wants, so it is reset first.
func (s *Session) resetSettings(tag string) error {
	s.mu.Lock()
	before := s.params
	s.params = cloneMap(s.startParams)
	s.settingsChanged(false)
	s.lastReset = s.settingsGen
	params := s.params
	ownConn := false
	if s.conn != nil {
		// The server connection's settings are reset with the next
		// prelude; on the client's own connection (session mode), its
		// settings alone, at once, as RESET ALL does directly (the
		// transaction defaults among them must be gone before the next
		// transaction starts).
		s.noteOwnConn()
		if ownConn = s.ownConn; !ownConn {
			s.t.Foreign()
		}
	}
	s.mu.Unlock()
	if ownConn {
		c, err := s.claim()
		if err != nil {
			return s.claimFailed(err, true)
		}
		s.mu.Lock()
		if s.conn == c {
			s.resetAhead(c)
		}
		s.mu.Unlock()
	}
	var out []byte
	for name, rn := range reportedName {
		old, had := before[name]
		now, has := params[name]
		if had == has && old == now {
			continue
		}
		if !has {
			now = s.serverDefault(rn)
		}
		out = appendParameterStatus(out, rn, now)
	}
	out = wire.AppendCommandComplete(out, tag)
	return s.localAnswer(out, true)
}

// discardAll runs the client's DISCARD ALL on its own server connection
// (session mode): its statements, temporary objects, locks, LISTENs and
// settings go, and its settings become its startup settings again, set on
// the server with its next transaction; the client is told those values,
// as Postgres reports the values RESET ALL returns to.
func (s *Session) discardAll() error {
	c, err := s.claim()
	if err != nil {
		return s.claimFailed(err, true)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.conn != c {
			s.mu.Unlock()
			err := s.localError(errLost(), true)
			s.mu.Lock()
			return err
		}
		if step, _ := s.t.Query(nil, nil); !step.Wait {
			break
		}
		s.waitFor(c, s.settled)
	}
	var report []byte
	for name, rn := range reportedName {
		if v, ok := s.startParams[name]; ok {
			report = appendParameterStatus(report, rn, v)
		}
	}
	beginQuery(c)
	s.t.Push(tracker.Unit{Kind: tracker.Query, Append: report, Purpose: pDiscardAll, Ref: c})
	c.W.Query("DISCARD ALL")
	return nil
}

// serverDefault is the server's value of a reported parameter, as the pool
// last saw it.
func (s *Session) serverDefault(name string) string {
	return s.pool.ServerParams()[name]
}

func appendParameterStatus(dst []byte, name, value string) []byte {
	b, err := (&pgproto3.ParameterStatus{Name: name, Value: value}).Encode(dst)
	if err != nil {
		return dst // a value too long for the protocol: not reported
	}
	return b
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// sqlRewrite is how a SQL-level PREPARE or EXECUTE goes to the server.
type sqlRewrite struct {
	stmt    stmtRef
	local   bool   // answer PREPARE without the server: the connection has it
	prepare string // PREPARE under pgtoken's name, sent in a Query of its own
	exec    string // EXECUTE under pgtoken's name ("" for a PREPARE)
}

// sqlPrepared handles SQL-level PREPARE and EXECUTE sent as a Query of their
// own: the statement gets pgtoken's name on the server, and EXECUTE on a
// connection that lacks it is preceded by the PREPARE. Under mu.
func (s *Session) sqlPrepared(c *pool.Conn, sql string, st *sqlscan.Statement) (sqlRewrite, *wire.Error) {
	body := sql[st.Start:st.End]
	nameEnd := afterName(body)
	if nameEnd < 0 {
		return sqlRewrite{}, wire.Errorf(wire.CodeSyntaxError, "pgtoken could not read the prepared statement's name")
	}
	switch st.Kind {
	case sqlscan.KindPrepare:
		if _, ok := s.stmts[st.Name]; ok {
			return sqlRewrite{}, wire.Errorf(wire.CodeDuplicatePreparedStmt, "prepared statement %q already exists", st.Name)
		}
		server := serverStmtName(s.ident.Role, nil, body[nameEnd:], "sql")
		cs := &clientStmt{server: server, prepare: "PREPARE " + server + body[nameEnd:]}
		if s.stmts == nil {
			s.stmts = map[string]*clientStmt{}
		}
		name := strings.Clone(st.Name) // st.Name may point into the client's read buffer
		s.stmts[name] = cs
		r := sqlRewrite{stmt: stmtRef{c: c, st: cs, name: name}}
		if s.t.Status() != 'E' && c.Stmts.Use(server, s.batchGen) {
			r.local = true
			return r, nil
		}
		s.evict(c, c.Stmts.Add(server, s.batchGen))
		r.prepare = cs.prepare
		return r, nil
	case sqlscan.KindExecute:
		cs := s.stmts[st.Name]
		if cs == nil {
			return sqlRewrite{}, wire.Errorf(wire.CodeInvalidSQLStatementName, "prepared statement %q does not exist", st.Name)
		}
		r := sqlRewrite{stmt: stmtRef{c: c, st: cs}, exec: "EXECUTE " + cs.server + body[nameEnd:]}
		if c.Stmts.Use(cs.server, s.batchGen) {
			return r, nil
		}
		if cs.prepare == "" {
			return sqlRewrite{}, wire.Errorf(wire.CodeFeatureNotSupported,
				"pgtoken can EXECUTE only statements prepared with SQL PREPARE; bind protocol-level statements instead")
		}
		s.evict(c, c.Stmts.Add(cs.server, s.batchGen))
		r.prepare = cs.prepare
		return r, nil
	}
	return sqlRewrite{}, wire.Errorf(wire.CodeInternal, "not a PREPARE or EXECUTE")
}

// afterName returns the offset just past the object name that follows the
// leading keyword (PREPARE or EXECUTE) of a statement, or -1.
func afterName(stmt string) int {
	i := skipTrivia(stmt, 0)
	for i < len(stmt) && isIdentByte(stmt[i]) {
		i++ // the keyword
	}
	i = skipTrivia(stmt, i)
	if i >= len(stmt) {
		return -1
	}
	if stmt[i] == '"' {
		for j := i + 1; j < len(stmt); j++ {
			if stmt[j] == '"' {
				if j+1 < len(stmt) && stmt[j+1] == '"' {
					j++
					continue
				}
				return j + 1
			}
		}
		return -1
	}
	j := i
	for j < len(stmt) && isIdentByte(stmt[j]) {
		j++
	}
	if j == i {
		return -1
	}
	return j
}

func isIdentByte(c byte) bool {
	return c == '_' || c == '$' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80
}

// skipTrivia skips whitespace and comments from i.
func skipTrivia(sql string, i int) int {
	for i < len(sql) {
		switch c := sql[i]; {
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
			return i
		}
	}
	return i
}
