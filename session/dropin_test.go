package session_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// pgxConnect logs in to pgtoken with pgx (its statement cache on).
func pgxConnect(t *testing.T, env *pgtest.Env, token string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctx(t), env.DSN(token))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// Issue 16, point 1: in session mode the next client on a server
// connection (after DISCARD ALL) prepares its statements afresh.
func TestSessionModeNextClientPrepares(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) {
		c.Pool.Mode = "session"
		c.Pool.Size = 1
	})
	for i := range 3 {
		c := pgxConnect(t, env, pgtest.UserToken(t, fmt.Sprintf("client%d", i)))
		var got int
		if err := c.QueryRow(ctx(t), "select $1::int + 1", i).Scan(&got); err != nil || got != i+1 {
			t.Fatalf("client %d: %v %d", i, err, got)
		}
		_ = c.Close(ctx(t))
		poolSettles(t, env)
	}
}

// Issue 16, point 2: a statement made stale by a schema change fails once,
// and the client's retry (pgx deallocates and prepares again) succeeds, as
// directly; a fresh client with the same text succeeds at once.
func TestStaleStatementIsPreparedAgain(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) { c.Pool.Size = 1 })
	env.Superuser("create table api.stale (a int, b int); grant select on api.stale to web_user; insert into api.stale values (1, 2)")
	c := pgxConnect(t, env, pgtest.UserToken(t, "alice"))
	const q = "select * from api.stale"
	read := func(c *pgx.Conn) ([]any, error) {
		r, err := c.Query(ctx(t), q)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		if !r.Next() {
			return nil, r.Err()
		}
		return r.Values()
	}
	if _, err := read(c); err != nil {
		t.Fatal(err)
	}
	env.Superuser("alter table api.stale drop column b")
	if _, err := read(c); pgErr(err) == nil || pgErr(err).Code != "0A000" {
		t.Fatalf("first read after the change: want 0A000 cached plan, got %v", err)
	}
	if v, err := read(c); err != nil || len(v) != 1 {
		t.Fatalf("the retry: %v %v", v, err)
	}
	fresh := pgxConnect(t, env, pgtest.UserToken(t, "bob"))
	if v, err := read(fresh); err != nil || len(v) != 1 {
		t.Fatalf("a fresh client with the same text: %v %v", v, err)
	}
	// A dropped and remade type: the enum tests of pgx.
	env.Superuser("create type api.mood as enum ('ok'); grant usage on type api.mood to web_user")
	const eq = "select 'ok'::api.mood"
	if _, err := c.Exec(ctx(t), eq); err != nil {
		t.Fatal(err)
	}
	env.Superuser("drop type api.mood; create type api.mood as enum ('ok'); grant usage on type api.mood to web_user")
	_, _ = c.Exec(ctx(t), eq) // may fail once, as directly
	if _, err := c.Exec(ctx(t), eq); err != nil {
		t.Fatalf("after the type was made again: %v", err)
	}
}

// Issue 16, point 3: a client's session settings follow it as its token
// role (a parameter granted only to that role), and never reach another
// client, with the server connections shared in every order.
func TestSettingsFollowTheClientAsItsRole(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) { c.Pool.Size = 2 })
	env.Superuser("grant set on parameter log_statement to web_user")
	a := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, a, "set log_statement = 'all'")
	hold := env.Connect(pgtest.UserToken(t, "holder"))
	other := env.Connect(pgtest.UserToken(t, "bob"))
	for i := range 6 {
		// Move alice to another server connection now and then.
		if i%2 == 1 {
			rows(t, hold, "begin")
		}
		if got := rows(t, a, "show log_statement"); got[0][0] != "all" {
			t.Fatalf("round %d: alice's setting: %q", i, got)
		}
		if got := rows(t, other, "show log_statement"); got[0][0] == "all" {
			t.Fatalf("round %d: bob sees alice's setting", i)
		}
		if i%2 == 1 {
			rows(t, hold, "commit")
		}
	}
	// Six clients, each with its own TimeZone, on two server
	// connections: each only ever sees its own.
	zones := []string{"UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York", "Australia/Sydney", "Africa/Cairo"}
	var wg sync.WaitGroup
	errs := make(chan error, len(zones))
	for i, z := range zones {
		c := env.Connect(pgtest.UserToken(t, fmt.Sprintf("tz%d", i)))
		rows(t, c, "set timezone = '"+z+"'")
		wg.Add(1)
		go func(c *pgconn.PgConn, z string) {
			defer wg.Done()
			for range 100 {
				r, err := c.Exec(context.Background(), "show timezone").ReadAll()
				if err != nil {
					errs <- err
					return
				}
				if got := string(r[0].Rows[0][0]); got != z {
					errs <- fmt.Errorf("a client that set %s saw %s", z, got)
					return
				}
			}
		}(c, z)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Issue 16, point 5: in session mode a notification that arrives while the
// listener's next query is in flight reaches it.
func TestNotificationsDuringQueriesInSessionMode(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) { c.Pool.Mode = "session" })
	var mu sync.Mutex
	var got []string
	cfg, err := pgconn.ParseConfig(env.DSN(pgtest.UserToken(t, "listener")))
	if err != nil {
		t.Fatal(err)
	}
	cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) {
		mu.Lock()
		got = append(got, n.Payload)
		mu.Unlock()
	}
	l, err := pgconn.ConnectConfig(ctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(context.Background())
	rows(t, l, "listen chan16")
	sender := env.Direct()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 20 {
			time.Sleep(10 * time.Millisecond)
			rows(t, sender, fmt.Sprintf("notify chan16, '%d'", i))
		}
	}()
	for range 10 {
		rows(t, l, "select pg_sleep(0.03)")
	}
	<-done
	deadline := time.Now().Add(5 * time.Second)
	for {
		rows(t, l, "select 1")
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == 20 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 20 notifications arrived: %v", n, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// In session mode the server connection is the client's own: RESET ALL,
// or a RESET of one setting, acts on settings alone, as directly. Its
// cursors WITH HOLD, LISTENs and advisory locks stay (pgtoken's hand-over
// reset is for the next client, not for this one).
func TestSessionModeResetKeepsSessionState(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) {
		c.Pool.Mode = "session"
		c.Pool.Size = 1
	})
	for _, reset := range []string{"reset all", "reset application_name", "reset app.flag"} {
		t.Run(reset, func(t *testing.T) {
			c := env.Connect(pgtest.UserToken(t, "alice"))
			defer c.Close(context.Background())
			rows(t, c, "listen ch")
			rows(t, c, "select pg_advisory_lock(42)")
			rows(t, c, "begin; declare cur cursor with hold for select generate_series(1, 3); commit")
			rows(t, c, "set application_name = 'mine'")
			rows(t, c, "set app.flag = 'on'")
			rows(t, c, "select 1")
			rows(t, c, reset)
			got := rows(t, c, "select current_user::text, current_setting('jwt.claims.sub', true), "+
				"(select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid())::text, "+
				"array_to_string(array(select pg_listening_channels()), ',')")
			if want := "web_user alice 1 ch"; fmt.Sprint(got[0][0], " ", got[0][1], " ", got[0][2], " ", got[0][3]) != want {
				t.Errorf("after %s: %v, want %s", reset, got, want)
			}
			if got := rows(t, c, "fetch 1 from cur"); len(got) != 1 || got[0][0] != "1" {
				t.Errorf("after %s the cursor WITH HOLD: %v", reset, got)
			}
			rows(t, c, "select pg_advisory_unlock_all()")
			_ = c.Close(context.Background())
			poolSettles(t, env)
		})
	}
}

// In session mode a client that prepares a statement while every server
// connection is taken waits for one, and its statement exists there: it
// was answered ParseComplete without the server, and then its Describe
// failed with 26000 (pgx's stdlib TestConnConcurrency).
func TestSessionModePrepareWhilePoolBusy(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) {
		c.Pool.Mode = "session"
		c.Pool.Size = 1
	})
	holder := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, holder, "select 1") // holds the one server connection
	waiter := env.Connect(pgtest.UserToken(t, "bob"))
	done := make(chan error, 1)
	go func() {
		_, err := waiter.Prepare(ctx(t), "s1", "select $1::int + 1", nil)
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	_ = holder.Close(context.Background())
	if err := <-done; err != nil {
		t.Fatalf("prepare while the pool was busy: %v", err)
	}
	res := waiter.ExecPrepared(ctx(t), "s1", [][]byte{[]byte("41")}, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "42" {
		t.Fatalf("using it: %v %q", res.Err, res.Rows)
	}
}

// A client's transaction defaults (default_transaction_read_only,
// _isolation, _deferrable), from its startup packet or a SET, hold from
// its first transaction on a server connection, as directly: Postgres
// reads them when the transaction starts, before any prelude or replay
// inside it (pgconn's TestConnectWithValidateConnectTargetSessionAttrsReadWrite).
// Pool of one, so the connection served another client first.
func TestTransactionDefaultsHoldFromTheFirstTransaction(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			env := pgtest.Start(t, func(c *config.Config) {
				c.Pool.Mode = mode
				c.Pool.Size = 1
			})
			other := env.Connect(pgtest.UserToken(t, "bob"))
			rows(t, other, "select 1")
			_ = other.Close(context.Background())
			poolSettles(t, env)

			cfg, err := pgconn.ParseConfig(env.DSN(pgtest.UserToken(t, "alice")) + " default_transaction_read_only=on")
			if err != nil {
				t.Fatal(err)
			}
			c, err := pgconn.ConnectConfig(ctx(t), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			if got := rows(t, c, "show transaction_read_only"); got[0][0] != "on" {
				t.Errorf("startup default_transaction_read_only=on: first transaction read-only = %s", got[0][0])
			}
			res := c.ExecParams(ctx(t), "select current_setting('transaction_read_only'), current_user::text", nil, nil, nil, nil).Read()
			if res.Err != nil || string(res.Rows[0][0]) != "on" || string(res.Rows[0][1]) != "web_user" {
				t.Errorf("extended protocol: %v %q", res.Err, res.Rows)
			}
			rows(t, c, "set default_transaction_read_only = off")
			rows(t, c, "set default_transaction_isolation = 'serializable'")
			if mode == "transaction" {
				other := env.Connect(pgtest.UserToken(t, "bob"))
				rows(t, other, "select 1") // the connection serves another client in between
				_ = other.Close(context.Background())
			}
			got := rows(t, c, "select current_setting('transaction_isolation'), current_setting('transaction_read_only'), current_user::text")
			if fmt.Sprint(got[0]) != "[serializable off web_user]" {
				t.Errorf("after SET default_transaction_isolation: %v", got[0])
			}
		})
	}
}
