package session_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/internal/testpg"
)

func TestMain(m *testing.M) { testpg.Main(m) }

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// rows runs sql (simple protocol) and returns every row of every result.
func rows(t testing.TB, c *pgconn.PgConn, sql string) [][]string {
	t.Helper()
	res, err := c.Exec(ctx(t), sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return flatten(res)
}

func flatten(res []*pgconn.Result) [][]string { return testpg.TextRows(res) }

func pgErr(err error) *pgconn.PgError {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe
	}
	return nil
}

const whoami = "select current_user::text, coalesce(nullif(current_setting('jwt.claims.sub', true), ''), '<none>')"

func TestLoginRunsEveryTransactionAsTheToken(t *testing.T) {
	env := pgtest.Start(t, nil)
	sub := `x'; drop table t; --"$$`
	c := env.Connect(pgtest.Token(t, map[string]any{"role": "web_user", "sub": sub, "n": 42, "ok": true, "obj": map[string]any{"a": []int{1, 2}}}))

	got := rows(t, c, whoami+", current_setting('jwt.claims.n'), current_setting('jwt.claims.ok'), current_setting('jwt.claims.obj'), current_setting('jwt.claims.role')")
	want := []string{"web_user", sub, "42", "true", `{"a":[1,2]}`, "web_user"}
	if fmt.Sprint(got) != fmt.Sprint([][]string{want}) {
		t.Fatalf("got %q, want %q", got, want)
	}
	// The JSON setting holds the whole claims object.
	js := rows(t, c, "select (current_setting('request.jwt.claims')::jsonb)->>'sub'")
	if js[0][0] != sub {
		t.Fatalf("request.jwt.claims sub = %q", js[0][0])
	}
	// The settings are transaction-local: the next transaction gets them
	// again (from the prelude), and never leaves them behind.
	for range 3 {
		if got := rows(t, c, whoami); got[0][0] != "web_user" || got[0][1] != sub {
			t.Fatalf("later transaction: %q", got)
		}
	}
}

func TestRowLevelSecurityThroughPgtoken(t *testing.T) {
	env := pgtest.Start(t, nil)
	for _, tc := range []struct {
		claims map[string]any
		count  string
	}{
		{map[string]any{"role": "web_user", "sub": "alice"}, "3"},
		{map[string]any{"role": "web_user", "sub": "bob"}, "3"},
		{map[string]any{"role": "web_user", "sub": "nobody"}, "0"},
		{map[string]any{"role": "web_admin", "sub": "root"}, "9"},
		{map[string]any{"sub": "anon"}, "0"}, // no role claim: anon_role
	} {
		c := env.Connect(pgtest.Token(t, tc.claims))
		if got := rows(t, c, "select count(*) from todos"); got[0][0] != tc.count {
			t.Errorf("%v sees %s todos, want %s", tc.claims, got[0][0], tc.count)
		}
	}
}

func TestStatementsAfterCommitInOneQueryKeepTheRole(t *testing.T) {
	env := pgtest.Start(t, nil)
	c := env.Connect(pgtest.UserToken(t, "alice"))
	for _, sql := range []string{
		whoami + "; commit; " + whoami,
		whoami + "; commit; " + whoami + "; begin; " + whoami + "; commit; " + whoami,
		"begin; " + whoami + "; commit; " + whoami,
		"begin; " + whoami + "; rollback; " + whoami,
		"begin; " + whoami + "; commit and chain; " + whoami + "; commit",
		"commit /* a ; comment */ ; " + whoami,
		"commit; -- ; trailing\n" + whoami,
		"end; " + whoami + "; abort; " + whoami,
	} {
		got := rows(t, c, sql)
		if want := strings.Count(sql, whoami); len(got) != want {
			t.Fatalf("%s: got %d rows %q, want %d", sql, len(got), got, want)
		}
		for _, r := range got {
			if r[0] != "web_user" || r[1] != "alice" {
				t.Errorf("%s: a statement ran as %q", sql, r)
			}
		}
	}
	// Still fine afterwards, outside any transaction.
	if got := rows(t, c, whoami); got[0][0] != "web_user" {
		t.Fatalf("after: %q", got)
	}
	// The warning for a COMMIT without a transaction still reaches the
	// client; the prelude's own replies do not.
	var notices []string
	cfg, _ := pgconn.ParseConfig(env.DSN(pgtest.UserToken(t, "alice")))
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Message) }
	c2, err := pgconn.ConnectConfig(ctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(ctx(t))
	res, err := c2.Exec(ctx(t), "commit; select 1").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].CommandTag.String() != "COMMIT" || res[1].CommandTag.String() != "SELECT 1" {
		t.Fatalf("results: %d", len(res))
	}
	if len(notices) != 1 || !strings.Contains(notices[0], "no transaction in progress") {
		t.Fatalf("notices: %q", notices)
	}
}

func TestErrorPositionsReferToTheClientText(t *testing.T) {
	env := pgtest.Start(t, nil)
	c := env.Connect(pgtest.UserToken(t, "alice"))
	d := env.Direct()
	for _, sql := range []string{
		"select nosuchcolumn",
		"select 1; select nosuchcolumn",
		"select 1; commit; select nosuchcolumn",
		"select 'é'; commit; select 'ü', nosuchcolumn",
		"selec 1",
	} {
		_, perr := c.Exec(ctx(t), sql).ReadAll()
		_, derr := d.Exec(ctx(t), sql).ReadAll()
		p, q := pgErr(perr), pgErr(derr)
		if p == nil || q == nil {
			t.Fatalf("%s: errors %v / %v", sql, perr, derr)
		}
		if p.Position != q.Position || p.Code != q.Code || p.Message != q.Message {
			t.Errorf("%s: through pgtoken %s %q at %d; direct %s %q at %d", sql, p.Code, p.Message, p.Position, q.Code, q.Message, q.Position)
		}
	}
}

func TestExtendedProtocolFlows(t *testing.T) {
	env := pgtest.Start(t, nil)
	c := env.Connect(pgtest.UserToken(t, "bob"))
	check := func(name string, res []*pgconn.Result, err error, wantRows int) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		n := 0
		for _, r := range res {
			if r.Err != nil {
				t.Fatalf("%s: %v", name, r.Err)
			}
			for _, row := range r.Rows {
				n++
				if string(row[0]) != "web_user" || string(row[1]) != "bob" {
					t.Errorf("%s: statement ran as %q/%q", name, row[0], row[1])
				}
			}
		}
		if n != wantRows {
			t.Errorf("%s: %d identity rows, want %d", name, n, wantRows)
		}
	}
	// One Execute.
	r := c.ExecParams(ctx(t), whoami+" where $1::int = 1", [][]byte{[]byte("1")}, nil, nil, nil).Read()
	check("single", []*pgconn.Result{r}, r.Err, 1)

	// A batch with BEGIN, COMMIT and an Execute after the COMMIT.
	b := &pgconn.Batch{}
	b.ExecParams(whoami, nil, nil, nil, nil)
	b.ExecParams("begin", nil, nil, nil, nil)
	b.ExecParams(whoami, nil, nil, nil, nil)
	b.ExecParams("commit", nil, nil, nil, nil)
	b.ExecParams(whoami, nil, nil, nil, nil)
	res, err := c.ExecBatch(ctx(t), b).ReadAll()
	check("commit mid-batch", res, err, 3)

	// BEGIN ISOLATION LEVEL must come before any query: the prelude waits.
	b = &pgconn.Batch{}
	b.ExecParams("begin isolation level serializable", nil, nil, nil, nil)
	b.ExecParams(whoami+", current_setting('transaction_isolation')", nil, nil, nil, nil)
	b.ExecParams("commit", nil, nil, nil, nil)
	res, err = c.ExecBatch(ctx(t), b).ReadAll()
	check("begin isolation", res, err, 1)
	if got := string(res[1].Rows[0][2]); got != "serializable" {
		t.Errorf("isolation = %q", got)
	}

	// An explicit transaction across batches.
	check("begin", nil, c.Exec(ctx(t), "begin").Close(), 0)
	r = c.ExecParams(ctx(t), whoami, nil, nil, nil, nil).Read()
	check("in transaction", []*pgconn.Result{r}, r.Err, 1)
	check("commit", nil, c.Exec(ctx(t), "commit").Close(), 0)

	// A procedure that commits: what follows in the batch keeps the role.
	env.Superuser(`create procedure api.committer() language plpgsql as $$ begin commit; end $$; grant execute on procedure api.committer to web_user`)
	b = &pgconn.Batch{}
	b.ExecParams("call api.committer()", nil, nil, nil, nil)
	b.ExecParams(whoami, nil, nil, nil, nil)
	res, err = c.ExecBatch(ctx(t), b).ReadAll()
	check("after a committing procedure", res, err, 1)
}

func TestErrorsRollbacksAndSavepoints(t *testing.T) {
	env := pgtest.Start(t, nil)
	c := env.Connect(pgtest.UserToken(t, "carol"))
	if _, err := c.Exec(ctx(t), "select 1/0").ReadAll(); pgErr(err) == nil || pgErr(err).Code != "22012" {
		t.Fatalf("division by zero: %v", err)
	}
	rows(t, c, "begin")
	rows(t, c, "savepoint a")
	if _, err := c.Exec(ctx(t), "select nosuch").ReadAll(); err == nil {
		t.Fatal("want an error")
	}
	if _, err := c.Exec(ctx(t), whoami).ReadAll(); pgErr(err) == nil || pgErr(err).Code != "25P02" {
		t.Fatalf("aborted transaction: %v", err)
	}
	rows(t, c, "rollback to savepoint a")
	if got := rows(t, c, whoami); got[0][0] != "web_user" || got[0][1] != "carol" {
		t.Fatalf("after rollback to savepoint: %q", got)
	}
	rows(t, c, "rollback")
	if got := rows(t, c, whoami); got[0][0] != "web_user" || got[0][1] != "carol" {
		t.Fatalf("after rollback: %q", got)
	}
	// An error in a batch skips the rest; the next batch is fine.
	b := &pgconn.Batch{}
	b.ExecParams("select 1/0", nil, nil, nil, nil)
	b.ExecParams(whoami, nil, nil, nil, nil)
	if _, err := c.ExecBatch(ctx(t), b).ReadAll(); err == nil {
		t.Fatal("want an error")
	}
	if got := rows(t, c, whoami); got[0][1] != "carol" {
		t.Fatalf("after failed batch: %q", got)
	}
}

func TestBadTokensAreRefusedWithTheirReason(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) { c.JWT.AnonRole = "" })
	now := time.Now()
	good := pgtest.UserToken(t, "alice")
	parts := strings.Split(good, ".")
	for _, tc := range []struct {
		name, token, want string
	}{
		{"expired", pgtest.Token(t, map[string]any{"role": "web_user", "exp": now.Add(-time.Hour).Unix()}), "expired"},
		{"not yet valid", pgtest.Token(t, map[string]any{"role": "web_user", "nbf": now.Add(time.Hour).Unix()}), "not yet valid"},
		{"bad signature", parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2])), "signature"},
		{"malformed", "not-a-jwt", "malformed"},
		{"role not allowed", pgtest.Token(t, map[string]any{"role": "postgres"}), "not allowed"},
		{"no role", pgtest.Token(t, map[string]any{"sub": "x"}), "role"},
		{"alg none", "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + parts[1] + ".", "algorithm"},
	} {
		_, err := pgconn.Connect(ctx(t), env.DSN(tc.token))
		pe := pgErr(err)
		if pe == nil || pe.Code != "28P01" || pe.Severity != "FATAL" || !strings.Contains(pe.Message, tc.want) {
			t.Errorf("%s: got %v", tc.name, err)
		}
	}
	// pgtoken keeps serving.
	c := env.Connect(good)
	if got := rows(t, c, whoami); got[0][1] != "alice" {
		t.Fatalf("after bad tokens: %q", got)
	}
}

func TestPoolWaitTimeoutKeepsTheSession(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) {
		c.Pool.Size = 1
		c.Pool.WaitTimeout = config.Duration(300 * time.Millisecond)
	})
	a := env.Connect(pgtest.UserToken(t, "alice"))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	rows(t, a, "begin")
	_, err := b.Exec(ctx(t), whoami).ReadAll()
	if pe := pgErr(err); pe == nil || pe.Code != "53300" {
		t.Fatalf("waiting client: %v", err)
	}
	rbatch := &pgconn.Batch{}
	rbatch.ExecParams(whoami, nil, nil, nil, nil)
	if _, err := b.ExecBatch(ctx(t), rbatch).ReadAll(); pgErr(err) == nil || pgErr(err).Code != "53300" {
		t.Fatalf("waiting client, extended: %v", err)
	}
	rows(t, a, "commit")
	if got := rows(t, b, whoami); got[0][1] != "bob" {
		t.Fatalf("after the wait: %q", got)
	}
}

func TestCancelStopsOnlyThatClientsQuery(t *testing.T) {
	env := pgtest.Start(t, nil)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := a.Exec(context.Background(), "select pg_sleep(20)").ReadAll()
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	if err := a.CancelRequest(ctx(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if pe := pgErr(err); pe == nil || pe.Code != "57014" {
			t.Fatalf("cancelled query: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancel did not stop the query")
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("too slow")
	}
	if got := rows(t, b, whoami); got[0][1] != "bob" {
		t.Fatalf("other client: %q", got)
	}
	if got := rows(t, a, whoami); got[0][1] != "alice" {
		t.Fatalf("cancelled client afterwards: %q", got)
	}
}
