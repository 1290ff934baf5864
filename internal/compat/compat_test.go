package compat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/internal/testpg"
)

func TestMain(m *testing.M) { testpg.Main(m) }

// identSQL asks the server who runs this statement: the role and the sub
// claim ("<none>" when unset).
const identSQL = `select current_user::text, coalesce(nullif(current_setting('jwt.claims.sub', true), ''), '<none>')`

// who is the identity one client's statements must run as.
type who struct{ role, sub string }

func (w who) String() string { return w.role + "/" + w.sub }

// unavailable skips t because something it needs is missing, or fails it
// when the CI environment variable is set: CI must never skip silently.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if _, ci := os.LookupEnv("CI"); ci {
		t.Fatalf("compat: required in CI: %s", msg)
	}
	t.Skipf("compat: skipping: %s", msg)
}

// tool returns the path of a command on PATH; see unavailable when it is
// missing. install says how to get it.
func tool(t testing.TB, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		unavailable(t, "%s not found on PATH (install %s)", name, install)
	}
	return p
}

// timeout is a context that ends after d or with the test.
func timeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// rounds is n, or short when the tests run with -short.
func rounds(n, short int) int {
	if testing.Short() {
		return short
	}
	return n
}

// toolEnv is the environment for a libpq-based tool logging in to pgtoken
// with token as the password: the test's own without PG* variables, the
// connection settings, then extra (later entries win).
func toolEnv(env *pgtest.Env, token string, extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			out = append(out, kv)
		}
	}
	out = append(out,
		"PGHOST=127.0.0.1",
		"PGPORT="+strconv.Itoa(env.App.Port()),
		"PGUSER=anyone",
		"PGDATABASE="+env.DB,
		"PGPASSWORD="+token,
		"PGSSLMODE=disable",
		"PGCONNECT_TIMEOUT=10",
	)
	return append(out, extra...)
}

// output is what a finished command printed.
type output struct {
	stdout, stderr string
	err            error
	elapsed        time.Duration
}

func (o output) String() string {
	return fmt.Sprintf("err=%v\n--- stdout:\n%s\n--- stderr:\n%s", o.err, o.stdout, o.stderr)
}

// run runs a command in dir with env and waits for it.
func run(ctx context.Context, dir string, env []string, stdin string, name string, args ...string) output {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	return output{stdout: stdout.String(), stderr: stderr.String(), err: err, elapsed: time.Since(start)}
}

// testdata is the path of a file under testdata/compat.
func testdata(parts ...string) string {
	return filepath.Join(append([]string{pgtest.Root(), "testdata", "compat"}, parts...)...)
}

// connect logs in to pgtoken with pgconn; closed with the test.
func connect(t testing.TB, env *pgtest.Env, token string) *pgconn.PgConn {
	t.Helper()
	c, err := pgconn.Connect(timeout(t, 30*time.Second), env.DSN(token))
	if err != nil {
		t.Fatalf("connect through pgtoken: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// simple runs sql with the simple protocol and returns the first column of
// the first row of the last result that has rows.
func simple(ctx context.Context, c *pgconn.PgConn, sql string) (string, error) {
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	v := ""
	for _, r := range res {
		if len(r.Rows) > 0 && len(r.Rows[0]) > 0 {
			v = string(r.Rows[0][0])
		}
	}
	return v, nil
}

// noPID makes holdOther open both server connections and hold one.
const noPID = "none"

// holdOther makes sure the next transaction a client starts runs on a
// server connection other than pid. The pool must have exactly two
// connections: other clients keep transactions open until the only free one
// is not pid. release ends those transactions.
func holdOther(t testing.TB, env *pgtest.Env, pid string) (release func()) {
	t.Helper()
	ctx := timeout(t, 30*time.Second)
	h1 := connect(t, env, pgtest.UserToken(t, "holder-1"))
	p1, err := simple(ctx, h1, "begin; select pg_backend_pid()")
	if err != nil {
		t.Fatalf("holder: %v", err)
	}
	done := func(h *pgconn.PgConn) func() {
		return func() {
			if _, err := simple(ctx, h, "rollback"); err != nil {
				t.Errorf("holder rollback: %v", err)
			}
		}
	}
	if p1 == pid {
		return done(h1)
	}
	h2 := connect(t, env, pgtest.UserToken(t, "holder-2"))
	p2, err := simple(ctx, h2, "begin; select pg_backend_pid()")
	if err != nil {
		t.Fatalf("holder: %v", err)
	}
	if p2 != pid && pid != noPID {
		t.Fatalf("holders got server connections %s and %s, neither is %s: is the pool size 2?", p1, p2, pid)
	}
	done(h1)()
	return done(h2)
}

// tally collects unexpected errors from concurrent clients and reports each
// distinct message once, with how often it happened.
type tally struct {
	mu    sync.Mutex
	count map[string]int
	first map[string]string
}

// hexRun matches generated statement names and numbers that differ between
// otherwise equal messages.
var hexRun = regexp.MustCompile(`[0-9a-f]{12,}|\d+`)

func (ta *tally) add(where string, err error) {
	msg := err.Error()
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		msg = pe.Code + " " + pe.Message
	}
	key := hexRun.ReplaceAllString(msg, "N")
	ta.mu.Lock()
	defer ta.mu.Unlock()
	if ta.count == nil {
		ta.count, ta.first = map[string]int{}, map[string]string{}
	}
	if ta.count[key] == 0 {
		ta.first[key] = where + ": " + err.Error()
	}
	ta.count[key]++
}

// report fails t once per distinct error.
func (ta *tally) report(t testing.TB) {
	t.Helper()
	ta.mu.Lock()
	defer ta.mu.Unlock()
	keys := make([]string, 0, len(ta.count))
	for k := range ta.count {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Errorf("%d× %s", ta.count[k], ta.first[k])
	}
}

// sqlLiteral quotes s as a standard SQL string literal.
func sqlLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// runScript runs a script of testdata/compat/<lang> with clients (JSON) in
// COMPAT_CLIENTS and n (when > 0) in COMPAT_ROUNDS, and decodes the
// JSON object it prints last into result.
func runScript(t *testing.T, env *pgtest.Env, bin, lang, script string, clients any, n int, result any) {
	t.Helper()
	b, err := json.Marshal(clients)
	if err != nil {
		t.Fatal(err)
	}
	// No __pycache__ in testdata.
	extra := []string{"COMPAT_CLIENTS=" + string(b), "PYTHONDONTWRITEBYTECODE=1"}
	if n > 0 {
		extra = append(extra, "COMPAT_ROUNDS="+strconv.Itoa(n))
	}
	out := run(timeout(t, 90*time.Second), testdata(lang), toolEnv(env, "", extra...), "", bin, script)
	t.Logf("%s: %s", script, out.elapsed.Round(time.Millisecond))
	if out.err != nil {
		t.Fatalf("%s: %s", script, out)
	}
	lines := pgtest.Lines(out.stdout)
	if len(lines) == 0 {
		t.Fatalf("%s printed nothing: %s", script, out)
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), result); err != nil {
		t.Fatalf("%s: %v: %s", script, err, out)
	}
}
