// Package pgtest starts what integration tests need: a real, throwaway
// Postgres with the demo schema (testdata/sql/schema.sql) in a database of
// its own, and pgtoken in front of it, in-process.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/pgtoken/pgtoken/internal/app"
	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/testpg"
)

// Secret is the HS256 secret test configurations use.
const Secret = "pgtoken-test-secret-0123456789abcdef"

// Env is one test's Postgres database and pgtoken.
type Env struct {
	T   testing.TB
	PG  *testpg.Cluster
	DB  string // database name, upstream and client-facing
	App *app.App
}

var dbSeq atomic.Int64

// Root returns the repository root (for testdata paths).
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Config returns the test configuration for pgtoken in front of db on pg.
func Config(pg *testpg.Cluster, db string) config.Config {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Upstream = pg.DSN("authenticator", "secret", db)
	cfg.Pool.Size = 2
	cfg.Pool.WaitTimeout = config.Duration(20 * time.Second)
	cfg.JWT.Secret = Secret
	cfg.JWT.AllowedRoles = config.StringList{"web_anon", "web_user", "web_admin"}
	cfg.JWT.AnonRole = "web_anon"
	cfg.Claims.JSON = "request.jwt.claims"
	// Tests send many bad tokens from 127.0.0.1; those about slowing down
	// failed logins turn it on.
	cfg.Limits.AuthFailureDelay = 0
	cfg.Limits.AuthFailureRate = 0
	return cfg
}

// NewDB creates a fresh database with the schema on the package's shared
// cluster.
func NewDB(t testing.TB) (*testpg.Cluster, string) {
	t.Helper()
	pg := testpg.Shared(t)
	db := fmt.Sprintf("app_%d_%d", os.Getpid(), dbSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pg.CreateDatabase(ctx, db); err != nil {
		t.Fatalf("create database: %v", err)
	}
	if err := pg.ApplySQLFile(ctx, db, filepath.Join(Root(), "testdata", "sql", "schema.sql")); err != nil {
		t.Fatalf("schema: %v", err)
	}
	return pg, db
}

// Start gives a test a fresh database and pgtoken in front of it; mutate
// lets the test change the configuration first.
func Start(t testing.TB, mutate func(*config.Config)) *Env {
	t.Helper()
	pg, db := NewDB(t)
	cfg := Config(pg, db)
	if mutate != nil {
		mutate(&cfg)
	}
	return StartWith(t, pg, db, cfg)
}

// StartWith starts pgtoken with cfg in front of db.
func StartWith(t testing.TB, pg *testpg.Cluster, db string, cfg config.Config) *Env {
	t.Helper()
	var log *zap.Logger
	if os.Getenv("PGTOKEN_TEST_LOG") != "" {
		log = zaptest.NewLogger(t)
	}
	a, err := app.Start(context.Background(), cfg, log)
	if err != nil {
		t.Fatalf("start pgtoken: %v", err)
	}
	t.Cleanup(func() { closeApp(t, a) })
	// The start's own login to the upstream is over before the test counts
	// server connections.
	<-a.UpstreamsChecked()
	return &Env{T: t, PG: pg, DB: db, App: a}
}

// shutdownBound is how long pgtoken may take to shut down at a test's end.
const shutdownBound = 20 * time.Second

// closeApp shuts pgtoken down, failing t (rather than hanging the test
// binary) when it does not finish in time: a session stuck for good keeps
// Server.Close waiting.
func closeApp(t testing.TB, a *app.App) {
	done := make(chan struct{})
	go func() {
		_ = a.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(shutdownBound):
		t.Errorf("pgtoken did not shut down within %s (a session is stuck)", shutdownBound)
	}
}

// Token signs claims with the test secret (HS256); exp defaults to an hour
// from now.
func Token(t testing.TB, claims map[string]any) string {
	t.Helper()
	mc := jwt.MapClaims{}
	for k, v := range claims {
		mc[k] = v
	}
	if _, ok := mc["exp"]; !ok {
		mc["exp"] = time.Now().Add(time.Hour).Unix()
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, mc).SignedString([]byte(Secret))
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return s
}

// UserToken is a web_user token for sub.
func UserToken(t testing.TB, sub string) string {
	return Token(t, map[string]any{"role": "web_user", "sub": sub})
}

// DSN is a key=value connection string to pgtoken with token as password.
func (e *Env) DSN(token string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=anyone dbname=%s password=%s sslmode=disable", e.App.Port(), e.DB, token)
}

// Connect logs in to pgtoken with pgconn.
func (e *Env) Connect(token string) *pgconn.PgConn {
	e.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, e.DSN(token))
	if err != nil {
		e.T.Fatalf("connect through pgtoken: %v", err)
	}
	e.T.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// Direct logs in to Postgres itself as the authenticator.
func (e *Env) Direct() *pgconn.PgConn {
	e.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, e.PG.DSN("authenticator", "secret", e.DB))
	if err != nil {
		e.T.Fatalf("connect directly: %v", err)
	}
	e.T.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// Superuser runs sql as the cluster's superuser in the test database.
func (e *Env) Superuser(sql string) [][]string {
	e.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := e.PG.QueryRows(ctx, e.DB, sql)
	if err != nil {
		e.T.Fatalf("superuser %q: %v", sql, err)
	}
	return rows
}

// RandomSub returns a random subject with awkward characters in it.
func RandomSub() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "u'" + hex.EncodeToString(b[:]) + `"\`
}

// Lines splits output into trimmed non-empty lines.
func Lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
