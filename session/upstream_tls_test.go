package session_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/internal/testpg"
)

// TLS to the server comes from the upstream DSN's sslmode, verify-full
// included; a server certificate that does not verify keeps every login
// out, with a generic message for the client and the reason in the log.
func TestUpstreamTLSVerifyFull(t *testing.T) {
	pg := testpg.New(t, testpg.Options{SSL: true})
	const db = "app"
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pg.CreateDatabase(c, db); err != nil {
		t.Fatal(err)
	}
	if err := pg.ApplySQLFile(c, db, filepath.Join(pgtest.Root(), "testdata", "sql", "schema.sql")); err != nil {
		t.Fatal(err)
	}

	for _, host := range []string{"127.0.0.1", "localhost"} {
		cfg := pgtest.Config(pg, db)
		cfg.Upstream = pg.DSN("authenticator", "secret", db) + " host=" + host + " sslmode=verify-full sslrootcert=" + pg.CertFile
		env, _ := startObserved(t, pg, db, cfg)
		conn := env.Connect(pgtest.UserToken(t, "alice"))
		// pgtoken's server connection is the backend running this; the
		// token role may not see its pg_stat_ssl row, the superuser may.
		pid := rows(t, conn, "select pg_backend_pid(), current_user")
		if pid[0][1] != "web_user" {
			t.Fatalf("%s: %q", host, pid)
		}
		got := env.Superuser("select ssl, version is not null from pg_stat_ssl where pid = " + pid[0][0])
		if len(got) != 1 || got[0][0] != "t" || got[0][1] != "t" {
			t.Fatalf("%s: server connection over TLS: %q", host, got)
		}
	}

	other, _ := selfSigned(t, t.TempDir())
	for name, tc := range map[string]struct{ dsn, told string }{
		// pgtoken refuses the server's certificate: no login took place.
		"wrong root certificate": {pg.DSN("authenticator", "secret", db) + " sslmode=verify-full sslrootcert=" + other, "pgtoken could not connect to the server"},
		// The server refuses a login in clear text (pg_hba.conf hostssl).
		"no TLS": {pg.DSN("authenticator", "secret", db) + " sslmode=disable", "pgtoken could not log in to the server"},
	} {
		cfg := pgtest.Config(pg, db)
		cfg.Upstream = tc.dsn
		env, logs := startObserved(t, pg, db, cfg)
		refusedAt(t, env, pgtest.UserToken(t, "alice"), "08006", tc.told+" (the reason is in the pgtoken log)")
		_, err := pgconn.Connect(ctx(t), env.DSN(pgtest.UserToken(t, "alice")))
		if err == nil {
			t.Fatalf("%s: logged in", name)
		}
		if msg := err.Error(); strings.Contains(msg, "secret") || strings.Contains(msg, "authenticator") || strings.Contains(msg, "x509") {
			t.Fatalf("%s: the client is told too much: %s", name, msg)
		}
		var why string
		for _, e := range logs.All() {
			for _, f := range e.Context {
				if f.Key == "error" {
					why += f.Interface.(error).Error() + "\n"
				}
			}
		}
		want := "certificate"
		if name == "no TLS" {
			want = "no encryption"
		}
		if !strings.Contains(why, want) {
			t.Fatalf("%s: the log does not say why: %s", name, why)
		}
		if strings.Contains(why, "password=secret") || strings.Contains(why, "'secret'") {
			t.Fatalf("%s: the log shows the upstream password: %s", name, why)
		}
	}
}
