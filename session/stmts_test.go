package session_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// rotate makes sure the next transaction of c may land on another server
// connection: others hold and release connections in between.
func rotate(t *testing.T, others ...*pgconn.PgConn) {
	for _, o := range others {
		rows(t, o, "begin")
	}
	for _, o := range others {
		rows(t, o, "commit")
	}
}

func TestNamedStatementsFollowTheClientAcrossServerConnections(t *testing.T) {
	env := pgtest.Start(t, nil) // pool size 2
	a := env.Connect(pgtest.UserToken(t, "alice"))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	c := env.Connect(pgtest.UserToken(t, "carol"))
	sd, err := a.Prepare(ctx(t), "s1", whoami+" where $1::int > 0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sd.ParamOIDs) != 1 || len(sd.Fields) != 2 {
		t.Fatalf("describe: %+v", sd)
	}
	// Bob prepares the identical text under the same name: his own.
	if _, err := b.Prepare(ctx(t), "s1", whoami+" where $1::int > 0", nil); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		for _, x := range []struct {
			c   *pgconn.PgConn
			sub string
		}{{a, "alice"}, {b, "bob"}} {
			r := x.c.ExecPrepared(ctx(t), "s1", [][]byte{[]byte("1")}, nil, nil).Read()
			if r.Err != nil {
				t.Fatalf("round %d, %s: %v", i, x.sub, r.Err)
			}
			if got := string(r.Rows[0][1]); got != x.sub {
				t.Fatalf("round %d: %s's statement ran as %q", i, x.sub, got)
			}
		}
		rotate(t, c, b)
	}
	// Carol never prepared s1: it does not exist for her.
	r := c.ExecPrepared(ctx(t), "s1", [][]byte{[]byte("1")}, nil, nil).Read()
	if pe := pgErr(r.Err); pe == nil || pe.Code != "26000" {
		t.Fatalf("another client's statement: %v", r.Err)
	}
	// Duplicate names fail as in Postgres; Close frees the name.
	if _, err := a.Prepare(ctx(t), "s1", "select 1", nil); pgErr(err) == nil || pgErr(err).Code != "42P05" {
		t.Fatalf("duplicate: %v", err)
	}
	if err := a.Deallocate(ctx(t), "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Prepare(ctx(t), "s1", "select 2", nil); err != nil {
		t.Fatalf("after close: %v", err)
	}
	if got := a.ExecPrepared(ctx(t), "s1", nil, nil, nil).Read(); got.Err != nil || string(got.Rows[0][0]) != "2" {
		t.Fatalf("new s1: %v %v", got.Err, got.Rows)
	}
}

func TestFailedParseLeavesNoStatement(t *testing.T) {
	env := pgtest.Start(t, nil)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	if _, err := a.Prepare(ctx(t), "bad", "selec 1", nil); pgErr(err) == nil || pgErr(err).Code != "42601" {
		t.Fatalf("syntax error: %v", err)
	}
	if _, err := a.Prepare(ctx(t), "bad", "select 1", nil); err != nil {
		t.Fatalf("the failed Parse left an entry: %v", err)
	}
	// A statement whose Parse was skipped after an earlier error in the
	// same batch does not exist either.
	b := &pgconn.Batch{}
	b.ExecParams("select 1/0", nil, nil, nil, nil)
	res := a.ExecBatch(ctx(t), b)
	_, _ = res.ReadAll()
	if _, err := a.Prepare(ctx(t), "later", "select 3", nil); err != nil {
		t.Fatal(err)
	}
}

func TestStatementCacheEvictsButStatementsKeepWorking(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) {
		c.Pool.Size = 1
		c.Pool.StatementCache = 3
	})
	a := env.Connect(pgtest.UserToken(t, "alice"))
	for i := range 10 {
		if _, err := a.Prepare(ctx(t), fmt.Sprintf("q%d", i), fmt.Sprintf("select %d, current_setting('jwt.claims.sub')", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 3 {
		for i := range 10 {
			r := a.ExecPrepared(ctx(t), fmt.Sprintf("q%d", i), nil, nil, nil).Read()
			if r.Err != nil || string(r.Rows[0][0]) != fmt.Sprint(i) || string(r.Rows[0][1]) != "alice" {
				t.Fatalf("round %d q%d: %v %q", round, i, r.Err, r.Rows)
			}
		}
	}
	// The server connection holds at most the cache size (plus the prelude).
	got := env.Superuser("select count(*) from pg_stat_activity where usename = 'authenticator' and datname = '" + env.DB + "'")
	if got[0][0] != "1" {
		t.Fatalf("server connections: %q", got)
	}
	// Binding all ten in one batch: none is evicted while the batch uses it.
	b := &pgconn.Batch{}
	for i := range 10 {
		b.ExecPrepared(fmt.Sprintf("q%d", i), nil, nil, nil)
	}
	res, err := a.ExecBatch(ctx(t), b).ReadAll()
	if err != nil || len(res) != 10 {
		t.Fatalf("batch of ten: %v (%d results)", err, len(res))
	}
}

func TestUnnamedStatementAcrossTransactions(t *testing.T) {
	env := pgtest.Start(t, nil)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	c := env.Connect(pgtest.UserToken(t, "carol"))
	fe := a.Frontend()
	// Parse the unnamed statement and Sync; Bind it in a later batch.
	fe.Send(&pgproto3.Parse{Query: whoami})
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	readUntilReady(t, fe)
	rotate(t, b, c)
	// Bob parses his own unnamed statement on whatever connection.
	bf := b.Frontend()
	bf.Send(&pgproto3.Parse{Query: "select 'bob''s unnamed'"})
	bf.Send(&pgproto3.Sync{})
	bf.Flush()
	readUntilReady(t, bf)
	for range 3 {
		fe.Send(&pgproto3.Bind{})
		fe.Send(&pgproto3.Execute{})
		fe.Send(&pgproto3.Sync{})
		fe.Flush()
		msgs := readUntilReady(t, fe)
		var row []string
		for _, m := range msgs {
			switch m := m.(type) {
			case *pgproto3.DataRow:
				for _, v := range m.Values {
					row = append(row, string(v))
				}
			case *pgproto3.ErrorResponse:
				t.Fatalf("bind of the unnamed statement: %s", m.Message)
			}
		}
		if strings.Join(row, "|") != "web_user|alice" {
			t.Fatalf("unnamed statement ran %q", row)
		}
		rotate(t, b, c)
	}
	// Bob binding the unnamed statement gets his own, never alice's.
	bf.Send(&pgproto3.Bind{})
	bf.Send(&pgproto3.Execute{})
	bf.Send(&pgproto3.Sync{})
	bf.Flush()
	for _, m := range readUntilReady(t, bf) {
		if d, ok := m.(*pgproto3.DataRow); ok && string(d.Values[0]) != "bob's unnamed" {
			t.Fatalf("bob ran %q", d.Values[0])
		}
	}
	// A client that never parsed one gets Postgres's error.
	cf := c.Frontend()
	cf.Send(&pgproto3.Bind{})
	cf.Send(&pgproto3.Execute{})
	cf.Send(&pgproto3.Sync{})
	cf.Flush()
	found := false
	for _, m := range readUntilReady(t, cf) {
		if e, ok := m.(*pgproto3.ErrorResponse); ok && e.Code == "26000" {
			found = true
		}
	}
	if !found {
		t.Fatal("binding a missing unnamed statement did not fail with 26000")
	}
}

func readUntilReady(t *testing.T, fe *pgproto3.Frontend) []pgproto3.BackendMessage {
	t.Helper()
	var out []pgproto3.BackendMessage
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *pgproto3.ReadyForQuery:
			return out
		case *pgproto3.DataRow:
			v := make([][]byte, len(m.Values))
			for i := range v {
				v[i] = append([]byte(nil), m.Values[i]...)
			}
			out = append(out, &pgproto3.DataRow{Values: v})
		case *pgproto3.ErrorResponse:
			e := *m
			out = append(out, &e)
		default:
			out = append(out, m)
		}
	}
}

func TestSQLPrepareExecuteDeallocate(t *testing.T) {
	env := pgtest.Start(t, nil)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	c := env.Connect(pgtest.UserToken(t, "carol"))
	rows(t, a, "PREPARE mine(int) AS "+whoami+", $1")
	for i := range 5 {
		got := rows(t, a, fmt.Sprintf("EXECUTE mine(%d)", i))
		if got[0][0] != "web_user" || got[0][1] != "alice" || got[0][2] != fmt.Sprint(i) {
			t.Fatalf("execute %d: %q", i, got)
		}
		rotate(t, b, c)
	}
	if _, err := b.Exec(ctx(t), "EXECUTE mine(1)").ReadAll(); pgErr(err) == nil || pgErr(err).Code != "26000" {
		t.Fatalf("another client's EXECUTE: %v", err)
	}
	if _, err := a.Exec(ctx(t), "PREPARE mine AS select 1").ReadAll(); pgErr(err) == nil || pgErr(err).Code != "42P05" {
		t.Fatalf("duplicate PREPARE: %v", err)
	}
	res, err := a.Exec(ctx(t), "DEALLOCATE mine").ReadAll()
	if err != nil || res[0].CommandTag.String() != "DEALLOCATE" {
		t.Fatalf("deallocate: %v", err)
	}
	if _, err := a.Exec(ctx(t), "EXECUTE mine(1)").ReadAll(); pgErr(err) == nil || pgErr(err).Code != "26000" {
		t.Fatalf("after deallocate: %v", err)
	}
	// Same text prepared again (shared on the server) works.
	rows(t, a, "PREPARE again(int) AS "+whoami+", $1")
	if got := rows(t, a, "EXECUTE again(7)"); got[0][2] != "7" {
		t.Fatalf("again: %q", got)
	}
}

func TestDiscardAllAndResetAllAffectOnlyTheClient(t *testing.T) {
	env := pgtest.Start(t, nil)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	rows(t, a, "set statement_timeout = '7s'")
	rows(t, b, "set statement_timeout = '9s'")
	if _, err := a.Prepare(ctx(t), "p", "select 1", nil); err != nil {
		t.Fatal(err)
	}
	res, err := a.Exec(ctx(t), "DISCARD ALL").ReadAll()
	if err != nil || res[0].CommandTag.String() != "DISCARD ALL" {
		t.Fatalf("discard all: %v", err)
	}
	if got := rows(t, a, "show statement_timeout"); got[0][0] != "0" {
		t.Fatalf("after DISCARD ALL statement_timeout = %q", got)
	}
	if r := a.ExecPrepared(ctx(t), "p", nil, nil, nil).Read(); pgErr(r.Err) == nil {
		t.Fatal("statement survived DISCARD ALL")
	}
	if got := rows(t, b, "show statement_timeout"); got[0][0] != "9s" {
		t.Fatalf("the other client's setting changed: %q", got)
	}
	rows(t, b, "RESET ALL")
	if got := rows(t, b, "show statement_timeout"); got[0][0] != "0" {
		t.Fatalf("after RESET ALL: %q", got)
	}
	if got := rows(t, b, whoami); got[0][1] != "bob" {
		t.Fatalf("RESET ALL touched identity: %q", got)
	}
	rows(t, a, "begin")
	if _, err := a.Exec(ctx(t), "DISCARD ALL").ReadAll(); pgErr(err) == nil || pgErr(err).Code != "25001" {
		t.Fatalf("DISCARD ALL in a transaction: %v", err)
	}
	rows(t, a, "rollback")
}
