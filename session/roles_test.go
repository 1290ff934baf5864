package session_test

// Lock-down checks at login (session/roles.go, session/lockdown): a token
// role, or an upstream login, that fails a check is refused with the SQL
// that fixes it, unless checks.skip or jwt.privileged_roles say otherwise.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgtoken/pgtoken/internal/app"
	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/internal/testpg"
)

// startObserved starts pgtoken with cfg and a logger that records
// everything at debug level and above.
func startObserved(t *testing.T, pg *testpg.Cluster, db string, cfg config.Config) (*pgtest.Env, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	a, err := app.Start(context.Background(), cfg, zap.New(core))
	if err != nil {
		t.Fatalf("start pgtoken: %v", err)
	}
	t.Cleanup(func() { _ = a.Close() })
	<-a.UpstreamsChecked()
	return &pgtest.Env{T: t, PG: pg, DB: db, App: a}, logs
}

// refusedAt checks that a login with token fails with FATAL code and a
// message containing each of want; it returns the error.
func refusedAt(t *testing.T, env *pgtest.Env, token, code string, want ...string) *pgconn.PgError {
	t.Helper()
	c, err := pgconn.Connect(ctx(t), env.DSN(token))
	if err == nil {
		_ = c.Close(ctx(t))
		t.Fatalf("logged in; want FATAL %s %q", code, want)
	}
	pe := pgErr(err)
	if pe == nil || pe.Code != code || pe.Severity != "FATAL" {
		t.Fatalf("got %v; want FATAL %s %q", err, code, want)
	}
	for _, w := range want {
		if !strings.Contains(pe.Message, w) {
			t.Fatalf("got %q; want it to mention %q", pe.Message, w)
		}
	}
	return pe
}

// newServerConnections ends the test database's server connections, so
// that the pool's next ones read the upstream again.
func newServerConnections(env *pgtest.Env) {
	env.Superuser("select pg_terminate_backend(pid) from pg_stat_activity where usename = 'authenticator' and datname = current_database() and pid <> pg_backend_pid()")
}

// eventually logs in with token until check accepts the outcome (server
// connections killed by newServerConnections go away one by one).
func eventually(t *testing.T, env *pgtest.Env, token string, check func(error) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := pgconn.Connect(ctx(t), env.DSN(token))
		if err == nil {
			_, err = c.Exec(ctx(t), "select 1").ReadAll()
			_ = c.Close(ctx(t))
		}
		if check(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestTokenRolesWithDangerousAttributesAreRefused(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	su, bypass, late := "tok_su_"+db, "tok_bypass_"+db, "tok_late_"+db
	env0 := &pgtest.Env{T: t, PG: pg, DB: db}
	env0.Superuser(fmt.Sprintf(`create role %[1]s superuser nologin; create role %[2]s bypassrls nologin; create role %[3]s nologin;
		grant %[1]s, %[2]s, %[3]s to authenticator; grant usage on schema api to %[2]s, %[3]s`, su, bypass, late))
	cfg := pgtest.Config(pg, db)
	cfg.JWT.AllowedRoles = append(cfg.JWT.AllowedRoles, su, bypass, late, "authenticator")
	env := pgtest.StartWith(t, pg, db, cfg)
	tok := func(role string) string { return pgtest.Token(t, map[string]any{"role": role, "sub": "x"}) }

	// The first login of the database opens a server connection to learn
	// the roles, so even the very first token is checked.
	pe := refusedAt(t, env, tok(su), "42501", `pgtoken refuses to serve role "`+su+`"`, "superuser: ", `role "`+su+`" is a superuser`)
	if !strings.Contains(pe.Hint, `ALTER ROLE "`+su+`" NOSUPERUSER;`) || !strings.Contains(pe.Hint, "checks.skip: [superuser]") {
		t.Fatalf("hint: %q", pe.Hint)
	}
	refusedAt(t, env, tok(bypass), "42501", "bypassrls: ", "has BYPASSRLS")
	pe = refusedAt(t, env, tok("authenticator"), "42501", "upstream_login: ", "pgtoken's own upstream login")
	if !strings.Contains(pe.Hint, "jwt.allowed_roles") {
		t.Fatalf("hint: %q", pe.Hint)
	}
	web := env.Connect(pgtest.UserToken(t, "alice"))
	if got := rows(t, web, whoami); got[0][0] != "web_user" {
		t.Fatalf("web_user: %q", got)
	}
	l := env.Connect(tok(late))
	if got := rows(t, l, "select current_user"); got[0][0] != late {
		t.Fatalf("late: %q", got)
	}

	// A role that gains BYPASSRLS is refused once a new server connection
	// has read the roles again.
	env.Superuser("alter role " + late + " bypassrls")
	newServerConnections(env)
	eventually(t, env, tok(late), func(err error) bool {
		pe := pgErr(err)
		return pe != nil && strings.Contains(pe.Message, "has BYPASSRLS")
	})

	// jwt.privileged_roles lets them in (a reload sets it at run time).
	next := cfg
	next.JWT.PrivilegedRoles = config.StringList{su, "authenticator"}
	if err := env.App.Reload(next); err != nil {
		t.Fatal(err)
	}
	c := env.Connect(tok(su))
	if got := rows(t, c, "select current_user, (select rolsuper from pg_roles where rolname = current_user)"); got[0][0] != su || got[0][1] != "t" {
		t.Fatalf("privileged superuser: %q", got)
	}
	c = env.Connect(tok("authenticator"))
	if got := rows(t, c, "select current_user"); got[0][0] != "authenticator" {
		t.Fatalf("privileged login role: %q", got)
	}
	refusedAt(t, env, tok(bypass), "42501", "has BYPASSRLS")

	// And so does the configuration at start.
	cfg.JWT.PrivilegedRoles = config.StringList{bypass}
	env2 := pgtest.StartWith(t, pg, db, cfg)
	c = env2.Connect(tok(bypass))
	if got := rows(t, c, "select current_user"); got[0][0] != bypass {
		t.Fatalf("privileged bypassrls role: %q", got)
	}
	refusedAt(t, env2, tok(su), "42501", "is a superuser")
}

// A superuser upstream login fails the superuser check: every login is
// refused. With the check skipped, pgtoken serves and warns, once.
func TestSuperuserUpstreamLogin(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	login := "su_login_" + db
	(&pgtest.Env{T: t, PG: pg, DB: db}).Superuser(fmt.Sprintf("create role %s login superuser password 'pw-%s'", login, db))
	cfg := pgtest.Config(pg, db)
	cfg.Upstream = pg.DSN(login, "pw-"+db, db)
	env, logs := startObserved(t, pg, db, cfg)
	pe := refusedAt(t, env, pgtest.UserToken(t, "alice"), "42501", "superuser: ", `the upstream login "`+login+`" is a superuser`)
	if !strings.Contains(pe.Hint, `ALTER ROLE "`+login+`" NOSUPERUSER;`) {
		t.Fatalf("hint: %q", pe.Hint)
	}
	_ = env.App.Close() // the start's check has run
	errs := logs.FilterMessageSnippet("pgtoken refuses every login to this database").FilterLevelExact(zapcore.ErrorLevel).All()
	if len(errs) != 1 || errs[0].ContextMap()["fix"] != `ALTER ROLE "`+login+`" NOSUPERUSER;` {
		t.Fatalf("logged: %v", errs)
	}

	cfg.Checks.Skip = config.StringList{"superuser"}
	env, logs = startObserved(t, pg, db, cfg)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	// Two transactions at once: two server connections log in.
	rows(t, a, "begin")
	rows(t, b, "begin")
	rows(t, a, "commit")
	rows(t, b, "commit")
	_ = env.App.Close() // the start's check has run
	warns := logs.FilterMessageSnippet("checks.skip turns off").FilterLevelExact(zapcore.WarnLevel).All()
	if len(warns) != 1 {
		t.Fatalf("%d warnings, want 1: %v", len(warns), warns)
	}
	if got := warns[0].ContextMap(); got["role"] != login || got["check"] != "superuser" || got["fix"] != `ALTER ROLE "`+login+`" NOSUPERUSER;` {
		t.Fatalf("warning: %v", got)
	}
}

// A database with Postgres's default privileges (PUBLIC may create
// temporary tables) is refused, with the REVOKE that fixes it in the
// hint and in the log at start, when the pool connects and on reload; the
// REVOKE fixes it; checks.skip turns the check off.
func TestDefaultPrivilegesAreRefusedWithTheFix(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	env0 := &pgtest.Env{T: t, PG: pg, DB: db}
	env0.Superuser("grant temporary on database " + db + " to public") // as CREATE DATABASE leaves it
	fix := `REVOKE TEMPORARY ON DATABASE "` + db + `" FROM PUBLIC;`
	env, logs := startObserved(t, pg, db, pgtest.Config(pg, db))
	pe := refusedAt(t, env, pgtest.UserToken(t, "alice"), "42501", "temporary: ",
		`the upstream login "authenticator" may create temporary objects in database "`+db+`": TEMPORARY is granted to PUBLIC`,
		`role "web_user" may create temporary objects`)
	if !strings.Contains(pe.Hint, fix) || strings.Count(pe.Hint, "REVOKE") != 1 || !strings.Contains(pe.Hint, "checks.skip: [temporary]") {
		t.Fatalf("hint: %q", pe.Hint)
	}
	errorsLogged := func() int {
		n := 0
		for _, e := range logs.FilterLevelExact(zapcore.ErrorLevel).All() {
			if e.ContextMap()["fix"] == fix {
				n++
			}
		}
		return n
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %s", what)
			}
		}
	}
	// The login's finding and each served role's: web_anon, web_user,
	// web_admin.
	waitFor("findings logged at start", func() bool { return errorsLogged() >= 4 })
	logged := errorsLogged()
	if err := env.App.ReloadFromSource(); err != nil {
		t.Fatal(err)
	}
	waitFor("findings logged on reload", func() bool { return errorsLogged() >= logged+4 })

	env.Superuser(fix)
	newServerConnections(env)
	eventually(t, env, pgtest.UserToken(t, "alice"), func(err error) bool { return err == nil })

	env.Superuser("grant temporary on database " + db + " to public")
	cfg := pgtest.Config(pg, db)
	cfg.Checks.Skip = config.StringList{"temporary"}
	env2 := pgtest.StartWith(t, pg, db, cfg)
	c := env2.Connect(pgtest.UserToken(t, "alice"))
	if got := rows(t, c, whoami); got[0][0] != "web_user" {
		t.Fatalf("with temporary skipped: %q", got)
	}
}

func TestUnreadableRolesFailClosed(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	(&pgtest.Env{T: t, PG: pg, DB: db}).Superuser("revoke select on pg_catalog.pg_roles from public")
	env, logs := startObserved(t, pg, db, pgtest.Config(pg, db))
	refusedAt(t, env, pgtest.UserToken(t, "alice"), "08006", "pgtoken could not check the upstream roles (the reason is in the pgtoken log)")
	if n := logs.FilterMessageSnippet("cannot read the upstream's roles").Len(); n == 0 {
		t.Fatal("no log entry says why")
	}
}
