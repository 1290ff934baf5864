package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/internal/config"
)

func TestKeygenMintVerify(t *testing.T) {
	for _, alg := range []string{"EdDSA", "ES256", "RS256", "HS256"} {
		t.Run(alg, func(t *testing.T) {
			dir := t.TempDir()
			var out, errb bytes.Buffer
			pub := filepath.Join(dir, "public.json")
			args := []string{"keygen", "--alg", alg, "--public", pub}
			if alg == "HS256" {
				args = args[:3] // a shared secret has no public half
			}
			if code := run(args, &out, &errb); code != 0 {
				t.Fatalf("keygen: %d %s", code, errb.String())
			}
			key := filepath.Join(dir, "private.json")
			if err := os.WriteFile(key, out.Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			out.Reset()
			if code := run([]string{"mint", "--key", key, "--claims", `{"role":"web_user","sub":"alice","n":12345678901234567890}`, "--ttl", "1h"}, &out, &errb); code != 0 {
				t.Fatalf("mint: %d %s", code, errb.String())
			}
			tok := strings.TrimSpace(out.String())
			cfg := authn.Config{JWKS: []string{"file://" + pub}, AllowedRoles: []string{"web_user"}, RequireExp: true, ClaimsPrefix: "jwt.claims"}
			if alg == "HS256" {
				cfg.JWKS = []string{"file://" + key}
			}
			v, err := authn.New(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			id, err := v.Verify(tok)
			if err != nil {
				t.Fatalf("verify minted token: %v", err)
			}
			if id.Role != "web_user" || id.Sub != "alice" || id.ExpiresAt.IsZero() {
				t.Fatalf("identity: %+v", id)
			}
			for _, s := range id.Settings {
				if s.Name == "jwt.claims.n" && s.Value != "12345678901234567890" {
					t.Fatalf("big number changed: %q", s.Value)
				}
			}
		})
	}
}

func TestCheckValidatesAndRedacts(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("upstream: postgres://authenticator:hunter2@127.0.0.1/app\njwt: {secret: topsecretvalue0123456789abcdefgh, allowed_roles: [web_user]}\n"), 0o600)
	var out, errb bytes.Buffer
	if code := run([]string{"check", "--offline", "--config", good}, &out, &errb); code != 0 {
		t.Fatalf("check: %d %s", code, errb.String())
	}
	if strings.Contains(out.String(), "hunter2") || strings.Contains(out.String(), "topsecret") || !strings.Contains(out.String(), "REDACTED") {
		t.Fatalf("check output leaks or lacks redaction:\n%s", out.String())
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("upstream: postgres://x@y/z\npool: {size: -1}\njwt: {secret: s, allowed_roles: [r]}\n"), 0o600)
	out.Reset()
	errb.Reset()
	if code := run([]string{"check", "--offline", "--config", bad}, &out, &errb); code == 0 || !strings.Contains(errb.String(), "pool.size") {
		t.Fatalf("bad config: code %d, stderr %s", code, errb.String())
	}
}

func TestUnknownCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "unknown command") {
		t.Fatalf("code %d: %s", code, errb.String())
	}
}

func TestCheckFlagsOverEnvOverFile(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "pgtoken.yaml")
	os.WriteFile(conf, []byte("upstream: postgres://a@h/db\npool: {size: 3}\nlog_level: warn\nshutdown_timeout: 7s\njwt: {secret: s, allowed_roles: [r]}\n"), 0o600)
	t.Setenv("PGTOKEN_POOL_SIZE", "5")
	t.Setenv("PGTOKEN_LOG_LEVEL", "debug")
	t.Setenv("PGTOKEN_PEERS", "1=10.0.0.1:6432,2=10.0.0.2:6432")
	t.Setenv("PGTOKEN_DATABASES_REPORTS_UPSTREAM", "postgres://r:pw@h/reports")
	t.Setenv("PGTOKEN_DATABASES_REPORTS_POOL_SIZE", "4")
	var out, errb bytes.Buffer
	if code := run([]string{"check", "--offline", "--config", conf, "--pool-size", "9", "--peer-id", "2"}, &out, &errb); code != 0 {
		t.Fatalf("check: %d %s", code, errb.String())
	}
	for _, want := range []string{
		"size: 9",              // flag over env over file
		"log_level: debug",     // env over file
		"shutdown_timeout: 7s", // file over default
		"peer_id: 2",           // flag
		"1: 10.0.0.1:6432",     // env, a map
		"reports:",             // a mapped database from the environment
		"pool_size: 4",         //
		"r:REDACTED@h/reports", // its password redacted
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("effective config lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "pw@") {
		t.Errorf("password printed:\n%s", out.String())
	}
	errb.Reset()
	if code := run([]string{"check", "--offline", "--config", conf, "--peer-id", "9"}, &out, &errb); code == 0 || !strings.Contains(errb.String(), "peer_id") {
		t.Fatalf("bad flag value: %d %s", code, errb.String())
	}
}

func TestKeygenOutKeep(t *testing.T) {
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "private.jwks.json"), filepath.Join(dir, "jwks.json")
	var out, errb bytes.Buffer
	if code := run([]string{"keygen", "--out", priv, "--public", pub, "--keep"}, &out, &errb); code != 0 {
		t.Fatalf("keygen: %d %s", code, errb.String())
	}
	first, _ := os.ReadFile(priv)
	if fi, err := os.Stat(priv); err != nil || fi.Mode().Perm() != 0o600 || len(first) == 0 {
		t.Fatalf("private key file: %v %v", fi, err)
	}
	if code := run([]string{"keygen", "--out", priv, "--public", pub, "--keep"}, &out, &errb); code != 0 {
		t.Fatal(errb.String())
	}
	if again, _ := os.ReadFile(priv); !bytes.Equal(first, again) {
		t.Fatal("--keep replaced an existing key")
	}
}

// An HS key has no public half: --public is refused before anything is
// written, so the secret never lands in a file named public.
func TestKeygenRefusesPublicForHS(t *testing.T) {
	for _, alg := range []string{"HS256", "HS384", "HS512"} {
		dir := t.TempDir()
		pub, priv := filepath.Join(dir, "pub.json"), filepath.Join(dir, "priv.json")
		var out, errb bytes.Buffer
		code := run([]string{"keygen", "--alg", alg, "--public", pub, "--out", priv}, &out, &errb)
		if code == 0 || !strings.Contains(errb.String(), "shared secret and has no public half") {
			t.Fatalf("%s: code %d, stderr %q", alg, code, errb.String())
		}
		for _, p := range []string{pub, priv} {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Fatalf("%s: %s written (%v)", alg, p, err)
			}
		}
		if out.Len() != 0 {
			t.Fatalf("%s: key printed: %q", alg, out.String())
		}
	}
}

// Private keys are mode 0600: with --out, also over a file that existed
// with a wider mode, and on standard output when it is a regular file (the
// README's keygen > file). A pipe is written to as before.
func TestKeygenPrivateKeyModes(t *testing.T) {
	dir := t.TempDir()
	isKey := func(b []byte) bool { return bytes.Contains(b, []byte(`"d"`)) }

	existing := filepath.Join(dir, "existing.jwks.json")
	if err := os.WriteFile(existing, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"keygen", "--out", existing}, &out, &errb); code != 0 {
		t.Fatal(errb.String())
	}
	if fi, _ := os.Stat(existing); fi.Mode().Perm() != 0o600 {
		t.Fatalf("--out over a 0644 file: mode %v", fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(existing); !isKey(b) {
		t.Fatalf("--out: %q", b)
	}

	redirected := filepath.Join(dir, "redirected.jwks.json")
	f, err := os.OpenFile(redirected, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	code := run([]string{"keygen", "--alg", "ES256"}, f, &errb)
	f.Close()
	if code != 0 {
		t.Fatal(errb.String())
	}
	if fi, _ := os.Stat(redirected); fi.Mode().Perm() != 0o600 {
		t.Fatalf("keygen > file: mode %v", fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(redirected); !isKey(b) {
		t.Fatalf("keygen > file: %q", b)
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); done <- b }()
	code = run([]string{"keygen"}, w, &errb)
	w.Close()
	if b := <-done; code != 0 || !isKey(b) {
		t.Fatalf("keygen | reader: code %d, %q, %s", code, b, errb.String())
	}
}

// TestShippedConfigsAreValid checks the configurations in deploy/ pass
// pgtoken check --offline (the Kubernetes one with its Secret's variables
// set), with the JWKS and certificate files they name made here.
func TestShippedConfigsAreValid(t *testing.T) {
	root := filepath.Join("..", "..")
	dir := t.TempDir()
	var out, errb bytes.Buffer
	jwks := filepath.Join(dir, "jwks.json")
	if code := run([]string{"keygen", "--out", filepath.Join(dir, "private.json"), "--public", jwks}, &out, &errb); code != 0 {
		t.Fatal(errb.String())
	}
	t.Setenv("PGTOKEN_JWT_JWKS", "file://"+jwks) // the shipped ones are URLs of other containers
	if code := run([]string{"check", "--offline", "--config", filepath.Join(root, "deploy", "compose", "pgtoken.yaml")}, &out, &errb); code != 0 {
		t.Fatalf("deploy/compose/pgtoken.yaml: %s", errb.String())
	}
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "kubernetes", "configmap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(raw, &cm); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "pgtoken.yaml")
	if err := os.WriteFile(conf, []byte(cm.Data["pgtoken.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGTOKEN_UPSTREAM", "postgres://authenticator:pw@postgres.database.svc:5432/app?sslmode=verify-full")
	t.Setenv("PGTOKEN_JWT_SECRET", "")
	t.Setenv("PGTOKEN_PEER_ID", "1")
	t.Setenv("PGTOKEN_PEERS", "0=pgtoken-0.pgtoken-peers:6432,1=pgtoken-1.pgtoken-peers:6432,2=pgtoken-2.pgtoken-peers:6432")
	cert, key := writeCert(t, dir)
	t.Setenv("PGTOKEN_TLS_CERT", cert)
	t.Setenv("PGTOKEN_TLS_KEY", key)
	errb.Reset()
	if code := run([]string{"check", "--offline", "--config", conf}, &out, &errb); code != 0 {
		t.Fatalf("deploy/kubernetes/configmap.yaml: %s", errb.String())
	}
}

// TestHelpDescribesEveryFlag: each command's -h (and pgtoken help
// <command>) says what it does and lists every flag with its text, and
// each setting's flag with its PGTOKEN_* variable.
func TestHelpDescribesEveryFlag(t *testing.T) {
	envOf := map[string]string{}
	for _, f := range config.Flags() {
		if f.Env == "" || f.Doc == "" {
			t.Errorf("config flag --%s (%s) has no environment variable or meaning", f.Name, f.Path)
		}
		envOf[f.Name] = f.Env
	}
	envOf["config"] = "PGTOKEN_CONFIG"
	cmds := commands()
	for _, name := range []string{"serve", "check", "keygen", "mint", "version"} {
		c := cmds[name]
		if c == nil {
			t.Fatalf("no command %q", name)
		}
		var out, errb bytes.Buffer
		if code := run([]string{name, "-h"}, &out, &errb); code != 0 || errb.Len() != 0 {
			t.Fatalf("%s -h: exit %d, stderr %q", name, code, errb.String())
		}
		help := out.String()
		var viaHelp bytes.Buffer
		if code := run([]string{"help", name}, &viaHelp, &errb); code != 0 || viaHelp.String() != help {
			t.Errorf("pgtoken help %s differs from %s -h (exit %d)", name, name, code)
		}
		if !strings.HasPrefix(help, "usage: pgtoken "+name) || len(strings.TrimSpace(c.about)) < 30 || !strings.Contains(help, c.about) {
			t.Errorf("%s -h does not say what the command does:\n%s", name, help)
		}
		c.VisitAll(func(f *flag.Flag) {
			_, text := flag.UnquoteUsage(f)
			if len(text) < 10 {
				t.Errorf("%s --%s: no description", name, f.Name)
			}
			if !strings.Contains(help, "\n  --"+f.Name+" ") && !strings.Contains(help, "\n  --"+f.Name+"\n") || !strings.Contains(help, text) {
				t.Errorf("%s -h lacks --%s (%q):\n%s", name, f.Name, text, help)
			}
			if env := envOf[f.Name]; env != "" && !strings.Contains(text, env) {
				t.Errorf("%s --%s does not name %s: %q", name, f.Name, env, text)
			}
		})
	}
}

// TestServeWithoutConfigSaysSo: serve with neither --config nor
// PGTOKEN_CONFIG refuses to start and says what to give, rather than
// complaining about settings a file would have held.
func TestServeWithoutConfigSaysSo(t *testing.T) {
	t.Setenv("PGTOKEN_CONFIG", "")
	t.Setenv("PGTOKEN_UPSTREAM", "postgres://a@127.0.0.1/app")
	var out, errb bytes.Buffer
	code := run([]string{"serve", "--listen", "127.0.0.1:0"}, &out, &errb)
	if code != 2 {
		t.Fatalf("exit %d, want 2; stderr %q", code, errb.String())
	}
	msg := errb.String()
	for _, want := range []string{"no configuration file", "--config FILE", "PGTOKEN_CONFIG"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q: %q", want, msg)
		}
	}
	errb.Reset()
	if code := run([]string{"serve", "pgtoken.yaml"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "did you mean --config pgtoken.yaml") {
		t.Errorf("a file name without --config: exit %d, %q", code, errb.String())
	}
	// PGTOKEN_CONFIG names the file when --config is not given.
	t.Setenv("PGTOKEN_CONFIG", filepath.Join(t.TempDir(), "missing.yaml"))
	errb.Reset()
	if code := run([]string{"serve"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "missing.yaml") {
		t.Errorf("with PGTOKEN_CONFIG naming a missing file: exit %d, %q", code, errb.String())
	}
}
