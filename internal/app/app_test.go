package app_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/internal/app"
	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/internal/testpg"
)

func TestMain(m *testing.M) { testpg.Main(m) }

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func exec(t testing.TB, c *pgconn.PgConn, sql string) [][]string {
	t.Helper()
	res, err := c.Exec(ctx(t), sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return testpg.TextRows(res)
}

func sqlstate(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func dsn(a *app.App, db, token string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=anyone dbname=%s password=%s sslmode=disable connect_timeout=10", a.Port(), db, token)
}

func connect(t testing.TB, a *app.App, db, token string) *pgconn.PgConn {
	t.Helper()
	c, err := pgconn.Connect(ctx(t), dsn(a, db, token))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// scrape reads /metrics into series → value, the series spelled as in the
// text format (labels sorted by name).
func scrape(t testing.TB, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func get(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestMetricsMoveAsClientsRunQueries(t *testing.T) {
	// A JWKS served over HTTP, so refreshes are counted too.
	_, pub, err := authn.GenerateJWKS("EdDSA")
	if err != nil {
		t.Fatal(err)
	}
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(pub)
	}))
	defer jwks.Close()
	env := pgtest.Start(t, func(c *config.Config) {
		c.MetricsListen = "127.0.0.1:0"
		c.JWT.JWKS = config.StringList{jwks.URL}
	})
	addr := env.App.MetricsAddr()
	if code, body := get(t, "http://"+addr+"/healthz"); code != 200 || !strings.Contains(body, "ok") {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	db := `{database="` + env.DB + `"}`
	before := scrape(t, addr)
	if before[`pgtoken_jwks_refresh_total{result="ok"}`] < 1 {
		t.Errorf("the JWKS fetch at start is not counted: %v", before[`pgtoken_jwks_refresh_total{result="ok"}`])
	}
	if before["pgtoken_jwt_keys"] != 2 { // the secret and the JWKS key
		t.Errorf("pgtoken_jwt_keys = %v, want 2", before["pgtoken_jwt_keys"])
	}

	c := env.Connect(pgtest.UserToken(t, "alice"))
	for range 3 {
		exec(t, c, "select 1")
	}
	exec(t, c, "begin; select 1; commit")
	if _, err := c.Exec(ctx(t), "set role web_admin").ReadAll(); sqlstate(err) != "42501" {
		t.Fatalf("guard: %v", err)
	}
	expired := pgtest.Token(t, map[string]any{"role": "web_user", "sub": "x", "exp": time.Now().Add(-time.Hour).Unix()})
	if _, err := pgconn.Connect(ctx(t), env.DSN(expired)); sqlstate(err) != "28P01" {
		t.Fatalf("expired token: %v", err)
	}
	// A client that waits: with the pool's connections busy.
	holders := []*pgconn.PgConn{env.Connect(pgtest.UserToken(t, "h1")), env.Connect(pgtest.UserToken(t, "h2"))}
	for _, h := range holders {
		exec(t, h, "begin")
	}
	waiter := env.Connect(pgtest.UserToken(t, "w"))
	done := make(chan error, 1)
	go func() { _, err := waiter.Exec(context.Background(), "select 1").ReadAll(); done <- err }()
	waitFor(t, "a waiting client", func() bool {
		return scrape(t, addr)[`pgtoken_client_connections{state="waiting"}`] == 1
	})
	m := scrape(t, addr)
	if m[`pgtoken_client_connections{state="active"}`] != 2 || m[`pgtoken_server_connections{database="`+env.DB+`",state="active"}`] != 2 {
		t.Errorf("active clients %v, active server connections %v; want 2 and 2",
			m[`pgtoken_client_connections{state="active"}`], m[`pgtoken_server_connections{database="`+env.DB+`",state="active"}`])
	}
	if m[`pgtoken_client_connections{state="idle"}`] != 1 {
		t.Errorf("idle clients: %v, want 1", m[`pgtoken_client_connections{state="idle"}`])
	}
	for _, h := range holders {
		exec(t, h, "commit")
	}
	if err := recv(t, done, "the waiting client"); err != nil {
		t.Fatal(err)
	}

	// A transaction is counted when its connection goes back to the pool,
	// which may be just after the client has its answer.
	var after map[string]float64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		after = scrape(t, addr)
		if after["pgtoken_transactions_total"+db]-before["pgtoken_transactions_total"+db] >= 7 || time.Now().After(deadline) {
			break
		}
	}
	for _, tc := range []struct {
		series string
		min    float64
	}{
		{"pgtoken_queries_total" + db, 9},
		{"pgtoken_transactions_total" + db, 7},
		{"pgtoken_transaction_duration_seconds_count", 7},
		{"pgtoken_pool_wait_seconds_count", 7},
		{`pgtoken_auth_failures_total{reason="expired"}`, 1},
		{"pgtoken_guard_rejections_total", 1},
		{"pgtoken_logins_total", 4},
	} {
		if got := after[tc.series] - before[tc.series]; got < tc.min {
			t.Errorf("%s moved by %v (now %v), want at least %v", tc.series, got, after[tc.series], tc.min)
		}
	}
	if after["pgtoken_pool_size"+db] != 2 {
		t.Errorf("pgtoken_pool_size%s = %v, want 2", db, after["pgtoken_pool_size"+db])
	}
	if after[`pgtoken_pool_wait_seconds_sum`] <= 0 {
		t.Errorf("the waiting client's wait is not in pgtoken_pool_wait_seconds_sum")
	}
	if after[`pgtoken_auth_failures_total{reason="bad_signature"}`] != 0 {
		t.Errorf("unrelated reason moved")
	}
}

// TestDebugSessionsShowsEachSession reads /debug/sessions while one client
// sits inside a transaction, one waits for a slow query and one is idle:
// each shows its server connection, its unit queue and its transaction
// status, and the view names no token subject.
func TestDebugSessionsShowsEachSession(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) { c.MetricsListen = "127.0.0.1:0" })
	url := "http://" + env.App.MetricsAddr() + "/debug/sessions"
	inTx := env.Connect(pgtest.UserToken(t, "debug-subject-in-tx"))
	exec(t, inTx, "begin")
	pid := exec(t, inTx, "select pg_backend_pid()")[0][0]
	slow := env.Connect(pgtest.UserToken(t, "debug-subject-slow"))
	idle := env.Connect(pgtest.UserToken(t, "debug-subject-idle"))
	exec(t, idle, "select 1")
	done := make(chan error, 1)
	go func() { _, err := slow.Exec(context.Background(), "select pg_sleep(1)").ReadAll(); done <- err }()

	type view struct {
		Sessions []struct {
			ID        uint32 `json:"id"`
			ServerPID uint32 `json:"server_pid"`
			Tracker   struct {
				Status  string `json:"status"`
				Pending int    `json:"pending"`
				Units   []struct{ Kind, Own string }
			} `json:"tracker"`
		}
	}
	var v view
	var body string
	waitFor(t, "the slow query in the unit queue", func() bool {
		var code int
		code, body = get(t, url)
		if code != 200 {
			t.Fatalf("/debug/sessions: %d %s", code, body)
		}
		v = view{}
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			t.Fatalf("/debug/sessions: %v\n%s", err, body)
		}
		for _, s := range v.Sessions {
			if s.Tracker.Pending == 1 {
				return true
			}
		}
		return false
	})
	if len(v.Sessions) != 3 {
		t.Fatalf("%d sessions, want 3:\n%s", len(v.Sessions), body)
	}
	var sawTx, sawSlow, sawIdle bool
	for _, s := range v.Sessions {
		switch {
		case strconv.Itoa(int(s.ServerPID)) == pid:
			sawTx = s.Tracker.Status == "T" && s.Tracker.Pending == 0 && len(s.Tracker.Units) == 0
		case s.Tracker.Pending == 1:
			sawSlow = s.ServerPID != 0 && len(s.Tracker.Units) == 1 && s.Tracker.Units[0].Kind == "Query" && s.Tracker.Units[0].Own == "client"
		default:
			sawIdle = s.ServerPID == 0 && s.Tracker.Status == "I" && len(s.Tracker.Units) == 0
		}
	}
	if !sawTx || !sawSlow || !sawIdle {
		t.Errorf("in a transaction on pid %s: %v, waiting for its query: %v, idle: %v\n%s", pid, sawTx, sawSlow, sawIdle, body)
	}
	if strings.Contains(body, "debug-subject") {
		t.Errorf("/debug/sessions names a token subject:\n%s", body)
	}
	if err := recv(t, done, "the slow query"); err != nil {
		t.Fatal(err)
	}
	exec(t, inTx, "commit")
}

// closeApp closes a, and dumps every goroutine if that takes a minute.
func closeApp(t testing.TB, a *app.App) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- a.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("close: %v", err)
		}
	case <-time.After(time.Minute):
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Fatalf("App.Close hangs; goroutines:\n%s", buf[:n])
	}
}

// recv waits for ch up to 30 seconds, and dumps every goroutine if it
// takes longer.
func recv(t testing.TB, ch <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(30 * time.Second):
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Fatalf("%s hangs; goroutines:\n%s", what, buf[:n])
		return nil
	}
}

// waitFor polls cond for up to 10 seconds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// privateEnv starts a Postgres cluster of the test's own (which the test
// may stop) with the schema in database app.
func privateEnv(t *testing.T) (*testpg.Cluster, config.Config) {
	pg := testpg.New(t, testpg.Options{})
	if err := pg.CreateDatabase(ctx(t), "app"); err != nil {
		t.Fatal(err)
	}
	if err := pg.ApplySQLFile(ctx(t), "app", filepath.Join(pgtest.Root(), "testdata", "sql", "schema.sql")); err != nil {
		t.Fatal(err)
	}
	return pg, pgtest.Config(pg, "app")
}

func TestReadyzFollowsTheUpstream(t *testing.T) {
	pg, cfg := privateEnv(t)
	cfg.MetricsListen = "127.0.0.1:0"
	a, err := app.Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeApp(t, a)
	url := "http://" + a.MetricsAddr() + "/readyz"
	if code, body := get(t, url); code != 200 {
		t.Fatalf("/readyz with the upstream up: %d %q", code, body)
	}
	c := connect(t, a, "app", pgtest.UserToken(t, "alice"))
	exec(t, c, "select 1")
	if err := pg.StopOnly(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "/readyz to fail", func() bool { code, _ := get(t, url); return code == 503 })
	if code, body := get(t, "http://"+a.MetricsAddr()+"/healthz"); code != 200 {
		t.Fatalf("/healthz with the upstream down: %d %q", code, body)
	}
	if err := pg.Resume(ctx(t)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "/readyz to pass again", func() bool { code, _ := get(t, url); return code == 200 })
}

func TestReloadAllowedRolesKeepsSessions(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	cfg := pgtest.Config(pg, db)
	level := zap.NewAtomicLevelAt(zapcore.InfoLevel)
	a, err := app.StartWith(context.Background(), cfg, nil, app.Options{Level: &level})
	if err != nil {
		t.Fatal(err)
	}
	defer closeApp(t, a)
	adminTok := pgtest.Token(t, map[string]any{"role": "web_admin", "sub": "root"})
	old := connect(t, a, db, adminTok)
	exec(t, old, "begin; select 1")

	next := cfg
	next.JWT.AllowedRoles = config.StringList{"web_anon", "web_user"}
	next.LogLevel = "debug"
	if err := a.Reload(next); err != nil {
		t.Fatal(err)
	}
	if _, err := pgconn.Connect(ctx(t), dsn(a, db, adminTok)); sqlstate(err) != "28P01" {
		t.Fatalf("a login with the removed role after reload: %v", err)
	}
	connect(t, a, db, pgtest.UserToken(t, "alice")) // others still log in
	// The session logged in before keeps working, in and after its transaction.
	if got := exec(t, old, "select current_user::text; commit"); got[0][0] != "web_admin" {
		t.Fatalf("old session: %q", got)
	}
	if got := exec(t, old, "select current_user::text"); got[0][0] != "web_admin" {
		t.Fatalf("old session, next transaction: %q", got)
	}
	if level.Level() != zapcore.DebugLevel {
		t.Fatalf("log level after reload: %v", level.Level())
	}

	// A bad configuration is refused; the one in use stays.
	bad := next
	bad.JWT.AllowedRoles = nil
	if err := a.Reload(bad); err == nil || !strings.Contains(err.Error(), "jwt.allowed_roles") {
		t.Fatalf("bad reload: %v", err)
	}
	bad = next
	bad.JWT.PublicKeys = config.StringList{"/nonexistent/key.pem"}
	if err := a.Reload(bad); err == nil {
		t.Fatal("a reload with a missing key file was accepted")
	}
	connect(t, a, db, pgtest.UserToken(t, "bob"))
	if got := a.Config().JWT.AllowedRoles; len(got) != 2 {
		t.Fatalf("config in use after a refused reload: %v", got)
	}
	// A change that needs a restart is not applied.
	moved := next
	moved.Pool.Mode = "session"
	if err := a.Reload(moved); err != nil {
		t.Fatal(err)
	}
	if a.Config().Pool.Mode != "transaction" {
		t.Fatal("pool.mode changed without a restart")
	}
}

func TestReloadResizesPools(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	cfg := pgtest.Config(pg, db)
	cfg.Pool.Size = 2
	a, err := app.Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeApp(t, a)
	stats := func() (size, total, active, waiting int) {
		for _, p := range a.Server.Stats().Pools {
			if p.Database == db {
				return p.Size, p.Total, p.Active, p.Waiting
			}
		}
		return
	}
	c1 := connect(t, a, db, pgtest.UserToken(t, "a"))
	c2 := connect(t, a, db, pgtest.UserToken(t, "b"))
	exec(t, c1, "begin; select 1")
	exec(t, c2, "begin; select 1")

	// Shrink while both connections are busy: nobody is cut off.
	small := cfg
	small.Pool.Size = 1
	if err := a.Reload(small); err != nil {
		t.Fatal(err)
	}
	if size, total, active, _ := stats(); size != 1 || total != 2 || active != 2 {
		t.Fatalf("after shrinking: size %d total %d active %d", size, total, active)
	}
	exec(t, c1, "select 1; commit")
	exec(t, c2, "select 1; commit")
	waitFor(t, "the surplus connection to close", func() bool { _, total, _, _ := stats(); return total == 1 })

	// Grow while a client waits: it gets a connection at once.
	exec(t, c1, "begin; select 1")
	done := make(chan error, 1)
	go func() { _, err := c2.Exec(context.Background(), "select 1").ReadAll(); done <- err }()
	waitFor(t, "a waiting client", func() bool { _, _, _, w := stats(); return w == 1 })
	big := cfg
	big.Pool.Size = 3
	if err := a.Reload(big); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting client was not served after the pool grew")
	}
	exec(t, c1, "commit")
}

func TestShutdownLetsTransactionsFinish(t *testing.T) {
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) { testShutdown(t, mode) })
	}
}

func testShutdown(t *testing.T, mode string) {
	pg, db := pgtest.NewDB(t)
	cfg := pgtest.Config(pg, db)
	cfg.Pool.Mode = mode
	cfg.Pool.Size = 4
	a, err := app.Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeApp(t, a)
	idle := connect(t, a, db, pgtest.UserToken(t, "idle"))
	exec(t, idle, "select 1")
	inTx := connect(t, a, db, pgtest.UserToken(t, "tx"))
	exec(t, inTx, "begin")
	busy := connect(t, a, db, pgtest.UserToken(t, "busy"))
	slept := make(chan error, 1)
	go func() {
		_, err := busy.Exec(context.Background(), "select pg_sleep(2)").ReadAll()
		slept <- err
	}()
	time.Sleep(300 * time.Millisecond)

	start := time.Now()
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- a.Shutdown(ctx)
	}()
	// The idle client is closed at once with 57P01.
	time.Sleep(200 * time.Millisecond)
	if _, err := idle.Exec(ctx(t), "select 1").ReadAll(); sqlstate(err) != "57P01" {
		t.Fatalf("idle client during shutdown: %v", err)
	}
	// New clients are not accepted.
	if _, err := pgconn.Connect(ctx(t), dsn(a, db, pgtest.UserToken(t, "late"))); err == nil {
		t.Fatal("a new client was accepted during shutdown")
	}
	// The client inside a transaction finishes it, then is closed.
	exec(t, inTx, "select 1")
	exec(t, inTx, "commit")
	// The running query completes.
	if err := recv(t, slept, "the query in flight"); err != nil {
		t.Fatalf("query in flight during shutdown: %v", err)
	}
	if err := recv(t, shut, "Shutdown"); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("shutdown took %s", d)
	}
	if _, err := inTx.Exec(ctx(t), "select 1").ReadAll(); err == nil {
		t.Fatal("client still served after shutdown")
	}
}

func TestShutdownTimeoutCutsOff(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	a, err := app.Start(context.Background(), pgtest.Config(pg, db), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeApp(t, a)
	busy := connect(t, a, db, pgtest.UserToken(t, "busy"))
	slept := make(chan error, 1)
	go func() {
		_, err := busy.Exec(context.Background(), "select pg_sleep(5)").ReadAll()
		slept <- err
	}()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	c, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := a.Shutdown(c); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown past its timeout: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("shutdown took %s with a 500ms timeout", d)
	}
	if err := recv(t, slept, "the client cut off"); sqlstate(err) != "57P01" {
		t.Fatalf("client cut off: %v", err)
	}
}

func TestCloseSendsAdminShutdown(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	a, err := app.Start(context.Background(), pgtest.Config(pg, db), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := connect(t, a, db, pgtest.UserToken(t, "x"))
	exec(t, c, "select 1")
	closeApp(t, a)
	// The FATAL comes unasked: read it from the socket (a query written
	// now may fail to send, the connection being closed, before the
	// driver reads what is waiting).
	nc := c.Conn()
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	msg, err := pgproto3.NewFrontend(nc, nil).Receive()
	if e, ok := msg.(*pgproto3.ErrorResponse); err != nil || !ok || e.Code != "57P01" || e.Severity != "FATAL" {
		t.Fatalf("client after Close: %#v, %v; want FATAL 57P01", msg, err)
	}
}

func TestReusePortTwoInstances(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	cfg := pgtest.Config(pg, db)
	cfg.ReusePort = true
	a1, err := app.Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeApp(t, a1)
	cfg.Listen = a1.Addr()
	a2, err := app.Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatalf("second instance on the same port: %v", err)
	}
	defer closeApp(t, a2)
	for i := range 6 {
		c := connect(t, a2, db, pgtest.UserToken(t, fmt.Sprint("u", i)))
		exec(t, c, "select 1")
	}
	// The first one leaves; the port keeps answering.
	closeApp(t, a1)
	for i := range 3 {
		c := connect(t, a2, db, pgtest.UserToken(t, fmt.Sprint("v", i)))
		exec(t, c, "select 1")
	}
	// Without reuse_port the port is taken.
	cfg.ReusePort = false
	if a3, err := app.Start(context.Background(), cfg, nil); err == nil {
		a3.Close()
		t.Fatal("a third instance without reuse_port listened on a taken port")
	}
}

// cancelRequest sends a CancelRequest to addr.
func cancelRequest(t testing.TB, addr string, pid uint32, key []byte) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	b := binary.BigEndian.AppendUint32(nil, 16)
	b = binary.BigEndian.AppendUint32(b, 80877102)
	b = binary.BigEndian.AppendUint32(b, pid)
	b = append(b, key...)
	if _, err := nc.Write(b); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _ = nc.Read(make([]byte, 1)) // closed once handled
}

func TestCancelRequestReachesThePeer(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	cfg := pgtest.Config(pg, db)
	cfg.PeerID = 1
	a, err := app.Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeApp(t, a)
	cfgB := cfg
	cfgB.PeerID = 2
	cfgB.Peers = config.PeerMap{1: a.Addr()}
	b, err := app.Start(context.Background(), cfgB, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeApp(t, b)
	// Peers are reloadable: a learns b's address.
	cfg.Peers = config.PeerMap{1: a.Addr(), 2: b.Addr()}
	if err := a.Reload(cfg); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		at, land *app.App
		peer     uint32
	}{{"a's client, request at b", a, b, 1}, {"b's client, request at a", b, a, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			c := connect(t, tc.at, db, pgtest.UserToken(t, "alice"))
			if got := c.PID() >> 28 & 7; got != tc.peer {
				t.Fatalf("process id %#x carries peer %d, want %d", c.PID(), got, tc.peer)
			}
			done := make(chan error, 1)
			go func() {
				_, err := c.Exec(context.Background(), "select pg_sleep(20)").ReadAll()
				done <- err
			}()
			time.Sleep(300 * time.Millisecond)
			cancelRequest(t, tc.land.Addr(), c.PID(), c.SecretKey())
			select {
			case err := <-done:
				if sqlstate(err) != "57014" {
					t.Fatalf("query after cancel at the peer: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the cancel request did not reach the right pgtoken")
			}
			exec(t, c, "select 1") // the session goes on
		})
	}

	// A wrong key is ignored, forwarded or not.
	c := connect(t, a, db, pgtest.UserToken(t, "bob"))
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(context.Background(), "select pg_sleep(1)").ReadAll()
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	cancelRequest(t, b.Addr(), c.PID(), []byte{0, 0, 0, 0})
	if err := <-done; err != nil {
		t.Fatalf("cancelled with a wrong key: %v", err)
	}
}

// TestConcurrentReloadsAndLogins runs reloads while clients log in and
// query, for the race detector.
func TestConcurrentReloadsAndLogins(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	cfg := pgtest.Config(pg, db)
	cfg.MetricsListen = "127.0.0.1:0"
	a, err := app.Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeApp(t, a)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := pgconn.Connect(context.Background(), dsn(a, db, pgtest.UserToken(t, fmt.Sprint("c", i))))
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := c.Exec(context.Background(), "select 1").ReadAll(); err != nil {
					t.Error(err)
				}
				_ = c.Close(context.Background())
			}
		}()
	}
	for i := range 10 {
		next := cfg
		next.Pool.Size = 1 + i%3
		if err := a.Reload(next); err != nil {
			t.Fatal(err)
		}
		scrape(t, a.MetricsAddr())
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
}

func TestReloadRereadsKeysAndCertificate(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	dir := t.TempDir()
	jwksFile := filepath.Join(dir, "jwks.json")
	newKey := func() []byte {
		priv, pub, err := authn.GenerateJWKS("EdDSA")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(jwksFile, pub, 0o644); err != nil {
			t.Fatal(err)
		}
		return priv
	}
	mint := func(priv []byte) string {
		tok, err := authn.Mint(priv, map[string]any{"role": "web_user", "sub": "k"}, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	newCert := func(cn string) {
		if err := writeCert(certFile, keyFile, cn); err != nil {
			t.Fatal(err)
		}
	}
	keyA := newKey()
	newCert("cert-a")
	cfg := pgtest.Config(pg, db)
	cfg.JWT.Secret = ""
	cfg.JWT.JWKS = config.StringList{"file://" + jwksFile}
	cfg.TLS.Cert, cfg.TLS.Key = certFile, keyFile
	a, err := app.Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeApp(t, a)
	tlsDSN := func(tok string) string {
		return fmt.Sprintf("host=127.0.0.1 port=%d user=x dbname=%s password=%s sslmode=require", a.Port(), db, tok)
	}
	peerCN := func(c *pgconn.PgConn) string {
		tc, ok := c.Conn().(*tls.Conn)
		if !ok {
			t.Fatalf("not TLS: %T", c.Conn())
		}
		return tc.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	old, err := pgconn.Connect(ctx(t), tlsDSN(mint(keyA)))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close(context.Background())
	if peerCN(old) != "cert-a" {
		t.Fatalf("certificate: %s", peerCN(old))
	}

	keyB := newKey()
	newCert("cert-b")
	if err := a.Reload(cfg); err != nil { // same settings; files re-read
		t.Fatal(err)
	}
	if _, err := pgconn.Connect(ctx(t), tlsDSN(mint(keyA))); sqlstate(err) != "28P01" {
		t.Fatalf("token of the removed key after reload: %v", err)
	}
	c, err := pgconn.Connect(ctx(t), tlsDSN(mint(keyB)))
	if err != nil {
		t.Fatalf("token of the new key after reload: %v", err)
	}
	defer c.Close(context.Background())
	if peerCN(c) != "cert-b" {
		t.Fatalf("new handshake after reload got %s", peerCN(c))
	}
	exec(t, old, "select 1") // the session from before goes on
	// A certificate that does not load is refused; the one in use stays.
	if err := os.WriteFile(certFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(cfg); err == nil || !strings.Contains(err.Error(), "tls") {
		t.Fatalf("reload with a broken certificate: %v", err)
	}
	c2, err := pgconn.Connect(ctx(t), tlsDSN(mint(keyB)))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(context.Background())
	if peerCN(c2) != "cert-b" {
		t.Fatalf("after a refused reload: %s", peerCN(c2))
	}
}

// writeCert writes a self-signed ECDSA certificate for 127.0.0.1.
func writeCert(certFile, keyFile, cn string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
}

// TestPoolWaitMetricAgreesWithShowStats: pgtoken_pool_wait_seconds counts
// the same waits as the console's SHOW STATS total_wait_time: those of
// clients waiting for a busy pool, and that of the first login, which opens
// the pool's first server connection to read the upstream roles.
func TestPoolWaitMetricAgreesWithShowStats(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) {
		c.MetricsListen = "127.0.0.1:0"
		c.AdminRoles = config.StringList{"web_admin"}
		c.Pool.Size = 1
	})
	addr := env.App.MetricsAddr()
	holder := env.Connect(pgtest.UserToken(t, "holder"))
	waiter := env.Connect(pgtest.UserToken(t, "waiter"))
	exec(t, holder, "begin; select 1")
	done := make(chan error, 1)
	go func() { _, err := waiter.Exec(context.Background(), "select 1").ReadAll(); done <- err }()
	waitFor(t, "a waiting client", func() bool {
		return scrape(t, addr)[`pgtoken_client_connections{state="waiting"}`] == 1
	})
	time.Sleep(100 * time.Millisecond)
	exec(t, holder, "commit")
	if err := recv(t, done, "the waiting client"); err != nil {
		t.Fatal(err)
	}
	console := connect(t, env.App, "pgtoken", pgtest.Token(t, map[string]any{"role": "web_admin", "sub": "ops"}))
	var statsMicros int64
	res, err := console.Exec(ctx(t), "show stats").ReadAll()
	if err != nil || len(res) != 1 {
		t.Fatalf("show stats: %v", err)
	}
	col := slices.IndexFunc(res[0].FieldDescriptions, func(f pgconn.FieldDescription) bool { return f.Name == "total_wait_time" })
	for _, row := range res[0].Rows {
		n, err := strconv.ParseInt(string(row[col]), 10, 64)
		if err != nil {
			t.Fatalf("show stats total_wait_time %q: %v", row[col], err)
		}
		statsMicros += n
	}
	metricMicros := scrape(t, addr)["pgtoken_pool_wait_seconds_sum"] * 1e6
	if statsMicros < 100_000 {
		t.Fatalf("SHOW STATS total_wait_time = %d us, want the waiting client's 100 ms or more", statsMicros)
	}
	// SHOW STATS truncates its sum to microseconds.
	if d := metricMicros - float64(statsMicros); d < -1 || d > 2 {
		t.Fatalf("pgtoken_pool_wait_seconds_sum = %.0f us, SHOW STATS total_wait_time = %d us", metricMicros, statsMicros)
	}
}

// TestListeningLineSaysTLS: the "pgtoken listening" line says whether
// clients can use TLS.
func TestListeningLineSaysTLS(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := writeCert(certFile, keyFile, "pgtoken"); err != nil {
		t.Fatal(err)
	}
	for _, withTLS := range []bool{false, true} {
		cfg := pgtest.Config(pg, db)
		if withTLS {
			cfg.TLS.Cert, cfg.TLS.Key = certFile, keyFile
		}
		core, logs := observer.New(zapcore.InfoLevel)
		a, err := app.Start(context.Background(), cfg, zap.New(core))
		if err != nil {
			t.Fatal(err)
		}
		closeApp(t, a)
		lines := logs.FilterMessage("pgtoken listening").All()
		if len(lines) != 1 {
			t.Fatalf("%d listening lines", len(lines))
		}
		if got, ok := lines[0].ContextMap()["tls"]; !ok || got != withTLS {
			t.Errorf("with TLS %v, the listening line says tls=%v (%v)", withTLS, got, lines[0].ContextMap())
		}
	}
}

// TestWrongUpstreamPasswordIsVisible: with a wrong upstream password the
// log says so at start (ERROR, the server's reason), /readyz answers 503
// with that reason, a client is told that pgtoken could not log in to the
// server and that the log has the reason (not the reason itself), the
// failures of clients' server logins are logged at WARN at most once per
// interval, and the recovery is logged too. No password shows anywhere.
func TestWrongUpstreamPasswordIsVisible(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	login := "upw_" + db
	right, wrong := "Right-"+randomWord(), "Wrong-"+randomWord()
	(&pgtest.Env{T: t, PG: pg, DB: db}).Superuser(fmt.Sprintf(
		"create role %[1]s login noinherit password '%[2]s'; grant web_anon, web_user, web_admin to %[1]s; grant connect on database %[3]s to %[1]s",
		login, right, db))
	cfg := pgtest.Config(pg, db)
	cfg.Upstream = pg.DSN(login, wrong, db)
	cfg.MetricsListen = "127.0.0.1:0"
	core, logs := observer.New(zapcore.InfoLevel)
	a, err := app.Start(context.Background(), cfg, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer closeApp(t, a)
	noSecret := func(where, text string) {
		t.Helper()
		if strings.Contains(text, wrong) || strings.Contains(text, right) {
			t.Errorf("the %s shows a password: %s", where, text)
		}
	}
	errorText := func(e observer.LoggedEntry) string {
		err, _ := e.ContextMap()["error"].(string)
		return err
	}

	<-a.UpstreamsChecked()
	atStart := logs.FilterMessageSnippet("cannot log in to the upstream").FilterLevelExact(zapcore.ErrorLevel).All()
	if len(atStart) != 1 || !strings.Contains(errorText(atStart[0]), "password authentication failed") || !strings.Contains(errorText(atStart[0]), "28P01") {
		t.Fatalf("at start, want one ERROR naming the authentication failure; got %v", logs.All())
	}
	noSecret("start log", fmt.Sprint(atStart[0].ContextMap()))

	code, body := get(t, "http://"+a.MetricsAddr()+"/readyz")
	if code != 503 || !strings.Contains(body, `password authentication failed for user "`+login+`"`) || !strings.Contains(body, "28P01") {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	noSecret("/readyz", body)

	tok := pgtest.UserToken(t, "alice")
	for range 3 {
		_, err := pgconn.Connect(ctx(t), dsn(a, db, tok))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Severity != "FATAL" || pe.Code != "08006" ||
			pe.Message != "pgtoken could not log in to the server (the reason is in the pgtoken log)" {
			t.Fatalf("client login: %v", err)
		}
		if strings.Contains(err.Error(), login) || strings.Contains(err.Error(), "authentication") {
			t.Fatalf("the client is told the upstream's reason: %v", err)
		}
	}
	warns := logs.FilterMessage("could not open a server connection").FilterLevelExact(zapcore.WarnLevel).All()
	if len(warns) != 1 || !strings.Contains(errorText(warns[0]), "password authentication failed") {
		t.Fatalf("three failed server logins in a row: want one WARN naming the authentication failure, got %v", warns)
	}
	noSecret("pool log", fmt.Sprint(warns[0].ContextMap()))

	// The password is put right: logins work, and the log says so once.
	(&pgtest.Env{T: t, PG: pg, DB: db}).Superuser(fmt.Sprintf("alter role %s password '%s'", login, wrong))
	c := connect(t, a, db, tok)
	if got := exec(t, c, "select current_user"); got[0][0] != "web_user" {
		t.Fatalf("current_user %q", got)
	}
	if n := logs.FilterMessage("server connections open again").Len(); n != 1 {
		t.Errorf("%d lines say server connections open again, want 1", n)
	}
	waitFor(t, "/readyz to pass", func() bool { code, _ := get(t, "http://"+a.MetricsAddr()+"/readyz"); return code == 200 })
}

func randomWord() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%x", b)
}

func TestReloadAppliesPoolLifecycleAndClientTimeouts(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	cfg := pgtest.Config(pg, db)
	cfg.Pool.Size = 4
	a, err := app.Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeApp(t, a)
	total := func() int {
		for _, p := range a.Server.Stats().Pools {
			if p.Database == db && p.Connecting == 0 {
				return p.Total
			}
		}
		return -1
	}
	c := connect(t, a, db, pgtest.UserToken(t, "a"))
	exec(t, c, "select 1")
	waitFor(t, "one server connection", func() bool { return total() == 1 })

	next := cfg
	next.Pool.MinSize = 3
	next.Pool.QueryTimeout = config.Duration(time.Minute)
	next.Pool.ClientIdleTimeout = config.Duration(time.Hour)
	if err := a.Reload(next); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pool.min_size connections after the reload", func() bool { return total() == 3 })
	if got := a.Server.ClientTimeouts(); got.Query != time.Minute || got.Idle != time.Hour {
		t.Fatalf("client timeouts after the reload: %+v", got)
	}
	exec(t, c, "select 1")
}
