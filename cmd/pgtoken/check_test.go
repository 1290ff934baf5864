package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/internal/testpg"
)

func ctxT(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// writeCert writes a self-signed certificate and its key into dir.
func writeCert(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	cert, key = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := testpg.WriteSelfSignedCert(cert, key); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// writeConfig writes a configuration file whose body is the YAML after
// the upstream line.
func writeConfig(t *testing.T, upstream, body string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "pgtoken.yaml")
	if err := os.WriteFile(f, []byte(fmt.Sprintf("listen: 127.0.0.1:0\nupstream: %q\n%s", upstream, body)), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// pgtoken check loads keys and certificates as serve does: what fails
// serve fails check, and check warns as serve warns.
func TestCheckLoadsWhatServeLoads(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"a missing JWKS file": "jwt: {jwks: file://" + filepath.Join(dir, "missing.json") + ", allowed_roles: [web_user]}\n",
		"a missing PEM key":   "jwt: {public_keys: [" + filepath.Join(dir, "missing.pem") + "], allowed_roles: [web_user]}\n",
		"a missing certificate": "jwt: {secret: " + pgtest.Secret + ", allowed_roles: [web_user]}\n" +
			"tls: {cert: " + filepath.Join(dir, "missing.crt") + ", key: " + filepath.Join(dir, "missing.key") + "}\n",
	} {
		t.Run(name, func(t *testing.T) {
			conf := writeConfig(t, "host=127.0.0.1 port=1 user=a dbname=app", body)
			var out, errb bytes.Buffer
			if code := run([]string{"check", "--offline", "--config", conf}, &out, &errb); code == 0 || !strings.Contains(errb.String(), "missing") {
				t.Fatalf("check: code %d, stderr %q", code, errb.String())
			}
			checkErr := errb.String()
			errb.Reset()
			if code := run([]string{"serve", "--config", conf}, &out, &errb); code == 0 {
				t.Fatal("serve started")
			}
			if !strings.Contains(errb.String(), strings.TrimSpace(strings.TrimPrefix(checkErr, "pgtoken:"))) {
				t.Fatalf("serve and check fail differently:\ncheck: %s\nserve: %s", checkErr, errb.String())
			}
		})
	}
	// A short secret: serve warns, and so does check (and passes).
	conf := writeConfig(t, "host=127.0.0.1 port=1 user=a dbname=app", "jwt: {secret: short, allowed_roles: [web_user]}\n")
	var out, errb bytes.Buffer
	if code := run([]string{"check", "--offline", "--config", conf}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "shorter than 32 bytes") {
		t.Fatalf("short secret: code %d, stderr %q", code, errb.String())
	}
}

// Against the live upstream, check runs the lock-down checks and reports
// each served role that does not exist or is not granted, with the SQL
// that fixes each failure, and exits 1; a database locked down passes.
func TestCheckAgainstTheUpstream(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	body := fmt.Sprintf("jwt: {secret: %s, allowed_roles: [web_user, web_anon, nopriv, nosuchrole], anon_role: web_anon}\n", pgtest.Secret)
	conf := writeConfig(t, pg.DSN("authenticator", "secret", db), body)
	var out, errb bytes.Buffer
	code := run([]string{"check", "--config", conf}, &out, &errb)
	report := out.String()
	if code == 0 {
		t.Fatalf("check passed:\n%s", report)
	}
	for _, want := range []string{
		fmt.Sprintf("# upstream database %q (login \"authenticator\"): 2 failed", db),
		`FAIL granted: role "nopriv" is not granted to the upstream login "authenticator"`,
		`fix: GRANT "nopriv" TO "authenticator";`,
		`FAIL granted: role "nosuchrole" does not exist`,
		`fix: CREATE ROLE "nosuchrole" NOLOGIN; GRANT "nosuchrole" TO "authenticator";`,
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	if !strings.Contains(errb.String(), "2 upstream check(s) failed") {
		t.Errorf("stderr: %s", errb.String())
	}

	// Postgres's default TEMPORARY for PUBLIC, and a schema web_user may
	// create in: the checks fail, with the fix.
	if err := pg.Exec(ctxT(t), db, "grant temporary on database "+db+" to public; create schema scratch; grant create on schema scratch to web_user"); err != nil {
		t.Fatal(err)
	}
	conf = writeConfig(t, pg.DSN("authenticator", "secret", db), fmt.Sprintf("jwt: {secret: %s, allowed_roles: [web_user]}\n", pgtest.Secret))
	out.Reset()
	errb.Reset()
	if code := run([]string{"check", "--config", conf}, &out, &errb); code == 0 {
		t.Fatalf("check passed:\n%s", out.String())
	}
	for _, want := range []string{
		`FAIL temporary: the upstream login "authenticator" may create temporary objects`,
		`FAIL temporary: role "web_user" may create temporary objects`,
		fmt.Sprintf(`fix: REVOKE TEMPORARY ON DATABASE %q FROM PUBLIC;`, db),
		`FAIL create: role "web_user" may create objects in schema "scratch"`,
		`fix: REVOKE CREATE ON SCHEMA "scratch" FROM "web_user";`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	// checks.skip turns them off; the report still says what they found.
	conf = writeConfig(t, pg.DSN("authenticator", "secret", db), fmt.Sprintf("jwt: {secret: %s, allowed_roles: [web_user]}\nchecks: {skip: [temporary, create]}\n", pgtest.Secret))
	out.Reset()
	if code := run([]string{"check", "--config", conf}, &out, &errb); code != 0 || !strings.Contains(out.String(), "skipped (checks.skip) temporary") {
		t.Fatalf("skipped: code %d\n%s", code, out.String())
	}

	// Locked down again: every check passes.
	if err := pg.Exec(ctxT(t), db, fmt.Sprintf(`revoke temporary on database %s from public; revoke create on schema scratch from web_user`, db)); err != nil {
		t.Fatal(err)
	}
	conf = writeConfig(t, pg.DSN("authenticator", "secret", db), fmt.Sprintf("jwt: {secret: %s, allowed_roles: [web_user, web_anon, web_admin, console_only]}\nadmin_roles: [web_admin, console_only]\n", pgtest.Secret))
	out.Reset()
	errb.Reset()
	if code := run([]string{"check", "--config", conf}, &out, &errb); code != 0 || !strings.Contains(out.String(), "every check passes") {
		t.Fatalf("locked down: code %d\n%s\n%s", code, out.String(), errb.String())
	}

	// An upstream that does not answer fails check.
	conf = writeConfig(t, "host=127.0.0.1 port=1 user=a dbname=app connect_timeout=2", fmt.Sprintf("jwt: {secret: %s, allowed_roles: [web_user]}\n", pgtest.Secret))
	out.Reset()
	errb.Reset()
	if code := run([]string{"check", "--config", conf}, &out, &errb); code == 0 || !strings.Contains(out.String(), `upstream database "app": cannot check it`) {
		t.Fatalf("no upstream: code %d\n%s", code, out.String())
	}
	// ... and says why, not that there is a fix.
	if got := errb.String(); !strings.Contains(got, "1 upstream database(s) could not be checked; the reason is above") || strings.Contains(got, "fixes") {
		t.Errorf("no upstream: stderr %q", got)
	}
}
