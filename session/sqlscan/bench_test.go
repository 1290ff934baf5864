package sqlscan

import (
	"strings"
	"testing"
)

// benchText is a mix of short and long statements.
var benchText = strings.Join([]string{
	"SELECT abalance FROM pgbench_accounts WHERE aid = 1",
	"BEGIN",
	"UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 77",
	"SET LOCAL statement_timeout = '5s'",
	"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP)",
	"END",
	"/* a comment; with a semicolon */ select u.id, u.role, u.sub from users u where u.sub = current_setting('jwt.claims.sub') and u.role <> 'it''s'",
	"INSERT INTO t (a, b, c) VALUES " + strings.Repeat("(1, 'some text here', E'esc\\'aped'), ", 60) + "(2, 'x', $$dollar; quoted$$)",
	"CREATE FUNCTION f(x int) RETURNS int LANGUAGE plpgsql AS $body$\nBEGIN\n  -- a comment\n  RETURN x + 1;\nEND\n$body$",
	"select 1 -- trailing comment\n",
}, ";\n")

func BenchmarkSplit(b *testing.B) {
	dst := make([]Statement, 0, 16)
	b.SetBytes(int64(len(benchText)))
	b.ReportAllocs()
	for b.Loop() {
		dst = Split(benchText, dst[:0])
	}
}

func BenchmarkSplitShort(b *testing.B) {
	q := "SELECT abalance FROM pgbench_accounts WHERE aid = 1;"
	dst := make([]Statement, 0, 4)
	b.SetBytes(int64(len(q)))
	b.ReportAllocs()
	for b.Loop() {
		dst = Split(q, dst[:0])
	}
}

func BenchmarkCheck(b *testing.B) {
	sts := Split(benchText, nil)
	p := testPolicy
	if v := p.Check(benchText, sts); v != nil {
		b.Fatal(v.Reason)
	}
	b.SetBytes(int64(len(benchText)))
	b.ReportAllocs()
	for b.Loop() {
		p.Check(benchText, sts)
	}
}
