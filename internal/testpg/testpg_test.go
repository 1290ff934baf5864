package testpg_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/testpg"
)

func TestMain(m *testing.M) { testpg.Main(m) }

// schemaFile is the demo schema, relative to this package.
var schemaFile = filepath.Join("..", "..", "testdata", "sql", "schema.sql")

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// connect opens a connection for the test and closes it at cleanup.
func connect(t *testing.T, ctx context.Context, dsn string) *pgconn.PgConn {
	t.Helper()
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %q: %v", dsn, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// query runs sql with the simple protocol and returns all rows as text.
func query(ctx context.Context, conn *pgconn.PgConn, sql string) ([][]string, error) {
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	var rows [][]string
	for _, r := range results {
		for _, row := range r.Rows {
			var out []string
			for _, v := range row {
				if v == nil {
					out = append(out, "<NULL>")
				} else {
					out = append(out, string(v))
				}
			}
			rows = append(rows, out)
		}
	}
	return rows, nil
}

// one runs sql and returns its single value.
func one(t *testing.T, ctx context.Context, conn *pgconn.PgConn, sql string) string {
	t.Helper()
	rows, err := query(ctx, conn, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if len(rows) != 1 || len(rows[0]) != 1 {
		t.Fatalf("%s: want one value, got %v", sql, rows)
	}
	return rows[0][0]
}

// wantSQLState fails t unless err is a PgError with the given code.
func wantSQLState(t *testing.T, what string, err error, code string) *pgconn.PgError {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("%s: want SQLSTATE %s, got %v", what, code, err)
	}
	if pgErr.Code != code {
		t.Fatalf("%s: want SQLSTATE %s, got %s: %s", what, code, pgErr.Code, pgErr.Message)
	}
	return pgErr
}

var appOnce struct {
	sync.Mutex
	done bool
	err  error
}

// appCluster returns the shared cluster with database "app" holding the demo schema.
func appCluster(t *testing.T) *testpg.Cluster {
	t.Helper()
	c := testpg.Shared(t)
	appOnce.Lock()
	defer appOnce.Unlock()
	if !appOnce.done {
		appOnce.done = true
		ctx := ctxT(t)
		appOnce.err = c.CreateDatabase(ctx, "app")
		if appOnce.err == nil {
			appOnce.err = c.ApplySQLFile(ctx, "app", schemaFile)
		}
	}
	if appOnce.err != nil {
		t.Fatalf("setting up database app: %v", appOnce.err)
	}
	return c
}

// freshDB (re)creates database name, so tests also pass with -count=N.
func freshDB(t *testing.T, ctx context.Context, c *testpg.Cluster, name string) {
	t.Helper()
	if err := c.Exec(ctx, "postgres", `DROP DATABASE IF EXISTS "`+name+`" WITH (FORCE)`); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
}

func TestAvailable(t *testing.T) {
	ok, reason := testpg.Available()
	if !ok && reason == "" {
		t.Fatal("Available: false without a reason")
	}
	if ok && reason != "" {
		t.Fatalf("Available: true with reason %q", reason)
	}
	testpg.Require(t)
}

func TestAuthenticator(t *testing.T) {
	c := appCluster(t)
	ctx := ctxT(t)
	// require_auth makes the client refuse anything but SCRAM.
	conn := connect(t, ctx, c.DSN("authenticator", "secret", "app")+" require_auth=scram-sha-256")

	if got := one(t, ctx, conn, "select current_user"); got != "authenticator" {
		t.Errorf("current_user = %q, want authenticator", got)
	}
	if got := one(t, ctx, conn, "show search_path"); got != "api, public" {
		t.Errorf("search_path = %q, want \"api, public\"", got)
	}
	rows, err := c.QueryRows(ctx, "app", "select rolpassword from pg_authid where rolname = 'authenticator'")
	if err != nil || len(rows) != 1 || !strings.HasPrefix(rows[0][0], "SCRAM-SHA-256$") {
		t.Errorf("authenticator password is not stored as SCRAM: %v %v", rows, err)
	}

	// authenticator has no privileges of its own.
	_, err = query(ctx, conn, "select count(*) from api.todos")
	wantSQLState(t, "authenticator reading api.todos", err, "42501")
	_, err = query(ctx, conn, "create table public.t (i int)")
	wantSQLState(t, "authenticator creating a table in public", err, "42501")
	_, err = query(ctx, conn, "create temp table t (i int)")
	wantSQLState(t, "authenticator creating a temp table", err, "42501")
}

func TestLoginFailures(t *testing.T) {
	c := appCluster(t)
	ctx := ctxT(t)
	for _, tc := range []struct{ name, user, password string }{
		{"wrong password", "authenticator", "wrong"},
		{"superuser over TCP", "postgres", "postgres"},
		{"token role", "web_user", "secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := pgconn.Connect(ctx, c.DSN(tc.user, tc.password, "app"))
			if err == nil {
				conn.Close(ctx)
				t.Fatalf("%s logged in over TCP", tc.user)
			}
			wantSQLState(t, "login", err, "28P01")
		})
	}
}

func TestRLS(t *testing.T) {
	c := appCluster(t)
	ctx := ctxT(t)
	conn := connect(t, ctx, c.DSN("authenticator", "secret", "app"))

	count := func(role, sub string) (string, error) {
		sql := fmt.Sprintf("SET LOCAL ROLE %s; SET LOCAL jwt.claims.sub = '%s'; select count(*) from api.todos", role, sub)
		rows, err := query(ctx, conn, sql)
		if err != nil {
			return "", err
		}
		if len(rows) != 1 {
			return "", fmt.Errorf("%d rows", len(rows))
		}
		return rows[0][0], nil
	}
	for _, tc := range []struct{ role, sub, want string }{
		{"web_user", "alice", "3"},
		{"web_user", "bob", "3"},
		{"web_user", "mallory", "0"},
		{"web_user", "", "0"},
		{"web_admin", "alice", "9"},
		{"web_anon", "alice", "0"},
	} {
		got, err := count(tc.role, tc.sub)
		if err != nil {
			t.Errorf("%s/%q: %v", tc.role, tc.sub, err)
		} else if got != tc.want {
			t.Errorf("%s/%q sees %s todos, want %s", tc.role, tc.sub, got, tc.want)
		}
	}

	// SET LOCAL ends with the implicit transaction of the query.
	if got := one(t, ctx, conn, "select current_user || '/' || coalesce(current_setting('jwt.claims.sub', true), '')"); got != "authenticator/" {
		t.Errorf("after the query, role/sub = %q, want authenticator/", got)
	}

	rows, err := query(ctx, conn, "SET LOCAL ROLE web_user; SET LOCAL jwt.claims.sub = 'bob'; select title from api.todos order by id")
	if err != nil || len(rows) != 3 {
		t.Fatalf("bob's titles: %v %v", rows, err)
	}
	for _, r := range rows {
		if !strings.HasPrefix(r[0], "bob: ") {
			t.Errorf("bob sees %q", r[0])
		}
	}

	rows, err = query(ctx, conn, "SET LOCAL ROLE web_user; SET LOCAL jwt.claims.sub = 'carol'; SET LOCAL jwt.claims.email = 'c@example.com'; "+
		"SET LOCAL request.jwt.claims = '{\"sub\":\"carol\"}'; select role, sub, claims, api.claim('email'), api.claim('nope') from api.whoami()")
	want := []string{"web_user", "carol", `{"sub":"carol"}`, "c@example.com", "<NULL>"}
	if err != nil || len(rows) != 1 || strings.Join(rows[0], "|") != strings.Join(want, "|") {
		t.Errorf("whoami = %v %v, want %v", rows, err, want)
	}

	_, err = query(ctx, conn, "SET LOCAL ROLE nopriv; select 1")
	pgErr := wantSQLState(t, "SET LOCAL ROLE nopriv", err, "42501")
	if !strings.Contains(pgErr.Message, "nopriv") {
		t.Errorf("unexpected message: %s", pgErr.Message)
	}

	// Writes: the owner defaults to sub, and web_user cannot write for others.
	rows, err = query(ctx, conn, "BEGIN; SET LOCAL ROLE web_user; SET LOCAL jwt.claims.sub = 'alice'; "+
		"insert into api.todos (title) values ('alice: new') returning owner; ROLLBACK")
	if err != nil || len(rows) != 1 || rows[0][0] != "alice" {
		t.Errorf("insert as alice: %v %v", rows, err)
	}
	_, err = query(ctx, conn, "SET LOCAL ROLE web_user; SET LOCAL jwt.claims.sub = 'alice'; insert into api.todos (owner, title) values ('bob', 'forged')")
	wantSQLState(t, "insert for another owner", err, "42501")
	_, err = query(ctx, conn, "SET LOCAL ROLE web_anon; insert into api.todos (owner, title) values ('x', 'anon')")
	wantSQLState(t, "insert as web_anon", err, "42501")
	rows, err = query(ctx, conn, "SET LOCAL ROLE web_user; SET LOCAL jwt.claims.sub = 'alice'; update api.todos set done = true where owner = 'bob' returning id")
	if err != nil || len(rows) != 0 {
		t.Errorf("alice updated bob's rows: %v %v", rows, err)
	}
	if got, err := count("web_admin", ""); err != nil || got != "9" {
		t.Errorf("after the writes, admin sees %s todos (%v), want 9", got, err)
	}
}

func TestCopyIntoNotes(t *testing.T) {
	c := appCluster(t)
	ctx := ctxT(t)
	conn := connect(t, ctx, c.DSN("authenticator", "secret", "app"))

	if _, err := query(ctx, conn, "BEGIN; SET LOCAL ROLE web_user; SET LOCAL jwt.claims.sub = 'dave'"); err != nil {
		t.Fatal(err)
	}
	tag, err := conn.CopyFrom(ctx, strings.NewReader("first\nsecond\n"), "COPY api.notes (body) FROM STDIN")
	if err != nil {
		t.Fatalf("COPY into api.notes: %v", err)
	}
	if tag.RowsAffected() != 2 {
		t.Errorf("COPY copied %d rows, want 2", tag.RowsAffected())
	}
	rows, err := query(ctx, conn, "select owner, body from api.notes order by id")
	if err != nil || len(rows) != 2 || rows[0][0] != "dave" || rows[1][1] != "second" {
		t.Errorf("notes after COPY: %v %v", rows, err)
	}
	_, err = conn.CopyFrom(ctx, strings.NewReader("dave\tx\n"), "COPY api.todos (owner, title) FROM STDIN")
	wantSQLState(t, "COPY into RLS table", err, "0A000")
	if _, err := query(ctx, conn, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
}

func TestSchemaReapply(t *testing.T) {
	c := appCluster(t)
	ctx := ctxT(t)
	if err := c.ApplySQLFile(ctx, "app", schemaFile); err != nil {
		t.Fatalf("second apply: %v", err)
	}
	freshDB(t, ctx, c, "app two")
	if err := c.ApplySQLFile(ctx, "app two", schemaFile); err != nil {
		t.Fatalf("apply to a second database: %v", err)
	}
	for _, db := range []string{"app", "app two"} {
		rows, err := c.QueryRows(ctx, db, "select count(*) from api.todos")
		if err != nil || len(rows) != 1 || rows[0][0] != "9" {
			t.Errorf("%s: todos = %v %v, want 9", db, rows, err)
		}
	}
	conn := connect(t, ctx, c.DSN("authenticator", "secret", "app two"))
	if got := one(t, ctx, conn, "SET LOCAL ROLE web_user; SET LOCAL jwt.claims.sub = 'alice'; select count(*) from api.todos"); got != "3" {
		t.Errorf("alice sees %s todos in the second database, want 3", got)
	}
}

func TestExecQueryRowsApply(t *testing.T) {
	c := testpg.Shared(t)
	ctx := ctxT(t)
	freshDB(t, ctx, c, "misc")
	if err := c.Exec(ctx, "misc", "create table t (a int, b text); insert into t values (1, 'x'), (2, null)"); err != nil {
		t.Fatal(err)
	}
	rows, err := c.QueryRows(ctx, "misc", "select a, b from t order by a; select 'z'")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(rows); got != "[[1 x] [2 ] [z]]" {
		t.Errorf("rows = %s", got)
	}
	if err := c.Exec(ctx, "misc", "select nope"); err == nil {
		t.Error("Exec of a bad statement succeeded")
	}
	if err := c.Exec(ctx, "no such db", "select 1"); err == nil {
		t.Error("Exec in a missing database succeeded")
	}

	path := filepath.Join(t.TempDir(), "bad.sql")
	if err := os.WriteFile(path, []byte("select 1;\n-- ünïcode\nselect 2;\nselect nope;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err = c.ApplySQLFile(ctx, "misc", path)
	if err == nil || !strings.Contains(err.Error(), path+":4:") {
		t.Errorf("ApplySQLFile error %v does not name %s:4", err, path)
	}
}

func TestRestartKeepsData(t *testing.T) {
	start := time.Now()
	c := testpg.New(t, testpg.Options{Settings: map[string]string{"max_connections": "57"}})
	t.Logf("Start took %v", time.Since(start))
	ctx := ctxT(t)
	if err := c.Exec(ctx, "postgres", "create table kept (v text); insert into kept values ('before restart')"); err != nil {
		t.Fatal(err)
	}
	old := connect(t, ctx, c.SuperuserDSN("postgres"))
	port := c.Port

	start = time.Now()
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("Restart took %v", time.Since(start))
	if c.Port != port {
		t.Errorf("port changed from %d to %d", port, c.Port)
	}
	if _, err := query(ctx, old, "select 1"); err == nil {
		t.Error("a connection survived the restart")
	}
	rows, err := c.QueryRows(ctx, "postgres", "select v from kept; show max_connections")
	if err != nil || fmt.Sprint(rows) != "[[before restart] [57]]" {
		t.Errorf("after restart: %v %v", rows, err)
	}
	// TCP still works after the restart.
	if err := c.Exec(ctx, "postgres", "create role u login password 'pw'"); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, ctx, c.DSN("u", "pw", "postgres"))
	if got := one(t, ctx, conn, "select current_user"); got != "u" {
		t.Errorf("current_user = %q", got)
	}
}

func TestStopOnlyResume(t *testing.T) {
	c := testpg.New(t, testpg.Options{})
	ctx := ctxT(t)
	if err := c.Exec(ctx, "postgres", "create table kept (v int); insert into kept values (42)"); err != nil {
		t.Fatal(err)
	}
	pid := postmasterPID(t, c)

	if err := c.StopOnly(); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	if err := c.Exec(ctx, "postgres", "select 1"); err == nil {
		t.Fatal("connected to a stopped server")
	}
	if _, err := net.DialTimeout("tcp", c.Addr(), time.Second); err == nil {
		t.Fatal("TCP port still open after StopOnly")
	}
	if err := c.StopOnly(); err != nil {
		t.Errorf("second StopOnly: %v", err)
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Resume(ctx); err != nil {
		t.Errorf("Resume of a running server: %v", err)
	}
	rows, err := c.QueryRows(ctx, "postgres", "select v from kept")
	if err != nil || fmt.Sprint(rows) != "[[42]]" {
		t.Errorf("after Resume: %v %v", rows, err)
	}

	pid = postmasterPID(t, c)
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	waitGone(t, pid)
	if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Dir %s still exists after Stop: %v", c.Dir, err)
	}
	if err := c.Resume(ctx); err == nil {
		t.Error("Resume after Stop succeeded")
	}
	if err := c.Restart(ctx); err == nil {
		t.Error("Restart after Stop succeeded")
	}
}

func TestSSL(t *testing.T) {
	c := testpg.New(t, testpg.Options{SSL: true})
	ctx := ctxT(t)
	if c.CertFile == "" {
		t.Fatal("no CertFile")
	}
	if err := c.Exec(ctx, "postgres", "create role u login password 'p w''\\'"); err != nil {
		t.Fatal(err)
	}
	for _, dsn := range []string{
		c.DSN("u", `p w'\`, "postgres"),
		c.DSN("u", `p w'\`, "postgres") + " sslmode=verify-full sslrootcert=" + c.CertFile,
		c.DSN("u", `p w'\`, "postgres") + " host=localhost sslmode=verify-full sslrootcert=" + c.CertFile,
	} {
		conn := connect(t, ctx, dsn)
		if got := one(t, ctx, conn, "select ssl from pg_stat_ssl where pid = pg_backend_pid()"); got != "t" {
			t.Errorf("%s: ssl = %q", dsn, got)
		}
	}
	// TCP without TLS is refused (hostssl).
	_, err := pgconn.Connect(ctx, c.DSN("u", `p w'\`, "postgres")+" sslmode=disable")
	wantSQLState(t, "plaintext TCP login", err, "28000")
}

func TestStartFailures(t *testing.T) {
	testpg.Require(t)
	ctx := ctxT(t)

	_, err := testpg.Start(ctx, testpg.Options{Settings: map[string]string{"shared_buffers": "bogus"}})
	if err == nil || !strings.Contains(err.Error(), `invalid value for parameter "shared_buffers"`) || !strings.Contains(err.Error(), "server.log") {
		t.Errorf("bad setting: error does not quote the server log: %v", err)
	}
	if _, err := testpg.Start(ctx, testpg.Options{Settings: map[string]string{"x = 1\nfsync": "on"}}); err == nil {
		t.Error("a malformed setting name was accepted")
	}
	if _, err := testpg.Start(ctx, testpg.Options{Settings: map[string]string{"port": "1"}}); err == nil {
		t.Error("a port setting was accepted")
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	_, err = testpg.Start(ctx, testpg.Options{Port: port})
	if err == nil || !strings.Contains(err.Error(), "Address already in use") {
		t.Errorf("taken port: %v", err)
	}
}

func TestParallelStarts(t *testing.T) {
	testpg.Require(t)
	ctx := ctxT(t)
	const n = 3
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			c, err := testpg.Start(ctx, testpg.Options{})
			if err == nil {
				err = c.Exec(ctx, "postgres", "select 1")
				if serr := c.Stop(); err == nil {
					err = serr
				}
			}
			errs <- err
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestWatchdog kills a test process that started a cluster and checks that
// the server and its directory go away anyway.
func TestWatchdog(t *testing.T) {
	if os.Getenv("TESTPG_CRASH_HELPER") == "1" {
		crashHelper()
		return
	}
	testpg.Require(t)
	if runtime.GOOS != "linux" {
		t.Skip("uses /proc")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestWatchdog$", "-test.count=1")
	cmd.Env = append(os.Environ(), "TESTPG_CRASH_HELPER=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("helper did not die: %v\n%s", err, out)
	}
	var dir string
	var pid int
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "DIR="); ok {
			dir = v
		}
		if v, ok := strings.CutPrefix(sc.Text(), "PID="); ok {
			pid, _ = strconv.Atoi(v)
		}
	}
	if dir == "" || pid == 0 {
		t.Fatalf("helper output lacks DIR/PID:\n%s", out)
	}
	waitGone(t, pid)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still exists after the test process died", dir)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// crashHelper starts a cluster and dies by SIGKILL without stopping it.
func crashHelper() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := testpg.Start(ctx, testpg.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	b, err := os.ReadFile(filepath.Join(c.DataDir, "postmaster.pid"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fmt.Printf("DIR=%s\nPID=%s\n", c.Dir, line)
	os.Stdout.Sync()
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

func postmasterPID(t *testing.T, c *testpg.Cluster) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.DataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(line)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// waitGone waits until process pid has exited (a zombie counts as exited).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		// The state follows the parenthesised command name.
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && strings.HasPrefix(string(b[i:]), ") Z") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs: %s", pid, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
