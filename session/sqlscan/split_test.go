package sqlscan

import (
	"reflect"
	"testing"
)

func stmtTexts(text string) []string {
	var out []string
	for _, st := range Split(text, nil) {
		out = append(out, text[st.Start:st.End])
	}
	return out
}

func TestSplitBoundaries(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{" ;; ; \n", nil},
		{"/* only */ -- a comment", nil},
		{"select 1", []string{"select 1"}},
		{" select 1 ; ", []string{"select 1"}},
		{"select 1;select 2;", []string{"select 1", "select 2"}},
		{"/* a */ select 1 /* b */; -- c\n select 2 -- d", []string{"select 1", "select 2"}},
		{"select 'a;b'; select \"c;d\"; select $x$;$x$; select E'\\';'", []string{"select 'a;b'", "select \"c;d\"", "select $x$;$x$", "select E'\\';'"}},
		{"select 'a\\'; select 2; --'", []string{"select 'a\\'", "select 2"}},
		{"select 1 -- ;\n; select /* ; /* ; */ ; */ 2", []string{"select 1", "select /* ; /* ; */ ; */ 2"}},
		{"select 'a'\n'b'; select 'a' 'b'", []string{"select 'a'\n'b'", "select 'a' 'b'"}},
		{"select (1; 2); select [1;2]", []string{"select (1; 2)", "select [1", "2]"}},
		{"select a)); select 2", []string{"select a))", "select 2"}},
		// CREATE RULE with a parenthesized multi-action
		{"CREATE RULE r AS ON INSERT TO t DO INSTEAD (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)); select 1",
			[]string{"CREATE RULE r AS ON INSERT TO t DO INSTEAD (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))", "select 1"}},
		// SQL-standard function bodies
		{"create function f() returns int language sql begin atomic select 1; select 2; end; select 3",
			[]string{"create function f() returns int language sql begin atomic select 1; select 2; end", "select 3"}},
		{"CREATE OR REPLACE PROCEDURE p() BEGIN ATOMIC INSERT INTO t VALUES (1); END; CALL p()",
			[]string{"CREATE OR REPLACE PROCEDURE p() BEGIN ATOMIC INSERT INTO t VALUES (1); END", "CALL p()"}},
		{"create function f(x int) returns int begin atomic select case x when 1 then 2 else case when true then 3 end end; select (case when x > 0 then 1 end); end; select 4",
			[]string{"create function f(x int) returns int begin atomic select case x when 1 then 2 else case when true then 3 end end; select (case when x > 0 then 1 end); end", "select 4"}},
		{"create function f() returns int begin atomic end; select 1",
			[]string{"create function f() returns int begin atomic end", "select 1"}},
		{"create function f(begin int) returns int language sql return begin; select 1",
			[]string{"create function f(begin int) returns int language sql return begin", "select 1"}},
		{"create function f() returns int language sql as $$ select 1; select 2 $$; select 3",
			[]string{"create function f() returns int language sql as $$ select 1; select 2 $$", "select 3"}},
		{"begin; select case when true then 1 end; end; select 1",
			[]string{"begin", "select case when true then 1 end", "end", "select 1"}},
		{"create table begin (atomic int); select 1", []string{"create table begin (atomic int)", "select 1"}},
		// "begin atomic" inside a body can be a column and its alias
		{"create function f() returns int language sql begin atomic select begin atomic from (select 1 as begin) t; end; commit",
			[]string{"create function f() returns int language sql begin atomic select begin atomic from (select 1 as begin) t; end", "commit"}},
		{"create function f() returns int begin atomic create function g() returns int begin atomic select 1; end; end; commit",
			[]string{"create function f() returns int begin atomic create function g() returns int begin atomic select 1; end; end", "commit"}},
		{"create function f() returns int set search_path to begin begin atomic select 1; end; commit",
			[]string{"create function f() returns int set search_path to begin begin atomic select 1; end", "commit"}},
	}
	for _, tt := range tests {
		if got := stmtTexts(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Split(%q)\n got %q\nwant %q", tt.in, got, tt.want)
		}
	}
}

func TestSplitUnterminated(t *testing.T) {
	tests := []struct {
		in    string
		n     int // statements
		start int // start of the last one
	}{
		{"select 'abc; select 2", 1, 0},
		{"select 1; select \"abc", 2, 10},
		{"select 1; select $$abc", 2, 10},
		{"select 1; select E'abc\\'", 2, 10},
		{"select 1; /* abc", 2, 10},
		{"select 1; select 2 /* abc /* */", 2, 10},
		{"/* abc", 1, 0},
		{"select U&'abc", 1, 0},
	}
	for _, tt := range tests {
		sts := Split(tt.in, nil)
		if len(sts) != tt.n {
			t.Errorf("Split(%q): %d statements, want %d", tt.in, len(sts), tt.n)
			continue
		}
		last := sts[len(sts)-1]
		if last.Flags&FlagUnterminated == 0 || last.End != len(tt.in) || last.Start != tt.start {
			t.Errorf("Split(%q): last = %+v, want unterminated from %d to the end", tt.in, last, tt.start)
		}
		for _, st := range sts[:len(sts)-1] {
			if st.Flags&FlagUnterminated != 0 {
				t.Errorf("Split(%q): %+v flagged unterminated", tt.in, st)
			}
		}
	}
}

func TestSplitClassify(t *testing.T) {
	type want struct {
		kind  Kind
		flags Flags
		name  string
		value string
	}
	tests := []struct {
		in string
		want
	}{
		{"SELECT 1", want{}},
		{"BEGIN", want{kind: KindBegin}},
		{"begin work", want{kind: KindBegin}},
		{"BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY", want{kind: KindBegin}},
		{"START TRANSACTION READ ONLY", want{kind: KindBegin}},
		{"BEGIN ATOMIC", want{}},
		{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", want{kind: KindSetTransaction}},
		{"SET TRANSACTION SNAPSHOT '00000003-1'", want{kind: KindSetTransaction}},
		{"SET LOCAL TRANSACTION READ ONLY", want{kind: KindSetTransaction}},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", want{kind: KindSet, name: "session characteristics"}},
		{"COMMIT", want{kind: KindCommit}},
		{"commit work and chain", want{kind: KindCommit, flags: FlagChain}},
		{"COMMIT AND NO CHAIN", want{kind: KindCommit}},
		{"END", want{kind: KindCommit}},
		{"END TRANSACTION AND CHAIN", want{kind: KindCommit, flags: FlagChain}},
		{"ROLLBACK", want{kind: KindRollback}},
		{"ABORT", want{kind: KindRollback}},
		{"ABORT WORK AND CHAIN", want{kind: KindRollback, flags: FlagChain}},
		{"ROLLBACK TRANSACTION AND CHAIN", want{kind: KindRollback, flags: FlagChain}},
		{"ROLLBACK TO s", want{kind: KindRollbackTo}},
		{"rollback work to savepoint s", want{kind: KindRollbackTo}},
		{"SAVEPOINT s", want{kind: KindSavepoint}},
		{"RELEASE SAVEPOINT s", want{kind: KindRelease}},
		{"RELEASE s", want{kind: KindRelease}},
		{"PREPARE TRANSACTION 'x'", want{kind: KindPrepareTransaction}},
		{"PREPARE q(int) AS SELECT $1", want{kind: KindPrepare, name: "q"}},
		{`PREPARE "Q" AS SELECT 1`, want{kind: KindPrepare, name: "Q"}},
		{"CALL p()", want{kind: KindCall}},
		{"DO $$begin end$$", want{kind: KindDo}},
		{"SET search_path = a, b", want{kind: KindSet, name: "search_path", value: "a, b"}},
		{"SET LOCAL statement_timeout TO 0", want{kind: KindSetLocal, name: "statement_timeout", value: "0"}},
		{"SET SESSION TimeZone = 'UTC'", want{kind: KindSet, name: "timezone", value: "'UTC'"}},
		{"SET TIME ZONE 'UTC'", want{kind: KindSet, name: "timezone", value: "'UTC'"}},
		{"SET LOCAL TIME ZONE LOCAL", want{kind: KindSetLocal, name: "timezone", value: "LOCAL"}},
		{"SET NAMES 'utf8'", want{kind: KindSet, name: "client_encoding", value: "'utf8'"}},
		{"SET SCHEMA 'x'", want{kind: KindSet, name: "search_path", value: "'x'"}},
		{"SET XML OPTION DOCUMENT", want{kind: KindSet, name: "xmloption", value: "DOCUMENT"}},
		{"SET ROLE web_admin", want{kind: KindSet, name: "role", value: "web_admin"}},
		{"SET role TO web_admin", want{kind: KindSet, name: "role", value: "web_admin"}},
		{"SET SESSION ROLE NONE", want{kind: KindSet, name: "role", value: "NONE"}},
		{"SET LOCAL ROLE x", want{kind: KindSetLocal, name: "role", value: "x"}},
		{"SET SESSION AUTHORIZATION DEFAULT", want{kind: KindSet, name: "session_authorization", value: "DEFAULT"}},
		{"SET LOCAL SESSION AUTHORIZATION x", want{kind: KindSetLocal, name: "session_authorization", value: "x"}},
		{"SET SESSION SESSION AUTHORIZATION x", want{kind: KindSet, name: "session_authorization", value: "x"}},
		{`SET "JWT".claims . sub = 1`, want{kind: KindSet, name: "JWT.claims.sub", value: "1"}},
		{`SET /* c */ jwt -- c` + "\n" + `. /* c */ "claims.sub" TO '1'`, want{kind: KindSet, name: "jwt.claims.sub", value: "'1'"}},
		{`set U&"r\006Fle" = x`, want{kind: KindSet, name: "role", value: "x"}},
		{`set U&"r!006Fle" UESCAPE '!' = x`, want{kind: KindSet, name: "role", value: "x"}},
		{"SET x.y FROM CURRENT", want{kind: KindSet, name: "x.y", value: "FROM CURRENT"}},
		{"set a=-1", want{kind: KindSet, name: "a", value: "-1"}},
		{"SET session TO 1", want{kind: KindSet, name: "session", value: "1"}},
		{"SET local = 1", want{kind: KindSet, name: "local", value: "1"}},
		{"SET names = 1", want{kind: KindSet, name: "names", value: "1"}},
		{"RESET ALL", want{kind: KindResetAll}},
		{"RESET role", want{kind: KindReset, name: "role"}},
		{`RESET "Role"`, want{kind: KindReset, name: "Role"}},
		{"RESET SESSION AUTHORIZATION", want{kind: KindReset, name: "session_authorization"}},
		{"RESET TIME ZONE", want{kind: KindReset, name: "timezone"}},
		{"RESET TRANSACTION ISOLATION LEVEL", want{kind: KindReset, name: "transaction_isolation"}},
		{"SHOW ALL", want{kind: KindShow, name: "all"}},
		{"SHOW role", want{kind: KindShow, name: "role"}},
		{"SHOW TIME ZONE", want{kind: KindShow, name: "timezone"}},
		{"SHOW SESSION AUTHORIZATION", want{kind: KindShow, name: "session_authorization"}},
		{"DISCARD ALL", want{kind: KindDiscard, name: "all"}},
		{"discard plans", want{kind: KindDiscard, name: "plans"}},
		{"DISCARD SEQUENCES", want{kind: KindDiscard, name: "sequences"}},
		{"DISCARD TEMP", want{kind: KindDiscard, name: "temp"}},
		{"DISCARD TEMPORARY", want{kind: KindDiscard, name: "temp"}},
		{"LISTEN Chan", want{kind: KindListen, name: "chan"}},
		{"UNLISTEN *", want{kind: KindUnlisten, name: "*"}},
		{`UNLISTEN "C"`, want{kind: KindUnlisten, name: "C"}},
		{"EXECUTE q(1)", want{kind: KindExecute, name: "q"}},
		{"DEALLOCATE q", want{kind: KindDeallocate, name: "q"}},
		{"DEALLOCATE PREPARE q", want{kind: KindDeallocate, name: "q"}},
		{"DEALLOCATE ALL", want{kind: KindDeallocate}},
		{"DEALLOCATE PREPARE ALL", want{kind: KindDeallocate}},
		{"DECLARE c CURSOR FOR SELECT 1", want{kind: KindDeclare}},
		{"DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT 1", want{kind: KindDeclare, flags: FlagWithHold}},
		{"DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", want{kind: KindDeclare}},
		{"DECLARE c CURSOR FOR WITH hold AS (SELECT 1) SELECT * FROM hold", want{kind: KindDeclare}},
		{"COPY t FROM STDIN", want{kind: KindCopy}},
		{"VACUUM", want{kind: KindNoTxBlock}},
		{"VACUUM (ANALYZE) t", want{kind: KindNoTxBlock}},
		{"CREATE DATABASE d", want{kind: KindNoTxBlock}},
		{"DROP DATABASE d", want{kind: KindNoTxBlock}},
		{"CREATE TABLESPACE s LOCATION '/x'", want{kind: KindNoTxBlock}},
		{"DROP TABLESPACE s", want{kind: KindNoTxBlock}},
		{"ALTER SYSTEM SET work_mem = '1MB'", want{kind: KindNoTxBlock}},
		{"CREATE INDEX CONCURRENTLY i ON t (a)", want{kind: KindNoTxBlock}},
		{"CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)", want{kind: KindNoTxBlock}},
		{"CREATE INDEX i ON t (a)", want{}},
		{"DROP INDEX CONCURRENTLY i", want{kind: KindNoTxBlock}},
		{"DROP INDEX i", want{}},
		{"REINDEX TABLE CONCURRENTLY t", want{kind: KindNoTxBlock}},
		{"REINDEX (CONCURRENTLY) TABLE t", want{kind: KindNoTxBlock}},
		{"REINDEX SYSTEM d", want{kind: KindNoTxBlock}},
		{"REINDEX (VERBOSE) DATABASE d", want{kind: KindNoTxBlock}},
		{"REINDEX TABLE t", want{}},
		{"CLUSTER", want{kind: KindNoTxBlock}},
		{"CLUSTER VERBOSE", want{kind: KindNoTxBlock}},
		{"CLUSTER (VERBOSE)", want{kind: KindNoTxBlock}},
		{"CLUSTER t", want{}},
		{"CLUSTER VERBOSE t USING i", want{}},
		{"CREATE SUBSCRIPTION s CONNECTION '' PUBLICATION p", want{kind: KindNoTxBlock}},
		{"ALTER SUBSCRIPTION s REFRESH PUBLICATION", want{kind: KindNoTxBlock}},
		{"DROP SUBSCRIPTION s", want{kind: KindNoTxBlock}},
		{"COMMIT PREPARED 'x'", want{kind: KindNoTxBlock}},
		{"ROLLBACK PREPARED 'x'", want{kind: KindNoTxBlock}},
		{"ALTER DATABASE d SET TABLESPACE s", want{kind: KindNoTxBlock}},
		{"ALTER DATABASE d SET work_mem = 1", want{}},
		{"ALTER TABLE p DETACH PARTITION c CONCURRENTLY", want{kind: KindNoTxBlock}},
		{"ALTER TABLE p DETACH PARTITION c", want{}},
		{"select set_config('a.b', 'c', true)", want{flags: FlagSetConfig}},
		{"select set_config('a.b', 'c', TRUE)", want{flags: FlagSetConfig}},
		{"select set_config('a.b', 'c', false)", want{flags: FlagSetConfig | FlagSessionSetConfig}},
		{"select set_config('a.b', 'c', 'true')", want{flags: FlagSetConfig | FlagSessionSetConfig}},
		{"select set_config('a.b', 'c', x)", want{flags: FlagSetConfig | FlagSessionSetConfig}},
		{"select set_config('a.b', 'c', is_local => true)", want{flags: FlagSetConfig | FlagSessionSetConfig}},
		{`select pg_catalog . "set_config" /* c */ ('a.b', 'c', (true))`, want{flags: FlagSetConfig | FlagSessionSetConfig}},
		{"select set_config from t", want{}},
		{"select pg_advisory_lock(1)", want{flags: FlagAdvisoryLock}},
		{`select pg_catalog."pg_try_advisory_lock_shared"(1, 2)`, want{flags: FlagAdvisoryLock}},
		{"select pg_try_advisory_lock(1), PG_ADVISORY_LOCK_SHARED(2)", want{flags: FlagAdvisoryLock}},
		{"select pg_advisory_xact_lock(1), pg_try_advisory_xact_lock(2)", want{}},
		{"CREATE TEMP TABLE t (a int)", want{flags: FlagTempObject}},
		{"CREATE GLOBAL TEMPORARY TABLE t (a int) ON COMMIT DELETE ROWS", want{flags: FlagTempObject}},
		{"CREATE TEMPORARY TABLE t (a int) ON COMMIT DROP", want{}},
		{"CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1", want{}},
		{"CREATE TEMP TABLE t AS SELECT 1", want{flags: FlagTempObject}},
		{"CREATE TEMP SEQUENCE s", want{flags: FlagTempObject}},
		{"CREATE OR REPLACE TEMP VIEW v AS SELECT 1", want{flags: FlagTempObject}},
		{"CREATE TEMP RECURSIVE VIEW v(a) AS SELECT 1", want{flags: FlagTempObject}},
		{"CREATE TABLE pg_temp.t (a int)", want{flags: FlagTempObject}},
		{"CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql RETURN 1", want{flags: FlagTempObject}},
		{"CREATE TABLE t (a int)", want{}},
		{"SELECT 1 INTO TEMP t", want{flags: FlagTempObject}},
		{"SELECT 1 INTO LOCAL TEMPORARY TABLE t", want{flags: FlagTempObject}},
		{"WITH x AS (SELECT 1) SELECT * INTO TEMP t FROM x", want{flags: FlagTempObject}},
		{"INSERT INTO temp VALUES (1)", want{}},
	}
	for _, tt := range tests {
		sts := Split(tt.in, nil)
		if len(sts) != 1 {
			t.Errorf("Split(%q): %d statements", tt.in, len(sts))
			continue
		}
		st := sts[0]
		got := want{st.Kind, st.Flags, st.Name, st.Value}
		if got != tt.want {
			t.Errorf("Split(%q)\n got %+v\nwant %+v", tt.in, got, tt.want)
		}
	}
}

func TestSplitAllocs(t *testing.T) {
	for _, q := range []string{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
		"BEGIN; UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1; SELECT 'x' /* c */; END;",
		"SET LOCAL statement_timeout = 0",
		"select set_config('a.b', 'c', true)",
	} {
		dst := make([]Statement, 0, 8)
		if n := testing.AllocsPerRun(100, func() { dst = Split(q, dst[:0]) }); n != 0 {
			t.Errorf("Split(%q): %v allocations", q, n)
		}
	}
}
