package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/internal/testpg"
)

func TestMain(m *testing.M) { testpg.Main(m) }

// syncBuffer collects a process's output for the test to read while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestServeSignals runs the real binary: SIGHUP reloads allowed roles
// without dropping a session; SIGTERM lets a running query finish and the
// process exits within shutdown_timeout.
func TestServeSignals(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	pg, db := pgtest.NewDB(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "pgtoken")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	port, mport := freePort(t), freePort(t)
	conf := filepath.Join(dir, "pgtoken.yaml")
	write := func(roles string) {
		body := fmt.Sprintf(`listen: 127.0.0.1:%d
metrics_listen: 127.0.0.1:%d
upstream: %q
shutdown_timeout: 5s
log_format: json
pool: {size: 2}
jwt:
  secret: %q
  allowed_roles: [%s]
`, port, mport, pg.DSN("authenticator", "secret", db), pgtest.Secret, roles)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("web_user, web_admin")
	var logs syncBuffer
	cmd := exec.Command(bin, "serve", "--config", conf)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("pgtoken output:\n%s", logs.String())
		}
	}()
	dsn := func(tok string) string {
		return fmt.Sprintf("host=127.0.0.1 port=%d user=x dbname=%s password=%s sslmode=disable", port, db, tok)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var admin *pgconn.PgConn
	adminTok := pgtest.Token(t, map[string]any{"role": "web_admin", "sub": "root"})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var err error
		if admin, err = pgconn.Connect(ctx, dsn(adminTok)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgtoken did not come up: %v", err)
		}
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "select 1").ReadAll(); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", mport))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz: %v %v", resp, err)
	}
	resp.Body.Close()

	// SIGHUP with web_admin removed: new logins with it fail, the old
	// session keeps working.
	write("web_user")
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, err := pgconn.Connect(ctx, dsn(adminTok))
		if err == nil {
			_ = c.Close(ctx)
		} else {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "28P01" {
				t.Fatalf("login after reload: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the removed role still logs in after SIGHUP")
		}
	}
	if got, err := admin.Exec(ctx, "select current_user::text").ReadAll(); err != nil || string(got[0].Rows[0][0]) != "web_admin" {
		t.Fatalf("existing session after SIGHUP: %v %v", got, err)
	}
	// A bad configuration is refused and logged; the process goes on.
	if err := os.WriteFile(conf, []byte("pool: {size: many}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGHUP)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), "reload refused"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a bad configuration on SIGHUP was not reported")
		}
	}
	user, err := pgconn.Connect(ctx, dsn(pgtest.UserToken(t, "alice")))
	if err != nil {
		t.Fatalf("login after a refused reload: %v", err)
	}
	defer user.Close(context.Background())

	// SIGTERM during a query: it completes, then the process exits.
	slept := make(chan error, 1)
	go func() {
		_, err := admin.Exec(context.Background(), "select pg_sleep(2)").ReadAll()
		slept <- err
	}()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-slept; err != nil {
		t.Fatalf("the query running at SIGTERM: %v", err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(6 * time.Second):
		t.Fatal("pgtoken did not exit within shutdown_timeout")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("exit took %s", d)
	}
	// The idle client was told why.
	if _, err := user.Exec(ctx, "select 1").ReadAll(); err == nil || !strings.Contains(err.Error(), "57P01") {
		t.Fatalf("idle client after SIGTERM: %v", err)
	}
}

// served is a pgtoken serve process a test started.
type served struct {
	cmd    *exec.Cmd
	port   int
	db     string
	logs   *syncBuffer
	exited chan error
}

// startServe builds and runs pgtoken serve in front of a fresh database,
// configured by the environment (env adds to the test's), and waits until
// it takes logins. The process is killed at the end of the test if it is
// still running.
func startServe(t *testing.T, env ...string) *served {
	t.Helper()
	pg, db := pgtest.NewDB(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "pgtoken")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	port := freePort(t)
	cmd := exec.Command(bin, "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--upstream", pg.DSN("authenticator", "secret", db))
	// An empty file from PGTOKEN_CONFIG: every setting from the flags and the environment.
	empty := filepath.Join(dir, "empty.yaml")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), "PGTOKEN_CONFIG="+empty, "PGTOKEN_JWT_SECRET="+pgtest.Secret, "PGTOKEN_JWT_ALLOWED_ROLES=web_user", "PGTOKEN_SHUTDOWN_TIMEOUT=30s")
	cmd.Env = append(cmd.Env, env...)
	sv := &served{cmd: cmd, port: port, db: db, logs: &syncBuffer{}, exited: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = sv.logs, sv.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { sv.exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, err := sv.connect(db, pgtest.UserToken(t, "probe"))
		if err == nil {
			_ = c.Close(context.Background())
			return sv
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgtoken did not come up: %v\n%s", err, sv.logs.String())
		}
	}
}

func (sv *served) connect(db, token string) (*pgconn.PgConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=x dbname=%s password=%s sslmode=disable", sv.port, db, token))
}

// waitExit waits up to d for the process to exit and returns its error.
func (sv *served) waitExit(t *testing.T, d time.Duration, what string) error {
	t.Helper()
	select {
	case err := <-sv.exited:
		return err
	case <-time.After(d):
		t.Fatalf("%s did not stop pgtoken\n%s", what, sv.logs.String())
	}
	return nil
}

// TestServeSIGINTStopsAtOnce: SIGINT does not wait for a running query.
func TestServeSIGINTStopsAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	sv := startServe(t)
	c, err := sv.connect(sv.db, pgtest.UserToken(t, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	slept := make(chan error, 1)
	go func() {
		_, err := c.Exec(context.Background(), "select pg_sleep(10)").ReadAll()
		slept <- err
	}()
	time.Sleep(300 * time.Millisecond)
	_ = sv.cmd.Process.Signal(syscall.SIGINT)
	sv.waitExit(t, 5*time.Second, "SIGINT")
	if err := <-slept; err == nil || !strings.Contains(err.Error(), "57P01") {
		t.Fatalf("query at SIGINT: %v", err)
	}
}

// TestServeExitsAtConsoleShutdown: the admin console's SHUTDOWN (here as
// PgBouncer's tools would send it, on database pgbouncer) makes serve
// exit with status 0.
func TestServeExitsAtConsoleShutdown(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	sv := startServe(t, "PGTOKEN_JWT_ALLOWED_ROLES=web_user,web_admin", "PGTOKEN_ADMIN_ROLES=web_admin")
	con, err := sv.connect("pgbouncer", pgtest.Token(t, map[string]any{"role": "web_admin", "sub": "ops"}))
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close(context.Background())
	if _, err := con.Exec(context.Background(), "SHUTDOWN").ReadAll(); err != nil {
		t.Fatalf("SHUTDOWN: %v", err)
	}
	if err := sv.waitExit(t, 10*time.Second, "SHUTDOWN"); err != nil {
		t.Fatalf("pgtoken exited with %v after SHUTDOWN\n%s", err, sv.logs.String())
	}
}
