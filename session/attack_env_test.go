package session_test

// What the attack tests of attack_test.go stand on (issue 12): a database
// set up one of two ways, pgtoken in front of it with a pool of ONE server
// connection (so an attacker and the victim who comes after it share a
// backend), clients that speak the protocol message by message, and probes
// that ask Postgres itself what a transaction runs as and what a backend
// holds.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/pgtoken/pgtoken/internal/app"
	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/internal/testpg"
)

// dbSetup is how the database behind pgtoken is set up.
type dbSetup string

const (
	// setupLocked is locked down as docs/SECURITY.md says: a NOINHERIT
	// authenticator with no privileges of its own, no TEMPORARY and no
	// CREATE for anyone, EXECUTE granted to the token roles only.
	setupLocked dbSetup = "locked"
	// setupDefaults keeps what Postgres grants by default: TEMPORARY and
	// CONNECT on the database and EXECUTE on new functions for PUBLIC, and
	// an upstream login created with default attributes (INHERIT). pgtoken
	// may refuse to serve it, saying what to run; else no attack may work.
	setupDefaults dbSetup = "defaults"
)

var (
	attackSetups = []dbSetup{setupLocked, setupDefaults}
	attackModes  = []string{"transaction", "session"}
)

// attackOwnerSQL is what the database owner wrote, in both setups: a log
// table the token roles may append to (each row records who inserted it, as
// Postgres sees it), a procedure that commits between two log rows, and
// functions an owner might write that leave state on the session — the
// kind docs/SECURITY.md tells owners not to write, but whose leftovers
// pgtoken must still clear before the next client.
const attackOwnerSQL = `
CREATE TABLE api.attack_log (
  id  bigserial PRIMARY KEY,
  tag text NOT NULL,
  who text NOT NULL DEFAULT current_user,
  sub text DEFAULT nullif(current_setting('jwt.claims.sub', true), ''),
  pid int NOT NULL DEFAULT pg_backend_pid()
);
REVOKE ALL ON api.attack_log FROM PUBLIC;
GRANT INSERT ON api.attack_log TO web_anon, web_user, web_admin;
GRANT USAGE ON SEQUENCE api.attack_log_id_seq TO web_anon, web_user, web_admin;

CREATE PROCEDURE api.commit_between(tag text) LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO api.attack_log(tag) VALUES (tag || ':before');
  COMMIT;
  INSERT INTO api.attack_log(tag) VALUES (tag || ':after');
END $$;

CREATE FUNCTION api.remember(name text, value text) RETURNS text
LANGUAGE sql VOLATILE AS $$ SELECT pg_catalog.set_config(name, value, false) $$;

CREATE FUNCTION api.take_lock(k bigint) RETURNS void
LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_catalog.pg_advisory_lock(k); END $$;

CREATE FUNCTION api.listen_to(ch text) RETURNS void
LANGUAGE plpgsql AS $$ BEGIN EXECUTE format('LISTEN %I', ch); END $$;

CREATE FUNCTION api.forget_statements() RETURNS void
LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$;
`

// attackLockedSQL finishes the lock-down of docs/SECURITY.md (schema.sql
// already revoked TEMPORARY and CONNECT from PUBLIC and made the
// authenticator NOINHERIT): EXECUTE only for the token roles.
const attackLockedSQL = `
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
REVOKE ALL ON FUNCTION api.remember(text, text), api.take_lock(bigint), api.listen_to(text), api.forget_statements() FROM PUBLIC;
REVOKE ALL ON PROCEDURE api.commit_between(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.remember(text, text), api.take_lock(bigint), api.listen_to(text), api.forget_statements() TO web_anon, web_user, web_admin;
GRANT EXECUTE ON PROCEDURE api.commit_between(text) TO web_anon, web_user, web_admin;
`

// defaultsLogin is the upstream login of the defaults setup: created with
// Postgres's default attributes (INHERIT), granted the token roles.
const defaultsLogin = "atk_default_login"

// attackDefaultsSQL gives the database back what Postgres grants by
// default; %[1]s is the database name.
const attackDefaultsSQL = `
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '` + defaultsLogin + `') THEN
    CREATE ROLE ` + defaultsLogin + ` LOGIN PASSWORD 'secret';
  END IF;
END $$;
GRANT web_anon, web_user, web_admin TO ` + defaultsLogin + `;
GRANT CONNECT, TEMPORARY ON DATABASE %[1]s TO PUBLIC;
`

// atk is one attack test's database and pgtoken.
type atk struct {
	t     *testing.T
	env   *pgtest.Env
	setup dbSetup
	mode  string
	login string // pgtoken's upstream login role
}

// eachAttackEnv runs fn in a fresh database and pgtoken for every setup and
// pool mode.
func eachAttackEnv(t *testing.T, fn func(t *testing.T, a *atk)) {
	eachAttackEnvOf(t, attackSetups, attackModes, nil, fn)
}

func eachAttackEnvOf(t *testing.T, setups []dbSetup, modes []string, mutate func(*config.Config), fn func(t *testing.T, a *atk)) {
	t.Helper()
	eachSetupAndMode(t, setups, modes, func(t *testing.T, setup dbSetup, mode string) {
		fn(t, startAttack(t, setup, mode, mutate))
	})
}

// eachSetupAndMode runs fn in a subtest per setup and mode; fn starts
// what it needs (startAttack), for example once per variant.
func eachSetupAndMode(t *testing.T, setups []dbSetup, modes []string, fn func(t *testing.T, setup dbSetup, mode string)) {
	t.Helper()
	for _, setup := range setups {
		for _, mode := range modes {
			t.Run(string(setup)+"/"+mode, func(t *testing.T) { fn(t, setup, mode) })
		}
	}
}

// startAttack creates a database set up as setup and starts pgtoken in
// front of it with one server connection in mode. In the defaults setup
// pgtoken may refuse to serve (at start or at a first login), giving the
// statement that would fix it: the test then ends there, as skipped, with
// the refusal in its log.
func startAttack(t *testing.T, setup dbSetup, mode string, mutate func(*config.Config)) *atk {
	t.Helper()
	pg, db := pgtest.NewDB(t)
	return startAttackOn(t, pg, db, setup, mode, mutate)
}

// startAttackOn is startAttack on a database of a cluster the test chose
// (with the schema applied).
func startAttackOn(t *testing.T, pg *testpg.Cluster, db string, setup dbSetup, mode string, mutate func(*config.Config)) *atk {
	t.Helper()
	sql := attackOwnerSQL
	login := "authenticator"
	if setup == setupLocked {
		sql += attackLockedSQL
	} else {
		sql += fmt.Sprintf(attackDefaultsSQL, `"`+db+`"`)
		login = defaultsLogin
	}
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pg.Exec(c, db, sql); err != nil {
		t.Fatalf("attack setup: %v", err)
	}
	cfg := pgtest.Config(pg, db)
	cfg.Upstream = pg.DSN(login, "secret", db)
	cfg.Pool.Size = 1 // attacker and victim share the server connection
	cfg.Pool.Mode = mode
	if mutate != nil {
		mutate(&cfg)
	}
	var log *zap.Logger
	if os.Getenv("PGTOKEN_TEST_LOG") != "" {
		log = zaptest.NewLogger(t)
	}
	ap, err := app.Start(context.Background(), cfg, log)
	if err != nil {
		acceptRefusal(t, setup, "pgtoken did not start", err)
		t.Fatalf("start pgtoken: %v", err)
	}
	t.Cleanup(func() { _ = ap.Close() })
	a := &atk{t: t, env: &pgtest.Env{T: t, PG: pg, DB: db, App: ap}, setup: setup, mode: mode, login: login}
	// A first client: pgtoken may refuse to serve the defaults setup here.
	probe := a.connect(t, a.token("web_user", "first-client"))
	if _, err := probe.Exec(ctx(t), "select 1").ReadAll(); err != nil {
		acceptRefusal(t, setup, "pgtoken refused the first query", err)
		t.Fatalf("first query: %v", err)
	}
	_ = probe.Close(ctx(t))
	return a
}

// acceptRefusal ends the test (as skipped) when pgtoken refused to serve a
// database with Postgres's default privileges and said what to run; in the
// locked-down setup nothing may be refused.
func acceptRefusal(t *testing.T, setup dbSetup, what string, err error) {
	t.Helper()
	if setup != setupDefaults || err == nil {
		return
	}
	text := err.Error()
	if pe := pgErr(err); pe != nil {
		text = pe.Message + " " + pe.Detail + " " + pe.Hint
	}
	for _, fix := range []string{"REVOKE", "ALTER ROLE", "ALTER DEFAULT PRIVILEGES"} {
		if strings.Contains(text, fix) {
			t.Skipf("accepted: %s on a database with Postgres's default privileges, saying why: %s", what, text)
		}
	}
}

// token signs a token for role and sub with more claims (name, value
// pairs).
func (a *atk) token(role, sub string, more ...any) string {
	claims := map[string]any{"role": role, "sub": sub}
	for i := 0; i+1 < len(more); i += 2 {
		claims[more[i].(string)] = more[i+1]
	}
	return pgtest.Token(a.t, claims)
}

// connect logs in through pgtoken.
func (a *atk) connect(t *testing.T, tok string) *pgconn.PgConn {
	t.Helper()
	cx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgconn.Connect(cx, a.env.DSN(tok))
	if err != nil {
		acceptRefusal(t, a.setup, "pgtoken refused a login", err)
		t.Fatalf("connect through pgtoken: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// superuser runs sql as the cluster's superuser in the test database.
func (a *atk) superuser(sql string) [][]string { return a.env.Superuser(sql) }

// backendsWhere lists pgtoken's server connections to the test database
// (pid, state, query) that match where.
func (a *atk) backendsWhere(where string) [][]string {
	return a.superuser(fmt.Sprintf(`select pid::text, coalesce(state, ''), coalesce(query, '') from pg_stat_activity
		where usename = '%s' and datname = current_database() and pid <> pg_backend_pid() and (%s)`, a.login, where))
}

// startActive runs sql on c in the background and returns once Postgres
// shows it running (its text contains marker); the channel gets its error.
func (a *atk) startActive(t *testing.T, c *pgconn.PgConn, sql, marker string) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(context.Background(), sql).ReadAll()
		done <- err
	}()
	waitFor(t, 10*time.Second, "the statement never ran: "+sql, func() bool {
		return len(a.backendsWhere("state = 'active' and strpos(query, '"+marker+"') > 0")) == 1
	})
	return done
}

// logRows returns the attack_log rows whose tag starts with prefix: tag,
// who, sub (NULL as "<none>"), pid.
func (a *atk) logRows(prefix string) [][]string {
	return a.superuser(fmt.Sprintf(`select tag, who, coalesce(sub, '<none>'), pid::text from api.attack_log
		where starts_with(tag, '%s') order by id`, strings.ReplaceAll(prefix, "'", "''")))
}

// --- probes: what Postgres says a statement runs as

// probeSQL asks Postgres who runs the statement, with which sub claim, on
// which backend. Its rows start with "probe".
const probeSQL = `select 'probe', current_user::text, session_user::text,
	coalesce(nullif(current_setting('jwt.claims.sub', true), ''), '<none>'), pg_backend_pid()::text`

// rlsSQL lists the owners of the todos row-level security lets the
// statement see. Its rows start with "rls". (As a role without USAGE on
// schema api it fails: put it last.)
const rlsSQL = `select 'rls', owner from api.todos`

// ident is one probe row.
type ident struct{ user, session, sub, pid string }

func identsOf(rows [][]string) []ident {
	var out []ident
	for _, r := range rows {
		if len(r) == 5 && r[0] == "probe" {
			out = append(out, ident{r[1], r[2], r[3], r[4]})
		}
	}
	return out
}

func rlsOwners(rows [][]string) []string {
	var out []string
	for _, r := range rows {
		if len(r) == 2 && r[0] == "rls" {
			out = append(out, r[1])
		}
	}
	return out
}

// checkIdents fails the test for every probe row that does not run as role
// with sub under pgtoken's login, and for every todo of another owner
// that the statements could see; it returns the backend pid seen.
func (a *atk) checkIdents(t *testing.T, what string, rows [][]string, role, sub string) string {
	t.Helper()
	pid := ""
	for _, id := range identsOf(rows) {
		pid = id.pid
		if id.user != role || id.session != a.login || id.sub != sub {
			t.Errorf("LEAK %s: Postgres ran a statement as current_user=%s session_user=%s sub=%s (backend %s); want %s/%s/%s",
				what, id.user, id.session, id.sub, id.pid, role, a.login, sub)
		}
	}
	for _, o := range rlsOwners(rows) {
		if o != sub {
			t.Errorf("LEAK %s: row-level security let the statement see a todo of %q (token sub %q)", what, o, sub)
			break
		}
	}
	return pid
}

// simpleRows runs a Query and returns its rows and error (rows of the
// statements before an error included).
func simpleRows(t *testing.T, c *pgconn.PgConn, sql string) ([][]string, error) {
	t.Helper()
	res, err := c.Exec(ctx(t), sql).ReadAll()
	return flatten(res), err
}

// extendedRows runs one statement with the extended protocol.
func extendedRows(t *testing.T, c *pgconn.PgConn, sql string) ([][]string, error) {
	t.Helper()
	r := c.ExecParams(ctx(t), sql, nil, nil, nil, nil).Read()
	return flatten([]*pgconn.Result{r}), r.Err
}

// probe runs probeSQL in a transaction of its own, over the simple or the
// extended protocol, and checks it.
func (a *atk) probe(t *testing.T, what string, c *pgconn.PgConn, extended bool, role, sub string) string {
	t.Helper()
	var rows [][]string
	var err error
	if extended {
		rows, err = extendedRows(t, c, probeSQL)
	} else {
		rows, err = simpleRows(t, c, probeSQL)
	}
	if err != nil {
		t.Errorf("%s: probe failed: %v", what, err)
		return ""
	}
	return a.checkIdents(t, what, rows, role, sub)
}

// --- the next client: nothing of the one before it is left on the backend

// leftoverSettings are settings an attacker may leave behind; the next
// client must see none of them.
var leftoverSettings = []string{"app.x", "app.y", "app.z", "jwt.claims.admin", "jwt.claims.extra"}

// cleanOpts tune nextClientClean.
type cleanOpts struct {
	secrets []string // no prepared statement on the backend may hold one
	// victimUsedSequence: a client before took a sequence value on
	// purpose; lastval() is checked by the tests about it.
	victimUsedSequence bool
}

// nextClientClean logs in a client that carries role and sub, runs as it
// in both protocols and checks, in Postgres, that the backend it got holds
// nothing of an earlier client: settings, LISTEN, advisory locks, prepared
// statements whose text holds a secret, lastval/currval, temporary
// objects, a shadowed todos table, cursors. It reports whether it ran on
// the backend attackerPID.
func (a *atk) nextClientClean(t *testing.T, role, sub, attackerPID string, o cleanOpts) bool {
	t.Helper()
	c := a.connect(t, a.token(role, sub))
	defer func() { _ = c.Close(ctx(t)) }() // session mode: the next one needs the connection
	pid := a.probe(t, "the next client (simple)", c, false, role, sub)
	a.probe(t, "the next client (extended)", c, true, role, sub)
	same := pid != "" && pid == attackerPID
	if attackerPID != "" {
		t.Logf("attacker on backend %s, next client on backend %s", attackerPID, pid)
	}
	one := func(sql string) ([][]string, error) {
		rows, err := simpleRows(t, c, sql)
		if err != nil {
			return nil, err
		}
		return rows, nil
	}
	for _, name := range leftoverSettings {
		rows, err := one(fmt.Sprintf("select coalesce(current_setting('%s', true), '<null>')", name))
		if err != nil {
			t.Errorf("reading %s: %v", name, err)
			continue
		}
		if v := rows[0][0]; v != "<null>" && v != "" {
			t.Errorf("LEAK: the next client sees %s = %q left on the backend", name, v)
		}
	}
	checks := []struct{ what, sql string }{
		{"LISTEN channels", "select string_agg(c, ',') from pg_listening_channels() c"},
		{"advisory locks", "select string_agg(objid::text, ',') from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"},
		{"temporary relations", "select string_agg(relname, ',') from pg_class where relnamespace = pg_my_temp_schema()"},
		{"temporary functions", "select string_agg(proname, ',') from pg_proc where pronamespace = pg_my_temp_schema()"},
		{"cursors", "select string_agg(name, ',') from pg_cursors"},
		{"a todos table that is not api.todos", `select case when 'todos'::regclass <> 'api.todos'::regclass then
			(select nspname from pg_namespace n join pg_class c on c.relnamespace = n.oid where c.oid = 'todos'::regclass) || '.todos' end`},
	}
	for _, ck := range checks {
		rows, err := one(ck.sql)
		if err != nil {
			t.Errorf("LEAK? checking %s: %v", ck.what, err)
			continue
		}
		if v := rows[0][0]; v != "" {
			t.Errorf("LEAK: the next client finds %s on the backend: %s", ck.what, v)
		}
	}
	if secrets := o.secrets; len(secrets) > 0 {
		rows, err := one("select name, statement from pg_prepared_statements")
		if pe := pgErr(err); pe != nil && pe.Code == "42501" {
			rows = nil // pgtoken refuses to list them: nothing to read
		} else if err != nil {
			t.Errorf("reading pg_prepared_statements: %v", err)
		}
		for _, r := range rows {
			for _, s := range secrets {
				if strings.Contains(r[1], s) {
					t.Errorf("LEAK: pg_prepared_statements shows the next client statement %s holding %q: %.300q", r[0], s, r[1])
				}
			}
		}
	}
	for _, sql := range []string{"select lastval()", "select currval('api.todos_id_seq')"} {
		if o.victimUsedSequence {
			break
		}
		rows, err := one(sql)
		if pe := pgErr(err); pe == nil || pe.Code != "55000" {
			t.Errorf("LEAK: %s in the next client's session gives %v (%v), want 55000 (not yet defined in this session)", sql, rows, err)
		}
	}
	return same
}

// thenVictim lets the victim, alice, in after the attacker (in session
// mode the attacker leaves first: the victim needs its server connection)
// and checks that she finds nothing of the attacker's.
func (a *atk) thenVictim(t *testing.T, leave func(), attackerPID string, o cleanOpts) {
	t.Helper()
	if a.mode == "session" {
		leave()
	}
	a.nextClientClean(t, "web_user", "alice", attackerPID, o)
}

// --- a client that speaks the protocol message by message

type rawClient struct {
	t  *testing.T
	nc net.Conn
	fe *pgproto3.Frontend
}

func (r *rawClient) close() { _ = r.nc.Close() }

// raw logs in with pgconn and takes the socket over.
func (a *atk) raw(t *testing.T, tok string) *rawClient {
	t.Helper()
	c := a.connect(t, tok)
	hc, err := c.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hc.Conn.Close() })
	return &rawClient{t: t, nc: hc.Conn, fe: hc.Frontend}
}

// msgs flattens messages and lists of messages.
func msgs(items ...any) []pgproto3.FrontendMessage {
	var out []pgproto3.FrontendMessage
	for _, it := range items {
		switch m := it.(type) {
		case pgproto3.FrontendMessage:
			out = append(out, m)
		case []pgproto3.FrontendMessage:
			out = append(out, m...)
		default:
			panic(fmt.Sprintf("msgs: %T", it))
		}
	}
	return out
}

// pbe is Parse, Bind and Execute of sql in the unnamed statement and portal.
func pbe(sql string) []pgproto3.FrontendMessage {
	return []pgproto3.FrontendMessage{&pgproto3.Parse{Query: sql}, &pgproto3.Bind{}, &pgproto3.Execute{}}
}

func query(sql string) *pgproto3.Query { return &pgproto3.Query{String: sql} }

var (
	syncMsg  = &pgproto3.Sync{}
	flushMsg = &pgproto3.Flush{}
)

// send writes messages in one write.
func (r *rawClient) send(ms []pgproto3.FrontendMessage) {
	r.t.Helper()
	var b []byte
	for _, m := range ms {
		var err error
		if b, err = m.Encode(b); err != nil {
			r.t.Fatal(err)
		}
	}
	_ = r.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.nc.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// reply is what came back for some messages.
type reply struct {
	rows    [][]string
	errs    []pgproto3.ErrorResponse
	notices []string
	ready   int
	status  byte  // the last ReadyForQuery's transaction status
	ended   error // the connection ended (FATAL or closed)
}

func (rp reply) codes() []string {
	var out []string
	for _, e := range rp.errs {
		out = append(out, e.Code+" "+e.Message)
	}
	return out
}

// exchange sends messages and reads their answers, following Postgres's
// rules: after an error in a Parse, Bind, Describe, Execute or Close, the
// server discards every message up to Sync (simple Queries and
// FunctionCalls included).
func (r *rawClient) exchange(ms []pgproto3.FrontendMessage) reply {
	r.t.Helper()
	r.send(ms)
	return r.expect(ms, 30*time.Second)
}

// expect reads the answers to messages already sent.
func (r *rawClient) expect(ms []pgproto3.FrontendMessage, d time.Duration) reply {
	r.t.Helper()
	var rp reply
	_ = r.nc.SetReadDeadline(time.Now().Add(d))
	defer func() { _ = r.nc.SetReadDeadline(time.Time{}) }()
	skip := false
	// until reads up to a message that done accepts; false if the
	// connection ended.
	until := func(done func(pgproto3.BackendMessage) bool) bool {
		for {
			m, ok := r.receive(&rp, d)
			if !ok {
				return false
			}
			if _, isErr := m.(*pgproto3.ErrorResponse); isErr {
				skip = true // (a Query's or FunctionCall's error is followed by its ReadyForQuery)
			}
			if done(m) {
				return true
			}
		}
	}
	ready := func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.ReadyForQuery); return ok }
	for _, m := range ms {
		var ok bool
		switch m.(type) {
		case *pgproto3.Flush:
			continue
		case *pgproto3.Sync:
			ok = until(ready)
			skip = false
		case *pgproto3.Query, *pgproto3.FunctionCall:
			if skip {
				continue
			}
			ok = until(ready)
			skip = false
		default:
			if skip {
				continue
			}
			ok = until(func(b pgproto3.BackendMessage) bool {
				switch b.(type) {
				case *pgproto3.ErrorResponse, *pgproto3.ParseComplete, *pgproto3.BindComplete, *pgproto3.CloseComplete,
					*pgproto3.RowDescription, *pgproto3.NoData, *pgproto3.CommandComplete,
					*pgproto3.EmptyQueryResponse, *pgproto3.PortalSuspended:
					return true
				}
				return false
			})
		}
		if !ok {
			break
		}
	}
	return rp
}

// receive reads one message, noting rows, errors, notices and
// ReadyForQuery in rp; false when the connection ended.
func (r *rawClient) receive(rp *reply, d time.Duration) (pgproto3.BackendMessage, bool) {
	r.t.Helper()
	m, err := r.fe.Receive()
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			r.t.Fatalf("pgtoken did not answer within %s (%d ReadyForQuery; rows %q, errors %q)", d, rp.ready, rp.rows, rp.codes())
		}
		rp.ended = err
		return nil, false
	}
	switch m := m.(type) {
	case *pgproto3.DataRow:
		row := make([]string, len(m.Values))
		for i, v := range m.Values {
			row[i] = string(v)
		}
		rp.rows = append(rp.rows, row)
	case *pgproto3.ErrorResponse:
		rp.errs = append(rp.errs, *m)
		if m.Severity == "FATAL" {
			rp.ended = fmt.Errorf("FATAL %s %s", m.Code, m.Message)
		}
	case *pgproto3.NoticeResponse:
		rp.notices = append(rp.notices, m.Message)
	case *pgproto3.ReadyForQuery:
		rp.ready++
		rp.status = m.TxStatus
	}
	return m, true
}

// readFor reads whatever comes for d or until the connection ends; a
// silent connection is no failure here.
func (r *rawClient) readFor(d time.Duration) reply {
	var rp reply
	_ = r.nc.SetReadDeadline(time.Now().Add(d))
	defer func() { _ = r.nc.SetReadDeadline(time.Time{}) }()
	for {
		m, err := r.fe.Receive()
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				rp.ended = err
			}
			return rp
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			rp.rows = append(rp.rows, []string{fmt.Sprint(len(m.Values))})
		case *pgproto3.ErrorResponse:
			rp.errs = append(rp.errs, *m)
		case *pgproto3.ReadyForQuery:
			rp.ready++
			rp.status = m.TxStatus
		}
	}
}

// sendCancel sends a CancelRequest for the session pid/key, as a client
// would, and waits until the far end has acted (closed the socket).
func sendCancel(addr string, pid uint32, key []byte) error {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer nc.Close()
	b, err := (&pgproto3.CancelRequest{ProcessID: pid, SecretKey: key}).Encode(nil)
	if err != nil {
		return err
	}
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Write(b); err != nil {
		return err
	}
	var one [1]byte
	_, _ = nc.Read(one[:]) // the far end closes once it has acted
	return nil
}

// batchOf is one extended-protocol batch (a Sync at the end) of
// statements without parameters.
func batchOf(sqls ...string) *pgconn.Batch {
	b := &pgconn.Batch{}
	for _, s := range sqls {
		b.ExecParams(s, nil, nil, nil, nil)
	}
	return b
}

// sendEach writes messages one write at a time, a moment apart, so that
// pgtoken handles each before the next arrives.
func (r *rawClient) sendEach(ms []pgproto3.FrontendMessage) {
	r.t.Helper()
	for _, m := range ms {
		r.send([]pgproto3.FrontendMessage{m})
		time.Sleep(5 * time.Millisecond)
	}
}

// loCreat is a fast-path call of lo_creat(-1), one of the large-object
// functions pgtoken lets through.
func loCreat() *pgproto3.FunctionCall {
	return &pgproto3.FunctionCall{Function: 957, ArgFormatCodes: []uint16{1},
		Arguments: [][]byte{{0xff, 0xff, 0xff, 0xff}}, ResultFormatCode: 1}
}
