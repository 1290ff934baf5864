package sqlscan

import (
	"context"
	"fmt"
	"github.com/pgtoken/pgtoken/internal/guardcorpus"
	"math/rand"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// These tests compare the lexer with a real PostgreSQL server. They start a
// throwaway cluster (initdb, pg_ctl) listening on a unix socket only. As
// root they run the server as the "postgres" OS user with runuser.

type testServer struct {
	dir  string // data directory's parent, also the socket directory
	port int
}

func (s *testServer) connect(t *testing.T, role string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%d user=%s dbname=postgres sslmode=disable", s.dir, s.port, role))
	if err != nil {
		t.Fatalf("connect as %s: %v", role, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func startServer(t *testing.T) *testServer {
	t.Helper()
	if _, err := exec.LookPath("initdb"); err != nil {
		t.Skip("initdb is not on PATH: skipping the comparison with a real PostgreSQL server")
	}
	if testing.Short() {
		t.Skip("-short: skipping the comparison with a real PostgreSQL server")
	}
	var prefix []string
	dir, err := os.MkdirTemp("", "sqlscan-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		// The server refuses to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skip("running as root and there is no postgres user to run the server as")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		prefix = []string{"runuser", "-u", "postgres", "--"}
	}
	run := func(args ...string) error {
		args = append(append([]string(nil), prefix...), args...)
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	data := filepath.Join(dir, "data")
	if err := run("initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "-N"); err != nil {
		t.Fatal(err)
	}
	base := 56000 + os.Getpid()%900
	for i := 0; i < 20; i++ {
		port := base + i*7%100
		opts := fmt.Sprintf("-p %d -k %s -c listen_addresses='' -c fsync=off", port, dir)
		err := run("pg_ctl", "-D", data, "-o", opts, "-l", filepath.Join(dir, "log"), "-w", "-t", "30", "start")
		if err == nil {
			t.Cleanup(func() {
				if err := run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"); err != nil {
					t.Log(err)
				}
			})
			return &testServer{dir: dir, port: port}
		}
		t.Logf("port %d: %v", port, err)
	}
	t.Fatal("could not start a server")
	return nil
}

// execCount runs q as one Query and returns the number of CommandComplete
// messages and the first error.
func execCount(c *pgconn.PgConn, q string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mrr := c.Exec(ctx, q)
	n := 0
	var first error
	for mrr.NextResult() {
		tag, err := mrr.ResultReader().Close()
		switch {
		case err != nil:
			if first == nil {
				first = err
			}
		case tag.String() != "": // not an EmptyQueryResponse
			n++
		}
	}
	if err := mrr.Close(); err != nil && first == nil {
		first = err
	}
	return n, first
}

// queryRows runs q and returns the rows of its last result as text.
func queryRows(c *pgconn.PgConn, q string) ([][]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	results, err := c.Exec(ctx, q).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(results) == 0 {
		return nil, nil
	}
	r := results[len(results)-1]
	if r.Err != nil {
		return nil, r.Err
	}
	var rows [][]string
	for _, row := range r.Rows {
		var vals []string
		for _, v := range row {
			vals = append(vals, string(v))
		}
		rows = append(rows, vals)
	}
	return rows, nil
}

// fragments are statements that run without error, one after the other
// in any order, each exercising some lexical construct.
var fragments = []string{
	"select 1",
	"select 'a;b'",
	"select 'it''s;'",
	`select E'\';'`,
	`select e'a\\'`,
	`select E'\x41;\101\u0041'`,
	`select 'a\'`,
	"select $$;$$",
	"select $a$ $b$ ; $b$ $a$",
	"select $a$x$ba$;$a$",
	"select 'a'\n'b;'",
	"select 'a' -- c;\n'b'",
	"select 'a'\r\n  \n'b;'",
	"select 1 /* ; /* ; */ ; */",
	"select 1 /*/ ; */",
	"-- only a comment ;\nselect 2",
	"select 2 -- ;\n",
	`select U&'\0041;'`,
	`select U&'!0041;' UESCAPE '!'`,
	`select U&'!0041;' /* c */ UESCAPE -- c;` + "\n" + `'!'`,
	`select 1 as U&"a;b"`,
	`select 1 as "a"";b"`,
	"select B'0101', X'1F'",
	"select N'x;'",
	"select 1 as a$b",
	"select (1)",
	"values (1), (2)",
	"select 1e1, .5, 1.5e-3, 1::int, (array[1,2])[1]",
	"select 1 <> 2, 2 >= 1, 1 != 2, 3 *-1, -1 --;\n",
	"select 1 +/* ; */ 2",
	"select 1 -/* ; */- 2",
	"select ''''",
	"select (select 1 where ';' = ';')",
	"create or replace function pg_temp.sqlscan_f() returns int language sql begin atomic select 1; select case when true then 2 end; end",
	"create or replace function pg_temp.sqlscan_g(x int) returns int language sql begin atomic select case x when 1 then case when true then 1 end else 2 end; select (case when x > 0 then 1 end); end",
	"create or replace function pg_temp.sqlscan_h(x int) returns int language sql return x + 1",
	"create or replace function pg_temp.sqlscan_j() returns int language sql begin atomic select begin atomic from (select 1 as begin) t; end",
	"create or replace function pg_temp.sqlscan_i() returns int language sql as $$ select 1; select 2 $$",
	"CREATE OR REPLACE PROCEDURE pg_temp.sqlscan_p() LANGUAGE sql BEGIN ATOMIC INSERT INTO sqlscan_t VALUES (1); DELETE FROM sqlscan_t; END",
	"create or replace rule sqlscan_r as on update to sqlscan_t do instead (select 1; select 2)",
	"set local statement_timeout = 0",
	"SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
	"select set_config('sqlscan.x', 'y;', true)",
	"show timezone",
}

var separators = []string{";", "; ", ";\n", " ;; ", "; /* ; */ ;", ";\n-- ;\n", ";;;", "\n;\t"}

func TestServer(t *testing.T) {
	srv := startServer(t)
	admin := srv.connect(t, "postgres")
	setup := `
		CREATE ROLE sqlscan_app LOGIN NOINHERIT;
		CREATE ROLE web_user NOLOGIN;
		CREATE ROLE web_admin NOLOGIN;
		GRANT web_user, web_admin TO sqlscan_app;
		CREATE TABLE users (id int, role text, sub text);
		GRANT ALL ON users TO web_user;`
	if _, err := execCount(admin, setup); err != nil {
		t.Fatal(err)
	}
	t.Run("StatementCount", func(t *testing.T) { testStatementCount(t, srv) })
	t.Run("Unterminated", func(t *testing.T) { testUnterminated(t, admin) })
	t.Run("Values", func(t *testing.T) { testValues(t, admin) })
	t.Run("GeneratedLiterals", func(t *testing.T) { testGeneratedLiterals(t, admin) })
	t.Run("SettingNames", func(t *testing.T) { testSettingNames(t, admin) })
	t.Run("Corpus", func(t *testing.T) { testCorpusOnServer(t, srv) })
}

// testStatementCount checks that a Query of generated statements produces
// one CommandComplete per statement Split finds.
func testStatementCount(t *testing.T, srv *testServer) {
	c := srv.connect(t, "postgres")
	if _, err := execCount(c, "create temp table sqlscan_t (a int)"); err != nil {
		t.Fatal(err)
	}
	for _, f := range fragments {
		if got := len(Split(f, nil)); got != 1 {
			t.Errorf("Split(%q): %d statements, want 1", f, got)
		}
	}
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 400; i++ {
		var b strings.Builder
		n := 1 + rng.Intn(6)
		if rng.Intn(4) == 0 {
			b.WriteString(separators[rng.Intn(len(separators))])
		}
		for j := 0; j < n; j++ {
			if j > 0 {
				b.WriteString(separators[rng.Intn(len(separators))])
			}
			b.WriteString(fragments[rng.Intn(len(fragments))])
		}
		if rng.Intn(2) == 0 {
			b.WriteString(separators[rng.Intn(len(separators))])
		}
		q := b.String()
		got, err := execCount(c, q)
		if err != nil {
			t.Errorf("server error for %q: %v", q, err)
			continue
		}
		if want := len(Split(q, nil)); got != want {
			t.Errorf("%q: server sent %d CommandComplete, Split found %d statements", q, got, want)
		}
	}
	// Only whitespace and comments: no statement at all.
	for _, q := range []string{";", " ; ;; ", "/* x */ ; -- y"} {
		if got, err := execCount(c, q); err != nil || got != 0 || len(Split(q, nil)) != 0 {
			t.Errorf("%q: server %d (%v), Split %d", q, got, err, len(Split(q, nil)))
		}
	}
}

// testUnterminated checks that the server refuses what Split flags.
func testUnterminated(t *testing.T, c *pgconn.PgConn) {
	for _, q := range []string{
		"select 1; select 'abc",
		"select 1; select \"abc",
		"select 1; select $$abc",
		"select 1; select $a$abc$b$",
		`select 1; select E'abc\'`,
		"select 1; select U&'abc",
		"select 1; select B'01",
		"select 1; select 2 /* abc",
		"select 1; /* a /* b */",
		"select 1; select 'a'\n'b",
	} {
		sts := Split(q, nil)
		if len(sts) == 0 || sts[len(sts)-1].Flags&FlagUnterminated == 0 {
			t.Errorf("Split(%q) did not flag it unterminated", q)
		}
		if n, err := execCount(c, q); err == nil || n != 0 {
			t.Errorf("server ran %d statements of %q (err %v)", n, q, err)
		}
	}
}

// testValues compares decoded string constants and identifiers with the
// server's.
func testValues(t *testing.T, c *pgconn.PgConn) {
	lits := []string{
		"'abc'", "'a''b'", `'a\n'`, "N'x'", "'ro'\n'le'", "'ro' -- c\n  'le'", "'a'\n'b'\n\n'c'",
		`E'\''`, `E'a\nb\tc\\'`, `E'\x41\x4a\101\7'`, `E'\u0041\U00000042'`, `E'\uD83D\uDE00'`,
		`E'\q\'\"'`, "E'a'\n'\\''", `U&'\0041\+000042\\'`, `U&'!0041' UESCAPE '!'`,
		`U&'\0041' UESCAPE '!'`, `U&'\00'` + "\n" + `'41'`, `U&'\D83D\DE00'`, "$$a'b$$", "$x$ $$ $x$",
		`E'\1\12\123\1234'`, `E'\x4\x4g'`, `E'\b\f\r'`, "'é' \n 'ü'", `U&'d\0061t\+000061'`,
		`U&'#0061##' UESCAPE '#'`, `E'\xe9'`,
	}
	for _, lit := range lits {
		l := newLexer(lit, 0)
		tok := l.next()
		mine, ok := stringValue(&l, tok)
		rows, err := queryRows(c, "select "+lit)
		if err != nil {
			if ok {
				t.Errorf("%s: server error %v, decoded %q", lit, err, mine)
			}
			continue
		}
		if !ok || rows[0][0] != mine {
			t.Errorf("%s: server %q, decoded %q (ok %v)", lit, rows[0][0], mine, ok)
		}
	}
	idents := []string{
		"RoLe", `"RoLe"`, `"a""b"`, `U&"r\006Fle"`, `U&"r!006Fle" UESCAPE '!'`, `U&"set\005fconfig"`,
		"ÉA", strings.Repeat("a", 70), `"` + strings.Repeat("B", 70) + `"`, strings.Repeat("é", 40),
		`U&"\0041\+000042"`,
	}
	for _, id := range idents {
		l := newLexer(id, 0)
		tok := l.next()
		mine, ok := identValue(&l, tok)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		results, err := c.Exec(ctx, "select 1 as "+id).ReadAll()
		cancel()
		if err != nil || len(results) != 1 || results[0].Err != nil {
			if ok {
				t.Errorf("%s: server error, decoded %q", id, mine)
			}
			continue
		}
		if got := results[0].FieldDescriptions[0].Name; !ok || got != mine {
			t.Errorf("%s: server %q, decoded %q (ok %v)", id, got, mine, ok)
		}
	}
}

// testSettingNames checks that Name is the setting the server changes.
func testSettingNames(t *testing.T, c *pgconn.PgConn) {
	for _, q := range []string{
		`SET sqlscan.a = 'v'`,
		`SET "SqlScan".B = 'v'`,
		`SET sqlscan . /* c */ "c.d" TO 'v'`,
		`SET LOCAL U&"sqlscan\002ee" = 'v'`,
		`SET SESSION sqlscan.f TO 'v'`,
		`SET U&"sqlscan!002eg" UESCAPE '!' = 'v'`,
		`SET sqlscan.h=-1`,
	} {
		sts := Split(q, nil)
		if len(sts) != 1 || sts[0].Name == "" {
			t.Errorf("Split(%q) = %+v", q, sts)
			continue
		}
		want := strings.Trim(sts[0].Value, "'")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		results, err := c.Exec(ctx, fmt.Sprintf("begin; %s; select current_setting('%s'); rollback", q, sts[0].Name)).ReadAll()
		cancel()
		if err != nil || len(results) != 4 || results[2].Err != nil || len(results[2].Rows) != 1 {
			t.Errorf("%s (name %q): %v", q, sts[0].Name, err)
			continue
		}
		if got := string(results[2].Rows[0][0]); got != want {
			t.Errorf("%s (name %q): server has %q, want %q", q, sts[0].Name, got, want)
		}
	}
}

// identityQuery reads everything the corpus's deny entries may change
// (placeholder settings are not listed in pg_settings, so the claims the
// corpus uses are named).
const identityQuery = `select current_user, session_user, current_setting('jwt.claims.sub', true),
	current_setting('jwt.claims.role', true), current_setting('request.jwt.claims', true)`

// testCorpusOnServer runs each corpus entry as a token would: deny entries
// must run and change the identity, allow entries must run and not.
func testCorpusOnServer(t *testing.T, srv *testServer) {
	entries, err := guardcorpus.Load(filepath.Join("..", "..", "testdata", "guard", "corpus.txt"))
	if err != nil {
		t.Fatal(err)
	}
	prelude := `BEGIN; SET LOCAL ROLE web_user; SET LOCAL jwt.claims.sub = '42'; SET LOCAL request.jwt.claims = '{"sub":"42"}'`
	for _, e := range entries {
		c := srv.connect(t, "sqlscan_app")
		if _, err := execCount(c, prelude); err != nil {
			t.Fatal(err)
		}
		before, err := queryRows(c, identityQuery)
		if err != nil {
			t.Fatal(err)
		}
		n, err := execCount(c, e.SQL)
		if err != nil {
			t.Errorf("corpus.txt:%d: server error %v for %q", e.Line, err, e.SQL)
			c.Close(context.Background())
			continue
		}
		if want := len(Split(e.SQL, nil)); n != want {
			t.Errorf("corpus.txt:%d: server sent %d CommandComplete, Split found %d", e.Line, n, want)
		}
		after, err := queryRows(c, identityQuery)
		if err != nil {
			t.Fatal(err)
		}
		changed := fmt.Sprint(before) != fmt.Sprint(after)
		if e.Deny && !changed {
			t.Errorf("corpus.txt:%d: deny entry did not change the identity: %q", e.Line, e.SQL)
		}
		if !e.Deny && changed {
			t.Errorf("corpus.txt:%d: allow entry changed the identity %v -> %v: %q", e.Line, before, after, e.SQL)
		}
		c.Close(context.Background())
	}
}

// litGen generates random literals whose contents are full of characters
// that matter to the lexer, and the trivia between them.
type litGen struct{ rng *rand.Rand }

var litChars = []string{"a", "x", "é", ";", "'", "\"", "$", "\\", "-", "/", "*", "\n", "\t", " ", "e", "U", "&", "(", ")", "1", "--", "/*", "*/", "$$", "$a$"}

func (g litGen) pick(xs []string) string { return xs[g.rng.Intn(len(xs))] }

// content returns random raw text without the characters in bad.
func (g litGen) content(bad string) string {
	var b strings.Builder
	for n := g.rng.Intn(8); n > 0; n-- {
		c := g.pick(litChars)
		if !strings.ContainsAny(c, bad) {
			b.WriteString(c)
		}
	}
	return b.String()
}

// continuation returns whitespace that continues a string constant.
func (g litGen) continuation() string {
	return g.pick([]string{"\n", " \n ", "\r\n", "\r", " -- c'x;\n  ", "\n-- ;\n", "\t\n\f"})
}

// join joins the parts of a quoted constant, continuing it sometimes.
func (g litGen) join(open string, parts []string) string {
	var b strings.Builder
	b.WriteString(open)
	for i, p := range parts {
		if i > 0 {
			if g.rng.Intn(2) == 0 {
				b.WriteString("'" + g.continuation() + "'")
			}
		}
		b.WriteString(p)
	}
	b.WriteString("'")
	return b.String()
}

func (g litGen) literal() string {
	switch g.rng.Intn(6) {
	case 0: // standard string: '' is the only escape
		var parts []string
		for n := g.rng.Intn(4); n >= 0; n-- {
			parts = append(parts, strings.ReplaceAll(g.content(""), "'", "''"))
		}
		return g.join(g.pick([]string{"", "N", "n"})+"'", parts)
	case 1: // escape string
		var parts []string
		for n := g.rng.Intn(5); n >= 0; n-- {
			parts = append(parts, g.pick([]string{
				g.content(`\'`), "''", `\'`, `\\`, `\n`, `\t`, `\x41`, `\x4`, `\101`, `\7`, `\u00e9`, `\U0001F600`, `\;`, `\"`, `\$`, `\-`,
			}))
		}
		return g.join(g.pick([]string{"E", "e"})+"'", parts)
	case 2: // unicode string, escapes may span continued parts
		var b strings.Builder
		for n := g.rng.Intn(5); n >= 0; n-- {
			b.WriteString(g.pick([]string{g.content(`\'`), "''", `\\`, `\0041`, `\+00004A`, `\00e9`}))
		}
		raw := b.String()
		var parts []string
		for len(raw) > 0 {
			k := 1 + g.rng.Intn(len(raw))
			for k < len(raw) && raw[k-1] == '\'' && raw[k] == '\'' {
				k++
			}
			parts = append(parts, raw[:k])
			raw = raw[k:]
		}
		return g.join("U&'", parts)
	case 3: // unicode string with UESCAPE
		body := strings.ReplaceAll(g.content("!"), "'", "''") + "!0041" + g.pick([]string{"", "!!", "!+00004A"})
		return "U&'" + body + "'" + g.trivia() + "UESCAPE" + g.trivia() + "'!'"
	default: // dollar quote
		tag := g.pick([]string{"", "a", "tag", "é", "a1"})
		delim := "$" + tag + "$"
		for {
			body := g.content("")
			if strings.Index(body+delim, delim) == len(body) {
				return delim + body + delim
			}
		}
	}
}

func (g litGen) trivia() string {
	return g.pick([]string{" ", "\n", " /* ; ' \" $$ */ ", "/* a /* ; */ b */", " -- ' ;\n", "\t", "/**/", " /*/ ' */ "})
}

// testGeneratedLiterals compares statement counts and decoded values with
// the server's for queries of random literals.
func testGeneratedLiterals(t *testing.T, c *pgconn.PgConn) {
	g := litGen{rand.New(rand.NewSource(2))}
	for i := 0; i < 300; i++ {
		var q strings.Builder
		var want [][]string
		for s := g.rng.Intn(3); s >= 0; s-- {
			if q.Len() > 0 {
				q.WriteString(g.pick([]string{";", ";;", "; /* ; */ ;", ";\n"}))
			}
			q.WriteString("select")
			var vals []string
			for n := g.rng.Intn(3); n >= 0; n-- {
				if len(vals) > 0 {
					q.WriteString(g.trivia() + ",")
				}
				lit := g.literal()
				l := newLexer(lit, 0)
				v, ok := stringValue(&l, l.next())
				if !ok || l.next().kind != tEOF {
					v = "<undecodable>"
				}
				vals = append(vals, v)
				q.WriteString(g.trivia() + lit)
			}
			want = append(want, vals)
		}
		text := q.String()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		results, err := c.Exec(ctx, text).ReadAll()
		cancel()
		if err != nil {
			t.Errorf("server error for %q: %v (we decoded %q)", text, err, want)
			continue
		}
		if n := len(Split(text, nil)); n != len(results) || n != len(want) {
			t.Errorf("%q: server %d results, Split %d statements", text, len(results), n)
			continue
		}
		for si, r := range results {
			for ci, v := range r.Rows[0] {
				if string(v) != want[si][ci] {
					t.Errorf("%q: statement %d column %d: server %q, decoded %q", text, si, ci, v, want[si][ci])
				}
			}
		}
	}
}
