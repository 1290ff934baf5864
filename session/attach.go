package session

import (
	"errors"
	"maps"
	"sort"
	"strings"

	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/wire"
)

// claim returns the server connection this client's next message goes to,
// taking one from the pool when none is attached (fresh is then true). On
// success mu is held and the client goroutine owns conn.W until endBatch.
func (s *Session) claim() (c *pool.Conn, fresh bool, err error) {
	s.mu.Lock()
	for {
		if s.conn != nil && !s.maint {
			s.writing = true
			s.wconn = s.conn
			return s.conn, false, nil
		}
		if s.conn != nil {
			s.cond.Wait() // upkeep runs; it ends in release or a ready conn
			continue
		}
		if s.lostBatch {
			// The conn broke mid-batch: the rest of the batch must not
			// start on a new one (it would run without its prelude).
			s.mu.Unlock()
			return nil, false, errLostBatch
		}
		s.mu.Unlock()
		c, err := s.srv.acquire(s.ctx, s.pool)
		if err != nil {
			return nil, false, err
		}
		s.mu.Lock()
		if !s.attach(c) {
			// The server closed it as it left the pool: take another.
			s.pool.Discard(c)
			continue
		}
		s.writing = true
		s.wconn = c
		return c, true, nil
	}
}

// errLostBatch is claim's answer while the client is still sending the rest
// of a batch whose server connection broke.
var errLostBatch = errors.New("batch lost with its server connection")

// attach makes c this session's server connection (under mu); claimUnit
// brings its settings in line with the client's. It fails when c broke before
// the session was attached: its reader goroutine may have ended without
// seeing the session, so nobody would ever answer for it. (The reader marks
// the conn dead before it looks for a session to tell, and attach looks
// after attaching, so one of the two always sees the other.)
func (s *Session) attach(c *pool.Conn) bool {
	c.Attach(s)
	if c.Dead() {
		c.Detach() // a ServerGone the reader may still send finds s.conn != c
		return false
	}
	s.conn = c
	s.status = 'I'
	s.pending = 0
	s.midBatch = false
	s.skipping = false
	s.cmpl = 0
	s.errored = false
	s.q.clear()
	return true
}

// syncParams queues, as pgtoken's own query, whatever it takes to make c's
// session-level settings equal the client's. It rides in the same write as
// the client's message; its answers are swallowed.
func (s *Session) syncParams(c *pool.Conn) {
	if maps.Equal(c.Params, s.params) {
		return
	}
	var b strings.Builder
	b.WriteString("SELECT ")
	first := true
	item := func(name, value string, reset bool) {
		if !first {
			b.WriteByte(',')
		}
		first = false
		b.WriteString("pg_catalog.set_config(")
		writeLiteral(&b, name)
		b.WriteByte(',')
		if reset {
			b.WriteString("NULL")
		} else {
			writeLiteral(&b, value)
		}
		b.WriteString(",false)")
	}
	for _, name := range sortedKeys(s.params) {
		if v, ok := c.Params[name]; !ok || v != s.params[name] {
			item(name, s.params[name], false)
		}
	}
	for _, name := range sortedKeys(c.Params) {
		if _, ok := s.params[name]; !ok {
			item(name, "", true)
		}
	}
	want := maps.Clone(s.params)
	s.maintQuery(c, b.String(), nil, func(err *wire.Error) {
		if err != nil {
			// Unknown state: force a full resync next time.
			c.Params = map[string]string{"\x00unknown": ""}
			return
		}
		c.Params = want
	})
}

// maintQuery queues and writes one of pgtoken's own queries on c (under mu;
// the caller owns c.W).
func (s *Session) maintQuery(c *pool.Conn, sql string, collect func([]byte), done func(*wire.Error)) {
	beginQuery(c)
	at := c.W.Begin('Q')
	c.W.AppendCString(sql)
	c.W.End(at)
	s.q.push(unit{kind: uQuery, own: ownMaint, collect: collect, done: done})
	s.pending++
}

// beginQuery notes that a simple Query is about to go to c: Postgres drops
// the unnamed statement on every Query.
func beginQuery(c *pool.Conn) {
	c.UnnamedOwner = 0
}

// maybeRelease gives the conn back to the pool once the client's
// transaction is over and nothing is in flight (under mu). In session mode
// the conn stays until the client leaves.
func (s *Session) maybeRelease() {
	c := s.conn
	if c == nil || s.pending > 0 || s.midBatch || s.writing || s.maint || s.cancelling > 0 || s.hold {
		return
	}
	if s.status != 'I' {
		if s.ended {
			s.upkeep(c, "ROLLBACK", nil)
		}
		return
	}
	if s.srv.cfg.Mode == ModeSession && !s.ended {
		s.pool.NoteTransaction(0) // session mode: a transaction ended (metrics, SHOW STATS)
		return
	}
	if s.capture && !s.ended {
		s.startCapture(c)
		return
	}
	if s.srv.cfg.Mode == ModeSession && !s.reset {
		// Leave nothing of this client behind: DISCARD ALL resets settings,
		// drops prepared statements, temp tables, locks and LISTENs.
		s.upkeep(c, "DISCARD ALL", func() {
			s.reset = true
			clear(c.Params)
			clear(c.Prepared)
		})
		return
	}
	s.detach(c)
	s.srv.release(s.pool, c)
}

// detach forgets the conn (under mu).
func (s *Session) detach(c *pool.Conn) {
	s.conn = nil
	s.q.clear()
	c.Detach()
	s.cond.Broadcast()
}

// upkeep runs one of pgtoken's own statements on an otherwise idle conn,
// writing from whichever goroutine noticed the conn went idle (under mu),
// and then tries the release again.
func (s *Session) upkeep(c *pool.Conn, sql string, after func()) {
	s.maint = true
	s.maintQuery(c, sql, nil, func(err *wire.Error) {
		s.maint = false
		if err != nil {
			s.detach(c)
			s.pool.Discard(c)
			return
		}
		if after != nil {
			after()
		}
		s.cond.Broadcast()
	})
	if err := c.Flush(); err != nil {
		s.log.Debug("upkeep write failed", zap.Error(err))
	}
}

// startCapture reads back the session-level settings after a transaction in
// which the client ran SET (or RESET, or set_config(..., false)), so they
// follow the client to other server connections.
func (s *Session) startCapture(c *pool.Conn) {
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
	got := map[string]string{}
	collect := func(row []byte) {
		if name, value, ok := twoTextColumns(row); ok && value != "" {
			// pg_settings spells some names in mixed case (TimeZone);
			// settings are keyed by lowercase name everywhere.
			got[strings.ToLower(name)] = value
		}
	}
	s.maint = true
	s.capture = false
	clear(s.custom)
	s.maintQuery(c, b.String(), collect, func(err *wire.Error) {
		s.maint = false
		if err != nil {
			s.log.Warn("reading back session settings failed", zap.String("message", err.Message))
			s.detach(c)
			s.pool.Discard(c)
			return
		}
		s.params = got
		c.Params = maps.Clone(got)
		s.cond.Broadcast()
	})
	if err := c.Flush(); err != nil {
		s.log.Debug("capture write failed", zap.Error(err))
	}
}

// endBatch is called by the client goroutine before it blocks on the client:
// it writes what it queued for the server, lets the conn go if the
// transaction is over, and flushes the client output.
func (s *Session) endBatch() error {
	if c := s.wconn; c != nil {
		s.wconn = nil
		if err := c.Flush(); err != nil {
			s.log.Debug("write to server failed", zap.Error(err))
		}
		s.mu.Lock()
		s.writing = false
		if s.conn == c {
			s.maybeRelease()
		}
		s.mu.Unlock()
	}
	return s.flushClient()
}

// waitQuiet flushes pending writes and waits until every answer on the
// attached conn is in (or the conn is gone), so the next decision rests on
// the server's reported transaction status.
func (s *Session) waitQuiet() {
	if c := s.wconn; c != nil {
		s.wconn = nil
		_ = c.Flush()
		s.mu.Lock()
		s.writing = false
		if s.conn == c {
			s.maybeRelease()
		}
		s.mu.Unlock()
	}
	_ = s.flushClient()
	s.mu.Lock()
	for s.conn != nil && (s.pending > 0 || s.maint) {
		s.cond.Wait()
	}
	s.mu.Unlock()
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
		if n < 0 {
			return "", "", false
		}
		if len(b) < n {
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
