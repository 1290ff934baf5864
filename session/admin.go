package session

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/wire"
)

// The database names that reach the admin console, for a token whose role
// is one of the admin roles: pgtoken's own, and PgBouncer's, where
// PgBouncer's tools (exporters, dashboards, scripts) connect.
const (
	ConsoleDatabase          = "pgtoken"
	PgBouncerConsoleDatabase = "pgbouncer"
)

// IsConsoleDatabase reports whether db names the admin console (when
// admin_roles is set).
func IsConsoleDatabase(db string) bool {
	return db == ConsoleDatabase || db == PgBouncerConsoleDatabase
}

// AdminBackend is what the console asks of the rest of pgtoken.
type AdminBackend interface {
	// Version is pgtoken's version.
	Version() string
	// ConfigRows lists the effective settings, secrets redacted.
	ConfigRows() []ConfigRow
	// Reload re-reads the configuration and applies what can change
	// without a restart.
	Reload() error
	// Shutdown begins stopping pgtoken (the process exits when it is
	// done) and returns at once.
	Shutdown(ShutdownMode)
}

// ShutdownMode is how the console's SHUTDOWN stops pgtoken.
type ShutdownMode int

// Shutdown modes, as PgBouncer's SHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS].
const (
	// ShutdownNow closes every client at once (as SIGINT).
	ShutdownNow ShutdownMode = iota
	// ShutdownWaitForServers stops accepting, closes clients between
	// transactions and lets those inside one finish it, up to
	// shutdown_timeout (as SIGTERM).
	ShutdownWaitForServers
	// ShutdownWaitForClients stops accepting and exits once every client
	// has disconnected by itself.
	ShutdownWaitForClients
)

// ConfigRow is one row of SHOW CONFIG.
type ConfigRow struct {
	Key, Value, Default string
	Changeable          bool // applied by RELOAD (and SIGHUP)
}

// SQLSTATEs the console answers with.
const (
	codeUndefinedObject        = "42704"
	codeQueryCanceled          = "57014"
	codeConfigFile             = "F0000"
	codeNotInPrerequisiteState = "55000"
)

// consoleHelp lists the console's commands.
var consoleHelp = [][2]string{
	{"SHOW DATABASES", "one row per database: upstream, pool size, min and reserve size, lifetime, connections, paused"},
	{"SHOW POOLS", "one row per pool: clients active and waiting, server connections by state, longest wait"},
	{"SHOW CLIENTS", "one row per client connection"},
	{"SHOW SERVERS", "one row per server connection"},
	{"SHOW SOCKETS", "clients, server connections and logins in progress, one row each"},
	{"SHOW USERS", "one row per client role and upstream user, with its connections"},
	{"SHOW STATS", "per database: totals since start and averages over the last stats period"},
	{"SHOW STATS_TOTALS, STATS_AVERAGES, TOTALS", "the totals, the averages, both over all databases"},
	{"SHOW LISTS", "counts of databases, users, pools, clients, server connections"},
	{"SHOW MEM", "memory: server connection buffers, the Go heap"},
	{"SHOW STATE", "whether pgtoken is active, paused or suspended"},
	{"SHOW PEERS", "the pgtoken peers cancel requests are forwarded to"},
	{"SHOW CONFIG", "the effective settings (secrets redacted)"},
	{"SHOW VERSION", "pgtoken's version"},
	{"SHOW HELP", "this list"},
	{"RELOAD", "re-read the configuration (as SIGHUP does)"},
	{"PAUSE [db]", "wait until the transactions running end, close the server connections, hold new transactions"},
	{"RESUME [db]", "end a PAUSE, KILL or SUSPEND"},
	{"SUSPEND", "hold new transactions of every database at once (RESUME, or the last console leaving, ends it)"},
	{"KILL [db]", "close the clients and server connections at once, hold new transactions"},
	{"KILL_CLIENT id", "close a client (id as in SHOW CLIENTS) with FATAL 57P01"},
	{"RECONNECT [db]", "close each server connection once it is not in use; new ones log in as needed"},
	{"WAIT_CLOSE [db]", "wait until the server connections RECONNECT marked are closed"},
	{"SHUTDOWN", "stop pgtoken now (as SIGINT)"},
	{"SHUTDOWN WAIT_FOR_SERVERS", "stop accepting, let transactions finish, then stop (as SIGTERM)"},
	{"SHUTDOWN WAIT_FOR_CLIENTS", "stop accepting, stop once every client has left"},
}

// console is an admin client on database pgtoken or pgbouncer: it answers simple
// queries itself and never touches a server connection.
type console struct {
	srv   *Server
	id    uint32
	key   []byte
	db    string // the database name it was reached by
	nc    net.Conn
	r     *wire.Reader
	log   *zap.Logger
	ident *authn.Identity
	start time.Time
	// after runs once the answer of the current query has been written
	// (SHUTDOWN); run goroutine only.
	after func()

	// busy: running a command; lastReq: when the last query arrived (unix
	// nanoseconds). For SHOW CLIENTS, read without mu, which a write to a
	// client that does not read may hold.
	busy    atomic.Bool
	lastReq atomic.Int64

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
	db := cmp.Or(params["database"], params["user"])
	now := time.Now()
	c := &console{srv: s, id: a.id, key: key[:], db: db, nc: a.conn, r: r, log: log, ident: ident, start: now}
	c.lastReq.Store(now.UnixNano())
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
	defer c.srv.consoleLeft(c)
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
					out = wire.AppendError(out, wire.Errorf(wire.CodeProgramLimitExceeded, "admin command too long"))
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
				out = wire.AppendError(out, wire.Errorf(wire.CodeFeatureNotSupported,
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
			out = wire.AppendError(out, wire.Errorf(wire.CodeFeatureNotSupported, "the pgtoken admin console calls no functions"))
			out = appendReady(out)
		default:
			c.fatal(wire.Fatalf(wire.CodeProtocolViolation, "invalid frontend message type %q", typ))
			return
		}
		if len(out) > 0 && !c.write(out) {
			return
		}
		if f := c.after; f != nil {
			c.after = nil
			f()
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
	_, _ = c.nc.Write(wire.AppendError(nil, e))
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
	c.busy.Store(true)
	c.lastReq.Store(time.Now().UnixNano())
	defer c.busy.Store(false)
	var out []byte
	n := 0
	for _, cmd := range strings.Split(sql, ";") {
		cmd = strings.TrimSpace(cmd)
		if cmd == "" {
			continue
		}
		n++
		// SHOW at debug: an exporter sends several every scrape.
		level := zap.InfoLevel
		if len(cmd) >= 4 && strings.EqualFold(cmd[:4], "SHOW") {
			level = zap.DebugLevel
		}
		if ce := c.log.Check(level, "admin command"); ce != nil {
			ce.Write(zap.String("command", cmd))
		}
		b, err := c.command(cmd)
		if err != nil {
			out = wire.AppendError(out, err)
			break
		}
		out = append(out, b...)
	}
	if n == 0 {
		out = append(out, wire.MsgEmptyQueryResponse...)
	}
	return appendReady(out)
}

// command runs one console command: a verb and at most two words, as
// PgBouncer's console takes them (a word may be double-quoted).
func (c *console) command(cmd string) ([]byte, error) {
	words := strings.Fields(cmd)
	verb := strings.ToUpper(words[0])
	args := words[1:]
	for i, a := range args {
		if len(a) >= 2 && a[0] == '"' && a[len(a)-1] == '"' {
			args[i] = strings.ReplaceAll(a[1:len(a)-1], `""`, `"`)
		}
	}
	usage := func(form string) error {
		return wire.Errorf(wire.CodeSyntaxError, "usage: %s", form)
	}
	// dbArg is the optional database of PAUSE, RESUME, KILL, RECONNECT,
	// WAIT_CLOSE.
	dbArg := func() (string, error) {
		if len(args) > 1 {
			return "", usage(verb + " [database]")
		}
		if len(args) == 1 {
			return args[0], nil
		}
		return "", nil
	}
	done := func(tag string, err error) ([]byte, error) {
		if err != nil {
			return nil, err
		}
		return wire.AppendCommandComplete(nil, tag), nil
	}
	switch verb {
	case "SHOW":
		if len(args) != 1 {
			return nil, usage("SHOW DATABASES | POOLS | CLIENTS | SERVERS | SOCKETS | USERS | STATS | LISTS | MEM | STATE | CONFIG | VERSION | HELP | ...")
		}
		return c.show(args[0])
	case "SET":
		return nil, wire.Errorf(wire.CodeFeatureNotSupported, "pgtoken's console does not change settings").
			WithHint("Change the configuration and RELOAD.")
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
		return done("RELOAD", nil)
	case "PAUSE", "WAIT_CLOSE":
		db, err := dbArg()
		if err != nil {
			return nil, err
		}
		wait := c.srv.Pause
		if verb == "WAIT_CLOSE" {
			wait = c.srv.WaitClose
		}
		return done(verb, c.cancellable(verb, func(ctx context.Context) error { return wait(ctx, db) }))
	case "RESUME", "KILL", "RECONNECT":
		db, err := dbArg()
		if err != nil {
			return nil, err
		}
		act := map[string]func(string) error{"RESUME": c.srv.Resume, "KILL": c.srv.Kill, "RECONNECT": c.srv.Reconnect}[verb]
		return done(verb, act(db))
	case "SUSPEND":
		if len(args) != 0 {
			return nil, usage("SUSPEND")
		}
		return done(verb, c.srv.Suspend())
	case "KILL_CLIENT":
		if len(args) != 1 {
			return nil, usage("KILL_CLIENT id")
		}
		id, err := strconv.ParseUint(args[0], 10, 32)
		if err != nil {
			return nil, usage("KILL_CLIENT id (a number from SHOW CLIENTS)")
		}
		if !c.srv.KillClient(uint32(id)) {
			return nil, wire.Errorf(codeUndefinedObject, "no client with id %d", id)
		}
		return done(verb, nil)
	case "SHUTDOWN":
		mode := ShutdownNow
		switch {
		case len(args) == 1 && strings.EqualFold(args[0], "WAIT_FOR_SERVERS"):
			mode = ShutdownWaitForServers
		case len(args) == 1 && strings.EqualFold(args[0], "WAIT_FOR_CLIENTS"):
			mode = ShutdownWaitForClients
		case len(args) != 0:
			return nil, usage("SHUTDOWN [WAIT_FOR_SERVERS | WAIT_FOR_CLIENTS]")
		}
		b := c.srv.cfg.Admin
		if b == nil {
			return nil, wire.Errorf(wire.CodeFeatureNotSupported, "SHUTDOWN is not available here")
		}
		c.log.Info("SHUTDOWN from the admin console", zap.String("command", cmd))
		// After the answer is written: SHUTDOWN closes this console too.
		c.after = func() { b.Shutdown(mode) }
		return done(verb, nil)
	}
	return nil, wire.Errorf(wire.CodeSyntaxError, "unknown admin command %q", words[0]).
		WithHint("SHOW HELP lists the commands.")
}

// cancellable runs a command that waits (PAUSE, WAIT_CLOSE) so that a
// CancelRequest (psql's Ctrl-C) stops the wait with 57014.
func (c *console) cancellable(verb string, wait func(context.Context) error) error {
	ctx, cancel := context.WithCancel(c.srv.ctx)
	c.mu.Lock()
	c.cancelFn = cancel
	c.mu.Unlock()
	err := wait(ctx)
	c.mu.Lock()
	c.cancelFn = nil
	c.mu.Unlock()
	cancel()
	if errors.Is(err, context.Canceled) {
		e := wire.Errorf(codeQueryCanceled, "canceling statement due to user request")
		if verb == "PAUSE" {
			e = e.WithHint("The pool stays paused: RESUME undoes PAUSE.")
		}
		return e
	}
	if err != nil {
		var we *wire.Error
		if !errors.As(err, &we) {
			err = wire.Errorf(codeNotInPrerequisiteState, "%v", err)
		}
		return err
	}
	return nil
}

// Result sets.

// Type OIDs of the console's columns.
const (
	oidInt4    = 23
	oidInt8    = 20
	oidText    = 25
	oidNumeric = 1700
)

type column struct {
	name string
	oid  uint32
}

// columns describes a result as PgBouncer's console sources do: one letter
// per column, s text, i int4, q int8, N numeric, T a timestamp sent as text.
func columns(types string, names ...string) []column {
	if len(types) != len(names) {
		panic(fmt.Sprintf("console columns: %d types for %d names", len(types), len(names)))
	}
	cols := make([]column, len(names))
	for i, n := range names {
		oid := map[byte]uint32{'s': oidText, 'T': oidText, 'i': oidInt4, 'q': oidInt8, 'N': oidNumeric}[types[i]]
		if oid == 0 {
			panic(fmt.Sprintf("console columns: type %q", types[i]))
		}
		cols[i] = column{n, oid}
	}
	return cols
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
		switch c.oid {
		case oidInt4:
			size = 4
		case oidInt8:
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
	case uint32:
		return strconv.AppendUint(nil, uint64(x), 10)
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

func appendReady(dst []byte) []byte {
	rfq := wire.ReadyForQuery('I')
	return append(dst, rfq[:]...)
}
