package sqlscan

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtoken/pgtoken/internal/guardcorpus"
)

var testPolicy = Policy{ClaimsPrefix: "jwt.claims", ClaimsJSON: "request.jwt.claims"}

func check(p *Policy, text string) *Violation {
	return p.Check(text, Split(text, nil))
}

// guardDeny lists statements the guard must refuse, by rule.
var guardDeny = []string{
	// 1: role and session_authorization in any spelling
	"SET ROLE web_admin",
	"set role to web_admin",
	"SET role = web_admin",
	`SET "role" = web_admin`,
	`SET "ROLE" = web_admin`,
	"SET LOCAL ROLE web_admin",
	"SET SESSION ROLE web_admin",
	"SET ROLE NONE",
	"set local role none",
	"RESET ROLE",
	`reset "role"`,
	"SET SESSION AUTHORIZATION web_admin",
	"SET SESSION AUTHORIZATION DEFAULT",
	"SET LOCAL SESSION AUTHORIZATION DEFAULT",
	"RESET SESSION AUTHORIZATION",
	"SET session_authorization = web_admin",
	`SET "Session_Authorization" TO DEFAULT`,
	`SET U&"r\006Fle" = web_admin`,
	`SET U&"r!006Fle" UESCAPE '!' = web_admin`,
	"SET /* x */ ROLE -- y\n web_admin",
	"SET\tLOCAL\nROLE\fweb_admin",
	"select 1; set role web_admin",
	"select 1; /* ; */ reset role; select 2",
	// 2: claims
	"SET jwt.claims.sub = '1'",
	"SET LOCAL jwt.claims.sub = '1'",
	"SET SESSION jwt.claims.sub TO '1'",
	`SET "jwt.claims.sub" = '1'`,
	`SET jwt . claims . sub = '1'`,
	`SET "JWT"."CLAIMS"."SUB" = '1'`,
	`SET jwt."claims.role" = 'admin'`,
	"SET jwt.claims = '1'",
	"RESET jwt.claims.sub",
	"SET request.jwt.claims = '{}'",
	`SET "Request"."JWT".claims = '{}'`,
	`SET U&"jwt\002eclaims\002esub" = '1'`,
	"SET jwt.claims.sub FROM CURRENT",
	// 3: set_config
	"select set_config('role', 'web_admin', false)",
	"SELECT SET_CONFIG('ROLE', 'web_admin', true)",
	`select "set_config"('role', 'web_admin', false)`,
	`select pg_catalog.set_config('role', 'web_admin', false)`,
	`select pg_catalog . /* x */ "set_config" -- y` + "\n" + `('role', 'web_admin', false)`,
	`select U&"set\005fconfig"('role', 'web_admin', false)`,
	`select U&"set!005fconfig" UESCAPE '!' ('role', 'web_admin', false)`,
	`select pg_catalog."set_config"('ro' || 'le', 'web_admin', false)`,
	"select set_config('ro'\n'le', 'web_admin', false)",
	"select set_config('ro' -- x\n'le', 'web_admin', false)",
	`select set_config(E'\x72ole', 'web_admin', false)`,
	`select set_config(E'ro\le', 'web_admin', false)`,
	`select set_config(U&'\0072ole', 'web_admin', false)`,
	`select set_config(U&'!0072ole' UESCAPE '!', 'web_admin', false)`,
	`select set_config($$role$$, 'web_admin', false)`,
	`select set_config($x$role$x$, 'web_admin', false)`,
	`select set_config(N'role', 'web_admin', false)`,
	"select set_config('session_authorization', 'web_admin', false)",
	"select set_config('jwt.claims.sub', '1', false)",
	"select set_config('jwt.claims.sub', '1', true)",
	"select set_config('JWT.Claims.Role', 'admin', true)",
	"select set_config('request.jwt.claims', '{}', true)",
	"select set_config('client_encoding', 'sjis', false)",
	"select set_config('standard_conforming_strings', 'off', false)",
	"select set_config(current_setting('x.name'), 'web_admin', false)",
	"select set_config(setting_name => 'role', new_value => 'web_admin', is_local => false)",
	"select set_config(('role'), 'web_admin', false)",
	"select set_config('role'::text, 'web_admin', false)",
	"select set_config(text 'role', 'web_admin', false)",
	"select set_config(name, value, false) from settings",
	"select * from set_config('role', 'web_admin', false)",
	"prepare p as select set_config($1, $2, false)",
	"declare c cursor for select set_config('role', 'web_admin', false)",
	"create view v as select set_config('role', 'web_admin', false)",
	// 4: RESET ALL and DISCARD ALL
	"RESET ALL",
	"DISCARD ALL",
	"discard all; discard temp",
	"select 1; RESET ALL",
	// 5: DO blocks
	"DO $$BEGIN PERFORM 1; END$$",
	"do language plpgsql 'begin end'",
	// 6: encodings and standard_conforming_strings
	"SET client_encoding = 'SJIS'",
	"SET client_encoding TO sjis",
	`SET client_encoding TO "Shift_JIS"`,
	"SET NAMES 'big5'",
	"SET LOCAL client_encoding = 'GBK'",
	"set names 'UHC'",
	"set client_encoding = 'gb-18030'",
	"set client_encoding = 'JOHAB'",
	"set client_encoding = 'win932'",
	"set client_encoding = 'WIN936'",
	"set client_encoding = 'Win949'",
	"set client_encoding = 'win950'",
	"set client_encoding = 'windows-932'",
	"set client_encoding = 'mskanji'",
	"set client_encoding = $$sjis$$",
	`set client_encoding = E'\x73jis'`,
	"SET standard_conforming_strings = off",
	"SET standard_conforming_strings TO 'off'",
	"SET LOCAL standard_conforming_strings = false",
	"set standard_conforming_strings = no",
	"set standard_conforming_strings = 0",
	`set standard_conforming_strings = "OFF"`,
	"set standard_conforming_strings = 'f'",
	// 7: CREATE and ALTER
	"CREATE FUNCTION f() RETURNS int LANGUAGE sql SET role = web_admin AS 'select 1'",
	"CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY INVOKER SET role TO web_admin RETURN 1",
	"CREATE OR REPLACE PROCEDURE p() LANGUAGE sql SET jwt.claims.sub = '1' AS 'select 1'",
	"ALTER FUNCTION f() SET role TO web_admin",
	"ALTER FUNCTION f() SET ROLE web_admin",
	"ALTER FUNCTION f(int) RESET role",
	"ALTER FUNCTION update() SET role TO web_admin",
	"ALTER FUNCTION f(update t) SET role TO web_admin",
	"ALTER ROUTINE r SET session_authorization = web_admin",
	"ALTER ROLE r SET jwt.claims.sub = '1'",
	"ALTER ROLE r SET role = web_admin",
	"ALTER ROLE r IN DATABASE d SET role = web_admin",
	"ALTER ROLE ALL SET request.jwt.claims = '{}'",
	"ALTER DATABASE d RESET role",
	"ALTER DATABASE d SET standard_conforming_strings = off",
	"ALTER DATABASE d SET client_encoding = 'sjis'",
	"ALTER SYSTEM SET role = web_admin",
	"create function f() returns int language sql begin atomic set role web_admin; end",
	"create function f() returns int language sql begin atomic select 1; set local role web_admin; end",
	// 8: SET hidden in segments the splitter does not cut
	"select (1; set role web_admin)",
	"CREATE RULE r AS ON INSERT TO t DO INSTEAD (SELECT 1; SET ROLE web_admin)",
	"select (1; reset all)",
	"select (1; discard all)",
	"select (1; set client_encoding = sjis)",
	// 9: function and procedure bodies
	"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM set_config('role', 'web_admin', false); END $$",
	"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET ROLE web_admin; END $$",
	"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET LOCAL ROLE web_admin; END $$",
	"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN RESET ROLE; END $$",
	"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'SET ROLE web_admin'; END $$",
	"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'set ' || 'role web_admin'; END $$",
	"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE format('SET %I = %L', 'role', 'x'); END $$",
	`CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE E'\x53ET ROLE web_admin'; END $$`,
	`CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET "ROLE" = web_admin; END $$`,
	`CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM U&"set\005fconfig"('role', 'x', false); END $$`,
	"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET SESSION AUTHORIZATION DEFAULT; END $$",
	"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET jwt.claims.sub = '1'; END $$",
	"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET jwt . claims . sub = '1'; END $$",
	"CREATE FUNCTION f() RETURNS text LANGUAGE sql AS 'select current_setting(''jwt.claims.sub'')'",
	"CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'select set_config(''role'', ''x'', false)'",
	"CREATE PROCEDURE p() LANGUAGE plpythonu AS $$plpy.execute(\"SET ROLE web_admin\")$$",
	"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS /* c */ -- c\n E'BEGIN SET ROLE web_admin; END'",
	"CREATE FUNCTION f() RETURNS void AS U&'BEGIN S\\0045T ROLE web_admin; END' LANGUAGE plpgsql",
	"CREATE FUNCTION f() RETURNS void AS 'BEGIN SET ROLE web_admin; ' -- c\n 'END' LANGUAGE plpgsql",
	"CREATE PROCEDURE p() LANGUAGE plpythonu AS $$x = 1 --1; plpy.execute('set role web_admin')$$",
	"CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ update users set role = 'x'; set role web_admin $$",
	`CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS E'\xff BEGIN SET ROLE web_admin; END'`,
	`CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE E'\xff SET ROLE web_admin'; END $$`,
	// 10: functions that run SQL text
	"select query_to_xml('select set_config(''role'', ''x'', false)', true, true, '')",
	"select query_to_xml('select ' || 'set_config(''role'', ''x'', false)', true, true, '')",
	"select pg_catalog.query_to_xmlschema($$select set_config('role', 'x', false)$$, true, true, '')",
	"select ts_stat('select to_tsvector(set_config(''role'', ''x'', false))')",
	"select ts_rewrite('a'::tsquery, 'select ' || 'x')",
	"select * from crosstab('select set_config(''role'', ''x'', false), 1, 2') as t(a text, b int)",
	"select * from crosstab('select 1, 2, 3', q) as t(a int, b int)",
	"select * from connectby('t', 'id', 'parent', set_config('role', 'x', false), 0) as t(a int)",
	"select * from connectby('t', 'set_config(''role'', ''x'', false)', 'parent', '1', 0) as t(a int)",
	// unterminated or NUL
	"select 'abc",
	"select 1 /* abc",
	"select 1; set role x\x00",
}

// guardAllow lists statements the guard must let through.
var guardAllow = []string{
	// DISCARD TEMP, SEQUENCES and PLANS leave the identity alone.
	"discard plans",
	"DISCARD TEMP",
	"discard sequences; select 1",
	"SELECT 1",
	"UPDATE users SET role = 'x'",
	"update users set role = 'x', sub = '2' where id = 1",
	`UPDATE t SET "role" = 1, sub = 2`,
	"UPDATE ONLY public.users AS u SET role = 'x'",
	"UPDATE users u SET role = 'x'",
	"INSERT INTO users (id, role) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET role = excluded.role",
	"MERGE INTO users u USING (SELECT 1 AS id) s ON u.id = s.id WHEN MATCHED THEN UPDATE SET role = 'x'",
	"WITH x AS (UPDATE users SET role = 'x' RETURNING *) SELECT * FROM x",
	"select 'set role x'",
	"select $$set role x$$",
	"select 1 as role",
	"/* set role */ select 1",
	"-- set role x\nselect 1",
	"select role from users",
	"select set_config from t",
	"SET search_path = a, b",
	"SET statement_timeout = '5s'",
	"SET LOCAL statement_timeout = 0",
	"SET TIME ZONE 'UTC'",
	"SHOW role",
	"SHOW session_authorization",
	"select current_setting('jwt.claims.sub')",
	"select current_setting('request.jwt.claims', true)::json->>'sub'",
	"select set_config('myapp.x', 'y', true)",
	"select set_config('search_path', 'x', false)",
	"select set_config(E'myapp.x', 'y', true), set_config($$myapp.y$$, 'z', true)",
	"SET myapp.role = 'x'",
	"SET jwt.claimsx = 1",
	"SET jwtxclaims.sub = 1",
	"SET jwt = 1",
	"CREATE TABLE t (role text)",
	"CREATE TEMP TABLE t (role text, sub text)",
	"COMMENT ON COLUMN t.role IS 'set role'",
	"ALTER TABLE t ALTER COLUMN role SET DEFAULT 'x'",
	"ALTER TABLE users ALTER COLUMN role SET NOT NULL",
	"ALTER TABLE t SET SCHEMA s",
	"ALTER TABLE t RESET (fillfactor)",
	"ALTER FUNCTION f() RESET ALL",
	"ALTER FUNCTION f() SET search_path = public",
	"ALTER ROLE r SET statement_timeout = '1s'",
	"SET client_encoding = 'UTF8'",
	"SET NAMES 'LATIN1'",
	"SET client_encoding TO DEFAULT",
	"SET standard_conforming_strings = on",
	"SET standard_conforming_strings TO 'true'",
	"SET standard_conforming_strings = DEFAULT",
	"RESET standard_conforming_strings",
	"RESET client_encoding",
	"RESET search_path",
	"select 'reset all', 'discard all'",
	"CREATE RULE r AS ON UPDATE TO users DO INSTEAD UPDATE other SET role = NEW.role",
	"CREATE RULE r AS ON UPDATE TO users DO ALSO (UPDATE a SET role = 1; UPDATE b SET role = 2)",
	"CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC UPDATE users SET role = 'x'; END",
	"CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ update users set role = 'x' where id = 1 $$",
	"CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.role := 'user'; RETURN NEW; END $$",
	"CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN SET LOCAL statement_timeout = 0; END $$",
	"CREATE FUNCTION f(x int) RETURNS int LANGUAGE sql IMMUTABLE RETURN x + 1",
	"CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC INSERT INTO log VALUES ('set role x'); END",
	"CREATE FUNCTION f(a text DEFAULT 'set role x') RETURNS text LANGUAGE sql RETURN a",
	"CREATE FUNCTION f() RETURNS int LANGUAGE 'sql' /* c */ AS /* c */ 'select 1'",
	"CREATE POLICY p ON users USING (sub = current_setting('jwt.claims.sub'))",
	"select query_to_xml('select 1', true, true, '')",
	"select ts_rewrite('a'::tsquery, 'b'::tsquery, 'c'::tsquery)",
	"select * from crosstab('select 1, 2, 3', 2) as t(a int, b int)",
	"select * from connectby('t', 'id', 'parent', '1', 0, '~') as t(a int, b int, c int, d text)",
	"DO $$BEGIN END$$", // allowed only with AllowDo; see TestGuardDo
	"select 'a'\n'b'",
	"select E'\\'; set role x; --'",
	"select 'a\\'; select 'set role x; --'",
	"select $a$ $b$ set role x $b$ $a$",
	"select \"set role x\" from t",
	"select $1",
	"select a$b from t",
	"begin; select 1; commit",
	"PREPARE q AS UPDATE users SET role = $1",
	"EXPLAIN UPDATE users SET role = 'x'",
}

func TestGuardDeny(t *testing.T) {
	for _, q := range guardDeny {
		if v := check(&testPolicy, q); v == nil {
			t.Errorf("allowed, want denied: %q", q)
		} else if v.Reason == "" {
			t.Errorf("empty reason for %q", q)
		}
	}
}

func TestGuardAllow(t *testing.T) {
	p := testPolicy
	p.AllowDo = true
	for _, q := range guardAllow {
		if v := check(&p, q); v != nil {
			t.Errorf("denied %q: %s", q, v.Reason)
		}
	}
}

func TestGuardDo(t *testing.T) {
	deny := Policy{}
	allow := Policy{AllowDo: true}
	if check(&deny, "DO $$BEGIN END$$") == nil {
		t.Error("DO allowed without AllowDo")
	}
	if v := check(&allow, "DO $$BEGIN END$$"); v != nil {
		t.Errorf("DO denied with AllowDo: %s", v.Reason)
	}
	for _, q := range []string{
		"DO $$BEGIN SET ROLE web_admin; END$$",
		"DO $$BEGIN PERFORM set_config('jwt.claims.sub', '1', true); END$$",
		"DO LANGUAGE plpgsql 'BEGIN EXECUTE ''RESET ROLE''; END'",
	} {
		if check(&allow, q) == nil {
			t.Errorf("allowed with AllowDo: %q", q)
		}
	}
}

func TestGuardReasons(t *testing.T) {
	tests := []struct{ in, want string }{
		{"select 1; SET ROLE x", reasonRole},
		{"SET SESSION AUTHORIZATION DEFAULT", reasonSessionAuth},
		{"RESET ALL", reasonResetAll},
		{"DISCARD ALL", reasonDiscard},
		{"DO 'x'", reasonDo},
		{"select set_config(x, 'y', false)", reasonSetConfigArg},
		{"SET jwt.claims.sub = 1", "changing jwt.claims.sub is not allowed through pgtoken: claims come from the token"},
		{"select set_config('role', 'y', false)", "set_config('role', ...) is not allowed through pgtoken: the role comes from the token"},
	}
	for _, tt := range tests {
		v := check(&testPolicy, tt.in)
		if v == nil || v.Reason != tt.want {
			t.Errorf("Check(%q) = %v, want %q", tt.in, v, tt.want)
		}
	}
	v := check(&testPolicy, "select 1; select 2; set role x; set role y")
	if v == nil || v.Stmt != 2 {
		t.Errorf("Check: %+v, want statement 2", v)
	}
}

func TestGuardPolicy(t *testing.T) {
	var nilPolicy *Policy
	if check(nilPolicy, "SET ROLE x") == nil || check(nilPolicy, "SET jwt.claims.sub = 1") != nil {
		t.Error("nil policy: want role protected and no claims")
	}
	p := Policy{ClaimsPrefix: "App.Claims."}
	if check(&p, "SET app.claims.sub = 1") == nil || check(&p, "SET app.claimsx = 1") != nil {
		t.Error("prefix with a trailing dot")
	}
}

func TestCorpus(t *testing.T) {
	path := filepath.Join("..", "..", "testdata", "guard", "corpus.txt")
	entries, err := guardcorpus.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var deny, allow int
	for _, e := range entries {
		v := check(&testPolicy, e.SQL)
		switch {
		case e.Deny && v == nil:
			t.Errorf("corpus.txt:%d: allowed, want denied: %q", e.Line, e.SQL)
		case !e.Deny && v != nil:
			t.Errorf("corpus.txt:%d: denied (%s), want allowed: %q", e.Line, v.Reason, e.SQL)
		}
		if e.Deny {
			deny++
		} else {
			allow++
		}
	}
	if deny < 30 || allow < 30 {
		t.Errorf("corpus has %d deny and %d allow entries, want at least 30 each", deny, allow)
	}
}

func TestLoadCorpusFormat(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.txt")
	src := "# comment\n\ndeny: SET ROLE x{SP}\n|  -- two spaces\n|\n| {TAB}y\\n\nallow: select 1\n"
	if err := writeFile(path, src); err != nil {
		t.Fatal(err)
	}
	got, err := guardcorpus.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []guardcorpus.Entry{{SQL: "SET ROLE x \n -- two spaces\n\n\ty\\n", Deny: true, Line: 3}, {SQL: "select 1", Line: 7}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("LoadCorpus = %+v, want %+v", got, want)
	}
	for _, bad := range []string{"| x\n", "select 1\n", "deny:\n"} {
		if err := writeFile(path, bad); err != nil {
			t.Fatal(err)
		}
		if _, err := guardcorpus.Load(path); err == nil || !strings.Contains(err.Error(), "c.txt:1") {
			t.Errorf("guardcorpus.Load(%q): err = %v", bad, err)
		}
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o644) }

// TestLinearTime runs hostile inputs of about 1 MB; anything quadratic
// would take minutes.
func TestLinearTime(t *testing.T) {
	const n = 1 << 20
	rep := func(s string) string { return strings.Repeat(s, n/len(s)) }
	inputs := map[string]string{
		"nested set_config":   "select " + rep("set_config("),
		"nested query_to_xml": "select " + rep("query_to_xml("),
		"nested ts_rewrite":   "select " + rep("ts_rewrite("),
		"nested connectby":    "select " + rep("connectby(1,"),
		"long dotted name":    "SET a" + rep(".a") + " = 1",
		"many SETs":           "ALTER ROLE r " + rep("SET a.b = 1 "),
		"update sets":         "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$" + rep("update t set role = 1;") + "$$",
		"set words":           "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$" + rep("set ") + "$$",
		"comments":            rep("/*"),
		"continuations":       "select " + rep("'a'\n"),
		"dollar signs":        "select " + rep("$a"),
		"unicode names":       "select " + rep(`U&"x" UESCAPE '!' (`),
		"parens":              "select " + rep("("),
		"begin atomic":        "create function f() begin atomic " + rep("case "),
		"nested literals":     "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$" + rep("'''") + "$$",
		"semicolons":          rep(";"),
	}
	for name, q := range inputs {
		start := time.Now()
		testPolicy.Check(q, Split(q, nil))
		if d := time.Since(start); d > raceSlowdown*3*time.Second {
			t.Errorf("%s: %v for %d bytes", name, d, len(q))
		}
	}
}
