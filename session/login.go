package session

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/session/tracker"
	"github.com/pgtoken/pgtoken/wire"
)

// Startup packet codes.
const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	codeCancelRequest = 80877102
	protocol30        = 3 << 16
)

// Client buffer sizes: small, because idle clients are many.
const (
	clientReadBuffer = 4 << 10
)

// attempt is one client connection's startup phase.
type attempt struct {
	id       uint32    // the connection id, later the session's process id
	nc       net.Conn  // as accepted
	conn     net.Conn  // where answers go: nc, or the TLS conn over it
	deadline time.Time // limits.startup_timeout from accept (zero: none)
	log      *zap.Logger
}

// handle runs one client connection from accept to close.
func (s *Server) handle(nc net.Conn) {
	defer nc.Close()
	a := &attempt{id: s.newID(), nc: nc, conn: nc}
	a.log = s.log.With(zap.Uint32("conn", a.id), zap.String("client", nc.RemoteAddr().String()))
	if max := s.cfg.MaxClientConn; max > 0 && s.conns.Load() >= int64(max) {
		writeFatal(nc, wire.Fatalf(wire.CodeTooManyConnections, "sorry, too many clients already (pgtoken max_client_conn %d)", max))
		return
	}
	s.conns.Add(1)
	defer s.conns.Add(-1)

	if t := s.cfg.StartupTimeout; t > 0 {
		a.deadline = time.Now().Add(t)
		_ = nc.SetDeadline(a.deadline)
	}
	s.sessMu.Lock()
	s.logins[a.id] = nc
	s.sessMu.Unlock()
	if s.draining.Load() {
		_ = nc.Close() // Shutdown may have swept the logins already
	}
	entry := &client{}
	sess, con, err := s.login(a, entry)
	s.sessMu.Lock()
	delete(s.logins, a.id)
	s.sessMu.Unlock()
	defer func() {
		if con != nil {
			s.unregister(con.id, entry)
		} else if sess != nil {
			s.unregister(sess.id, entry)
		}
	}()
	if err != nil {
		if sess == nil || !errors.Is(err, io.EOF) {
			s.loginFailed(a, err)
		}
		if sess != nil {
			// The login failed after the session took a server
			// connection (to check startup settings): let it go.
			sess.release()
		}
		return
	}
	s.obs.LoginSucceeded()
	if con != nil {
		if s.draining.Load() {
			con.terminate(wire.Fatalf(wire.CodeAdminShutdown, "terminating connection due to administrator command"))
			return
		}
		con.run()
		return
	}
	_ = sess.nc.SetDeadline(time.Time{})
	if s.draining.Load() {
		err = errShuttingDown()
	} else {
		sess.log.Info("client connected")
		err = sess.run()
	}
	sess.finish(err)
}

// loginFailed reports a failed login to the client and the log. A
// suspicious failure is answered late (backoff.go).
func (s *Server) loginFailed(a *attempt, err error) {
	if errors.Is(err, errQuietClose) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return
	}
	var ae *authn.Error
	if errors.As(err, &ae) {
		a.log.Info("authentication failed", zap.String("reason", string(ae.Reason)), zap.String("detail", ae.Detail))
	} else if s.draining.Load() && isClosedConn(err) {
		return // closed by Shutdown
	} else {
		a.log.Info("login failed", zap.Error(err))
	}
	var we *wire.Error
	if !errors.As(err, &we) {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			we = wire.Fatalf(wire.CodeProtocolViolation, "pgtoken: startup timed out")
		} else if errors.Is(err, wire.ErrMessageTooLarge) || errors.Is(err, wire.ErrBadLength) {
			we = wire.Fatalf(wire.CodeProtocolViolation, "pgtoken: invalid startup packet: %v", err)
		} else {
			we = wire.Fatalf(wire.CodeInternal, "pgtoken: login failed (details are in the pgtoken log)")
		}
	}
	we.Severity = wire.SeverityFatal
	s.delayFailure(a, err)
	writeFatal(a.conn, we)
}

// authFailed counts a refused login and returns err.
func (s *Server) authFailed(reason string, err error) error {
	s.obs.AuthFailed(reason)
	return err
}

// maxDrainedPassword is the largest oversized password message read to its
// end before it is refused (see readToken).
const maxDrainedPassword = 16 << 20

// errQuietClose ends a connection that needs no answer (a CancelRequest).
var errQuietClose = errors.New("closed without answer")

// writeFatal sends a FATAL ErrorResponse, best effort.
func writeFatal(nc net.Conn, err error) {
	b := wire.AppendError(nil, err)
	_ = nc.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _ = nc.Write(b)
}

// login performs the startup phase and returns a ready session, or a
// console for an admin on database pgtoken. entry is the client's registry
// entry, filled in when it is registered. Its steps: startup negotiation,
// reading the token, admission, and the greeting.
func (s *Server) login(a *attempt, entry *client) (*Session, *console, error) {
	st, err := s.startup(a)
	if err != nil {
		return nil, nil, err
	}
	token, err := s.readToken(a, st)
	if err != nil {
		return nil, nil, err
	}
	adm, err := s.admit(a, st, token)
	if err != nil {
		return nil, nil, err
	}
	if adm.console {
		con, err := s.openConsole(a, entry, st.r, adm.ident, st.params, st.secure)
		return nil, con, err
	}
	return s.greet(a, st, entry, adm)
}

// startup is what startup negotiation learned about a client.
type startup struct {
	r      *wire.Reader
	conn   net.Conn // where answers go: the socket, or TLS over it
	secure bool     // TLS
	params map[string]string
	db     string // the database asked for
}

// startup negotiates TLS and the protocol version and reads the startup
// parameters; it answers a CancelRequest (errQuietClose). A client that may
// not send its token in clear text is refused here, before it does.
func (s *Server) startup(a *attempt) (*startup, error) {
	nc := a.nc
	st := &startup{r: wire.NewReader(nc, clientReadBuffer, s.cfg.MaxPasswordBytes), conn: nc}
	r := st.r
	for st.params == nil {
		body, err := r.ReadStartup(s.cfg.MaxStartupPacket)
		if err != nil {
			return nil, err
		}
		if len(body) < 4 {
			return nil, wire.Fatalf(wire.CodeProtocolViolation, "invalid startup packet")
		}
		code := binary.BigEndian.Uint32(body)
		switch {
		case code == codeSSLRequest:
			if r.Buffered() > 0 {
				// Bytes sent after SSLRequest before the answer would be
				// read as if they came over TLS.
				return nil, wire.Fatalf(wire.CodeProtocolViolation, "received unencrypted data after SSL request")
			}
			if st.secure || s.cfg.TLS == nil {
				if _, err := st.conn.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			if _, err := st.conn.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			tc := tls.Server(nc, s.cfg.TLS)
			if err := tc.Handshake(); err != nil {
				return nil, fmt.Errorf("%w: TLS handshake: %v", errQuietClose, err)
			}
			st.conn, st.secure = tc, true
			a.conn = tc
			r.Reset(tc)
		case code == codeGSSENCRequest:
			if _, err := st.conn.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case code == codeCancelRequest:
			if len(body) < 12 {
				return nil, errQuietClose
			}
			s.cancel(binary.BigEndian.Uint32(body[4:]), body[8:])
			return nil, errQuietClose
		case code>>16 == 3:
			var sm pgproto3.StartupMessage
			if err := sm.Decode(body); err != nil {
				return nil, wire.Fatalf(wire.CodeProtocolViolation, "invalid startup packet")
			}
			st.params = sm.Parameters
			if st.params == nil {
				st.params = map[string]string{}
			}
			if code&0xffff != 0 {
				if err := negotiate(st.conn, st.params); err != nil {
					return nil, err
				}
			}
		default:
			return nil, wire.Fatalf(wire.CodeFeatureNotSupported,
				"unsupported frontend protocol %d.%d: pgtoken supports 3.0", code>>16, code&0xffff)
		}
	}
	if _, ok := st.params["replication"]; ok {
		return nil, wire.Fatalf(wire.CodeFeatureNotSupported, "pgtoken does not support replication connections")
	}
	user := st.params["user"]
	if user == "" {
		return nil, wire.Fatalf(wire.CodeInvalidAuthorization, "no PostgreSQL user name specified in startup packet")
	}
	st.db = st.params["database"]
	if st.db == "" {
		st.db = user
	}
	a.log = a.log.With(zap.String("database", st.db))
	if !st.secure && s.cfg.RequireTLSForRemote && !isLoopback(nc.RemoteAddr()) {
		return nil, s.authFailed(AuthTLSRequired, wire.Fatalf(wire.CodeInvalidAuthorization,
			"pgtoken refuses to receive a token over an unencrypted connection").
			WithHint("Connect with sslmode=require (or verify-full)."))
	}
	return st, nil
}

// readToken asks for the password, which is the token, and reads it.
func (s *Server) readToken(a *attempt, st *startup) (string, error) {
	if _, err := st.conn.Write(wire.MsgAuthCleartext); err != nil {
		return "", err
	}
	r := st.r
	typ, n, err := r.Next()
	if err != nil {
		if errors.Is(err, wire.ErrBadLength) {
			return "", wire.Fatalf(wire.CodeProtocolViolation, "invalid password packet")
		}
		return "", err
	}
	if typ != 'p' {
		return "", wire.Fatalf(wire.CodeProtocolViolation, "expected a password message, got %q", typ)
	}
	body, err := r.Body()
	if err != nil {
		if errors.Is(err, wire.ErrMessageTooLarge) {
			// Read the rest of a moderately oversized password (in pieces,
			// under the startup deadline) before refusing it: closing with
			// unread bytes makes the kernel reset the connection, and the
			// client would see "connection reset" instead of the FATAL.
			if n <= maxDrainedPassword {
				_ = r.Skip()
			}
			return "", s.authFailed(AuthMalformed, &wire.Error{Severity: wire.SeverityFatal, Code: wire.CodeInvalidPassword,
				Message: fmt.Sprintf("token rejected (malformed): the password is larger than %d bytes", s.cfg.MaxPasswordBytes), Err: errNotAToken})
		}
		return "", err
	}
	pw, _, ok := wire.CString(body)
	if !ok || len(pw) == 0 {
		return "", s.authFailed(AuthMalformed, &wire.Error{Severity: wire.SeverityFatal, Code: wire.CodeInvalidPassword,
			Message: "token rejected (malformed): the password is empty; it must be a JWT", Err: errNotAToken})
	}
	return string(pw), nil
}

// admission is a login let in: its identity and prelude, or the console.
type admission struct {
	ident   *authn.Identity
	pre     *prelude
	console bool // the admin console: no prelude, no upstream
}

// admit decides whether a token may log in to the database asked for: the
// token is verified (backoff.go), the database must be one pgtoken serves,
// and the role must pass the lock-down checks (roles.go). Nothing here
// creates a pool for a database pgtoken does not serve.
func (s *Server) admit(a *attempt, st *startup, token string) (*admission, error) {
	ident, err := s.verifyToken(a, token)
	if err != nil {
		var ae *authn.Error
		if errors.As(err, &ae) {
			s.obs.AuthFailed(authReason(ae.Reason))
			return nil, &wire.Error{Severity: wire.SeverityFatal, Code: wire.CodeInvalidPassword,
				Message: fmt.Sprintf("token rejected (%s): %s", ae.Reason, ae.Error()), Err: err}
		}
		return nil, err
	}
	if !ident.ExpiresAt.IsZero() && !time.Now().Before(ident.ExpiresAt) {
		// Inside jwt.leeway the verifier accepts it, but a session may not
		// start a transaction past exp: refuse now rather than at the first
		// statement.
		s.obs.AuthFailed(authReason(authn.ReasonExpired))
		return nil, wire.Fatalf(wire.CodeInvalidPassword, "token rejected (expired): token expired")
	}
	if IsConsoleDatabase(st.db) && len(*s.admins.Load()) > 0 {
		return &admission{ident: ident, console: true}, nil
	}
	if !s.Serves(st.db) {
		// As Postgres says it, and before any pool exists for the name.
		return nil, s.authFailed(AuthDatabase, wire.Fatalf(wire.CodeInvalidCatalogName, "database %q does not exist", st.db))
	}
	pre, err := newPrelude(ident, &s.preludeStmts)
	if err != nil {
		s.obs.AuthFailed(AuthMalformed)
		return nil, &wire.Error{Severity: wire.SeverityFatal, Code: wire.CodeInvalidPassword,
			Message: "token rejected (malformed): " + err.Error()}
	}
	if err := s.checkRole(a, st.db, ident.Role); err != nil { // roles.go
		return nil, err
	}
	return &admission{ident: ident, pre: pre}, nil
}

// greet makes the session of an admitted client and tells the client it
// is in: AuthenticationOk, the server's parameters as this client sees
// them, pgtoken's own cancel key, ReadyForQuery.
func (s *Server) greet(a *attempt, st *startup, entry *client, adm *admission) (*Session, *console, error) {
	nc, conn, r, ident := a.nc, st.conn, st.r, adm.ident
	sess := &Session{
		srv:   s,
		nc:    conn,
		cr:    r,
		ident: ident,
		pre:   adm.pre,
		db:    st.db,
		addr:  nc.RemoteAddr().String(),
		start: time.Now(),
		ctx:   s.ctx,
		id:    a.id,
		t:     tracker.New(s.cfg.Mode == ModeSession),
		// No settings read-back is on its way.
		captureGen: -1,
	}
	sess.cond = sync.NewCond(&sess.mu)
	sess.log = a.log.With(zap.String("sub", ident.Sub), zap.String("role", ident.Role), zap.String("jti", ident.JTI))
	r.SetLimit(s.cfg.MaxMessage)
	r.ReleaseWhenIdle(s.readBufs) // an idle client holds no read buffer
	var err error
	if sess.pool, err = s.poolFor(st.db); err != nil {
		return sess, nil, err
	}
	clientParams, err := startupSettings(st.params, s.cfg.Policy)
	if err != nil {
		return sess, nil, err
	}
	report, err := sess.applyStartup(clientParams)
	if err != nil {
		return sess, nil, err
	}
	entry.appName, entry.tls = cleanAppName(st.params["application_name"]), st.secure
	s.register(sess, entry)
	sess.armExpiry()
	out := append([]byte(nil), wire.MsgAuthenticationOK...)
	for _, name := range sortedKeys(report) {
		ps := pgproto3.ParameterStatus{Name: name, Value: report[name]}
		if out, err = ps.Encode(out); err != nil {
			return sess, nil, err
		}
	}
	kd := pgproto3.BackendKeyData{ProcessID: sess.id, SecretKey: sess.key}
	if out, err = kd.Encode(out); err != nil {
		return sess, nil, err
	}
	rfq := wire.ReadyForQuery('I')
	out = append(out, rfq[:]...)
	if _, err := conn.Write(out); err != nil {
		return sess, nil, err
	}
	return sess, nil, nil
}

// negotiate answers a request for a newer 3.x minor version (and any _pq_
// protocol options) with NegotiateProtocolVersion for 3.0.
func negotiate(conn net.Conn, params map[string]string) error {
	var opts []string
	for k := range params {
		if strings.HasPrefix(k, "_pq_.") {
			opts = append(opts, k)
			delete(params, k)
		}
	}
	m := pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: opts}
	b, err := m.Encode(nil)
	if err != nil {
		return err
	}
	_, err = conn.Write(b)
	return err
}

// isLoopback reports whether addr is a loopback or Unix-socket peer.
func isLoopback(addr net.Addr) bool {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	return false
}

// release lets a session's server connection go, made clean for the
// next client or dropped, once the client is gone.
func (s *Session) release() {
	if c := s.wconn; c != nil {
		s.wconn = nil
		s.flushServer(c)
	}
	s.mu.Lock()
	s.waitSyncing()
	s.ended = true
	s.writing = false
	if s.expiry != nil {
		s.expiry.Stop()
	}
	c := s.conn
	var end []string
	owed := false
	switch {
	case c == nil:
	case !s.t.Quiet() || s.hold:
		// The client left with work in flight: drop the conn rather
		// than hand anyone a connection in an unknown state.
		s.kill(c)
	default:
		// A Sync first, if the server skips messages until one (the
		// client left after an error in a batch it never ended).
		owed = s.t.SyncOwed() || s.t.Skipping()
		if s.t.Status() != 'I' {
			end = append(end, "ROLLBACK")
		}
		if s.srv.cfg.Mode == ModeSession {
			end = append(end, "DISCARD ALL")
		}
	}
	if owed || len(end) > 0 {
		s.writing = true
		if owed {
			s.t.Push(tracker.Unit{Kind: tracker.Sync})
			c.W.Sync()
		}
		for _, q := range end {
			beginQuery(c)
			s.t.Push(tracker.Unit{Kind: tracker.Query, Own: tracker.OwnMaint, Purpose: pEnd, Ref: endRef{c: c, discardAll: q == "DISCARD ALL"}})
			c.W.Query(q)
		}
		s.mu.Unlock()
		s.flushServer(c)
		s.mu.Lock()
		s.writing = false
	}
	if s.conn == c && c != nil {
		s.maybeRelease()
	}
	s.mu.Unlock()
}

// finish ends a session: its error (if any) goes to the client, and its
// server connection is made clean for the next client or dropped.
func (s *Session) finish(err error) {
	if err != nil && !errors.Is(err, io.EOF) {
		var we *wire.Error
		if errors.As(err, &we) {
			s.mu.Lock()
			s.out.buf = wire.AppendError(s.out.buf, we)
			s.mu.Unlock()
			_ = s.flushClient()
			s.log.Info("session ended", zap.String("sqlstate", we.Code), zap.String("reason", we.Message))
		} else if !isClosedConn(err) {
			s.log.Info("session ended", zap.Error(err))
		}
	}
	s.release()
	s.log.Info("client disconnected", zap.Duration("duration", time.Since(s.start)))
}

func isClosedConn(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// applyStartup makes the client's startup settings its session settings
// and works out the ParameterStatus values it is told. Settings that need
// the server to check or normalise them (DateStyle, TimeZone, search_path,
// options=-c ...) take one round trip; application_name and a UTF8
// client_encoding take none.
func (s *Session) applyStartup(p map[string]string) (map[string]string, error) {
	report := maps.Clone(s.pool.ServerParams())
	needServer := report == nil
	for name, v := range p {
		switch name {
		case "application_name":
		case "client_encoding":
			if !isUTF8Name(v) {
				needServer = true
			} else {
				p[name] = "UTF8"
			}
		default:
			needServer = true
		}
	}
	if needServer {
		canon, err := s.checkSettings(p)
		if err != nil {
			return nil, err
		}
		maps.Copy(p, canon)
		report = maps.Clone(s.pool.ServerParams())
	}
	s.params = p
	s.startParams = cloneMap(p)
	if report == nil {
		report = map[string]string{}
	}
	for name, v := range p {
		if rn, ok := reportedName[name]; ok {
			report[rn] = v
		}
	}
	if v, ok := p["application_name"]; ok {
		report["application_name"] = cleanAppName(v)
	}
	report["session_authorization"] = s.ident.Role
	return report, nil
}

// checkSettings asks the server to validate and normalise the client's
// startup settings (as local settings in a transaction of their own, so
// nothing stays behind) and returns the normalised values.
func (s *Session) checkSettings(p map[string]string) (map[string]string, error) {
	var b strings.Builder
	b.WriteString("SELECT n, v FROM (VALUES ")
	names := sortedKeys(p)
	if len(names) == 0 {
		b.WriteString("(NULL::text, NULL::text)")
	}
	for i, name := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('(')
		writeLiteral(&b, name)
		b.WriteString(",pg_catalog.set_config(")
		writeLiteral(&b, name)
		b.WriteByte(',')
		writeLiteral(&b, p[name])
		b.WriteString(",true))")
	}
	b.WriteString(") v(n, v)")
	rows, qerr, err := s.roundTrip(b.String())
	if err != nil {
		return nil, loginConnectError(err)
	}
	if qerr != nil {
		return nil, &wire.Error{Severity: wire.SeverityFatal, Code: qerr.Code, Message: qerr.Message}
	}
	got := map[string]string{}
	for _, row := range rows {
		if n, v, ok := twoTextColumns(row); ok {
			got[n] = v
		}
	}
	return got, nil
}

// loginConnectError turns a failure to reach the server during login into
// what the client sees: the server's own refusal where it is about the
// database, a generic message otherwise (upstream credentials stay private).
func loginConnectError(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "3D000", pe.Code == "57P03", pe.Code == "53300":
			return &wire.Error{Severity: wire.SeverityFatal, Code: pe.Code, Message: pe.Message, Err: err}
		}
	}
	if we := acquireError(err); we != err {
		var w *wire.Error
		if errors.As(we, &w) {
			w.Severity = wire.SeverityFatal
			return w
		}
	}
	return &wire.Error{Severity: wire.SeverityFatal, Code: wire.CodeCannotConnectNow,
		Message: "pgtoken could not reach the server", Err: err}
}

// reportedName maps a lowercase setting name to the spelling Postgres uses
// in ParameterStatus for the settings it reports.
var reportedName = map[string]string{
	"application_name":              "application_name",
	"client_encoding":               "client_encoding",
	"datestyle":                     "DateStyle",
	"default_transaction_read_only": "default_transaction_read_only",
	"intervalstyle":                 "IntervalStyle",
	"search_path":                   "search_path",
	"standard_conforming_strings":   "standard_conforming_strings",
	"timezone":                      "TimeZone",
}

func isUTF8Name(v string) bool {
	switch strings.ToUpper(strings.TrimSpace(v)) {
	case "UTF8", "UTF-8", "UNICODE":
		return true
	}
	return false
}

// cleanAppName mirrors what Postgres does to application_name: printable
// ASCII only, at most 63 bytes.
func cleanAppName(v string) string {
	b := []byte(v)
	for i, c := range b {
		if c < 32 || c > 126 {
			b[i] = '?'
		}
	}
	if len(b) > 63 {
		b = b[:63]
	}
	return string(b)
}
