package session

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/wire"
)

// ConsoleDatabase is the database name that reaches the admin console, for
// a token whose role is one of the admin roles.
const ConsoleDatabase = "pgtoken"

// AdminBackend is what the console asks of the rest of pgtoken.
type AdminBackend interface {
	// Version is pgtoken's version.
	Version() string
	// ConfigRows lists the effective settings, secrets redacted.
	ConfigRows() []ConfigRow
	// Reload re-reads the configuration and applies what can change
	// without a restart.
	Reload() error
}

// ConfigRow is one row of SHOW CONFIG.
type ConfigRow struct {
	Key, Value, Default string
	Changeable          bool // applied by RELOAD (and SIGHUP)
}

// SQLSTATEs the console answers with.
const (
	codeUndefinedObject = "42704"
	codeQueryCanceled   = "57014"
	codeConfigFile      = "F0000"
)

// consoleHelp lists the console's commands.
var consoleHelp = [][2]string{
	{"SHOW POOLS", "one row per pool: clients, server connections, longest wait"},
	{"SHOW CLIENTS", "one row per client connection"},
	{"SHOW SERVERS", "one row per server connection"},
	{"SHOW STATS", "totals per database: transactions, queries, time"},
	{"SHOW CONFIG", "the effective settings (secrets redacted)"},
	{"SHOW VERSION", "pgtoken's version"},
	{"SHOW HELP", "this list"},
	{"RELOAD", "re-read the configuration (as SIGHUP does)"},
	{"PAUSE [db]", "wait until the transactions running end, close the server connections, hold new transactions"},
	{"RESUME [db]", "end a PAUSE"},
	{"KILL_CLIENT id", "close a client (id as in SHOW CLIENTS) with FATAL 57P01"},
}

// console is an admin client on database pgtoken: it answers simple
// queries itself and never touches a server connection.
type console struct {
	srv   *Server
	id    uint32
	key   []byte
	nc    net.Conn
	r     *wire.Reader
	log   *zap.Logger
	ident *authn.Identity

	mu       sync.Mutex // serializes writes to nc; guards the fields below
	cancelFn context.CancelFunc
	closed   bool
}

// openConsole finishes the login of an admin client: it refuses roles that
// are not admin roles, registers the console and greets the client.
func (s *Server) openConsole(a *attempt, entry *client, r *wire.Reader, ident *authn.Identity, params map[string]string, secure bool) (*console, error) {
	log := a.log.With(zap.String("sub", ident.Sub), zap.String("role", ident.Role))
	if !(*s.admins.Load())[ident.Role] {
		s.obs.AuthFailed(AuthNotAdmin)
		return nil, wire.Fatalf(wire.CodeInsufficientPrivilege,
			"permission denied for the pgtoken admin console: role %q is not one of admin_roles", ident.Role)
	}
	var key [4]byte
	_, _ = rand.Read(key[:])
	c := &console{srv: s, id: a.id, key: key[:], nc: a.conn, r: r, log: log, ident: ident}
	entry.con, entry.appName, entry.tls = c, cleanAppName(params["application_name"]), secure
	s.sessMu.Lock()
	for c.id == 0 || s.clients[c.id] != nil {
		c.id = s.newID()
	}
	s.clients[c.id] = entry
	s.sessMu.Unlock()
	r.SetLimit(1 << 20)

	out := append([]byte(nil), wire.MsgAuthenticationOK...)
	version := "dev"
	if b := s.cfg.Admin; b != nil {
		version = b.Version()
	}
	for _, p := range [][2]string{
		{"DateStyle", "ISO, MDY"},
		{"application_name", entry.appName},
		{"client_encoding", "UTF8"},
		{"integer_datetimes", "on"},
		{"server_encoding", "UTF8"},
		{"server_version", version + "/pgtoken"},
		{"session_authorization", ident.Role},
		{"standard_conforming_strings", "on"},
	} {
		out, _ = (&pgproto3.ParameterStatus{Name: p[0], Value: p[1]}).Encode(out)
	}
	out, _ = (&pgproto3.BackendKeyData{ProcessID: c.id, SecretKey: c.key}).Encode(out)
	rfq := wire.ReadyForQuery('I')
	out = append(out, rfq[:]...)
	if _, err := a.conn.Write(out); err != nil {
		return c, err
	}
	return c, nil
}

// run serves the console until the client leaves or is terminated.
func (c *console) run() {
	_ = c.nc.SetDeadline(time.Time{})
	c.log.Info("admin console connected")
	defer c.log.Info("admin console disconnected")
	skipping := false // after an extended-protocol message, until Sync
	for {
		typ, _, err := c.r.Next()
		if err != nil {
			return
		}
		var out []byte
		switch typ {
		case 'X':
			return
		case 'Q':
			body, err := c.r.Body()
			if err != nil {
				if errors.Is(err, wire.ErrMessageTooLarge) {
					_ = c.r.Skip()
					out = appendError(out, wire.Errorf(wire.CodeProgramLimitExceeded, "admin command too long"))
					out = appendReady(out)
					break
				}
				return
			}
			q, ok := wire.QueryText(body)
			if !ok {
				c.fatal(wire.Fatalf(wire.CodeProtocolViolation, "malformed Query message"))
				return
			}
			out = c.exec(string(q))
		case 'P', 'B', 'D', 'E', 'C', 'H':
			if err := c.r.Skip(); err != nil {
				return
			}
			if !skipping && typ != 'H' {
				out = appendError(out, wire.Errorf(wire.CodeFeatureNotSupported,
					"the pgtoken admin console answers only simple queries").
					WithHint("Use psql, or send the command as a simple Query."))
				skipping = true
			}
		case 'S':
			if err := c.r.Skip(); err != nil {
				return
			}
			skipping = false
			out = appendReady(out)
		case 'F':
			if err := c.r.Skip(); err != nil {
				return
			}
			out = appendError(out, wire.Errorf(wire.CodeFeatureNotSupported, "the pgtoken admin console calls no functions"))
			out = appendReady(out)
		default:
			c.fatal(wire.Fatalf(wire.CodeProtocolViolation, "invalid frontend message type %q", typ))
			return
		}
		if len(out) > 0 && !c.write(out) {
			return
		}
	}
}

// write sends b unless the console was terminated.
func (c *console) write(b []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	_, err := c.nc.Write(b)
	return err == nil
}

// fatal sends a FATAL error and closes the console.
func (c *console) fatal(e *wire.Error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	_ = c.nc.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _ = c.nc.Write(appendError(nil, e))
	_ = c.nc.Close()
	if c.cancelFn != nil {
		c.cancelFn()
	}
}

// terminate closes the console from another goroutine (KILL_CLIENT,
// shutdown).
func (c *console) terminate(e *wire.Error) {
	c.fatal(e)
	c.log.Info("admin console terminated", zap.String("reason", e.Message))
}

// cancelCommand cancels the running command (a CancelRequest): a PAUSE
// stops waiting.
func (c *console) cancelCommand() {
	c.mu.Lock()
	if c.cancelFn != nil {
		c.cancelFn()
	}
	c.mu.Unlock()
}

// exec runs the commands of one Query (separated by ';') and returns the
// answer, ending with ReadyForQuery. An error stops the rest.
func (c *console) exec(sql string) []byte {
	var out []byte
	n := 0
	for _, cmd := range strings.Split(sql, ";") {
		cmd = strings.TrimSpace(cmd)
		if cmd == "" {
			continue
		}
		n++
		c.log.Info("admin command", zap.String("command", cmd))
		b, err := c.command(cmd)
		if err != nil {
			out = appendError(out, err)
			break
		}
		out = append(out, b...)
	}
	if n == 0 {
		out = append(out, wire.MsgEmptyQueryResponse...)
	}
	return appendReady(out)
}

// command runs one console command.
func (c *console) command(cmd string) ([]byte, error) {
	words := strings.Fields(cmd)
	verb := strings.ToUpper(words[0])
	args := words[1:]
	usage := func(form string) error {
		return wire.Errorf(wire.CodeSyntaxError, "usage: %s", form)
	}
	switch verb {
	case "SHOW":
		if len(args) != 1 {
			return nil, usage("SHOW POOLS | CLIENTS | SERVERS | STATS | CONFIG | VERSION | HELP")
		}
		switch strings.ToUpper(args[0]) {
		case "POOLS":
			return c.showPools(), nil
		case "CLIENTS":
			return c.showClients(), nil
		case "SERVERS":
			return c.showServers(), nil
		case "STATS":
			return c.showStats(), nil
		case "CONFIG":
			return c.showConfig()
		case "VERSION":
			rs := result{cols: []column{{"version", oidText}}}
			v := "dev"
			if b := c.srv.cfg.Admin; b != nil {
				v = b.Version()
			}
			rs.add("pgtoken " + v)
			return rs.encode("SHOW"), nil
		case "HELP":
			rs := result{cols: []column{{"command", oidText}, {"description", oidText}}}
			for _, h := range consoleHelp {
				rs.add(h[0], h[1])
			}
			return rs.encode("SHOW"), nil
		}
		return nil, wire.Errorf(wire.CodeSyntaxError, "unknown SHOW item %q", args[0]).
			WithHint("SHOW HELP lists the commands.")
	case "RELOAD":
		if len(args) != 0 {
			return nil, usage("RELOAD")
		}
		b := c.srv.cfg.Admin
		if b == nil {
			return nil, wire.Errorf(wire.CodeFeatureNotSupported, "RELOAD is not available here")
		}
		if err := b.Reload(); err != nil {
			return nil, wire.Errorf(codeConfigFile, "reload refused; the configuration in use stays: %v", err)
		}
		return wire.AppendCommandComplete(nil, "RELOAD"), nil
	case "PAUSE", "RESUME":
		if len(args) > 1 {
			return nil, usage(verb + " [database]")
		}
		db := ""
		if len(args) == 1 {
			db = strings.Trim(args[0], `"`)
		}
		if verb == "RESUME" {
			if err := c.srv.Resume(db); err != nil {
				return nil, err
			}
			return wire.AppendCommandComplete(nil, "RESUME"), nil
		}
		ctx, cancel := context.WithCancel(c.srv.ctx)
		c.mu.Lock()
		c.cancelFn = cancel
		c.mu.Unlock()
		err := c.srv.Pause(ctx, db)
		c.mu.Lock()
		c.cancelFn = nil
		c.mu.Unlock()
		cancel()
		if errors.Is(err, context.Canceled) {
			return nil, wire.Errorf(codeQueryCanceled, "canceling statement due to user request").
				WithHint("The pool stays paused: RESUME undoes PAUSE.")
		}
		if err != nil {
			var we *wire.Error
			if !errors.As(err, &we) {
				err = wire.Errorf("55000", "%v", err)
			}
			return nil, err
		}
		return wire.AppendCommandComplete(nil, "PAUSE"), nil
	case "KILL_CLIENT":
		if len(args) != 1 {
			return nil, usage("KILL_CLIENT id")
		}
		id, err := strconv.ParseUint(args[0], 10, 32)
		if err != nil {
			return nil, usage("KILL_CLIENT id (a number from SHOW CLIENTS)")
		}
		if !c.srv.Kill(uint32(id)) {
			return nil, wire.Errorf(codeUndefinedObject, "no client with id %d", id)
		}
		return wire.AppendCommandComplete(nil, "KILL_CLIENT"), nil
	}
	return nil, wire.Errorf(wire.CodeSyntaxError, "unknown admin command %q", words[0]).
		WithHint("SHOW HELP lists the commands.")
}

func (c *console) showPools() []byte {
	rs := result{cols: []column{
		{"database", oidText}, {"user", oidText},
		{"cl_active", oidInt8}, {"cl_waiting", oidInt8},
		{"sv_active", oidInt8}, {"sv_idle", oidInt8}, {"sv_used", oidInt8}, {"sv_login", oidInt8},
		{"maxwait", oidInt8}, {"maxwait_us", oidInt8}, {"pool_mode", oidText},
		{"pool_size", oidInt8}, {"paused", oidInt8},
	}}
	for _, p := range c.srv.Stats().Pools {
		rs.add(p.Database, p.User, max(p.Clients-p.Waiting, 0), p.Waiting,
			p.Active, p.Idle, 0, p.Connecting,
			int64(p.MaxWait/time.Second), int64(p.MaxWait%time.Second/time.Microsecond), string(p.Mode),
			p.Size, p.Paused)
	}
	return rs.encode("SHOW")
}

func (c *console) showClients() []byte {
	rs := result{cols: []column{
		{"type", oidText}, {"user", oidText}, {"database", oidText}, {"state", oidText},
		{"addr", oidText}, {"port", oidInt8}, {"local_addr", oidText}, {"local_port", oidInt8},
		{"connect_time", oidText}, {"tls", oidText}, {"application_name", oidText},
		{"id", oidInt8}, {"sub", oidText}, {"server_pid", oidInt8},
	}}
	s := c.srv
	s.sessMu.RLock()
	entries := make([]*client, 0, len(s.clients))
	for _, e := range s.clients {
		entries = append(entries, e)
	}
	s.sessMu.RUnlock()
	type row struct {
		id  uint32
		val []any
	}
	rows := make([]row, 0, len(entries))
	for _, e := range entries {
		var (
			id            uint32
			role, sub, db string
			state         = "idle"
			nc            net.Conn
			start         time.Time
			serverPID     any
		)
		if e.con != nil {
			id, role, sub, db, state, nc = e.con.id, e.con.ident.Role, e.con.ident.Sub, ConsoleDatabase, "active", e.con.nc
		} else {
			sess := e.sess
			id, role, sub, db, nc, start = sess.id, sess.ident.Role, sess.ident.Sub, sess.db, sess.nc, sess.start
			sess.mu.Lock()
			if sess.conn != nil {
				state, serverPID = "active", int64(sess.conn.PID)
			}
			sess.mu.Unlock()
		}
		ra, rp := splitAddr(nc.RemoteAddr())
		la, lp := splitAddr(nc.LocalAddr())
		tlsv := ""
		if tc, ok := nc.(*tls.Conn); ok {
			tlsv = tls.VersionName(tc.ConnectionState().Version)
		}
		var connected any
		if !start.IsZero() {
			connected = start
		}
		rows = append(rows, row{id, []any{"C", role, db, state, ra, rp, la, lp, connected, tlsv, e.appName, int64(id), sub, serverPID}})
	}
	slices.SortFunc(rows, func(a, b row) int { return cmp.Compare(a.id, b.id) })
	for _, r := range rows {
		rs.add(r.val...)
	}
	return rs.encode("SHOW")
}

func (c *console) showServers() []byte {
	rs := result{cols: []column{
		{"type", oidText}, {"user", oidText}, {"database", oidText}, {"state", oidText},
		{"addr", oidText}, {"port", oidInt8}, {"local_addr", oidText}, {"local_port", oidInt8},
		{"connect_time", oidText}, {"request_time", oidText}, {"remote_pid", oidInt8}, {"client_id", oidInt8},
	}}
	s := c.srv
	s.poolsMu.Lock()
	names := make([]string, 0, len(s.pools))
	for name := range s.pools {
		names = append(names, name)
	}
	slices.Sort(names)
	pools := make([]*poolRef, 0, len(names))
	for _, name := range names {
		pools = append(pools, &poolRef{name, s.pools[name].User(), s.pools[name].Conns()})
	}
	s.poolsMu.Unlock()
	for _, p := range pools {
		slices.SortFunc(p.conns, func(a, b poolConn) int { return cmp.Compare(a.PID, b.PID) })
		for _, ci := range p.conns {
			state := "idle"
			var link any
			if ci.InUse {
				state = "active"
			}
			if sess, ok := ci.Handler.(*Session); ok {
				link = int64(sess.id)
			}
			ra, rp := splitAddr(ci.Remote)
			la, lp := splitAddr(ci.Local)
			used := ci.LastUsed
			if used.IsZero() {
				used = ci.Born
			}
			rs.add("S", p.user, p.name, state, ra, rp, la, lp, ci.Born, used, int64(ci.PID), link)
		}
	}
	return rs.encode("SHOW")
}

func (c *console) showStats() []byte {
	rs := result{cols: []column{
		{"database", oidText}, {"total_xact_count", oidInt8}, {"total_query_count", oidInt8},
		{"total_xact_time", oidInt8}, {"total_wait_time", oidInt8}, {"avg_xact_time", oidInt8},
	}}
	for _, p := range c.srv.Stats().Pools {
		avg := int64(0)
		if p.Transactions > 0 {
			avg = p.TransactionTime.Microseconds() / p.Transactions
		}
		rs.add(p.Database, p.Transactions, p.Queries, p.TransactionTime.Microseconds(), p.WaitTime.Microseconds(), avg)
	}
	return rs.encode("SHOW")
}

func (c *console) showConfig() ([]byte, error) {
	b := c.srv.cfg.Admin
	if b == nil {
		return nil, wire.Errorf(wire.CodeFeatureNotSupported, "SHOW CONFIG is not available here")
	}
	rs := result{cols: []column{{"key", oidText}, {"value", oidText}, {"default", oidText}, {"changeable", oidText}}}
	for _, r := range b.ConfigRows() {
		ch := "no"
		if r.Changeable {
			ch = "yes"
		}
		rs.add(r.Key, r.Value, r.Default, ch)
	}
	return rs.encode("SHOW"), nil
}

type poolConn = pool.ConnInfo

// poolRef is one pool's connections, listed for SHOW SERVERS.
type poolRef struct {
	name, user string
	conns      []poolConn
}

func splitAddr(a net.Addr) (string, any) {
	if a == nil {
		return "", nil
	}
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String(), nil
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return host, nil
	}
	return host, int64(n)
}

// Result sets.

const (
	oidInt8 = 20
	oidText = 25
)

type column struct {
	name string
	oid  uint32
}

type result struct {
	cols []column
	rows [][]any
}

func (r *result) add(vals ...any) { r.rows = append(r.rows, vals) }

// encode returns RowDescription, the DataRows and CommandComplete with the
// row count after tag (as Postgres does for SELECT).
func (r *result) encode(tag string) []byte {
	rd := pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(r.cols))}
	for i, c := range r.cols {
		size := int16(-1)
		if c.oid == oidInt8 {
			size = 8
		}
		rd.Fields[i] = pgproto3.FieldDescription{Name: []byte(c.name), DataTypeOID: c.oid, DataTypeSize: size, TypeModifier: -1}
	}
	out, _ := rd.Encode(nil)
	for _, row := range r.rows {
		dr := pgproto3.DataRow{Values: make([][]byte, len(row))}
		for i, v := range row {
			dr.Values[i] = textValue(v)
		}
		out, _ = dr.Encode(out)
	}
	return wire.AppendCommandComplete(out, fmt.Sprintf("%s %d", tag, len(r.rows)))
}

// textValue renders a value in Postgres's text format; nil is NULL.
func textValue(v any) []byte {
	switch x := v.(type) {
	case nil:
		return nil
	case string:
		return []byte(x)
	case int:
		return strconv.AppendInt(nil, int64(x), 10)
	case int64:
		return strconv.AppendInt(nil, x, 10)
	case bool:
		if x {
			return []byte("1")
		}
		return []byte("0")
	case time.Time:
		return []byte(x.UTC().Format("2006-01-02 15:04:05 MST"))
	}
	return []byte(fmt.Sprint(v))
}

func appendError(dst []byte, err error) []byte {
	out, encErr := wire.ToResponse(err).Encode(dst)
	if encErr != nil {
		return dst
	}
	return out
}

func appendReady(dst []byte) []byte {
	rfq := wire.ReadyForQuery('I')
	return append(dst, rfq[:]...)
}
