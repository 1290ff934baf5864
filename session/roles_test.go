package session_test

// Token roles that are superusers, bypass row-level security or are
// pgtoken's own upstream login are refused unless jwt.privileged_roles
// names them (session/roles.go).

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
// message containing each of want.
func refusedAt(t *testing.T, env *pgtest.Env, token, code string, want ...string) {
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
	refusedAt(t, env, tok(su), "28P01", "token rejected (role not allowed)", `role "`+su+`" is a superuser`, "jwt.privileged_roles")
	refusedAt(t, env, tok(bypass), "28P01", "bypasses row-level security")
	refusedAt(t, env, tok("authenticator"), "28P01", "is pgtoken's own upstream login role")
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
	env.Superuser("select pg_terminate_backend(pid) from pg_stat_activity where usename = 'authenticator' and datname = current_database() and pid <> pg_backend_pid()")
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Runs on a new server connection once the killed ones are gone.
		_, _ = web.Exec(ctx(t), "select 1").ReadAll()
		c, err := pgconn.Connect(ctx(t), env.DSN(tok(late)))
		if err != nil {
			if pe := pgErr(err); pe == nil || !strings.Contains(pe.Message, "bypasses row-level security") {
				t.Fatalf("late after ALTER ROLE: %v", err)
			}
			break
		}
		_ = c.Close(ctx(t))
		if time.Now().After(deadline) {
			t.Fatal("a role that gained BYPASSRLS is still let in")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// jwt.privileged_roles lets them in (a reload sets it at run time).
	env.App.Server.SetPrivilegedRoles([]string{su, "authenticator"})
	c := env.Connect(tok(su))
	if got := rows(t, c, "select current_user, (select rolsuper from pg_roles where rolname = current_user)"); got[0][0] != su || got[0][1] != "t" {
		t.Fatalf("privileged superuser: %q", got)
	}
	c = env.Connect(tok("authenticator"))
	if got := rows(t, c, "select current_user"); got[0][0] != "authenticator" {
		t.Fatalf("privileged login role: %q", got)
	}
	refusedAt(t, env, tok(bypass), "28P01", "bypasses row-level security")

	// And so does the configuration at start.
	cfg.JWT.PrivilegedRoles = config.StringList{bypass}
	env2 := pgtest.StartWith(t, pg, db, cfg)
	c = env2.Connect(tok(bypass))
	if got := rows(t, c, "select current_user"); got[0][0] != bypass {
		t.Fatalf("privileged bypassrls role: %q", got)
	}
	refusedAt(t, env2, tok(su), "28P01", "is a superuser")
}

func TestSuperuserUpstreamLoginIsWarnedAboutOnce(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	login := "su_login_" + db
	(&pgtest.Env{T: t, PG: pg, DB: db}).Superuser(fmt.Sprintf("create role %s login superuser password 'pw-%s'", login, db))
	cfg := pgtest.Config(pg, db)
	cfg.Upstream = pg.DSN(login, "pw-"+db, db)
	env, logs := startObserved(t, pg, db, cfg)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	// Two transactions at once: two server connections log in.
	rows(t, a, "begin")
	rows(t, b, "begin")
	rows(t, a, "commit")
	rows(t, b, "commit")
	warns := logs.FilterMessageSnippet("upstream login role is a superuser").FilterLevelExact(zapcore.WarnLevel).All()
	if len(warns) != 1 {
		t.Fatalf("%d warnings, want 1: %v", len(warns), warns)
	}
	if got := warns[0].ContextMap()["login_role"]; got != login {
		t.Fatalf("warning names %v", got)
	}
	if got := rows(t, a, "select current_user"); got[0][0] != "web_user" {
		t.Fatalf("with a superuser login: %q", got)
	}
	// The login role itself is refused as a token role.
	cfg.JWT.AllowedRoles = append(cfg.JWT.AllowedRoles, login)
	env2 := pgtest.StartWith(t, pg, db, cfg)
	refusedAt(t, env2, pgtest.Token(t, map[string]any{"role": login}), "28P01", "is a superuser and is pgtoken's own upstream login role")
}

func TestUnreadableRolesFailClosed(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	(&pgtest.Env{T: t, PG: pg, DB: db}).Superuser("revoke select on pg_catalog.pg_roles from public")
	env, logs := startObserved(t, pg, db, pgtest.Config(pg, db))
	refusedAt(t, env, pgtest.UserToken(t, "alice"), "08006", "pgtoken could not check the upstream roles (the reason is in the pgtoken log)")
	if n := logs.FilterMessageSnippet("cannot read role attributes").Len(); n == 0 {
		t.Fatal("no log entry says why")
	}
}
