package compat

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// psqlArgs are the options every psql run gets: no psqlrc, stop at the
// first error, quiet (no command tags), unaligned rows with '|' between
// columns.
var psqlArgs = []string{"-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-F", "|"}

// psql runs psql with args as the token; extra is added to its environment.
func psql(t *testing.T, env *pgtest.Env, token string, extra []string, args ...string) output {
	t.Helper()
	bin := tool(t, "psql", "postgresql-client")
	return run(timeout(t, time.Minute), t.TempDir(), toolEnv(env, token, extra...), "", bin, append(append([]string{}, psqlArgs...), args...)...)
}

// psqlScript runs script (psql's own syntax, backslash commands and all)
// with psql -f as the token.
func psqlScript(t *testing.T, env *pgtest.Env, token, script string) output {
	t.Helper()
	f := filepath.Join(t.TempDir(), "script.sql")
	if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	return psql(t, env, token, nil, "-f", f)
}

// psqlMajor is the major version of the psql on PATH.
func psqlMajor(t *testing.T) int {
	t.Helper()
	bin := tool(t, "psql", "postgresql-client")
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatalf("psql --version: %v", err)
	}
	m := regexp.MustCompile(`(\d+)(?:\.\d+)?`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("psql --version: %q", out)
	}
	v, _ := strconv.Atoi(m[1])
	return v
}

// wantLines fails t unless out's stdout is exactly want, line by line.
func wantLines(t *testing.T, out output, want ...string) {
	t.Helper()
	if out.err != nil {
		t.Fatalf("psql: %s", out)
	}
	if got := pgtest.Lines(out.stdout); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("psql printed\n%s\nwant\n%s\n(stderr: %s)", strings.Join(got, "\n"), strings.Join(want, "\n"), out.stderr)
	}
}

// TestPsqlCommands: -c, several -c (each its own transaction), a script
// with a transaction, and row-level security as the token's sub.
func TestPsqlCommands(t *testing.T) {
	env := pgtest.Start(t, nil)
	alice := pgtest.UserToken(t, "alice")
	// As in a busy pool: both server connections open, last used by
	// other clients (psql sends application_name, which they lack).
	holdOther(t, env, noPID)()
	wantLines(t, psql(t, env, alice, nil, "-c", identSQL), "web_user|alice")
	wantLines(t, psql(t, env, alice, nil,
		"-c", identSQL,
		"-c", "select count(*), bool_and(owner = 'alice') from api.todos",
		"-c", "begin; select 'in' as x; commit; "+identSQL),
		"web_user|alice", "3|t", "in", "web_user|alice")
	script := filepath.Join(t.TempDir(), "tx.sql")
	if err := os.WriteFile(script, []byte(`begin;
insert into api.todos (title) values ('psql todo') returning owner;
savepoint s;
select 1/0;
`), 0o644); err != nil {
		t.Fatal(err)
	}
	// ON_ERROR_STOP: psql leaves at the error; the transaction is rolled
	// back when it disconnects.
	out := psql(t, env, alice, nil, "-f", script)
	if out.err == nil || !strings.Contains(out.stderr, "division by zero") {
		t.Fatalf("want a division by zero: %s", out)
	}
	wantLines(t, psql(t, env, alice, nil, "-c", "select count(*) from api.todos where title = 'psql todo'"), "0")
	bob := pgtest.Token(t, map[string]any{"role": "web_admin", "sub": "bob"})
	wantLines(t, psql(t, env, bob, nil, "-c", identSQL+", (select count(*) from api.todos)"), "web_admin|bob|9")
}

// TestPsqlCopy: \copy out of a table under row-level security and into
// api.notes (owner defaults to the sub claim), COPY FROM STDIN with inline
// data in a script, \copy to stdout, and Postgres's own refusal of COPY
// FROM into a table with row-level security.
func TestPsqlCopy(t *testing.T) {
	env := pgtest.Start(t, nil)
	dir := t.TempDir()
	var in strings.Builder
	for i := range 100 {
		fmt.Fprintf(&in, "\"line %d, with a comma\"\n", i)
	}
	if err := os.WriteFile(filepath.Join(dir, "in.csv"), []byte(in.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "copy.sql")
	if err := os.WriteFile(script, []byte(fmt.Sprintf(`\copy (select owner, title from api.todos order by id) to '%[1]s/todos.csv' with (format csv)
\copy api.notes (body) from '%[1]s/in.csv' with (format csv)
copy api.notes (body) from stdin;
inline one
inline two
\.
\copy (select owner, count(*) from api.notes group by owner) to stdout
`, dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	alice := pgtest.UserToken(t, "alice")
	wantLines(t, psql(t, env, alice, nil, "-f", script), "alice\t102")
	todos, err := os.ReadFile(filepath.Join(dir, "todos.csv"))
	if err != nil {
		t.Fatal(err)
	}
	lines := pgtest.Lines(string(todos))
	if len(lines) != 3 {
		t.Fatalf("\\copy out of api.todos: %d lines, want alice's 3:\n%s", len(lines), todos)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "alice,") {
			t.Errorf("\\copy out of api.todos gave another's row: %q", l)
		}
	}
	got := env.Superuser("select count(*), count(*) filter (where body like 'line %, with a comma') from api.notes where owner = 'alice'")
	if got[0][0] != "102" || got[0][1] != "100" {
		t.Fatalf("alice's notes: %v, want 102 of which 100 from in.csv", got)
	}

	// Postgres refuses COPY FROM into a table with row-level security; the
	// session goes on.
	if err := os.WriteFile(filepath.Join(dir, "todo.csv"), []byte("nope\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := psql(t, env, alice, []string{}, "-v", "ON_ERROR_STOP=0",
		"-c", fmt.Sprintf(`\copy api.todos (title) from '%s/todo.csv'`, dir),
		"-c", identSQL)
	if !strings.Contains(out.stderr, "COPY FROM not supported with row-level security") {
		t.Errorf("\\copy into api.todos: %s", out)
	}
	if got := pgtest.Lines(out.stdout); len(got) != 1 || got[0] != "web_user|alice" {
		t.Errorf("after the refused copy: %s", out)
	}
}

// TestPsqlBind: psql's \bind (psql 16 and later) runs a query through the
// extended protocol with parameters (libpq's PQsendQueryParams). An older
// psql lacks \bind; the same libpq call is then exercised by pgbench -M
// extended with a script that fails on a wrong identity or parameter.
func TestPsqlBind(t *testing.T) {
	env := pgtest.Start(t, nil)
	alice := pgtest.UserToken(t, "alice")
	if psqlMajor(t) >= 16 {
		wantLines(t, psqlScript(t, env, alice, `select $1::text, $2::int + 1, current_user, current_setting('jwt.claims.sub') \bind hello 41 \g
begin;
select $1::text, current_user, current_setting('jwt.claims.sub') \bind in-tx \g
commit;
begin \bind \g
select $1::text, current_user, current_setting('jwt.claims.sub') \bind after-bound-begin \g
commit \bind \g
`), "hello|42|web_user|alice", "in-tx|web_user|alice", "after-bound-begin|web_user|alice")
		return
	}
	t.Logf("psql %d has no \\bind (psql 16 added it): testing libpq's PQsendQueryParams through pgbench -M extended instead", psqlMajor(t))
	pgbench := tool(t, "pgbench", "pgbench (Debian: postgresql-contrib or the postgresql-NN package)")
	script := filepath.Join(t.TempDir(), "bind.sql")
	if err := os.WriteFile(script, []byte(`\set v 41
select 1 / (current_user = 'web_user' and current_setting('jwt.claims.sub') = 'alice' and :v + 1 = 42)::int;
begin;
select 1 / (current_user = 'web_user' and current_setting('jwt.claims.sub') = 'alice' and :v::text = '41')::int;
commit;
`), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := timeout(t, time.Minute)
	out := run(ctx, "", toolEnv(env, alice), "", pgbench, "-n", "-M", "extended", "-c", "3", "-t", "20", "-f", script)
	if out.err != nil || !strings.Contains(out.stdout, "actually processed: 60/60") {
		t.Fatalf("pgbench -M extended with parameters: %s", out)
	}
}

// TestPsqlGexec: \gexec runs each generated statement as its own query.
func TestPsqlGexec(t *testing.T) {
	env := pgtest.Start(t, nil)
	alice := pgtest.UserToken(t, "alice")
	wantLines(t, psqlScript(t, env, alice, `select format('select %L::text, current_user, current_setting(%L)', 'row ' || g, 'jwt.claims.sub') from generate_series(1, 3) g \gexec
select format('insert into api.notes (body) values (%L)', 'gexec ' || g) from generate_series(1, 5) g \gexec
select 'begin' union all select 'select current_user || ''/'' || current_setting(''jwt.claims.sub'')' union all select 'commit' \gexec
`), "row 1|web_user|alice", "row 2|web_user|alice", "row 3|web_user|alice", "web_user/alice")
	if got := env.Superuser("select count(*) from api.notes where owner = 'alice' and body like 'gexec %'")[0][0]; got != "5" {
		t.Errorf("\\gexec inserted %s notes owned by alice, want 5", got)
	}
}

// psqlSettingsSQL is settingsSQL on one line, for a psql script.
var psqlSettingsSQL = strings.ReplaceAll(settingsSQL, "\n", "")

// TestPsqlEnvironmentSettings: PGAPPNAME, PGTZ and PGOPTIONS (startup
// parameters) and a SET statement_timeout hold in each of psql's
// transactions, which are made to run on both server connections, and a
// client that comes next on those connections sees none of them.
func TestPsqlEnvironmentSettings(t *testing.T) {
	bin := tool(t, "psql", "postgresql-client")
	env := pgtest.Start(t, nil)
	ctx := timeout(t, time.Minute)
	baseline := func() settingsRow {
		c := connectPgx(t, env, "web_user", "baseline", nil)
		_, s, err := scanSettings(c.QueryRow(ctx, settingsSQL))
		if err != nil {
			t.Fatal(err)
		}
		s.sub = ""
		return s
	}()

	// psql writes each check's row to a file, then waits in \! until the
	// test has made the next transaction go to the other server connection.
	dir := t.TempDir()
	handshake := filepath.Join(dir, "handshake.sh")
	if err := os.WriteFile(handshake, []byte(`touch "$COMPAT_DIR/req"
i=0
while [ ! -e "$COMPAT_DIR/ack" ]; do
  sleep 0.02; i=$((i+1))
  if [ $i -ge 1500 ]; then echo "handshake timed out" >&2; exit 1; fi
done
rm -f "$COMPAT_DIR/ack"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	// Alone first, with nobody in between (the pool hands out the longest
	// idle server connection, so it goes back and forth): two
	// transactions with the startup parameters only, then with a SET too.
	// Then made to go to the other server connection each time.
	const lone, checks = 4, 4
	var script strings.Builder
	for i := range lone {
		if i == lone/2 {
			script.WriteString("set statement_timeout = '4321ms';\n")
		}
		fmt.Fprintf(&script, "%s \\g %s/lone%d\n", psqlSettingsSQL, dir, i)
	}
	for i := range checks {
		fmt.Fprintf(&script, "%s \\g %s/row%d\n\\! sh %s\n", psqlSettingsSQL, dir, i, handshake)
	}
	script.WriteString("begin;\nset local statement_timeout = '1s';\ncommit;\n")
	fmt.Fprintf(&script, "%s \\g %s/row%d\n", psqlSettingsSQL, dir, checks)
	if err := os.WriteFile(filepath.Join(dir, "settings.sql"), []byte(script.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	cmd := exec.CommandContext(ctx, bin, append(append([]string{}, psqlArgs...), "-f", filepath.Join(dir, "settings.sql"))...)
	cmd.Env = toolEnv(env, pgtest.UserToken(t, "psql-settings"),
		"PGAPPNAME=compat-psql", "PGTZ=America/New_York", `PGOPTIONS=-c work_mem=5432kB -c compat.tag=psql`, "COMPAT_DIR="+dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	holdOther(t, env, noPID)() // both server connections open and idle
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	want := settingsRow{"compat-psql", "America/New_York", "4321ms", "5432kB", "psql", "web_user", "psql-settings"}
	seen := map[string]bool{}
	release := func() {}
	// read checks the row psql wrote to file and returns the server
	// connection's pid.
	read := func(file string, want settingsRow) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatalf("%s: %v (stderr: %s)", file, err, stderr.String())
		}
		f := strings.Split(strings.TrimSpace(string(b)), "|")
		if len(f) != 8 {
			t.Fatalf("%s: %q", file, b)
		}
		if got := (settingsRow{f[1], f[2], f[3], f[4], f[5], f[6], f[7]}); got != want {
			t.Errorf("%s, on server connection %s: %+v, want %+v", file, f[0], got, want)
		}
		return f[0]
	}
	check := func(i int) {
		t.Helper()
		pid := read(fmt.Sprintf("row%d", i), want)
		seen[pid] = true
		release()
		release = holdOther(t, env, pid)
	}
	for i := 0; i < checks; {
		select {
		case err := <-exited:
			t.Fatalf("psql ended early: %v\n%s\n%s", err, stdout.String(), stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if _, err := os.Stat(filepath.Join(dir, "req")); err != nil {
			continue
		}
		if err := os.Remove(filepath.Join(dir, "req")); err != nil {
			t.Fatal(err)
		}
		check(i)
		if err := os.WriteFile(filepath.Join(dir, "ack"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		i++
	}
	if err := <-exited; err != nil {
		t.Fatalf("psql: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	check(checks) // after SET LOCAL: still 4321ms
	release()
	alone := map[string]bool{}
	for i := range lone {
		w := want
		if i < lone/2 {
			w.timeout = baseline.timeout
		}
		alone[read(fmt.Sprintf("lone%d", i), w)] = true
	}
	t.Logf("alone, psql ran on %d server connections", len(alone))
	if len(seen) != 2 {
		t.Errorf("psql's transactions ran on %d server connections, want 2", len(seen))
	}

	// The next clients, one on each server connection, see the defaults.
	nextClientsSeeDefaults(t, ctx, env, baseline, "after psql")
}

// TestPsqlCancel: Ctrl-C (SIGINT) during a long query makes psql send a
// cancel request, which pgtoken forwards: the query stops within seconds.
func TestPsqlCancel(t *testing.T) {
	bin := tool(t, "psql", "postgresql-client")
	env := pgtest.Start(t, nil)
	for round := range 2 {
		ctx := timeout(t, time.Minute)
		cmd := exec.CommandContext(ctx, bin, append(append([]string{}, psqlArgs...), "-c", "select pg_sleep(20)")...)
		cmd.Env = toolEnv(env, pgtest.UserToken(t, "alice"))
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		waitActive(t, env, "select pg_sleep(20)", exited)
		start := time.Now()
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		var err error
		select {
		case err = <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Fatalf("round %d: psql still running 5s after SIGINT\n%s", round, stderr.String())
		}
		took := time.Since(start)
		if err == nil || !strings.Contains(stderr.String(), "canceling statement due to user request") {
			t.Fatalf("round %d: after SIGINT: err=%v\n%s\n%s", round, err, stdout.String(), stderr.String())
		}
		t.Logf("round %d: cancelled in %s", round, took.Round(time.Millisecond))
		if n := env.Superuser("select count(*) from pg_stat_activity where query like '%select pg_sleep(20)' and state = 'active'")[0][0]; n != "0" {
			t.Fatalf("round %d: pg_sleep still running on %s server connections", round, n)
		}
	}
	wantLines(t, psql(t, env, pgtest.UserToken(t, "alice"), nil, "-c", identSQL), "web_user|alice")
}

// waitActive waits until a server connection runs query (after whatever
// pgtoken put in front of it).
func waitActive(t *testing.T, env *pgtest.Env, query string, exited <-chan error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if n := env.Superuser("select count(*) from pg_stat_activity where state = 'active' and query like " + sqlLiteral("%"+query))[0][0]; n != "0" {
			return
		}
		select {
		case err := <-exited:
			t.Fatalf("the client ended before its query ran: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q never started", query)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
