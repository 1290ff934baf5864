package compat

import (
	"database/sql"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// openDB opens database/sql with pgx's driver on pgtoken as sub, with up
// to maxOpen connections.
func openDB(t testing.TB, env *pgtest.Env, sub string, maxOpen int) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", env.DSN(pgtest.UserToken(t, sub)))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(maxOpen)
	db.SetMaxIdleConns(maxOpen)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// TestStdlibPreparedAcrossTransactions: two database/sql pools (alice and
// bob) of 8 connections each over pgtoken's 2 server connections. Statements
// prepared once with db.Prepare (named statements on each driver
// connection) run in many transactions, with tx.Stmt, read-only and
// serializable transactions, rollbacks, and plain db.Query.
func TestStdlibPreparedAcrossTransactions(t *testing.T) {
	env := pgtest.Start(t, nil)
	ctx := timeout(t, 2*time.Minute)
	errs, bad := &tally{}, &tally{}
	var checked atomic.Int64
	var wg sync.WaitGroup
	committed := map[string]*atomic.Int64{}
	for _, sub := range []string{"alice", "bob"} {
		db := openDB(t, env, sub, 8)
		c := &checker{want: who{"web_user", sub}, errs: errs, bad: bad, checked: &checked}
		ident, err := db.PrepareContext(ctx, qIdent)
		if err != nil {
			t.Fatal(err)
		}
		add, err := db.PrepareContext(ctx, qAddTodo)
		if err != nil {
			t.Fatal(err)
		}
		count, err := db.PrepareContext(ctx, "select count(*) from api.todos where title like 'sql %'")
		if err != nil {
			t.Fatal(err)
		}
		n := &atomic.Int64{}
		committed[sub] = n
		useIdent := func(s *sql.Stmt, where string, i int) bool {
			var role, got string
			var back int
			if err := s.QueryRowContext(ctx, i).Scan(&role, &got, &back); err != nil {
				errs.add(where, err)
				return false
			}
			c.check(where, role, got)
			if back != i {
				bad.add(where, fmt.Errorf("parameter %d came back as %d", i, back))
			}
			return true
		}
		for w := range 8 {
			wg.Go(func() {
				for i := range rounds(60, 15) {
					switch (i + w) % 4 {
					case 0:
						useIdent(ident, "db.Prepare outside a transaction", i)
					case 1, 2:
						opts := &sql.TxOptions{}
						if i%4 == 2 {
							opts.Isolation = sql.LevelSerializable
						}
						tx, err := db.BeginTx(ctx, opts)
						if err != nil {
							errs.add("begin", err)
							continue
						}
						ok := useIdent(tx.StmtContext(ctx, ident), "tx.Stmt", i)
						var owner, role string
						if ok {
							if err := tx.StmtContext(ctx, add).QueryRowContext(ctx, "sql "+strconv.Itoa(i)).Scan(&owner, &role); err != nil {
								errs.add("insert", err)
								ok = false
							} else {
								c.check("insert (owner default)", role, owner)
							}
						}
						if ok && (i+w)%4 == 1 {
							if err := tx.Commit(); err != nil {
								errs.add("commit", err)
							} else {
								n.Add(1)
							}
						} else if err := tx.Rollback(); err != nil {
							errs.add("rollback", err)
						}
					case 3:
						tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
						if err != nil {
							errs.add("begin read only", err)
							continue
						}
						useIdent(tx.StmtContext(ctx, ident), "read-only tx.Stmt", i)
						var k int64
						if err := tx.StmtContext(ctx, count).QueryRowContext(ctx).Scan(&k); err != nil {
							errs.add("count", err)
						}
						// Writing is refused in a read-only transaction.
						if _, err := tx.ExecContext(ctx, "insert into api.todos (title) values ('nope')"); !expectCode(err, "25006") {
							errs.add("read-only insert", fmt.Errorf("want 25006, got %v", err))
						}
						if err := tx.Rollback(); err != nil {
							errs.add("rollback", err)
						}
					}
				}
			})
		}
	}
	wg.Wait()
	errs.report(t)
	bad.report(t)
	for sub, n := range committed {
		got := env.Superuser("select count(*) from api.todos where owner = " + sqlLiteral(sub) + " and title like 'sql %'")[0][0]
		if want := strconv.FormatInt(n.Load(), 10); got != want {
			t.Errorf("%s committed %s todos; the table holds %s", sub, want, got)
		}
	}
}

// TestStdlibConnSettings: a session-level SET on a *sql.Conn holds in its
// later transactions, while other connections of the same pool do not see
// it.
func TestStdlibConnSettings(t *testing.T) {
	env := pgtest.Start(t, nil)
	ctx := timeout(t, time.Minute)
	db := openDB(t, env, "carol", 6)
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "set statement_timeout = '4321ms'"); err != nil {
		t.Fatal(err)
	}
	others := make([]*sql.Conn, 3)
	for i := range others {
		if others[i], err = db.Conn(ctx); err != nil {
			t.Fatal(err)
		}
		defer others[i].Close()
	}
	pids := map[string]bool{}
	release := func() {}
	for i := range rounds(12, 6) {
		var pid, st string
		if err := conn.QueryRowContext(ctx, "select pg_backend_pid()::text, current_setting('statement_timeout')").Scan(&pid, &st); err != nil {
			t.Fatal(err)
		}
		if st != "4321ms" {
			t.Errorf("transaction %d on server connection %s: statement_timeout %s, want 4321ms", i, pid, st)
		}
		pids[pid] = true
		// The next transaction goes to the other server connection.
		release()
		release = holdOther(t, env, pid)
		// The pool's other connections never see the setting.
		tx, err := others[i%len(others)].BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRowContext(ctx, "select current_setting('statement_timeout')").Scan(&st); err != nil {
			t.Fatal(err)
		}
		if st != "0" {
			t.Errorf("another connection of the pool sees statement_timeout %s", st)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	release()
	if len(pids) != 2 {
		t.Errorf("the conn ran on %d server connections, want 2", len(pids))
	}
	// The timeout is in force.
	if _, err := conn.ExecContext(ctx, "set statement_timeout = '100ms'"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "select pg_sleep(2)"); !expectCode(err, "57014") {
		t.Fatalf("pg_sleep under a 100ms statement_timeout: %v", err)
	}
	if _, err := conn.ExecContext(ctx, "select 1"); err != nil {
		t.Fatalf("after the timeout: %v", err)
	}
}
