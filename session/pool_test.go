package session_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

func TestKilledServerConnectionIsReplaced(t *testing.T) {
	checkLeaks(t) // reliability_test.go
	env := pgtest.Start(t, nil)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	rows(t, a, "begin")
	pid := rows(t, a, "select pg_backend_pid()")[0][0]
	env.Superuser("select pg_terminate_backend(" + pid + ")")
	_, err := a.Exec(ctx(t), whoami).ReadAll()
	if pe := pgErr(err); pe == nil || pe.Code != "08006" {
		t.Fatalf("statement on the killed connection: %v", err)
	}
	// The session goes on, on a new server connection.
	if got := rows(t, a, whoami); got[0][1] != "alice" {
		t.Fatalf("after the kill: %q", got)
	}
	if got := rows(t, b, whoami); got[0][1] != "bob" {
		t.Fatalf("other client: %q", got)
	}
}

func TestIdleServerConnectionsKilledAreNotNoticed(t *testing.T) {
	checkLeaks(t) // reliability_test.go
	env := pgtest.Start(t, nil)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	// Warm both server connections.
	rows(t, a, "begin")
	rows(t, b, whoami)
	rows(t, a, "commit")
	env.Superuser("select pg_terminate_backend(pid) from pg_stat_activity where usename = 'authenticator'")
	time.Sleep(300 * time.Millisecond) // the idle conns' readers see the server go
	for _, c := range []*pgconn.PgConn{a, b, a, b} {
		if _, err := c.Exec(ctx(t), whoami).ReadAll(); err != nil {
			t.Fatalf("a client noticed idle server connections dying: %v", err)
		}
	}
}

func TestClientVanishingMidTransactionLeavesNothingBehind(t *testing.T) {
	checkLeaks(t) // reliability_test.go
	env := pgtest.Start(t, func(c *config.Config) { c.Pool.Size = 1 })
	a := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, a, "begin; insert into notes(body) values ('uncommitted')")
	// Drop the client's socket without a Terminate message.
	_ = a.Conn().Close()
	b := env.Connect(pgtest.UserToken(t, "alice"))
	got := rows(t, b, "select count(*) from notes where body = 'uncommitted'")
	if got[0][0] != "0" {
		t.Fatalf("uncommitted row visible to the next client: %q", got)
	}
	if got := rows(t, b, "select current_setting('transaction_isolation'), "+whoami[len("select "):]); got[0][1] != "web_user" {
		t.Fatalf("next client: %q", got)
	}
	// The pool's only connection is idle and reusable.
	rows(t, b, "begin")
	rows(t, b, "commit")
}

func TestClientVanishingMidQuery(t *testing.T) {
	checkLeaks(t) // reliability_test.go
	env := pgtest.Start(t, func(c *config.Config) { c.Pool.Size = 1 })
	a := env.Connect(pgtest.UserToken(t, "alice"))
	go func() { _, _ = a.Exec(context.Background(), "select pg_sleep(5)").ReadAll() }()
	time.Sleep(300 * time.Millisecond)
	_ = a.Conn().Close()
	b := env.Connect(pgtest.UserToken(t, "bob"))
	start := time.Now()
	if got := rows(t, b, whoami); got[0][1] != "bob" {
		t.Fatalf("next client: %q", got)
	}
	if time.Since(start) > 3*time.Second {
		t.Fatalf("the next client waited %s for the vanished client's query", time.Since(start))
	}
}

func TestSessionModeKeepsSessionStateAndCleansUp(t *testing.T) {
	checkLeaks(t) // reliability_test.go
	env := pgtest.Start(t, func(c *config.Config) {
		c.Pool.Mode = "session"
		c.Pool.Size = 1
	})
	a := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, a, "prepare p as select 42")
	if got := rows(t, a, "execute p"); got[0][0] != "42" {
		t.Fatalf("execute: %q", got)
	}
	if got := rows(t, a, whoami); got[0][1] != "alice" {
		t.Fatalf("session mode identity: %q", got)
	}
	_ = a.Close(ctx(t))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	if _, err := b.Exec(ctx(t), "execute p").ReadAll(); err == nil {
		t.Fatal("the next client on the same server connection saw the prepared statement")
	}
	if got := rows(t, b, whoami); got[0][1] != "bob" {
		t.Fatalf("next client: %q", got)
	}
}

// Only configured databases are served: the upstream's own and the keys
// of databases. Any other name is refused as Postgres refuses it, before a
// pool exists for it.
func TestOnlyConfiguredDatabasesAreServed(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	_, db2 := pgtest.NewDB(t) // a second database on the same server
	pg.Exec(ctx(t), db2, "insert into api.todos(owner, title) values ('alice', 'in the second database')")
	cfg := pgtest.Config(pg, db)
	cfg.Databases = map[string]config.Database{"second": {Upstream: pg.DSN("authenticator", "secret", db2)}}
	cfg.AdminRoles = config.StringList{"web_admin"}
	env := pgtest.StartWith(t, pg, db, cfg)
	dsn := env.DSN(pgtest.UserToken(t, "alice"))
	count := func(dbname string) [][]string {
		c, err := pgconn.Connect(ctx(t), dsn+" dbname="+dbname)
		if err != nil {
			t.Fatalf("%s: %v", dbname, err)
		}
		defer c.Close(ctx(t))
		return rows(t, c, "select current_database(), count(*) from todos")
	}
	if got := count(db); got[0][0] != db || got[0][1] != "3" {
		t.Fatalf("the upstream's own database: %q", got)
	}
	if got := count("second"); got[0][0] != db2 || got[0][1] != "4" {
		t.Fatalf("a mapped database: %q", got)
	}
	// Databases the upstream login may reach, and names that exist
	// nowhere: refused as Postgres says it, and no pool is made.
	for _, name := range []string{"postgres", db2, "nosuchdb", "template1"} {
		_, err := pgconn.Connect(ctx(t), dsn+" dbname="+name)
		if pe := pgErr(err); pe == nil || pe.Code != "3D000" || pe.Severity != "FATAL" || pe.Message != fmt.Sprintf("database %q does not exist", name) {
			t.Fatalf("database %s: %v", name, err)
		}
	}
	pools := map[string]bool{}
	for _, p := range env.App.Server.Stats().Pools {
		pools[p.Database] = true
	}
	if len(pools) != 2 || !pools[db] || !pools["second"] {
		t.Fatalf("pools: %v", pools)
	}
	// The admin console answers as database pgtoken.
	con, err := pgconn.Connect(ctx(t), strings.Replace(env.DSN(pgtest.Token(t, map[string]any{"role": "web_admin"})), "dbname="+db, "dbname=pgtoken", 1))
	if err != nil {
		t.Fatalf("console: %v", err)
	}
	rows(t, con, "SHOW POOLS")
	_ = con.Close(ctx(t))

	// serve_upstream_database: false serves the mapped names only.
	cfg.ServeUpstream = false
	env2 := pgtest.StartWith(t, pg, db, cfg)
	_, err = pgconn.Connect(ctx(t), env2.DSN(pgtest.UserToken(t, "alice")))
	if pe := pgErr(err); pe == nil || pe.Code != "3D000" {
		t.Fatalf("the upstream's own database with serve_upstream_database false: %v", err)
	}
}

func TestNoTCPLeftOpenAfterClose(t *testing.T) {
	env := pgtest.Start(t, nil)
	c := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, c, whoami)
	addr := env.App.Addr()
	_ = env.App.Close()
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("pgtoken still accepts after Close")
	}
}
