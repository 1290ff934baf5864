package session_test

// Reliability (issue 7): server connections killed, Postgres restarted or
// down, the pool exhausted, clients vanishing or idling inside a
// transaction, slow clients, the JWKS endpoint down. Each test checks that
// only the client concerned notices, that the pool heals, and that no
// goroutine of pgtoken outlives it.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/goleak"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/internal/testpg"
	"github.com/pgtoken/pgtoken/wire"
)

// checkLeaks makes the test fail if goroutines started during it are still
// running once it and its cleanups are done. Call it first, so its cleanup
// runs last: after pgtoken (pgtest's cleanup) and the clients are closed.
func checkLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		if t.Failed() {
			return // the failure says more than a leak report would
		}
		goleak.VerifyNone(t, ignore)
	})
}

// privateEnv runs pgtoken in front of a Postgres cluster of the test's own,
// which it may stop and restart (env.PG).
func privateEnv(t *testing.T, mutate func(*config.Config)) *pgtest.Env {
	t.Helper()
	pg, db := privateDB(t)
	cfg := pgtest.Config(pg, db)
	if mutate != nil {
		mutate(&cfg)
	}
	return pgtest.StartWith(t, pg, db, cfg)
}

// privateDB starts a private cluster with the schema in database "app".
func privateDB(t *testing.T) (*testpg.Cluster, string) {
	t.Helper()
	pg := testpg.New(t, testpg.Options{Settings: map[string]string{"max_connections": "100"}})
	const db = "app"
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pg.CreateDatabase(c, db); err != nil {
		t.Fatal(err)
	}
	if err := pg.ApplySQLFile(c, db, filepath.Join(pgtest.Root(), "testdata", "sql", "schema.sql")); err != nil {
		t.Fatal(err)
	}
	return pg, db
}

// backends lists the pids of pgtoken's server connections to the test
// database, with a condition on pg_stat_activity (or "true").
func backends(env *pgtest.Env, where string) []string {
	var out []string
	for _, r := range env.Superuser("select pid from pg_stat_activity where usename = 'authenticator' and datname = current_database() and pid <> pg_backend_pid() and (" + where + ")") {
		out = append(out, r[0])
	}
	return out
}

// killBackends terminates pgtoken's server connections matching where and
// reports how many there were.
func killBackends(env *pgtest.Env, where string) int {
	pids := backends(env, where)
	for _, pid := range pids {
		env.Superuser("select pg_terminate_backend(" + pid + ")")
	}
	return len(pids)
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serverSideClean checks, as the superuser, that no server connection of
// pgtoken is running anything, waiting for its client (active/ClientRead)
// or inside a transaction.
func serverSideClean(t *testing.T, env *pgtest.Env) {
	t.Helper()
	holdsWithin(t, env, 10*time.Second, "a server connection stayed busy or inside a transaction", func() bool {
		return len(backends(env, "state <> 'idle' or xact_start is not null")) == 0
	})
}

// poolSettles waits until every server connection is back in the pool and
// no client waits, and checks the pool never exceeds its size.
func poolSettles(t *testing.T, env *pgtest.Env) {
	t.Helper()
	holdsWithin(t, env, 10*time.Second, "the pool did not settle", func() bool {
		for _, p := range env.App.Server.Stats().Pools {
			if p.Active != 0 || p.Waiting != 0 || p.Connecting != 0 || p.Total > p.Size || p.Idle > p.Total {
				return false
			}
		}
		return true
	})
}

// isFresh runs a statement that sees a transaction of its own: the
// server connection it got was not left inside someone's transaction.
func isFresh(t *testing.T, c *pgconn.PgConn, sub string) {
	t.Helper()
	if err := freshTransaction(c, sub); err != nil {
		t.Fatal(err)
	}
}

// freshTransaction is isFresh for any goroutine: it returns what went
// wrong.
func freshTransaction(c *pgconn.PgConn, sub string) error {
	// Not rows: its context stays registered until the test ends, which
	// would show as heap growth in tests that run this in a loop.
	cx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := c.Exec(cx, "select current_user::text, current_setting('jwt.claims.sub', true), (now() = statement_timestamp())::text, coalesce(txid_current_if_assigned()::text, 'none')").ReadAll()
	if err != nil {
		return fmt.Errorf("%s: %w", sub, err)
	}
	if got := flatten(res); len(got) != 1 || got[0][1] != sub || got[0][2] != "true" || got[0][3] != "none" {
		return fmt.Errorf("%s's statement ran on a server connection with state left behind: %q", sub, got)
	}
	return nil
}

// rawConn logs in with pgconn and takes over the socket, for clients that
// misbehave at the protocol level.
func rawConn(t *testing.T, env *pgtest.Env, sub string) net.Conn {
	t.Helper()
	nc, _, _ := hijackedClient(t, env, sub)
	return nc
}

func send(t *testing.T, nc net.Conn, msgs ...pgproto3.FrontendMessage) {
	t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nc.Write(b); err != nil {
		t.Fatal(err)
	}
}

// readUntil reads messages until one of type typ, which it returns the
// type of (or 'E' for an error first, whose body it returns).
func readUntil(t *testing.T, r *wire.Reader, typ byte) (byte, []byte) {
	t.Helper()
	for {
		got, _, err := r.Next()
		if err != nil {
			t.Fatalf("waiting for %q: %v", typ, err)
		}
		if got == typ || got == 'E' {
			body, err := r.Body()
			if err != nil {
				t.Fatal(err)
			}
			return got, append([]byte(nil), body...)
		}
		if err := r.Skip(); err != nil {
			t.Fatal(err)
		}
	}
}

// sqlstate runs sql and returns the SQLSTATE it failed with ("" if none,
// "net" if it failed without one).
func sqlstate(c *pgconn.PgConn, sql string) string {
	cx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := c.Exec(cx, sql).ReadAll()
	if err == nil {
		return ""
	}
	if pe := pgErr(err); pe != nil {
		return pe.Code
	}
	return "net"
}

// lostCodes are the SQLSTATEs a client may see for a transaction whose
// server connection was killed: pgtoken's own, or the server's FATAL.
func lostCode(code string) bool { return code == "08006" || code == "57P01" }

func TestKillMidQueryOnlyThatClientNotices(t *testing.T) {
	checkLeaks(t)
	env := pgtest.Start(t, func(c *config.Config) { c.Pool.Size = 3 })
	a := env.Connect(pgtest.UserToken(t, "alice"))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	c := env.Connect(pgtest.UserToken(t, "carol"))
	rows(t, b, "begin; insert into notes(body) values ('bob in tx')")
	done := make(chan string, 1)
	start := time.Now()
	go func() { done <- sqlstate(a, "select pg_sleep(30), 'alice sleeps'") }()
	waitFor(t, 5*time.Second, "alice's query never ran", func() bool {
		return len(backends(env, "query like '%alice sleeps%' and state = 'active'")) == 1
	})
	if n := killBackends(env, "query like '%alice sleeps%'"); n != 1 {
		t.Fatalf("killed %d backends", n)
	}
	select {
	case code := <-done:
		if !lostCode(code) {
			t.Fatalf("the killed query failed with %q", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the killed query did not fail")
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("too slow")
	}
	// The others never noticed; bob's transaction is intact.
	if got := rows(t, b, "select count(*) from notes where body = 'bob in tx'"); got[0][0] != "1" {
		t.Fatalf("bob's transaction: %q", got)
	}
	rows(t, b, "commit")
	isFresh(t, c, "carol")
	isFresh(t, a, "alice")
	isFresh(t, b, "bob")
	poolSettles(t, env)
	serverSideClean(t, env)
}

// endlessReader yields copy rows until stop is closed (at most limit bytes).
type endlessReader struct {
	n, limit int
	after    int
	trigger  func()
	once     sync.Once
}

func (r *endlessReader) Read(p []byte) (int, error) {
	if r.n >= r.limit {
		return 0, io.EOF
	}
	line := "a row of copy data that goes on and on\n"
	k := 0
	for k+len(line) <= len(p) && r.n < r.limit {
		k += copy(p[k:], line)
		r.n += len(line)
	}
	if r.n > r.after && r.trigger != nil {
		r.once.Do(r.trigger)
	}
	return k, nil
}

func TestKillMidCopy(t *testing.T) {
	checkLeaks(t)
	env := pgtest.Start(t, func(c *config.Config) { c.Pool.Size = 2 })
	a := env.Connect(pgtest.UserToken(t, "alice"))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	rows(t, b, "begin; insert into notes(body) values ('bob in tx')")

	t.Run("in", func(t *testing.T) {
		src := &endlessReader{limit: 1 << 30, after: 1 << 20}
		src.trigger = func() {
			go func() {
				// The server may not have begun the COPY yet: the
				// client's data waits in socket buffers meanwhile.
				deadline := time.Now().Add(10 * time.Second)
				for killBackends(env, "query like '%copy notes%'") == 0 {
					if time.Now().After(deadline) {
						t.Error("the copy never showed in pg_stat_activity")
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
			}()
		}
		start := time.Now()
		_, err := a.CopyFrom(ctx(t), src, "copy notes(body) from stdin")
		if pe := pgErr(err); pe == nil || !lostCode(pe.Code) {
			t.Fatalf("copy in on a killed server connection: %v", err)
		}
		t.Logf("copy in failed after %d bytes, %s: %v", src.n, time.Since(start).Round(time.Millisecond), err)
		if src.n >= src.limit {
			t.Fatal("the client sent everything: the copy was never stopped")
		}
		isFresh(t, a, "alice")
	})
	t.Run("out", func(t *testing.T) {
		var got atomic.Int64
		w := writerFunc(func(p []byte) (int, error) {
			if got.Add(int64(len(p))) > 1<<20 && got.Load()-int64(len(p)) <= 1<<20 {
				go func() {
					if n := killBackends(env, "query like '%copy (select%'"); n != 1 {
						t.Errorf("killed %d backends", n)
					}
				}()
			}
			return len(p), nil
		})
		_, err := a.CopyTo(ctx(t), w, "copy (select repeat('x', 100) from generate_series(1, 5000000)) to stdout")
		if pe := pgErr(err); pe == nil || !lostCode(pe.Code) {
			t.Fatalf("copy out on a killed server connection: %v (after %d bytes)", err, got.Load())
		}
		isFresh(t, a, "alice")
	})
	// Bob's transaction on the other server connection never noticed.
	if got := rows(t, b, "select count(*) from notes where body = 'bob in tx'"); got[0][0] != "1" {
		t.Fatalf("bob's transaction: %q", got)
	}
	rows(t, b, "commit")
	poolSettles(t, env)
	serverSideClean(t, env)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestKillInsideTransactionFailsTheNextStatementOnly(t *testing.T) {
	checkLeaks(t)
	env := pgtest.Start(t, nil)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	// Extended protocol this time (the simple case is
	// TestKilledServerConnectionIsReplaced): the statement after the kill
	// must fail rather than run outside the transaction the client thinks
	// it is in; the one after runs on a new server connection.
	rows(t, a, "begin")
	rows(t, a, "insert into notes(body) values ('lost with the kill')")
	if n := killBackends(env, "state like 'idle in transaction%'"); n != 1 {
		t.Fatalf("killed %d", n)
	}
	time.Sleep(100 * time.Millisecond)
	r := a.ExecParams(ctx(t), "insert into notes(body) values ($1)", [][]byte{[]byte("after the kill")}, nil, nil, nil).Read()
	if pe := pgErr(r.Err); pe == nil || pe.Code != "08006" {
		t.Fatalf("first statement after the kill: %v", r.Err)
	}
	r = a.ExecParams(ctx(t), "select count(*) from notes", nil, nil, nil, nil).Read()
	if r.Err != nil || string(r.Rows[0][0]) != "0" {
		t.Fatalf("after the kill: %v %q", r.Err, r.Rows)
	}
	isFresh(t, a, "alice")
	poolSettles(t, env)
}

func TestPostgresRestartUnderPgtoken(t *testing.T) {
	checkLeaks(t)
	env := privateEnv(t, func(c *config.Config) {
		c.Pool.Size = 2
		c.Pool.WaitTimeout = config.Duration(2 * time.Second)
	})
	a := env.Connect(pgtest.UserToken(t, "alice"))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	// Warm both server connections.
	rows(t, b, "begin")
	isFresh(t, a, "alice")
	rows(t, b, "commit")

	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := env.PG.Restart(c); err != nil {
		t.Fatal(err)
	}
	// The very next transaction of every client succeeds.
	isFresh(t, a, "alice")
	isFresh(t, b, "bob")
	rows(t, b, "begin; insert into notes(body) values ('before the outage')")

	// An outage: errors meanwhile, in and outside a transaction, at login
	// too once pgtoken needs the server for it, then service resumes
	// without restarting pgtoken.
	if err := env.PG.StopOnly(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if code := sqlstate(a, whoami); code != "08006" {
		t.Fatalf("alice during the outage: %q", code)
	}
	if code := sqlstate(b, "commit"); code != "08006" {
		t.Fatalf("bob's commit during the outage: %q", code)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("errors during the outage took %s", time.Since(start))
	}
	cfg, _ := pgconn.ParseConfig(env.DSN(pgtest.UserToken(t, "carol")))
	cfg.RuntimeParams["search_path"] = "api" // needs the server to check
	if _, err := pgconn.ConnectConfig(ctx(t), cfg); err == nil {
		t.Fatal("a login that needs the server succeeded during the outage")
	} else if pe := pgErr(err); pe == nil || pe.Severity != "FATAL" {
		t.Fatalf("login during the outage: %v", err)
	}
	if err := env.PG.Resume(c); err != nil {
		t.Fatal(err)
	}
	isFresh(t, a, "alice")
	isFresh(t, b, "bob")
	if got := rows(t, b, "select count(*) from notes"); got[0][0] != "0" {
		t.Fatalf("bob's transaction outlived the outage: %q", got)
	}
	carol, err := pgconn.ConnectConfig(ctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer carol.Close(context.Background())
	isFresh(t, carol, "carol")
	poolSettles(t, env)
	serverSideClean(t, env)
}

func TestUpstreamDownAtStart(t *testing.T) {
	checkLeaks(t)
	pg, db := privateDB(t)
	if err := pg.StopOnly(); err != nil {
		t.Fatal(err)
	}
	cfg := pgtest.Config(pg, db)
	cfg.Pool.ConnectTimeout = config.Duration(2 * time.Second)
	env := pgtest.StartWith(t, pg, db, cfg) // starts although nothing answers
	tok := pgtest.UserToken(t, "alice")
	for range 3 {
		start := time.Now()
		_, err := pgconn.Connect(ctx(t), env.DSN(tok))
		pe := pgErr(err)
		if pe == nil || pe.Severity != "FATAL" || pe.Code != "57P03" && pe.Code != "08006" {
			t.Fatalf("login with the server down: %v", err)
		}
		if time.Since(start) > 3*time.Second {
			t.Fatalf("a refused login took %s", time.Since(start))
		}
	}
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pg.Resume(c); err != nil {
		t.Fatal(err)
	}
	a := env.Connect(tok)
	isFresh(t, a, "alice")
	poolSettles(t, env)
}

func TestPoolExhaustedNothingStaysStuck(t *testing.T) {
	checkLeaks(t)
	env := pgtest.Start(t, func(c *config.Config) {
		c.Pool.Size = 1
		c.Pool.WaitTimeout = config.Duration(50 * time.Millisecond)
	})
	// Clients race for the one server connection with transactions about
	// as long as the wait timeout, so grants and timeouts cross.
	var wg sync.WaitGroup
	var ok, timedOut, other atomic.Int64
	var clients []*pgconn.PgConn
	for i := range 8 {
		c := env.Connect(pgtest.UserToken(t, fmt.Sprintf("user%d", i)))
		clients = append(clients, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 40 {
				var code string
				if j%2 == 0 {
					code = sqlstate(c, "select pg_sleep(0.01)")
				} else {
					r := c.ExecParams(context.Background(), "select pg_sleep(0.01)", nil, nil, nil, nil).Read()
					if pe := pgErr(r.Err); pe != nil {
						code = pe.Code
					} else if r.Err != nil {
						code = "net"
					}
				}
				switch code {
				case "":
					ok.Add(1)
				case "53300":
					timedOut.Add(1)
				default:
					other.Add(1)
					t.Errorf("client %d: %s", i, code)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d transactions, %d timed out waiting", ok.Load(), timedOut.Load())
	if timedOut.Load() == 0 || ok.Load() == 0 {
		t.Fatalf("want both: ok %d, timed out %d", ok.Load(), timedOut.Load())
	}
	poolSettles(t, env)
	// Every client retries in the same session and gets its turn.
	for i, c := range clients {
		isFresh(t, c, fmt.Sprintf("user%d", i))
	}
	// A client that vanishes while it waits leaves nothing behind either.
	holder := env.Connect(pgtest.UserToken(t, "holder"))
	rows(t, holder, "begin")
	w := rawConn(t, env, "waiter")
	send(t, w, &pgproto3.Query{String: "select 1"})
	time.Sleep(10 * time.Millisecond)
	_ = w.Close()
	time.Sleep(100 * time.Millisecond)
	rows(t, holder, "commit")
	poolSettles(t, env)
	isFresh(t, clients[0], "user0")
	serverSideClean(t, env)
}

func TestClientVanishing(t *testing.T) {
	checkLeaks(t)
	env := pgtest.Start(t, func(c *config.Config) {
		c.Pool.Size = 1
		c.Pool.WaitTimeout = config.Duration(5 * time.Second)
	})
	next := env.Connect(pgtest.UserToken(t, "next"))
	// after checks that the pool's only server connection is clean and
	// promptly available to the next client.
	after := func(t *testing.T) {
		t.Helper()
		start := time.Now()
		isFresh(t, next, "next")
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("the next client waited %s", d)
		}
		if got := env.Superuser("select count(*) from notes"); got[0][0] != "0" {
			t.Fatalf("the vanished client's rows were committed: %q", got)
		}
		poolSettles(t, env)
		serverSideClean(t, env)
	}
	t.Run("mid-result", func(t *testing.T) {
		nc := rawConn(t, env, "alice")
		send(t, nc, &pgproto3.Query{String: "select repeat('x', 1000) from generate_series(1, 1000000)"})
		r := wire.NewReader(nc, 4096, 4096)
		readUntil(t, r, 'D')
		_ = nc.Close()
		after(t)
	})
	t.Run("mid-copy-in", func(t *testing.T) {
		nc := rawConn(t, env, "alice")
		send(t, nc, &pgproto3.Query{String: "begin; insert into notes(body) values ('in tx'); copy notes(body) from stdin"})
		r := wire.NewReader(nc, 4096, 4096)
		if typ, body := readUntil(t, r, 'G'); typ != 'G' {
			t.Fatalf("copy in: %q", body)
		}
		for range 100 {
			send(t, nc, &pgproto3.CopyData{Data: []byte("copied\n")})
		}
		_ = nc.Close()
		after(t)
	})
	t.Run("mid-copy-out", func(t *testing.T) {
		nc := rawConn(t, env, "alice")
		send(t, nc, &pgproto3.Query{String: "copy (select repeat('x', 1000) from generate_series(1, 1000000)) to stdout"})
		r := wire.NewReader(nc, 4096, 4096)
		readUntil(t, r, 'd')
		_ = nc.Close()
		after(t)
	})
	t.Run("during-prelude", func(t *testing.T) {
		// The client closes right after its first Query, before anything
		// can have come back: pgtoken is still writing the prelude, or
		// the server is running it.
		for i := range 20 {
			nc := rawConn(t, env, fmt.Sprintf("gone%d", i))
			send(t, nc, &pgproto3.Query{String: "begin; insert into notes(body) values ('uncommitted'); select pg_sleep(0.05)"})
			_ = nc.Close()
		}
		after(t)
	})
	t.Run("pipelined-extended", func(t *testing.T) {
		nc := rawConn(t, env, "alice")
		msgs := []pgproto3.FrontendMessage{}
		for range 50 {
			msgs = append(msgs,
				&pgproto3.Parse{Query: "insert into notes(body) values ('pipelined')"},
				&pgproto3.Bind{}, &pgproto3.Execute{})
		}
		msgs = append(msgs, &pgproto3.Parse{Query: "begin"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		send(t, nc, append([]pgproto3.FrontendMessage{&pgproto3.Query{String: "begin"}}, msgs...)...)
		_ = nc.Close()
		after(t)
	})
}

func TestIdleInTransactionTimeout(t *testing.T) {
	checkLeaks(t)
	env := pgtest.Start(t, func(c *config.Config) {
		c.Pool.Size = 1
		c.Pool.IdleTransactionTimeout = config.Duration(500 * time.Millisecond)
		c.Pool.WaitTimeout = config.Duration(10 * time.Second)
	})
	b := env.Connect(pgtest.UserToken(t, "bob"))
	for _, tc := range []struct{ name, begin string }{
		{"begin alone", "begin"},
		{"begin and a statement", "begin; insert into notes(body) values ('idle')"},
		{"error inside", "begin; select 1/0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := env.Connect(pgtest.UserToken(t, "alice"))
			_, _ = a.Exec(ctx(t), tc.begin).ReadAll()
			if a.TxStatus() == 'I' {
				t.Fatalf("not in a transaction: %c", a.TxStatus())
			}
			start := time.Now()
			// Bob needs the only server connection: he gets it once
			// alice has been cut off.
			isFresh(t, b, "bob")
			waited := time.Since(start)
			if waited < 400*time.Millisecond || waited > 3*time.Second {
				t.Fatalf("bob waited %s for the idle transaction to be cut", waited)
			}
			_, err := a.Exec(ctx(t), whoami).ReadAll()
			if pe := pgErr(err); pe == nil || pe.Code != "25P03" || pe.Severity != "FATAL" {
				t.Fatalf("alice after the timeout: %v", err)
			}
			if got := env.Superuser("select count(*) from notes"); got[0][0] != "0" {
				t.Fatalf("the idle transaction was committed: %q", got)
			}
			poolSettles(t, env)
		})
	}
	// A transaction that works (slow statements, short pauses) is not cut.
	a := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, a, "begin")
	for range 3 {
		time.Sleep(200 * time.Millisecond)
		rows(t, a, "select pg_sleep(0.7)")
	}
	rows(t, a, "commit")
	isFresh(t, a, "alice")
}

func TestSlowClientBackpressure(t *testing.T) {
	checkLeaks(t)
	env := pgtest.Start(t, func(c *config.Config) { c.Pool.Size = 2 })
	b := env.Connect(pgtest.UserToken(t, "bob"))
	nc := rawConn(t, env, "alice")
	// About 2 GB in rows of 2 kB: far more than fits in any buffer.
	send(t, nc, &pgproto3.Query{String: "select 'slow reader', repeat('x', 2000) from generate_series(1, 1000000)"})
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	stop := make(chan struct{})
	var read atomic.Int64
	readerDone := make(chan error, 1)
	go func() {
		// A few bytes at a time, with pauses.
		buf := make([]byte, 7)
		for {
			select {
			case <-stop:
				readerDone <- nil
				return
			default:
			}
			for range 200 {
				n, err := nc.Read(buf)
				read.Add(int64(n))
				if err != nil {
					readerDone <- err
					return
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
	// The live heap (after a collection, so the other client's garbage
	// does not count), sampled while the slow client reads.
	peak := before.HeapAlloc
	deadline := time.Now().Add(3 * time.Second)
	n := 0
	for time.Now().Before(deadline) {
		isFresh(t, b, "bob")
		n++
		if n%50 == 0 {
			runtime.GC()
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapAlloc)
		}
	}
	// The server waits for the client: its backend is blocked writing.
	if got := backends(env, "query like '%slow reader%' and wait_event = 'ClientWrite'"); len(got) != 1 {
		t.Errorf("the slow client's server connection is not blocked on its socket: %v", env.Superuser("select state, wait_event_type, wait_event from pg_stat_activity where query like '%slow reader%' and usename = 'authenticator'"))
	}
	close(stop)
	if err := <-readerDone; err != nil {
		t.Fatal(err)
	}
	grew := int64(peak) - int64(before.HeapAlloc)
	t.Logf("slow client read %d kB in 3s; %d statements of another client meanwhile; live heap grew by %d kB at most",
		read.Load()>>10, n, grew>>10)
	if n < 20 {
		t.Fatalf("the other client ran only %d statements", n)
	}
	if grew > 8<<20 {
		t.Fatalf("pgtoken's heap grew by %d MB while a slow client read", grew>>20)
	}
	// The slow client goes away mid-result: its server connection is
	// dropped and replaced.
	_ = nc.Close()
	poolSettles(t, env)
	serverSideClean(t, env)
	isFresh(t, b, "bob")
}

func ctxTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// TestKillWithPipelinedLocalAnswer: a client pipelines a query pgtoken
// answers itself (an empty one) behind one that runs on the server. When
// the server connection is killed, the client still gets an answer and a
// ReadyForQuery for each.
func TestKillWithPipelinedLocalAnswer(t *testing.T) {
	checkLeaks(t)
	env := pgtest.Start(t, nil)
	nc := rawConn(t, env, "alice")
	send(t, nc, &pgproto3.Query{String: "select pg_sleep(5), 'victim'"}, &pgproto3.Query{String: ""})
	waitFor(t, 5*time.Second, "the query never ran", func() bool {
		return len(backends(env, "query like '%victim%' and state = 'active'")) == 1
	})
	killBackends(env, "query like '%victim%'")
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := wire.NewReader(nc, 4096, 1<<20)
	var got []byte
	for len(got) < 4 {
		typ, _, err := r.Next()
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		if err := r.Skip(); err != nil {
			t.Fatal(err)
		}
		if typ != 'T' && typ != 'D' && typ != 'N' {
			got = append(got, typ)
		}
	}
	if string(got) != "EZIZ" {
		t.Fatalf("answers %q, want EZIZ", got)
	}
}

// TestJWKSEndpointDown: keys fetched before the JWKS endpoint failed keep
// working; a token with an unknown kid is refused quickly rather than after
// a long wait for the endpoint.
func TestJWKSEndpointDown(t *testing.T) {
	checkLeaks(t)
	priv1, pub1, err := authn.GenerateJWKS("ES256")
	if err != nil {
		t.Fatal(err)
	}
	priv2, _, err := authn.GenerateJWKS("ES256")
	if err != nil {
		t.Fatal(err)
	}
	const (
		serving = iota
		failing
		hanging
	)
	var mode atomic.Int32
	var requests atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		switch mode.Load() {
		case failing:
			http.Error(w, "down", http.StatusInternalServerError)
		case hanging:
			select {
			case <-r.Context().Done():
			case <-release:
			}
		default:
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(pub1)
		}
	}))
	defer srv.Close()
	defer close(release) // before srv.Close: a hanging handler returns
	env := pgtest.Start(t, func(c *config.Config) {
		c.JWT.JWKS = config.StringList{srv.URL + "/jwks.json"}
	})
	n := 0
	token := func(priv []byte) string {
		n++
		tok, err := authn.Mint(priv, map[string]any{"role": "web_user", "sub": fmt.Sprintf("jwks%d", n)}, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	login := func(tok string) (time.Duration, error) {
		start := time.Now()
		cx, cancel := ctxTimeout(30 * time.Second)
		defer cancel()
		c, err := pgconn.Connect(cx, env.DSN(tok))
		took := time.Since(start)
		if err == nil {
			defer c.Close(context.Background())
			_, err = c.Exec(cx, "select 1").ReadAll()
		}
		return took, err
	}
	if _, err := login(token(priv1)); err != nil {
		t.Fatalf("with the endpoint up: %v", err)
	}
	for _, m := range []int32{hanging, failing} { // hanging first: its unknown kid gets the (rate-limited) refresh
		mode.Store(m)
		// A fresh token (not in the verified-token cache) with the
		// known kid: verified with the key fetched before.
		if took, err := login(token(priv1)); err != nil || took > time.Second {
			t.Fatalf("mode %d: known kid: %v after %s", m, err, took)
		}
		// An unknown kid: refused within about the unknown-kid wait.
		for range 2 {
			took, err := login(token(priv2))
			if pe := pgErr(err); pe == nil || pe.Code != "28P01" || !strings.Contains(pe.Message, "unknown key id") {
				t.Fatalf("mode %d: unknown kid: %v", m, err)
			}
			if took > 2*time.Second {
				t.Fatalf("mode %d: unknown kid refused after %s", m, took)
			}
			t.Logf("mode %d: unknown kid refused after %s", m, took.Round(time.Millisecond))
		}
	}
	if requests.Load() < 2 {
		t.Errorf("the endpoint was asked %d times: the outage was never noticed", requests.Load())
	}
	_ = env.App.Close() // before the deferred server close
}

// pool.client_idle_timeout closes a client idle outside a transaction
// (FATAL 57P05, as Postgres's idle_session_timeout), but not one inside a
// transaction, nor one that keeps talking; a reload changes it.
func TestClientIdleTimeout(t *testing.T) {
	checkLeaks(t)
	env := pgtest.Start(t, func(c *config.Config) {
		c.Pool.ClientIdleTimeout = config.Duration(400 * time.Millisecond)
	})
	idle := env.Connect(pgtest.UserToken(t, "alice"))
	inTx := env.Connect(pgtest.UserToken(t, "bob"))
	busy := env.Connect(pgtest.UserToken(t, "carol"))
	rows(t, idle, "select 1")
	rows(t, inTx, "begin")
	for range 6 {
		time.Sleep(150 * time.Millisecond)
		rows(t, busy, "select 1")
	}
	if _, err := idle.Exec(ctx(t), whoami).ReadAll(); pgErr(err) == nil || pgErr(err).Code != "57P05" || pgErr(err).Severity != "FATAL" {
		t.Fatalf("idle client after the timeout: %v", err)
	}
	if got := rows(t, inTx, "select current_user::text"); got[0][0] != "web_user" {
		t.Fatalf("client inside a transaction: %q", got)
	}
	rows(t, inTx, "commit")
}

// pool.query_timeout cancels a query that runs longer (57014); the
// session and its server connection go on.
func TestQueryTimeout(t *testing.T) {
	checkLeaks(t)
	env := pgtest.Start(t, func(c *config.Config) {
		c.Pool.QueryTimeout = config.Duration(time.Second)
		c.Pool.Size = 1
	})
	a := env.Connect(pgtest.UserToken(t, "alice"))
	start := time.Now()
	_, err := a.Exec(ctx(t), "select pg_sleep(30)").ReadAll()
	if pgErr(err) == nil || pgErr(err).Code != "57014" {
		t.Fatalf("a query past pool.query_timeout: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("cancelled after %s", d)
	}
	if got := rows(t, a, "select current_user::text"); got[0][0] != "web_user" {
		t.Fatalf("after the cancel: %q", got)
	}
	// A query within the limit, and a transaction of short queries, run.
	rows(t, a, "select pg_sleep(0.3)")
	b := env.Connect(pgtest.UserToken(t, "bob"))
	rows(t, b, "select 1")
}
