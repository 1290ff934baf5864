package lockdown_test

// Every check's SQL against a real Postgres: each case creates the
// condition, expects the check to fail with a fix, runs the fix as a
// superuser, and expects the check to pass.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/testpg"
	"github.com/pgtoken/pgtoken/session/lockdown"
)

func TestMain(m *testing.M) { testpg.Main(m) }

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// facts logs in as login and runs the checks.
func facts(t *testing.T, pg *testpg.Cluster, login, db string, names ...string) *lockdown.Facts {
	t.Helper()
	c, err := pgconn.Connect(ctx(t), pg.DSN(login, "pw", db))
	if err != nil {
		t.Fatalf("connect as %s: %v", login, err)
	}
	defer c.Close(context.Background())
	f, err := lockdown.Run(ctx(t), c, names)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return f
}

func exec(t *testing.T, pg *testpg.Cluster, db, sql string) {
	t.Helper()
	if err := pg.Exec(ctx(t), db, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// lockedDown is a database with a login and a token role, locked down as
// docs/SECURITY.md says (the script there is tested on its own below).
type lockedDown struct {
	pg               *testpg.Cluster
	db, login, token string
	policy           *lockdown.Policy
	suffix           string
}

var seq int

func newLockedDown(t *testing.T) *lockedDown {
	pg := testpg.Shared(t)
	seq++
	s := fmt.Sprintf("%d_%d", os.Getpid(), seq)
	l := &lockedDown{pg: pg, db: "ld_" + s, login: "auth_" + s, token: "tok_" + s, suffix: s}
	l.policy = &lockdown.Policy{Served: []string{l.token}}
	if err := pg.CreateDatabase(ctx(t), l.db); err != nil {
		t.Fatal(err)
	}
	exec(t, pg, l.db, fmt.Sprintf(`
		CREATE ROLE %[2]s LOGIN NOINHERIT PASSWORD 'pw';
		CREATE ROLE %[3]s NOLOGIN;
		GRANT %[3]s TO %[2]s;
		REVOKE ALL ON DATABASE %[1]s FROM PUBLIC;
		GRANT CONNECT ON DATABASE %[1]s TO %[2]s;
		REVOKE CREATE ON SCHEMA public FROM PUBLIC;`, l.db, l.login, l.token))
	return l
}

// refusing returns the findings that refuse a login with role.
func (l *lockedDown) refusing(t *testing.T, role string) []lockdown.Finding {
	return facts(t, l.pg, l.login, l.db).Refusal(role, l.policy)
}

func TestEveryCheckAgainstPostgres(t *testing.T) {
	type tc struct {
		name  string
		setup string // {db} database, {login} login, {token} token role, {s} a unique suffix
		check lockdown.Check
		login bool // the finding is the login's (refusing every role)
	}
	cases := []tc{
		{"superuser token role", "ALTER ROLE {token} SUPERUSER", lockdown.Superuser, false},
		{"superuser login", "ALTER ROLE {login} SUPERUSER", lockdown.Superuser, true},
		{"bypassrls token role", "ALTER ROLE {token} BYPASSRLS", lockdown.BypassRLS, false},
		{"bypassrls login", "ALTER ROLE {login} BYPASSRLS", lockdown.BypassRLS, true},
		{"attributes of a token role", "ALTER ROLE {token} CREATEROLE CREATEDB REPLICATION", lockdown.RoleAttributes, false},
		{"attributes of the login", "ALTER ROLE {login} CREATEDB", lockdown.RoleAttributes, true},
		{"TEMPORARY to PUBLIC", "GRANT TEMPORARY ON DATABASE {db} TO PUBLIC", lockdown.Temporary, true},
		{"TEMPORARY to the token role", "GRANT TEMPORARY ON DATABASE {db} TO {token}", lockdown.Temporary, false},
		{"TEMPORARY to the login", "GRANT TEMPORARY ON DATABASE {db} TO {login}", lockdown.Temporary, true},
		{"TEMPORARY through a group", "CREATE ROLE grp_{s}; GRANT TEMPORARY ON DATABASE {db} TO grp_{s}; GRANT grp_{s} TO {token}", lockdown.Temporary, false},
		{"TEMPORARY by owning the database", "ALTER DATABASE {db} OWNER TO {token}", lockdown.Temporary, false},
		{"CREATE on the database", "GRANT CREATE ON DATABASE {db} TO {token}", lockdown.Create, false},
		{"CREATE on public to PUBLIC (before Postgres 15)", "GRANT CREATE ON SCHEMA public TO PUBLIC", lockdown.Create, true},
		{"CREATE on a schema", "CREATE SCHEMA s_{s}; GRANT CREATE ON SCHEMA s_{s} TO {token}", lockdown.Create, false},
		{"CREATE by owning a schema", "CREATE SCHEMA s_{s} AUTHORIZATION {token}", lockdown.Create, false},
		{"CREATE by owning the database (public belongs to pg_database_owner)", "ALTER DATABASE {db} OWNER TO {token}", lockdown.Create, false},
		{"CREATE on a schema, to the login", "CREATE SCHEMA s_{s}; GRANT CREATE ON SCHEMA s_{s} TO {login}", lockdown.Create, true},
		{"a predefined role through a group", "CREATE ROLE grp_{s}; GRANT pg_monitor TO grp_{s}; GRANT grp_{s} TO {token}", lockdown.PredefinedRoles, false},
		{"a predefined role of the login", "GRANT pg_read_server_files TO {login}", lockdown.PredefinedRoles, true},
		{"an inheriting login", "ALTER ROLE {login} INHERIT", lockdown.NoInherit, true},
		{"the login owns a table and a schema", "CREATE TABLE t_{s} (x int); ALTER TABLE t_{s} OWNER TO {login}; CREATE SCHEMA o_{s} AUTHORIZATION {login}",
			lockdown.LoginPrivileges, true},
		{"the login holds privileges of its own", `
			CREATE SCHEMA api; CREATE TABLE api.t (a int, b int); CREATE SEQUENCE api.s; CREATE VIEW api.v AS SELECT 1 AS one;
			CREATE FUNCTION api.f(int) RETURNS int LANGUAGE sql AS 'SELECT $1'; CREATE PROCEDURE api.p() LANGUAGE sql AS 'SELECT 1';
			CREATE TYPE api.e AS ENUM ('a'); CREATE DOMAIN api.d AS int;
			GRANT USAGE ON SCHEMA api TO {login}; GRANT SELECT ON api.t, api.v TO {login}; GRANT UPDATE (b) ON api.t TO {login};
			GRANT USAGE ON SEQUENCE api.s TO {login}; GRANT EXECUTE ON FUNCTION api.f(int) TO {login}; GRANT EXECUTE ON PROCEDURE api.p() TO {login};
			GRANT USAGE ON TYPE api.e TO {login}; GRANT USAGE ON DOMAIN api.d TO {login};
			ALTER DEFAULT PRIVILEGES IN SCHEMA api GRANT SELECT ON TABLES TO {login};
			ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO {login};
			GRANT SET ON PARAMETER work_mem TO {login};
			GRANT USAGE ON LANGUAGE sql TO {login};
			DO $$ BEGIN EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO {login}', lo_create(0)); END $$`,
			lockdown.LoginPrivileges, true},
	}
	for _, p := range lockdown.DangerousPredefined {
		cases = append(cases, tc{"member of " + p, "GRANT " + p + " TO {token}", lockdown.PredefinedRoles, false})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := newLockedDown(t)
			if got := l.refusing(t, l.token); len(got) != 0 {
				t.Fatalf("locked down, yet refused: %+v", got)
			}
			exec(t, l.pg, l.db, strings.NewReplacer("{db}", l.db, "{login}", l.login, "{token}", l.token, "{s}", l.suffix).Replace(c.setup))
			got := l.refusing(t, l.token)
			var hit *lockdown.Finding
			for i, f := range got {
				if f.Check == c.check && f.Login == c.login {
					hit = &got[i]
				}
			}
			if hit == nil {
				t.Fatalf("no %s finding (login %v); got %+v", c.check, c.login, got)
			}
			want := l.token
			if c.login {
				want = l.login
			}
			if hit.Role != want || len(hit.Fix) == 0 || !strings.Contains(hit.Problem, `"`+want+`"`) {
				t.Fatalf("finding: %+v", *hit)
			}
			t.Logf("%s: %s\n  fix: %s", hit.Check, hit.Problem, hit.FixSQL())
			// Every fix, run as a superuser, makes the database pass again.
			var fix []string
			for _, f := range got {
				fix = append(fix, f.Fix...)
			}
			exec(t, l.pg, l.db, strings.Join(fix, "\n"))
			if got := l.refusing(t, l.token); len(got) != 0 {
				t.Fatalf("after the fix %q, still refused: %+v", fix, got)
			}
		})
	}
}

func TestTheLoginAsATokenRole(t *testing.T) {
	l := newLockedDown(t)
	got := l.refusing(t, l.login)
	if len(got) != 1 || got[0].Check != lockdown.UpstreamLogin || got[0].Role != l.login {
		t.Fatalf("%+v", got)
	}
}

// Postgres's default privileges (Postgres 15): PUBLIC may connect and
// create temporary tables in a new database, and no longer creates in
// schema public. pgtoken refuses the roles, and says the one REVOKE that
// fixes it.
func TestDefaultPrivilegesAreRefused(t *testing.T) {
	pg := testpg.Shared(t)
	s := fmt.Sprintf("%d_dflt", os.Getpid())
	db, login, token := "d_"+s, "auth_"+s, "tok_"+s
	if err := pg.CreateDatabase(ctx(t), db); err != nil {
		t.Fatal(err)
	}
	exec(t, pg, db, fmt.Sprintf("CREATE ROLE %[1]s LOGIN NOINHERIT PASSWORD 'pw'; CREATE ROLE %[2]s NOLOGIN; GRANT %[2]s TO %[1]s", login, token))
	f := facts(t, pg, login, db)
	got := f.Refusal(token, &lockdown.Policy{Served: []string{token}})
	fix := fmt.Sprintf(`REVOKE TEMPORARY ON DATABASE "%s" FROM PUBLIC;`, db)
	if len(got) != 2 || got[0].Check != lockdown.Temporary || !got[0].Login || got[1].Check != lockdown.Temporary || got[1].Role != token ||
		got[0].FixSQL() != fix || got[1].FixSQL() != fix || !strings.Contains(got[1].Problem, "TEMPORARY is granted to PUBLIC") {
		t.Fatalf("got %+v\nwant the login's and the token role's temporary findings, fixed by %s", got, fix)
	}
	exec(t, pg, db, fix)
	if got := facts(t, pg, login, db).Refusal(token, &lockdown.Policy{Served: []string{token}}); len(got) != 0 {
		t.Fatalf("after %s: %+v", fix, got)
	}
}

// The lock-down script of docs/SECURITY.md, run on a fresh cluster, makes
// a database pgtoken serves without a finding; and the demo and test
// schema passes too.
func TestSecurityDocScriptPasses(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(root(), "docs", "SECURITY.md"))
	if err != nil {
		t.Fatal(err)
	}
	const marker = "```sql\n-- Lock down database app"
	i := strings.Index(string(doc), marker)
	if i < 0 {
		t.Fatalf("docs/SECURITY.md has no block starting %q", marker)
	}
	script := string(doc[i+len("```sql\n"):])
	script = script[:strings.Index(script, "```")]
	pg := testpg.New(t, testpg.Options{})
	if err := pg.CreateDatabase(ctx(t), "app"); err != nil {
		t.Fatal(err)
	}
	exec(t, pg, "app", strings.ReplaceAll(script, "'change me'", "'pw'"))
	served := []string{"web_anon", "web_user"}
	f := facts(t, pg, "authenticator", "app", served...)
	if got := f.Findings(&lockdown.Policy{Served: served}); len(got) != 0 {
		t.Fatalf("the documented lock-down leaves findings: %+v", got)
	}

	if err := pg.CreateDatabase(ctx(t), "demo"); err != nil {
		t.Fatal(err)
	}
	if err := pg.ApplySQLFile(ctx(t), "demo", filepath.Join(root(), "testdata", "sql", "schema.sql")); err != nil {
		t.Fatal(err)
	}
	exec(t, pg, "demo", "ALTER ROLE authenticator PASSWORD 'pw'")
	served = []string{"web_anon", "web_user", "web_admin"}
	f = facts(t, pg, "authenticator", "demo", append(served, "nopriv")...)
	got := f.Findings(&lockdown.Policy{Served: append(served, "nopriv")})
	if len(got) != 1 || got[0].Check != lockdown.Granted || got[0].Role != "nopriv" || got[0].FixSQL() != `GRANT "nopriv" TO "authenticator";` {
		t.Fatalf("testdata/sql/schema.sql: want only nopriv reported as not granted, got %+v", got)
	}
	if slices.ContainsFunc(got, func(f lockdown.Finding) bool { return f.Refuses() }) {
		t.Fatal("a finding that refuses")
	}
}
