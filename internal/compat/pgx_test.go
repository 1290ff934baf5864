package compat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// pgxModes are all of pgx's query exec modes; CacheStatement is its
// default and keeps named prepared statements across transactions.
var pgxModes = []struct {
	name string
	mode pgx.QueryExecMode
}{
	{"CacheStatement", pgx.QueryExecModeCacheStatement},
	{"CacheDescribe", pgx.QueryExecModeCacheDescribe},
	{"DescribeExec", pgx.QueryExecModeDescribeExec},
	{"Exec", pgx.QueryExecModeExec},
	{"SimpleProtocol", pgx.QueryExecModeSimpleProtocol},
}

// Statements the pgx clients run; each row says who ran it.
const (
	qIdent      = identSQL + ", $1::int"
	qRows       = identSQL + ", g from generate_series(1, $1::int) g"
	qAddTodo    = "insert into api.todos (title) values ($1) returning owner, current_user::text"
	qCountTodos = "select count(*) from api.todos"
	qAddNote    = "insert into api.notes (body) values ($1) returning owner, current_user::text"
	qDivide     = "select 1 / $1::int"
)

// querier is what *pgx.Conn, pgx.Tx and *pgxpool.Pool have in common.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// checker verifies the identity rows of one client (or one pool, whose
// connections all log in with the same token).
type checker struct {
	want    who
	errs    *tally // unexpected errors
	bad     *tally // statements that ran as someone else, wrong results
	checked *atomic.Int64
}

func (c *checker) check(where, role, sub string) {
	c.checked.Add(1)
	if got := (who{role, sub}); got != c.want {
		c.bad.add(where, fmt.Errorf("statement ran as %s, want %s", got, c.want))
	}
}

// ident runs qIdent with i and checks the row.
func (c *checker) ident(ctx context.Context, q querier, where string, i int) bool {
	var role, sub string
	var n int
	if err := q.QueryRow(ctx, qIdent, i).Scan(&role, &sub, &n); err != nil {
		c.errs.add(where, err)
		return false
	}
	c.check(where, role, sub)
	if n != i {
		c.bad.add(where, fmt.Errorf("parameter %d came back as %d", i, n))
	}
	return true
}

// expectCode reports whether err is a server error with code.
func expectCode(err error, code string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == code
}

// pgxClient is one pgx.Conn running a mix of transactions.
type pgxClient struct {
	checker
	conn  *pgx.Conn
	admin bool  // web_admin sees every todo
	todos int64 // todos this client committed
}

// step runs transaction shape i%6.
func (c *pgxClient) step(ctx context.Context, i int) {
	switch i % 6 {
	case 0:
		c.ident(ctx, c.conn, "autocommit", i)
	case 1:
		c.insertTx(ctx, i)
	case 2:
		c.savepoints(ctx, i)
	case 3:
		c.rows(ctx, i)
	case 4:
		c.batch(ctx, i)
	case 5:
		_, err := c.conn.Exec(ctx, qDivide, 0)
		if !expectCode(err, "22012") {
			c.errs.add("division by zero", fmt.Errorf("want 22012, got %v", err))
		}
		c.ident(ctx, c.conn, "after an error", i)
	}
}

// countTodos checks the todos this client sees under row-level security.
func (c *pgxClient) countTodos(ctx context.Context, q querier, where string, want int64) {
	if c.admin {
		return
	}
	var n int64
	if err := q.QueryRow(ctx, qCountTodos).Scan(&n); err != nil {
		c.errs.add(where, err)
		return
	}
	if n != want {
		c.bad.add(where, fmt.Errorf("sees %d todos, want %d", n, want))
	}
}

func (c *pgxClient) insertTx(ctx context.Context, i int) {
	tx, err := c.conn.Begin(ctx)
	if err != nil {
		c.errs.add("begin", err)
		return
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if !c.ident(ctx, tx, "in a transaction", i) {
		return
	}
	var owner, role string
	if err := tx.QueryRow(ctx, qAddTodo, "todo "+strconv.Itoa(i)).Scan(&owner, &role); err != nil {
		c.errs.add("insert todo", err)
		return
	}
	c.check("insert todo (owner default)", role, owner)
	c.countTodos(ctx, tx, "count in a transaction", c.todos+1)
	if err := tx.Commit(ctx); err != nil {
		c.errs.add("commit", err)
		return
	}
	c.todos++
}

func (c *pgxClient) savepoints(ctx context.Context, i int) {
	tx, err := c.conn.Begin(ctx)
	if err != nil {
		c.errs.add("begin", err)
		return
	}
	defer func() { _ = tx.Rollback(ctx) }()
	sp, err := tx.Begin(ctx)
	if err != nil {
		c.errs.add("savepoint", err)
		return
	}
	if _, err := sp.Exec(ctx, qDivide, 0); !expectCode(err, "22012") {
		c.errs.add("error in savepoint", fmt.Errorf("want 22012, got %v", err))
		return
	}
	if err := sp.Rollback(ctx); err != nil {
		c.errs.add("rollback to savepoint", err)
		return
	}
	if !c.ident(ctx, tx, "after rollback to savepoint", i) {
		return
	}
	sp2, err := tx.Begin(ctx)
	if err != nil {
		c.errs.add("savepoint", err)
		return
	}
	var owner, role string
	if err := sp2.QueryRow(ctx, qAddTodo, "savepoint "+strconv.Itoa(i)).Scan(&owner, &role); err != nil {
		c.errs.add("insert in savepoint", err)
		return
	}
	c.check("insert in savepoint", role, owner)
	if err := sp2.Commit(ctx); err != nil {
		c.errs.add("release savepoint", err)
		return
	}
	c.countTodos(ctx, tx, "count after release", c.todos+1)
	if err := tx.Rollback(ctx); err != nil {
		c.errs.add("rollback", err)
		return
	}
	c.countTodos(ctx, c.conn, "count after rollback", c.todos)
}

func (c *pgxClient) rows(ctx context.Context, i int) {
	rows, err := c.conn.Query(ctx, qRows, 3)
	if err != nil {
		c.errs.add("query rows", err)
		return
	}
	n := 0
	for rows.Next() {
		var role, sub string
		var g int
		if err := rows.Scan(&role, &sub, &g); err != nil {
			c.errs.add("scan", err)
			break
		}
		c.check("rows", role, sub)
		n++
	}
	if err := rows.Err(); err != nil {
		c.errs.add("rows", err)
		return
	}
	if n != 3 {
		c.bad.add("rows", fmt.Errorf("%d rows, want 3", n))
	}
}

// batch sends one pgx.Batch outside a transaction (one implicit transaction
// on the server).
func (c *pgxClient) batch(ctx context.Context, i int) {
	b := &pgx.Batch{}
	b.Queue(qIdent, i)
	b.Queue(qAddTodo, "batch "+strconv.Itoa(i))
	b.Queue(qCountTodos)
	b.Queue(qIdent, i+1)
	br := c.conn.SendBatch(ctx, b)
	defer func() { _ = br.Close() }()
	var role, sub, owner string
	var n int
	var todos int64
	if err := br.QueryRow().Scan(&role, &sub, &n); err != nil {
		c.errs.add("batch ident", err)
		return
	}
	c.check("batch", role, sub)
	if err := br.QueryRow().Scan(&owner, &role); err != nil {
		c.errs.add("batch todo", err)
		return
	}
	c.check("batch todo (owner default)", role, owner)
	if err := br.QueryRow().Scan(&todos); err != nil {
		c.errs.add("batch count", err)
		return
	}
	if !c.admin && todos != c.todos+1 {
		c.bad.add("batch count", fmt.Errorf("sees %d todos, want %d", todos, c.todos+1))
	}
	if err := br.QueryRow().Scan(&role, &sub, &n); err != nil {
		c.errs.add("batch ident", err)
		return
	}
	c.check("batch", role, sub)
	if n != i+1 {
		c.bad.add("batch", fmt.Errorf("parameter %d came back as %d", i+1, n))
	}
	if err := br.Close(); err != nil {
		c.errs.add("batch close", err)
		return
	}
	c.todos++ // the batch's implicit transaction committed
}

// connectPgx logs in to pgtoken with pgx as role/sub; mutate may change
// the configuration first.
func connectPgx(t testing.TB, env *pgtest.Env, role, sub string, mutate func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(env.DSN(pgtest.Token(t, map[string]any{"role": role, "sub": sub})))
	if err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(cfg)
	}
	conn, err := pgx.ConnectConfig(timeout(t, 30*time.Second), cfg)
	if err != nil {
		t.Fatalf("pgx connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// runPgxClients runs clients pgx connections in mode concurrently, each for
// txs transactions, and checks every statement's identity and the todos
// each client committed.
func runPgxClients(t *testing.T, env *pgtest.Env, mode pgx.QueryExecMode, clients, txs int) {
	ctx := timeout(t, 3*time.Minute)
	errs, bad := &tally{}, &tally{}
	var checked atomic.Int64
	prefix := fmt.Sprintf("pgx-%d-", mode)
	cs := make([]*pgxClient, clients)
	for i := range cs {
		role := "web_user"
		if i%4 == 3 {
			role = "web_admin"
		}
		sub := fmt.Sprintf("%s%d-%s", prefix, i, pgtest.RandomSub())
		cs[i] = &pgxClient{
			checker: checker{want: who{role, sub}, errs: errs, bad: bad, checked: &checked},
			conn:    connectPgx(t, env, role, sub, func(c *pgx.ConnConfig) { c.DefaultQueryExecMode = mode }),
			admin:   role == "web_admin",
		}
	}
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() {
			for i := range txs {
				if c.conn.IsClosed() {
					errs.add("client", errors.New("connection closed"))
					return
				}
				c.step(ctx, i)
			}
		})
	}
	wg.Wait()
	errs.report(t)
	bad.report(t)
	if n := checked.Load(); n < int64(clients*txs) {
		t.Errorf("only %d identity checks for %d transactions", n, clients*txs)
	}
	// What each client committed is there, owned by its sub.
	got := map[string]string{}
	for _, r := range env.Superuser("select owner, count(*) from api.todos where owner like " + sqlLiteral(prefix+"%") + " group by owner") {
		got[r[0]] = r[1]
	}
	for _, c := range cs {
		if want := strconv.FormatInt(c.todos, 10); got[c.want.sub] != want && !(want == "0" && got[c.want.sub] == "") {
			t.Errorf("%s committed %s todos; the table holds %q", c.want, want, got[c.want.sub])
		}
	}
}

// TestPgxExecModes runs 12 pgx clients over pgtoken's 2 server connections
// in every query exec mode: autocommit statements, transactions,
// savepoints, errors, multi-row queries and batches.
func TestPgxExecModes(t *testing.T) {
	env := pgtest.Start(t, nil)
	for _, m := range pgxModes {
		t.Run(m.name, func(t *testing.T) {
			txs := rounds(40, 12)
			if m.mode == pgx.QueryExecModeCacheStatement {
				txs = rounds(200, 30) // the check: hundreds each
			}
			runPgxClients(t, env, m.mode, 12, txs)
		})
	}
}

// TestPgxStatementCacheEvictions keeps pgx's statement cache smaller than
// the statements a client uses, so cached statements are deallocated and
// prepared again all the time, from transactions on either server
// connection.
func TestPgxStatementCacheEvictions(t *testing.T) {
	env := pgtest.Start(t, nil)
	ctx := timeout(t, 2*time.Minute)
	errs, bad := &tally{}, &tally{}
	var checked atomic.Int64
	var wg sync.WaitGroup
	for k := range 6 {
		sub := fmt.Sprintf("evict-%d", k)
		c := &checker{want: who{"web_user", sub}, errs: errs, bad: bad, checked: &checked}
		conn := connectPgx(t, env, "web_user", sub, func(c *pgx.ConnConfig) { c.StatementCacheCapacity = 3 })
		wg.Go(func() {
			for i := range rounds(150, 30) {
				// Ten statement texts through a cache of three.
				q := fmt.Sprintf("%s, $1::int + %d", identSQL, i%10)
				var role, s string
				var n int
				var err error
				if i%3 == 0 {
					err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
						return tx.QueryRow(ctx, q, i).Scan(&role, &s, &n)
					})
				} else {
					err = conn.QueryRow(ctx, q, i).Scan(&role, &s, &n)
				}
				if err != nil {
					errs.add("cached statement", err)
					continue
				}
				c.check("cached statement", role, s)
				if n != i+i%10 {
					bad.add("cached statement", fmt.Errorf("%d, want %d", n, i+i%10))
				}
			}
		})
	}
	wg.Wait()
	errs.report(t)
	bad.report(t)
}

// TestPgxNamedPrepare: clients prepare a statement of the same name with
// different text once, then use it in many transactions, more clients than
// server connections. Each must only ever run its own.
func TestPgxNamedPrepare(t *testing.T) {
	env := pgtest.Start(t, nil)
	ctx := timeout(t, 2*time.Minute)
	errs, bad := &tally{}, &tally{}
	var checked atomic.Int64
	var wg sync.WaitGroup
	for k := range 5 {
		sub := fmt.Sprintf("named-%d", k)
		c := &checker{want: who{"web_user", sub}, errs: errs, bad: bad, checked: &checked}
		conn := connectPgx(t, env, "web_user", sub, nil)
		wg.Go(func() {
			text := func(v int) string { return fmt.Sprintf("%s, $1::int, %d", identSQL, v) }
			if _, err := conn.Prepare(ctx, "q_ident", text(k)); err != nil {
				errs.add("prepare", err)
				return
			}
			use := func(q querier, i, want int) {
				var role, s string
				var n, got int
				if err := q.QueryRow(ctx, "q_ident", i).Scan(&role, &s, &n, &got); err != nil {
					errs.add("named statement", err)
					return
				}
				c.check("named statement", role, s)
				if n != i || got != want {
					bad.add("named statement", fmt.Errorf("got (%d, %d), want (%d, %d): another client's statement?", n, got, i, want))
				}
			}
			for i := range rounds(100, 20) {
				if i%2 == 0 {
					use(conn, i, k)
					continue
				}
				tx, err := conn.Begin(ctx)
				if err != nil {
					errs.add("begin", err)
					continue
				}
				use(tx, i, k)
				use(tx, i+1, k)
				if err := tx.Commit(ctx); err != nil {
					errs.add("commit", err)
				}
			}
			// Deallocated, it is gone; prepared again with other text, the
			// name is free for it.
			if err := conn.Deallocate(ctx, "q_ident"); err != nil {
				errs.add("deallocate", err)
				return
			}
			if _, err := conn.Prepare(ctx, "q_ident", text(k+100)); err != nil {
				errs.add("prepare again", err)
				return
			}
			for i := range 6 {
				use(conn, i, k+100)
			}
		})
	}
	wg.Wait()
	errs.report(t)
	bad.report(t)
}

// TestPgxpool runs two pgxpool pools, one per identity, of 6 connections
// each over pgtoken's 2 server connections, in pgx's default mode.
func TestPgxpool(t *testing.T) {
	env := pgtest.Start(t, nil)
	ctx := timeout(t, 2*time.Minute)
	errs, bad := &tally{}, &tally{}
	var checked atomic.Int64
	var wg sync.WaitGroup
	for _, sub := range []string{"alice", "bob"} {
		cfg, err := pgxpool.ParseConfig(env.DSN(pgtest.UserToken(t, sub)) + " pool_max_conns=6")
		if err != nil {
			t.Fatal(err)
		}
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		c := &checker{want: who{"web_user", sub}, errs: errs, bad: bad, checked: &checked}
		for w := range 6 {
			wg.Go(func() {
				for i := range rounds(60, 15) {
					switch (i + w) % 3 {
					case 0:
						c.ident(ctx, pool, "pool", i)
					case 1:
						err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
							c.ident(ctx, tx, "pool transaction", i)
							// The seed gives each of alice and bob three
							// todos, titled with their name.
							var n int
							var own bool
							if err := tx.QueryRow(ctx, "select count(*), coalesce(bool_and(title like $1 || ':%'), false) from api.todos", sub).Scan(&n, &own); err != nil {
								return err
							}
							if n != 3 || !own {
								bad.add("pool rls", fmt.Errorf("%s sees %d todos (all own: %v), want its 3", sub, n, own))
							}
							return nil
						})
						if err != nil {
							errs.add("pool transaction", err)
						}
					case 2:
						b := &pgx.Batch{}
						b.Queue(qIdent, i)
						b.Queue(qIdent, i+1)
						br := pool.SendBatch(ctx, b)
						for j := range 2 {
							var role, s string
							var n int
							if err := br.QueryRow().Scan(&role, &s, &n); err != nil {
								errs.add("pool batch", err)
								break
							}
							c.check("pool batch", role, s)
							if n != i+j {
								bad.add("pool batch", fmt.Errorf("%d, want %d", n, i+j))
							}
						}
						if err := br.Close(); err != nil {
							errs.add("pool batch close", err)
						}
					}
				}
			})
		}
	}
	wg.Wait()
	errs.report(t)
	bad.report(t)
}

// TestPgxBatchErrorsAndTransactions: a batch with a failing statement in the
// middle, a batch inside a transaction, and the connection afterwards.
func TestPgxBatchErrorsAndTransactions(t *testing.T) {
	env := pgtest.Start(t, nil)
	ctx := timeout(t, time.Minute)
	for _, m := range pgxModes {
		t.Run(m.name, func(t *testing.T) {
			sub := "batch-" + m.name
			conn := connectPgx(t, env, "web_user", sub, func(c *pgx.ConnConfig) { c.DefaultQueryExecMode = m.mode })
			c := &checker{want: who{"web_user", sub}, errs: &tally{}, bad: &tally{}, checked: &atomic.Int64{}}
			for round := range 3 {
				// A failing statement mid-batch: what came before it in the
				// implicit transaction is rolled back.
				b := &pgx.Batch{}
				b.Queue(qAddNote, "rolled back")
				b.Queue(qDivide, 0)
				b.Queue(qIdent, 1)
				br := conn.SendBatch(ctx, b)
				var owner, role string
				if err := br.QueryRow().Scan(&owner, &role); err != nil {
					t.Fatalf("round %d: first statement: %v", round, err)
				}
				c.check("batch before the error", role, owner)
				var x int
				if err := br.QueryRow().Scan(&x); !expectCode(err, "22012") {
					t.Fatalf("round %d: want division by zero, got %v", round, err)
				}
				if err := br.QueryRow().Scan(&role, &owner, &x); err == nil {
					t.Fatalf("round %d: a statement after the error in the batch ran", round)
				}
				_ = br.Close()
				c.ident(ctx, conn, "after the failed batch", round)

				// A batch inside a transaction, committed.
				tx, err := conn.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				b = &pgx.Batch{}
				for i := range 10 {
					b.Queue(qAddNote, fmt.Sprintf("kept %d", i))
					b.Queue(qIdent, i)
				}
				if err := tx.SendBatch(ctx, b).Close(); err != nil {
					t.Fatalf("round %d: batch in a transaction: %v", round, err)
				}
				c.ident(ctx, tx, "after the batch in a transaction", round)
				if err := tx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
			}
			c.errs.report(t)
			c.bad.report(t)
			got := env.Superuser("select count(*) filter (where body = 'rolled back'), count(*) filter (where body like 'kept %') from api.notes where owner = " + sqlLiteral(sub))
			if got[0][0] != "0" || got[0][1] != "30" {
				t.Errorf("notes: %s rolled back (want 0), %s kept (want 30)", got[0][0], got[0][1])
			}
		})
	}
}

// TestPgxCopy: COPY FROM STDIN with CopyFrom (in and out of transactions,
// several clients at once), COPY TO STDOUT from a table under row-level
// security, and copies that fail mid-way, from the client (CopyFail) and
// from the server; the session stays usable and nothing is left on the
// server connections.
func TestPgxCopy(t *testing.T) {
	env := pgtest.Start(t, nil)
	ctx := timeout(t, 2*time.Minute)
	notes := func(sub, like string) string {
		return env.Superuser("select count(*) from api.notes where owner = " + sqlLiteral(sub) + " and body like " + sqlLiteral(like))[0][0]
	}
	rowsOf := func(prefix string, n int) pgx.CopyFromSource {
		return pgx.CopyFromSlice(n, func(i int) ([]any, error) { return []any{fmt.Sprintf("%s %d", prefix, i)}, nil })
	}

	t.Run("CopyFrom", func(t *testing.T) {
		var wg sync.WaitGroup
		for k := range 5 {
			sub := fmt.Sprintf("copy-%d", k)
			conn := connectPgx(t, env, "web_user", sub, nil)
			wg.Go(func() {
				for r := range 4 {
					n, err := conn.CopyFrom(ctx, pgx.Identifier{"api", "notes"}, []string{"body"}, rowsOf(fmt.Sprintf("copied %d", r), 500))
					if err != nil || n != 500 {
						t.Errorf("%s: CopyFrom: %d rows, %v", sub, n, err)
						return
					}
				}
				// Inside a transaction that is rolled back: nothing stays.
				err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					if _, err := tx.CopyFrom(ctx, pgx.Identifier{"api", "notes"}, []string{"body"}, rowsOf("undone", 50)); err != nil {
						return err
					}
					return errors.New("roll back")
				})
				if err == nil || err.Error() != "roll back" {
					t.Errorf("%s: CopyFrom in a transaction: %v", sub, err)
				}
			})
		}
		wg.Wait()
		for k := range 5 {
			sub := fmt.Sprintf("copy-%d", k)
			if got := notes(sub, "copied %"); got != "2000" {
				t.Errorf("%s: %s copied notes owned by it, want 2000", sub, got)
			}
			if got := notes(sub, "undone %"); got != "0" {
				t.Errorf("%s: %s notes from a rolled-back copy", sub, got)
			}
		}
	})

	t.Run("CopyTo under row-level security", func(t *testing.T) {
		for _, tc := range []struct {
			role, sub string
			lines     int
		}{{"web_user", "alice", 3}, {"web_user", "bob", 3}, {"web_admin", "root", 9}} {
			conn := connectPgx(t, env, tc.role, tc.sub, nil)
			for range 3 {
				var out strings.Builder
				tag, err := conn.PgConn().CopyTo(ctx, &out, "copy (select owner, title from api.todos order by id) to stdout")
				if err != nil {
					t.Fatalf("%s: copy to stdout: %v", tc.sub, err)
				}
				lines := pgtest.Lines(out.String())
				if len(lines) != tc.lines || tag.RowsAffected() != int64(tc.lines) {
					t.Fatalf("%s: copied out %d lines (tag %s), want %d", tc.sub, len(lines), tag, tc.lines)
				}
				for _, l := range lines {
					if tc.role == "web_user" && !strings.HasPrefix(l, tc.sub+"\t") {
						t.Errorf("%s copied out another's row: %q", tc.sub, l)
					}
				}
			}
		}
	})

	t.Run("CopyFail from the client", func(t *testing.T) {
		conn := connectPgx(t, env, "web_user", "copyfail", nil)
		other := connectPgx(t, env, "web_user", "copyfail-other", nil)
		boom := errors.New("source broke")
		for r := range 4 {
			i := 0
			src := pgx.CopyFromFunc(func() ([]any, error) {
				i++
				if i > 300 {
					return nil, boom
				}
				return []any{fmt.Sprintf("failed %d", i)}, nil
			})
			var err error
			if r%2 == 0 {
				_, err = conn.CopyFrom(ctx, pgx.Identifier{"api", "notes"}, []string{"body"}, src)
			} else {
				err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					_, err := tx.CopyFrom(ctx, pgx.Identifier{"api", "notes"}, []string{"body"}, src)
					return err
				})
			}
			// pgx sends CopyFail with the source's error; the server
			// answers with 57014 quoting it.
			if !errors.Is(err, boom) && !(expectCode(err, "57014") && strings.Contains(err.Error(), boom.Error())) {
				t.Fatalf("round %d: CopyFrom with a failing source: %v", r, err)
			}
			if conn.IsClosed() {
				t.Fatalf("round %d: the connection closed after CopyFail", r)
			}
			// Both clients carry on, on either server connection.
			for _, cc := range []*pgx.Conn{conn, other, conn} {
				var role, sub string
				var n int
				if err := cc.QueryRow(ctx, qIdent, r).Scan(&role, &sub, &n); err != nil {
					t.Fatalf("round %d: after CopyFail: %v", r, err)
				}
			}
		}
		if got := notes("copyfail", "failed %"); got != "0" {
			t.Errorf("%s notes from failed copies", got)
		}
		assertServerConnsClean(t, env)
	})

	t.Run("copy error from the server", func(t *testing.T) {
		conn := connectPgx(t, env, "web_user", "copyerr", nil)
		for r := range 3 {
			// The 200th row repeats the first one's id.
			src := pgx.CopyFromSlice(400, func(i int) ([]any, error) {
				id := int64(9_000_000 + r*1000 + i)
				if i == 200 {
					id = int64(9_000_000 + r*1000)
				}
				return []any{id, "dup"}, nil
			})
			_, err := conn.CopyFrom(ctx, pgx.Identifier{"api", "notes"}, []string{"id", "body"}, src)
			if !expectCode(err, "23505") {
				t.Fatalf("round %d: want unique violation, got %v", r, err)
			}
			var role, sub string
			var n int
			if err := conn.QueryRow(ctx, qIdent, r).Scan(&role, &sub, &n); err != nil || sub != "copyerr" {
				t.Fatalf("round %d: after the server's copy error: %s %s %v", r, role, sub, err)
			}
		}
		if got := notes("copyerr", "dup"); got != "0" {
			t.Errorf("%s notes from failed copies", got)
		}
		assertServerConnsClean(t, env)
	})

	t.Run("client leaves mid copy out", func(t *testing.T) {
		conn := connectPgx(t, env, "web_user", "alice", nil)
		// pgconn closes the connection when the writer fails, with the
		// server still sending.
		_, err := conn.PgConn().CopyTo(ctx, failingWriter{}, "copy (select g from generate_series(1, 300000) g) to stdout")
		if err == nil {
			t.Fatal("CopyTo into a failing writer reported no error")
		}
		assertServerConnsClean(t, env)
	})
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, io.ErrShortWrite }

// assertServerConnsClean checks, as the superuser, that no server
// connection of pgtoken is left in a transaction or a COPY, and that both
// pool connections serve a fresh client.
func assertServerConnsClean(t *testing.T, env *pgtest.Env) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		rows := env.Superuser("select pid, state, coalesce(query, '') from pg_stat_activity where datname = current_database() and usename = 'authenticator' and state <> 'idle'")
		if len(rows) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server connections not idle: %q", rows)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ctx := timeout(t, 30*time.Second)
	// Two clients in transactions at once hold both server connections.
	var pids []string
	for i := range 2 {
		c := connect(t, env, pgtest.UserToken(t, fmt.Sprintf("fresh-%d", i)))
		res, err := c.Exec(ctx, "begin; "+identSQL+", pg_backend_pid()").ReadAll()
		if err != nil {
			t.Fatalf("fresh client %d: %v", i, err)
		}
		row := res[len(res)-1].Rows[0]
		if string(row[0]) != "web_user" || string(row[1]) != fmt.Sprintf("fresh-%d", i) {
			t.Fatalf("fresh client %d ran as %s/%s", i, row[0], row[1])
		}
		pids = append(pids, string(row[2]))
		defer func() {
			if _, err := c.Exec(ctx, "commit").ReadAll(); err != nil {
				t.Errorf("commit: %v", err)
			}
		}()
	}
	if pids[0] == pids[1] {
		t.Fatalf("two open transactions on one server connection %s", pids[0])
	}
}

// settings is what the session-level settings tests look at.
const settingsSQL = `select pg_backend_pid()::text,
 current_setting('application_name'), current_setting('TimeZone'),
 current_setting('statement_timeout'), current_setting('work_mem'),
 coalesce(nullif(current_setting('compat.tag', true), ''), '<none>'),
 current_user::text, coalesce(nullif(current_setting('jwt.claims.sub', true), ''), '<none>')`

// settingsRow is one row of settingsSQL, pid aside.
type settingsRow struct {
	app, tz, timeout, workMem, tag, role, sub string
}

func scanSettings(row pgx.Row) (pid string, s settingsRow, err error) {
	err = row.Scan(&pid, &s.app, &s.tz, &s.timeout, &s.workMem, &s.tag, &s.role, &s.sub)
	return pid, s, err
}

// nextClientsSeeDefaults opens two fresh clients, each holding a
// transaction so that they take different server connections, and checks
// that both see the server's defaults (baseline), not any earlier client's
// settings.
func nextClientsSeeDefaults(t *testing.T, ctx context.Context, env *pgtest.Env, baseline settingsRow, when string) {
	t.Helper()
	var pids []string
	for i := range 2 {
		c := connectPgx(t, env, "web_user", "next", nil)
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(ctx) }()
		pid, got, err := scanSettings(tx.QueryRow(ctx, settingsSQL))
		if err != nil {
			t.Fatal(err)
		}
		got.sub = ""
		if got != baseline {
			t.Errorf("%s: next client %d on server connection %s: %+v, want the defaults %+v", when, i, pid, got, baseline)
		}
		pids = append(pids, pid)
	}
	if pids[0] == pids[1] {
		t.Fatalf("%s: two open transactions on server connection %s", when, pids[0])
	}
}

// TestPgxSessionSettingsFollowTheClient: a client's startup parameters
// (application_name, TimeZone, options -c) and a session-level SET hold in
// each of its transactions, on either server connection, and a fresh
// client on those connections sees none of them.
func TestPgxSessionSettingsFollowTheClient(t *testing.T) {
	env := pgtest.Start(t, nil)
	ctx := timeout(t, time.Minute)
	fresh := func(name string) settingsRow {
		t.Helper()
		c := connectPgx(t, env, "web_user", name, nil)
		_, s, err := scanSettings(c.QueryRow(ctx, settingsSQL))
		if err != nil {
			t.Fatal(err)
		}
		s.sub = ""
		return s
	}
	baseline := fresh("baseline")

	a := connectPgx(t, env, "web_user", "settings", func(c *pgx.ConnConfig) {
		c.RuntimeParams["application_name"] = "compat-pgx"
		c.RuntimeParams["timezone"] = "Asia/Tokyo"
		c.RuntimeParams["options"] = "-c work_mem=4321kB -c compat.tag=pgx"
	})
	want := settingsRow{"compat-pgx", "Asia/Tokyo", baseline.timeout, "4321kB", "pgx", "web_user", "settings"}
	// check runs settingsSQL in a transaction of a (every other one
	// explicit) and returns the server connection's pid.
	n := 0
	check := func(when string) string {
		t.Helper()
		n++
		var pid string
		var got settingsRow
		var err error
		if n%2 == 0 {
			pid, got, err = scanSettings(a.QueryRow(ctx, settingsSQL))
		} else {
			err = pgx.BeginFunc(ctx, a, func(tx pgx.Tx) error {
				pid, got, err = scanSettings(tx.QueryRow(ctx, settingsSQL))
				return err
			})
		}
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if got != want {
			t.Errorf("%s, on server connection %s: %+v, want %+v", when, pid, got, want)
		}
		return pid
	}

	// Alone, the client goes from one server connection to the next with
	// nobody in between (once both are open; the pool hands out the
	// longest idle one): its startup parameters, then a session-level SET
	// as well.
	holdOther(t, env, noPID)()
	alone := map[string]bool{}
	for i := range 3 {
		alone[check(fmt.Sprintf("alone, transaction %d", i))] = true
	}
	if _, err := a.Exec(ctx, "set statement_timeout = '4321ms'"); err != nil {
		t.Fatal(err)
	}
	want.timeout = "4321ms"
	for i := range 4 {
		alone[check(fmt.Sprintf("alone after SET, transaction %d", i))] = true
	}
	t.Logf("alone, the client ran on %d server connections", len(alone))

	// Made to run on each server connection in turn, with other clients
	// in between.
	seen := map[string]bool{}
	release := func() {}
	for i := range 4 {
		pid := check(fmt.Sprintf("forced, transaction %d", i))
		seen[pid] = true
		release()
		release = holdOther(t, env, pid)
	}
	if len(seen) != 2 {
		t.Fatalf("the client's transactions ran on %d server connections, want 2", len(seen))
	}

	// SET LOCAL, and SET in a transaction rolled back, do not stick.
	if err := pgx.BeginFunc(ctx, a, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "set local statement_timeout = '1234ms'")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "set statement_timeout = '2345ms'"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		pid := check("after SET LOCAL and a rolled-back SET")
		release()
		release = holdOther(t, env, pid)
	}

	// The statement timeout is in force.
	if _, err := a.Exec(ctx, "set statement_timeout = '200ms'"); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		_, err := a.Exec(ctx, "select pg_sleep(2)")
		if !expectCode(err, "57014") {
			t.Fatalf("pg_sleep under statement_timeout 200ms: %v", err)
		}
		var pid string
		if err := a.QueryRow(ctx, "select pg_backend_pid()::text").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		release()
		release = holdOther(t, env, pid)
	}
	release()

	// Fresh clients, one per server connection while a is still logged
	// in, and again after it leaves, see the defaults.
	nextClientsSeeDefaults(t, ctx, env, baseline, "client still logged in")
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	nextClientsSeeDefaults(t, ctx, env, baseline, "client gone")
}

// TestPgxCopyConcurrentWithQueries: copies and queries from more clients
// than server connections interleave without mixing up.
func TestPgxCopyConcurrentWithQueries(t *testing.T) {
	env := pgtest.Start(t, nil)
	ctx := timeout(t, 2*time.Minute)
	errs, bad := &tally{}, &tally{}
	var checked atomic.Int64
	var wg sync.WaitGroup
	var copied [6]int64
	for k := range 6 {
		sub := fmt.Sprintf("mix-%d", k)
		c := &checker{want: who{"web_user", sub}, errs: errs, bad: bad, checked: &checked}
		conn := connectPgx(t, env, "web_user", sub, nil)
		wg.Go(func() {
			for i := range rounds(30, 8) {
				if (i+k)%2 == 0 {
					n, err := conn.CopyFrom(ctx, pgx.Identifier{"api", "notes"}, []string{"body"},
						pgx.CopyFromSlice(100, func(j int) ([]any, error) { return []any{fmt.Sprintf("mix %d %d", i, j)}, nil }))
					if err != nil {
						errs.add("copy", err)
						continue
					}
					copied[k] += n
				} else {
					c.ident(ctx, conn, "between copies", i)
				}
			}
		})
	}
	wg.Wait()
	errs.report(t)
	bad.report(t)
	for k := range 6 {
		sub := fmt.Sprintf("mix-%d", k)
		got := env.Superuser("select count(*) from api.notes where owner = " + sqlLiteral(sub))[0][0]
		if got != strconv.FormatInt(copied[k], 10) {
			t.Errorf("%s: %s notes, copied %d", sub, got, copied[k])
		}
	}
}

// TestPgconnExtendedTransactionControl: BEGIN, SAVEPOINT, COMMIT AND CHAIN
// sent with the extended protocol, each in a batch (Sync) of its own, as
// libpq's PQexecParams, pgbench -M extended and psql's \bind do. The
// statements after them in the transaction must still run as the token.
func TestPgconnExtendedTransactionControl(t *testing.T) {
	env := pgtest.Start(t, nil)
	ctx := timeout(t, time.Minute)
	c := connect(t, env, pgtest.UserToken(t, "alice"))
	// "ident" stands for identSQL.
	for _, seq := range [][]string{
		{"begin", "ident", "commit"},
		{"start transaction isolation level repeatable read", "ident", "savepoint a", "ident", "rollback to savepoint a", "ident", "commit"},
		{"begin", "ident", "commit and chain", "ident", "rollback"},
		{"ident", "begin", "begin", "ident", "end"},
	} {
		for i, q := range seq {
			sql := q
			if q == "ident" {
				sql = identSQL
			}
			r := c.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
			if r.Err != nil {
				t.Fatalf("%q, statement %d: %v", seq, i, r.Err)
			}
			for _, row := range r.Rows {
				if got := (who{string(row[0]), string(row[1])}); got != (who{"web_user", "alice"}) {
					t.Errorf("%q, statement %d ran as %s, want web_user/alice", seq, i, got)
				}
			}
		}
	}
	// The same through a named statement for BEGIN, in a pipeline with a
	// Sync after each statement.
	if _, err := c.Prepare(ctx, "b", "begin", nil); err != nil {
		t.Fatal(err)
	}
	p := c.StartPipeline(ctx)
	p.SendQueryPrepared("b", nil, nil, nil)
	p.Sync()
	p.SendQueryParams(identSQL, nil, nil, nil, nil)
	p.Sync()
	p.SendQueryParams("commit", nil, nil, nil, nil)
	p.Sync()
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		r, err := p.GetResults()
		if err != nil {
			t.Fatalf("pipeline: %v", err)
		}
		if r == nil {
			break
		}
		if rr, ok := r.(*pgconn.ResultReader); ok {
			res := rr.Read()
			if res.Err != nil {
				t.Fatalf("pipeline: %v", res.Err)
			}
			for _, row := range res.Rows {
				if got := (who{string(row[0]), string(row[1])}); got != (who{"web_user", "alice"}) {
					t.Errorf("pipeline: statement after a prepared BEGIN ran as %s", got)
				}
			}
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestPgxStatementsFollowSearchPath: clients with the same role and the
// same statement text but different search_path (startup option, SET) get
// their own table, in every transaction, on either server connection.
func TestPgxStatementsFollowSearchPath(t *testing.T) {
	env := pgtest.Start(t, nil)
	env.Superuser(`create table public.compat_sp (v text); insert into public.compat_sp values ('public');
create table api.compat_sp (v text); insert into api.compat_sp values ('api');
grant select on public.compat_sp, api.compat_sp to web_user`)
	ctx := timeout(t, time.Minute)
	errs, bad := &tally{}, &tally{}
	var wg sync.WaitGroup
	for k, tc := range []struct {
		options, set, want string
	}{
		{"", "", "api"},
		{"-c search_path=public", "", "public"},
		{"", "set search_path = public", "public"},
		{"-c search_path=public", "set search_path = api", "api"},
	} {
		conn := connectPgx(t, env, "web_user", fmt.Sprintf("sp-%d", k), func(c *pgx.ConnConfig) {
			if tc.options != "" {
				c.RuntimeParams["options"] = tc.options
			}
		})
		if tc.set != "" {
			if _, err := conn.Exec(ctx, tc.set); err != nil {
				t.Fatal(err)
			}
		}
		wg.Go(func() {
			for i := range rounds(60, 15) {
				var v string
				var n int
				if err := conn.QueryRow(ctx, "select v, $1::int from compat_sp", i).Scan(&v, &n); err != nil {
					errs.add("query", err)
					continue
				}
				if v != tc.want {
					bad.add(fmt.Sprintf("client %d", k), fmt.Errorf("read %s.compat_sp, want %s.compat_sp (options %q, %q)", v, tc.want, tc.options, tc.set))
				}
			}
		})
	}
	wg.Wait()
	errs.report(t)
	bad.report(t)
}

// TestFirstStatementWithStartupParameters: a client whose startup
// parameters differ from what the idle server connections have (here
// application_name, which libpq-based tools send by default) gets its
// settings applied before its first statement, which runs as the token,
// whichever server connection it lands on.
func TestFirstStatementWithStartupParameters(t *testing.T) {
	env := pgtest.Start(t, nil)
	ctx := timeout(t, time.Minute)
	for i := range 9 {
		// Both server connections open and idle, last used by clients
		// without that parameter.
		holdOther(t, env, noPID)()
		app := fmt.Sprintf("first-%d", i)
		c, err := pgconn.Connect(ctx, env.DSN(pgtest.UserToken(t, "alice"))+" application_name="+app)
		if err != nil {
			t.Fatal(err)
		}
		sql := identSQL + ", current_setting('application_name')"
		var res []*pgconn.Result
		var proto string
		switch i % 3 {
		case 0:
			proto = "simple"
			res, err = c.Exec(ctx, sql).ReadAll()
		case 1:
			proto = "extended, unnamed"
			r := c.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
			res, err = []*pgconn.Result{r}, r.Err
		case 2:
			// Parse, Bind, Describe, Execute, Sync in one go, as
			// node-postgres sends a named query's first use.
			proto = "extended, named"
			p := c.StartPipeline(ctx)
			p.SendPrepare("q1", sql, nil)
			p.SendQueryPrepared("q1", nil, nil, nil)
			p.Sync()
			if err = p.Flush(); err == nil {
				res, err = pipelineResults(p)
			}
		}
		_ = c.Close(ctx)
		if err != nil {
			t.Fatalf("round %d (%s): %v", i, proto, err)
		}
		row := res[0].Rows[0]
		if got := (who{string(row[0]), string(row[1])}); got != (who{"web_user", "alice"}) || string(row[2]) != app {
			t.Errorf("round %d (%s): the first statement ran as %s with application_name %q, want web_user/alice and %s", i, proto, got, row[2], app)
		}
	}
}

// pipelineResults reads a pipeline's results up to its last Sync, and
// closes it.
func pipelineResults(p *pgconn.Pipeline) ([]*pgconn.Result, error) {
	var out []*pgconn.Result
	for {
		r, err := p.GetResults()
		if err != nil {
			_ = p.Close()
			return out, err
		}
		if r == nil {
			break
		}
		switch r := r.(type) {
		case *pgconn.ResultReader:
			res := r.Read()
			if res.Err != nil {
				_ = p.Close()
				return out, res.Err
			}
			out = append(out, res)
		case *pgconn.PipelineSync:
			if err := p.Close(); err != nil {
				return out, err
			}
			return out, nil
		}
	}
	return out, p.Close()
}

// TestClientsWithDifferentSettingsConcurrently: clients with and without
// startup parameters share the server connections at once, so a
// connection's settings must change with nearly every transaction; every
// statement runs as its token with its own settings, in either protocol.
func TestClientsWithDifferentSettingsConcurrently(t *testing.T) {
	env := pgtest.Start(t, nil)
	ctx := timeout(t, time.Minute)
	for _, proto := range []string{"simple", "extended"} {
		t.Run(proto, func(t *testing.T) {
			bad := &tally{}
			var wg sync.WaitGroup
			for k := range 6 {
				sub := fmt.Sprintf("mixed-%d", k)
				dsn, app := env.DSN(pgtest.UserToken(t, sub)), ""
				if k%2 == 1 {
					app = fmt.Sprintf("app-%d", k)
					dsn += " application_name=" + app
				}
				c, err := pgconn.Connect(ctx, dsn)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = c.Close(context.Background()) })
				sql := identSQL + ", current_setting('application_name')"
				wg.Go(func() {
					for range rounds(30, 10) {
						var res []*pgconn.Result
						var err error
						if proto == "simple" {
							res, err = c.Exec(ctx, sql).ReadAll()
						} else {
							r := c.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
							res, err = []*pgconn.Result{r}, r.Err
						}
						if err != nil {
							bad.add("statement", err)
							continue
						}
						row := res[0].Rows[0]
						if got := (who{string(row[0]), string(row[1])}); got != (who{"web_user", sub}) || string(row[2]) != app {
							bad.add(proto+" statement", fmt.Errorf("ran as %s with application_name %q, want web_user/%s with %q", got, row[2], sub, app))
						}
					}
				})
			}
			wg.Wait()
			bad.report(t)
		})
	}
}
