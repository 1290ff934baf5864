package session_test

import (
	"context"
	"net"
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

func TestDatabaseSelectsTheUpstreamDatabase(t *testing.T) {
	env := pgtest.Start(t, nil)
	// A second database on the same server, with the same schema.
	_, db2 := pgtest.NewDB(t)
	env.PG.Exec(ctx(t), db2, "insert into api.todos(owner, title) values ('alice', 'in the second database')")
	dsn := env.DSN(pgtest.UserToken(t, "alice"))
	c, err := pgconn.Connect(ctx(t), dsn+" dbname="+db2)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx(t))
	if got := rows(t, c, "select current_database(), count(*) from todos"); got[0][0] != db2 || got[0][1] != "4" {
		t.Fatalf("second database: %q", got)
	}
	// An unknown database is the server's own error.
	_, err = pgconn.Connect(ctx(t), dsn+" dbname=nosuchdb")
	if pe := pgErr(err); pe == nil || pe.Code != "3D000" {
		t.Fatalf("unknown database: %v", err)
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
