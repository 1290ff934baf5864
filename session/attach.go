package session

import (
	"context"
	"maps"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/session/tracker"
	"github.com/pgtoken/pgtoken/wire"
)

// Purposes of units whose completion the session acts on (handleDone).
const (
	pOwnParse      tracker.Purpose = iota + 1 // Parse of one of pgtoken's statements (ownParseRef)
	pStmtParse                                // pgtoken's Parse of a client's named statement (stmtRef)
	pUnnamedParse                             // pgtoken's Parse of the client's unnamed statement (stmtRef)
	pClientParse                              // the client's own named Parse (stmtRef)
	pClientUnnamed                            // the client's own unnamed Parse (stmtRef)
	pCloseStmt                                // the client's Close of a statement: forget it (closeRef)
	pSQLPrepare                               // SQL PREPARE (stmtRef)
	pSQLReprepare                             // pgtoken's PREPARE before an EXECUTE on a conn that lacked it (stmtRef)
	pUse                                      // the client's Bind, Describe or Execute of a statement (useRef)
	pCapture                                  // session settings read back (*pool.Conn)
	pOutside                                  // a step of a statement run outside a transaction (*outsideState)
	pOutsideReset                             // its identity reset (*pool.Conn)
	pEnd                                      // the rollback or DISCARD ALL after the client left (*pool.Conn)
	pCheck                                    // login: startup settings checked by the server (*checkState)
	pDiscardAll                               // the client's DISCARD ALL on its own connection (*pool.Conn)
	pOwnBind                                  // Bind of one of pgtoken's statements (*pool.Conn)
	pTxDefaults                               // the transaction defaults set ahead of a client's transaction (txDefaultsRef)
	pResetAhead                               // the hand-over reset as a Query of its own (*pool.Conn)
)

type ownParseRef struct {
	c    *pool.Conn
	name string
}

type stmtRef struct {
	c    *pool.Conn
	st   *clientStmt
	name string // the client's name for it
	// again: c had the server statement already, and a Close of it went
	// first; if the Parse is skipped, so was the Close, and c still has it.
	again bool
}

type useRef struct {
	c      *pool.Conn
	server string // pgtoken's name on the server, "" for the unnamed statement
	gen    uint64 // the unnamed statement's generation
}

// useOf describes the statement a Bind, Describe or Execute uses.
func useOf(c *pool.Conn, st *clientStmt) any {
	if st == nil {
		return nil
	}
	return useRef{c: c, server: st.server, gen: st.gen}
}

// stickyWork is what a server connection needs before this client's
// transaction may use it: the hand-over reset, and the client's session
// settings set for the session (replayed under the client's role, after
// its prelude).
type stickyWork struct {
	reset bool
	// settingsOnly: the reset is of the client's own connection (session
	// mode, the hand-over reset done), after a RESET ALL or DISCARD ALL
	// pgtoken answered: only its settings go, not its cursors, locks,
	// LISTENs or temporary objects, as directly.
	settingsOnly bool
	replay       []string // setting names, sorted
	values       map[string]string
}

// resetStmts returns the statements of w's reset (extended protocol).
func (w stickyWork) resetStmts() []*ownStmt {
	if w.settingsOnly {
		return resetStmts[:1]
	}
	return resetStmts
}

// resetText returns w's reset in the simple protocol, and how many
// statements it holds.
func (w stickyWork) resetText() (string, int) {
	if w.settingsOnly {
		return resetStmts[0].sql + ";", 1
	}
	return resetText, resetCount
}

// stickyWork works out what c needs (under mu): the reset when the tracker
// says so or when c has settings this client does not want, and a replay
// of whatever the client's settings and c's differ in.
func (s *Session) stickyWork(c *pool.Conn, reset bool) stickyWork {
	s.noteOwnConn()
	w := stickyWork{reset: reset, values: s.params}
	if !reset {
		for name := range c.Params {
			if _, ok := s.params[name]; !ok {
				w.reset = true
				break
			}
		}
	}
	for name, v := range s.params {
		if cur, ok := c.Params[name]; w.reset || !ok || cur != v {
			w.replay = append(w.replay, name)
		}
	}
	sort.Strings(w.replay)
	w.settingsOnly = w.reset && s.ownConn
	return w
}

// noteOwnConn notes, in session mode, that the server connection holds
// nothing but this client's state once every reset it needed committed
// (under mu); attach forgets it.
func (s *Session) noteOwnConn() {
	if s.transparent() && s.conn != nil && !s.t.ResetPending() {
		s.ownConn = true
	}
}

// args encodes the replay's Bind parameters.
func (w stickyWork) args() []byte {
	vals := make([]string, 0, 2*len(w.replay))
	for _, n := range w.replay {
		vals = append(vals, n, w.values[n])
	}
	return bindArgs(vals)
}

// afterSticky notes that w was queued on c (under mu): c is taken to hold
// the client's settings, and the tracker waits for the transaction that
// carries them to commit.
func (s *Session) afterSticky(c *pool.Conn, w stickyWork) {
	if !w.reset && len(w.replay) == 0 {
		return
	}
	if w.reset {
		s.srv.obs.ServerReset()
		c.IdentityOf = 0 // the reset sets the role to none
	}
	s.t.Sticky()
	c.Params = map[string]string{}
	if !w.reset || len(w.replay) > 0 {
		maps.Copy(c.Params, s.params) // a reset alone leaves c with none
	}
}

// resetAhead sends the hand-over reset as a Query of pgtoken's own, in a
// transaction of its own ahead of the client's batch (which begins with
// BEGIN or SET TRANSACTION, so the reset may not share its transaction). It
// must commit before the client's next sync point relies on it (Sticky);
// if it fails, the server connection is dropped: the client's batch, sent
// behind it, must not run on a connection that may hold another client's
// state. Under mu.
func (s *Session) resetAhead(c *pool.Conn) {
	s.noteOwnConn()
	w := stickyWork{reset: true, settingsOnly: s.ownConn}
	text, _ := w.resetText()
	s.t.Sticky() // from this Query on
	beginQuery(c)
	s.t.Push(tracker.Unit{Kind: tracker.Query, Own: tracker.OwnMaint, Purpose: pResetAhead, Ref: c})
	c.W.Query(text)
	s.afterSticky(c, w)
}

// identityAhead sets the client's role and claims for the session, with
// the hand-over reset first when due and the client's settings after, in a
// Query of pgtoken's own committed ahead of a batch that runs a procedure:
// a procedure that rolls back its transaction then falls back to this
// client's identity, not to the login or to another client's state. If it
// fails, the server connection is dropped. The identity stays for the
// session until the next reset. Under mu.
func (s *Session) identityAhead(c *pool.Conn, reset bool) {
	if !reset && c.IdentityOf == uint64(s.id) {
		return
	}
	w := s.stickyWork(c, reset)
	var text string
	if w.reset {
		text, _ = w.resetText()
		s.t.Sticky() // from this Query on
	}
	text += s.pre.sessionSet()
	if len(w.replay) > 0 {
		text += replayText(w.replay, w.values)
	}
	beginQuery(c)
	s.t.Push(tracker.Unit{Kind: tracker.Query, Own: tracker.OwnMaint, Purpose: pResetAhead, Ref: c})
	c.W.Query(text)
	s.afterSticky(c, w)
	c.IdentityOf = uint64(s.id)
}

// errProcedureMidBatch refuses a procedure that pgtoken cannot keep the
// client's identity under.
func errProcedureMidBatch() *wire.Error {
	return wire.Errorf(wire.CodeFeatureNotSupported,
		"pgtoken runs a procedure (CALL or DO) outside a transaction block only first in its batch, or after one that was: "+
			"if it rolled back, what it runs next would not have the client's identity").WithHint("Send it in a batch of its own (after a Sync), or inside BEGIN ... COMMIT.")
}

// txDefaults are the settings Postgres reads when a transaction starts
// (its isolation, read-only and deferrable modes): a replay inside the
// transaction comes too late for it.
var txDefaults = []string{"default_transaction_deferrable", "default_transaction_isolation", "default_transaction_read_only"}

// presetTxDefaults sets, on a server connection the session just got, the
// client's transaction defaults that c lacks, in a Query of pgtoken's own
// ahead of the client's first message, so that its first transaction
// there starts with them, as directly (a client that connected with
// default_transaction_read_only=on, or SET it, gets a read-only
// transaction). When c needs the hand-over reset, the reset goes in that
// Query first (its RESET ALL would undo them), and the client's first
// transaction waits for it to commit. They are settings anyone may set:
// the login sets them. Under mu.
func (s *Session) presetTxDefaults(c *pool.Conn) {
	reset := s.t.ResetPending()
	var names, stale []string
	for _, n := range txDefaults {
		v, ok := s.params[n]
		cur, has := c.Params[n]
		switch {
		case ok && (reset || !has || cur != v):
			names = append(names, n)
		case !ok && has:
			stale = append(stale, n) // another client's, or one the client reset
		}
	}
	if len(names) == 0 && len(stale) == 0 {
		return
	}
	var text string
	if reset {
		s.noteOwnConn()
		w := stickyWork{reset: true, settingsOnly: s.ownConn}
		text, _ = w.resetText()
		s.t.Sticky() // from this Query on: it must commit
		s.afterSticky(c, w)
		stale = nil
	}
	for _, n := range stale {
		text += "RESET " + n + ";" // one of txDefaults: a plain name
		delete(c.Params, n)
	}
	if len(names) > 0 {
		text += replayText(names, s.params)
	}
	beginQuery(c)
	s.t.Push(tracker.Unit{Kind: tracker.Query, Own: tracker.OwnMaint, Purpose: pTxDefaults, Ref: txDefaultsRef{c, names}})
	c.W.Query(text)
	if c.Params == nil {
		c.Params = map[string]string{}
	}
	for _, n := range names {
		c.Params[n] = s.params[n]
	}
}

// txDefaultsRef is presetTxDefaults' Query: the names it set on c.
type txDefaultsRef struct {
	c     *pool.Conn
	names []string
}

// simplePrelude returns the text that goes in front of a client's Query
// text (or after a cut in it) and how many statements it holds: the reset
// when due, the prelude, and the settings replay (under mu).
func (s *Session) simplePrelude(c *pool.Conn, reset bool) (string, int) {
	w := s.stickyWork(c, reset)
	if !w.reset && len(w.replay) == 0 {
		return s.pre.simple, s.pre.statements
	}
	var b strings.Builder
	n := s.pre.statements
	if w.reset {
		text, k := w.resetText()
		b.WriteString(text)
		n += k
	}
	b.WriteString(s.pre.simple)
	if len(w.replay) > 0 {
		b.WriteString(replayText(w.replay, w.values))
		n++
	}
	s.afterSticky(c, w)
	return b.String(), n
}

// capturePipelined queues, right behind a Query or batch that may end the
// client's transaction, a read-back of its session settings when it
// changed them, so they follow it to other server connections (under mu).
// A read-back that runs inside a transaction is tentative and is done
// again once the transaction may have ended.
func (s *Session) capturePipelined(c *pool.Conn) {
	if !s.capture || !s.t.MayBeIdle() || s.captureGen == int64(s.settingsGen) {
		return // nothing to read, or a read-back of the same changes is on its way
	}
	var b strings.Builder
	b.WriteString("SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session'")
	names := sortedKeys(s.custom)
	for name := range s.params {
		if strings.Contains(name, ".") && !s.custom[name] {
			names = append(names, name)
		}
	}
	if len(names) > 0 {
		b.WriteString(" UNION ALL SELECT n, pg_catalog.current_setting(n, true) FROM (VALUES ")
		for i, n := range names {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteByte('(')
			writeLiteral(&b, n)
			b.WriteString("::text)")
		}
		b.WriteString(") v(n)")
	}
	beginQuery(c)
	s.captureGen = int64(s.settingsGen)
	s.t.Push(tracker.Unit{Kind: tracker.Query, Own: tracker.OwnMaint, Collect: true, Purpose: pCapture, Ref: captureRef{c: c, gen: s.settingsGen}})
	c.W.Query(b.String())
}

// captureRef is a settings read-back: its conn, and the count of setting
// changes it reflects.
type captureRef struct {
	c   *pool.Conn
	gen uint64
}

// settingsChanged notes a change of the client's session settings (under
// mu): a SET it ran (read back later), or a RESET ALL / DISCARD ALL
// pgtoken answered (which read-backs already on their way predate).
func (s *Session) settingsChanged(runOnServer bool) {
	s.settingsGen++
	s.capture = runOnServer
}

// captured applies a settings read-back (under mu).
func (s *Session) captured(r captureRef, d tracker.Done) {
	c := r.c
	if int64(r.gen) == s.captureGen {
		s.captureGen = -1
	}
	if d.Err != nil {
		if d.Err != tracker.ErrSkipped && d.Err != tracker.ErrLost && d.Err.Code != "25P02" {
			s.log.Warn("reading back session settings failed", zap.String("sqlstate", d.Err.Code), zap.String("message", d.Err.Message))
		}
		return
	}
	if d.Status != 'I' || s.t.ResetPending() || r.gen < s.lastReset {
		// Inside a transaction that may still roll back, on a conn
		// whose reset rolled back (so it holds another client's
		// settings, not this one's), or from before a RESET ALL or
		// DISCARD ALL pgtoken answered: read again later, or not at all.
		return
	}
	got := map[string]string{}
	for _, row := range d.Rows {
		name, value, ok := twoTextColumns(row)
		if !ok || value == "" {
			continue
		}
		// pg_settings spells some names in mixed case (TimeZone);
		// settings are keyed by lowercase name everywhere.
		name = strings.ToLower(name)
		if s.srv.cfg.Policy.CheckSetting(name, value) != "" {
			continue // the identity pgtoken set, never a client setting
		}
		got[name] = value
	}
	s.params = got
	if r.gen == s.settingsGen {
		s.capture = false // nothing changed since it was queued
	}
	if s.conn == c {
		c.Params = maps.Clone(got)
	}
}

// closeStale closes, first thing on c, the statements Postgres reported
// stale, so they are parsed again when next used (under mu, at a point
// where the server runs what it is sent: outside any failed batch).
func (s *Session) closeStale(c *pool.Conn) {
	names, epoch := c.Pool().StaleSince(c.StaleSeen)
	for _, name := range names {
		if c.Stmts.Remove(name) {
			c.Stale = append(c.Stale, name)
		}
	}
	c.StaleSeen = epoch
	for _, name := range c.Stale {
		s.t.Push(tracker.Unit{Kind: tracker.Close, Own: tracker.OwnMaint})
		c.W.Target('C', 'S', name)
	}
	c.Stale = c.Stale[:0]
}

// stale reports whether an error says a prepared statement's plan or types
// no longer match the database (after ALTER TABLE, or a type dropped and
// made again); Postgres keeps failing it until it is prepared again.
func stale(e *wire.Error) bool {
	switch e.Code {
	case wire.CodeFeatureNotSupported:
		return strings.Contains(e.Message, "cached plan must not change result type")
	case wire.CodeInternal:
		return strings.HasPrefix(e.Message, "cache lookup failed for type")
	}
	return false
}

// maybeRelease gives the conn back to the pool once the client's
// transaction is over and nothing is in flight (under mu). In session mode
// the conn stays until the client leaves and is made clean.
func (s *Session) maybeRelease() {
	c := s.conn
	if c == nil || s.writing || s.cancelling || s.hold || !s.t.Idle() || !c.Drained() {
		return // the reader goroutine tries again once drained (ServerIdle)
	}
	if s.srv.cfg.Mode == ModeSession && !s.ended {
		return
	}
	s.letGo(c, false)
}

// letGo detaches the conn and gives it back to the pool, or closes it when
// discard is set or its state is in doubt (under mu).
func (s *Session) letGo(c *pool.Conn, discard bool) {
	clean := s.t.Detach(tracker.ErrLost)
	s.handleDone()
	s.conn = nil
	c.Detach()
	switch {
	case s.wiped:
		c.Owner = 0
	case clean:
		c.Owner = uint64(s.id)
	default:
		c.Owner = pool.OwnerUnknown
	}
	s.cond.Broadcast()
	if discard || c.CancelUncertain {
		s.pool.Discard(c)
		return
	}
	s.srv.release(s.pool, c)
}

// kill drops a conn that still runs something of this client's: the
// server is asked to cancel it, so the transaction ends (rolled back) now
// rather than when the server next writes (under mu).
func (s *Session) kill(c *pool.Conn) {
	go func() {
		ctx, cancel := context.WithTimeout(s.srv.ctx, 5*time.Second)
		defer cancel()
		_ = c.Cancel(ctx)
	}()
	s.letGo(c, true)
}

// waitSettled flushes what was written and waits until every sync point
// sent on the attached conn is answered (or the conn is gone). It never
// waits for the answers to a batch without its Sync: the server may hold
// them until the client sends more.
func (s *Session) waitSettled() {
	s.mu.Lock()
	if c := s.conn; c != nil {
		s.waitFor(c, s.settled)
	}
	s.mu.Unlock()
}

// deferParse answers a named Parse without the server: it came outside any
// transaction while no server connection is free. Taking one would make a
// client that prepares synchronously (pgbench -M prepared, PQprepare) wait
// for connections that its own other sessions hold inside transactions.
// The statement is parsed on the server at its first use (ensureStmt).
// Transaction mode only: in session mode the statement keeps its name on
// the client's own connection, which the client waits for anyway.
func (s *Session) deferParse(name string, st *clientStmt) error {
	st.deferred, st.name = true, name
	s.mu.Lock()
	if s.stmts == nil {
		s.stmts = map[string]*clientStmt{}
	}
	s.stmts[name] = st
	s.answer(wire.MsgParseComplete, false, 0, nil)
	s.mu.Unlock()
	return nil
}

// twoTextColumns decodes a DataRow body of two non-null text columns.
func twoTextColumns(b []byte) (string, string, bool) {
	if len(b) < 2 || b[0] != 0 || b[1] != 2 {
		return "", "", false
	}
	b = b[2:]
	var cols [2]string
	for i := range cols {
		if len(b) < 4 {
			return "", "", false
		}
		n := int(int32(uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])))
		b = b[4:]
		if n < 0 || len(b) < n {
			return "", "", false
		}
		cols[i] = string(b[:n])
		b = b[n:]
	}
	return cols[0], cols[1], true
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// answer gives the client bytes pgtoken answers itself, in order with what
// the server still owes it (rfq adds a ReadyForQuery); purpose and ref
// come back in a completion once the answer is given (under mu).
//
// An answer to a Query while the client's batch is open on the server
// (a Query between extended messages, before their Sync) goes to the
// server as an empty Query whose answers it stands in for: Postgres ends
// the batch's transaction at a Query, and flushes what it owes.
func (s *Session) answer(b []byte, rfq bool, purpose tracker.Purpose, ref any) {
	s.waitSyncing()
	if c := s.conn; rfq && c != nil && s.t.InBatch() {
		s.t.Query(nil, nil)
		s.writing = true
		s.wconn = c
		beginQuery(c)
		s.t.Push(tracker.Unit{Kind: tracker.Query, Answer: append([]byte(nil), b...), Purpose: purpose, Ref: ref})
		c.W.Query("")
		return
	}
	s.out.buf = s.t.Answer(s.out.buf, b, rfq, purpose, ref)
	s.handleDone()
}
