package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtoken/pgtoken/authn"
)

func TestKeygenMintVerify(t *testing.T) {
	for _, alg := range []string{"EdDSA", "ES256", "RS256", "HS256"} {
		t.Run(alg, func(t *testing.T) {
			dir := t.TempDir()
			var out, errb bytes.Buffer
			pub := filepath.Join(dir, "public.json")
			if code := run([]string{"keygen", "--alg", alg, "--public", pub}, &out, &errb); code != 0 {
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
	if code := run([]string{"check", "--config", good}, &out, &errb); code != 0 {
		t.Fatalf("check: %d %s", code, errb.String())
	}
	if strings.Contains(out.String(), "hunter2") || strings.Contains(out.String(), "topsecret") || !strings.Contains(out.String(), "REDACTED") {
		t.Fatalf("check output leaks or lacks redaction:\n%s", out.String())
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("upstream: postgres://x@y/z\npool: {size: -1}\njwt: {secret: s, allowed_roles: [r]}\n"), 0o600)
	out.Reset()
	errb.Reset()
	if code := run([]string{"check", "--config", bad}, &out, &errb); code == 0 || !strings.Contains(errb.String(), "pool.size") {
		t.Fatalf("bad config: code %d, stderr %s", code, errb.String())
	}
}

func TestUnknownCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "unknown command") {
		t.Fatalf("code %d: %s", code, errb.String())
	}
}
