// Command demo (make demo) starts a throwaway Postgres with the demo roles
// and row-level-security data, pgtoken in front of it with a fresh EdDSA
// key, and prints psql lines with freshly minted tokens. Ctrl-C removes
// everything.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/internal/app"
	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/internal/testpg"
)

func main() {
	port := flag.Int("port", 6432, "port for pgtoken (the next free one is used if taken)")
	flag.Parse()
	if err := run(*port); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(port int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if ok, why := testpg.Available(); !ok {
		return fmt.Errorf("PostgreSQL server binaries are needed (apt-get install postgresql): %s", why)
	}
	fmt.Println("starting a throwaway Postgres ...")
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	pg, err := testpg.Start(startCtx, testpg.Options{})
	cancel()
	if err != nil {
		return err
	}
	defer pg.Stop()
	if err := pg.CreateDatabase(ctx, "app"); err != nil {
		return err
	}
	if err := pg.ApplySQLFile(ctx, "app", filepath.Join(pgtest.Root(), "testdata", "sql", "schema.sql")); err != nil {
		return err
	}

	dir, err := os.MkdirTemp("", "pgtoken-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	priv, pub, err := authn.GenerateJWKS("EdDSA")
	if err != nil {
		return err
	}
	keyFile := filepath.Join(dir, "private.jwks.json")
	pubFile := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(keyFile, priv, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(pubFile, pub, 0o644); err != nil {
		return err
	}

	cfg := config.Default()
	cfg.Listen = "127.0.0.1:" + strconv.Itoa(freePort(port))
	cfg.Upstream = pg.DSN("authenticator", "secret", "app")
	cfg.Pool.Size = 4
	cfg.JWT.JWKS = config.StringList{"file://" + pubFile}
	cfg.JWT.AllowedRoles = config.StringList{"web_anon", "web_user", "web_admin"}
	cfg.JWT.AnonRole = "web_anon"
	cfg.Claims.JSON = "request.jwt.claims"
	cfg.AdminRoles = config.StringList{"web_admin"}
	metricsAddr := "127.0.0.1:" + strconv.Itoa(freePort(9432))
	cfg.MetricsListen = metricsAddr
	log, err := app.NewLogger("info", "console")
	if err != nil {
		return err
	}
	a, err := app.Start(ctx, cfg, log.WithOptions(zap.IncreaseLevel(zap.WarnLevel)))
	if err != nil {
		return err
	}
	defer a.Close()

	mint := func(claims map[string]any) (string, error) {
		return authn.Mint(priv, claims, 8*time.Hour, time.Now())
	}
	alice, err := mint(map[string]any{"role": "web_user", "sub": "alice"})
	if err != nil {
		return err
	}
	bob, err := mint(map[string]any{"role": "web_user", "sub": "bob"})
	if err != nil {
		return err
	}
	admin, err := mint(map[string]any{"role": "web_admin", "sub": "root"})
	if err != nil {
		return err
	}
	p := a.Port()
	fmt.Printf(`
pgtoken demo is running: pgtoken on 127.0.0.1:%[1]d in front of a throwaway Postgres on 127.0.0.1:%[2]d.
Each todo belongs to a user; row-level security shows a token only its own rows.

Paste in another terminal (alice, a web_user, sees her 3 todos):

  PGPASSWORD='%[3]s' psql "host=127.0.0.1 port=%[1]d dbname=app user=anyone"

then try:   select * from todos;   select * from whoami();   set role web_admin;

bob (a web_user):
  PGPASSWORD='%[4]s' psql "host=127.0.0.1 port=%[1]d dbname=app user=anyone"
an admin (web_admin sees every row):
  PGPASSWORD='%[5]s' psql "host=127.0.0.1 port=%[1]d dbname=app user=anyone"
the admin console, with the admin's token (SHOW POOLS; SHOW CLIENTS; SHOW STATS; SHOW HELP):
  PGPASSWORD='%[5]s' psql "host=127.0.0.1 port=%[1]d dbname=pgtoken user=anyone"

Metrics: curl http://%[7]s/metrics   (also /healthz and /readyz)

Mint more tokens with the demo's key:
  go run ./cmd/pgtoken mint --key %[6]s --claims '{"role":"web_user","sub":"carol"}' --ttl 1h

Tokens last 8 hours. A password that is no correctly signed token is
answered after 1 s (limits.auth_failure_delay); valid tokens never wait for it.
Ctrl-C stops the demo and removes everything.
`, p, pg.Port, alice, bob, admin, keyFile, metricsAddr)
	<-ctx.Done()
	fmt.Println("\nstopping ...")
	return nil
}

// freePort returns port if it is free on 127.0.0.1, else the next free one.
func freePort(port int) int {
	for p := port; p < port+100; p++ {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err == nil {
			l.Close()
			return p
		}
	}
	return 0
}
