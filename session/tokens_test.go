package session_test

// Hostile tokens end to end (issue 4): each is refused at login with its
// reason, and pgtoken keeps serving the clients it has and new ones.

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// rsaPublicPEM returns the PEM of the public key in a private RS256 JWKS,
// and the key's kid.
func rsaPublicPEM(t *testing.T, priv []byte) ([]byte, string) {
	t.Helper()
	var set struct {
		Keys []struct{ N, E, Kid string } `json:"keys"`
	}
	if err := json.Unmarshal(priv, &set); err != nil {
		t.Fatal(err)
	}
	k := set.Keys[0]
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(b64bytes(t, k.N)), E: int(new(big.Int).SetBytes(b64bytes(t, k.E)).Int64())}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), k.Kid
}

// signHS signs claims with HS256 under key, with extra header fields.
func signHS(t *testing.T, key []byte, header map[string]any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	for k, v := range header {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// signRaw signs a payload given as JSON text (so it may hold what a JSON
// encoder would not write) with HS256.
func signRaw(t *testing.T, key []byte, payload string) string {
	t.Helper()
	in := b64(map[string]any{"alg": "HS256", "typ": "JWT"}) + "." + base64.RawURLEncoding.EncodeToString([]byte(payload))
	sig, err := jwt.SigningMethodHS256.Sign(in, key)
	if err != nil {
		t.Fatal(err)
	}
	return in + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func b64(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestHostileTokensAreRefused(t *testing.T) {
	noGoroutineLeaks(t)
	dir := t.TempDir()
	rsPriv, rsFile := keyPair(t, dir, "RS256")
	pubPEM, kid := rsaPublicPEM(t, rsPriv)
	pemFile := filepath.Join(dir, "rs.pem")
	if err := os.WriteFile(pemFile, pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	otherPriv, _ := keyPair(t, t.TempDir(), "RS256")
	env := pgtest.Start(t, func(c *config.Config) {
		// An RSA key in a JWKS and as a PEM file, and a shared secret:
		// the setting algorithm confusion preys on.
		c.JWT.JWKS = config.StringList{"file://" + rsFile}
		c.JWT.PublicKeys = config.StringList{pemFile}
		c.JWT.AnonRole = ""
	})
	before := env.Connect(pgtest.UserToken(t, "bob"))

	now := time.Now()
	exp := now.Add(time.Hour).Unix()
	user := jwt.MapClaims{"role": "web_user", "sub": "mallory", "exp": exp}
	mintRS := func(priv []byte, claims map[string]any) string {
		tok, err := authn.Mint(priv, claims, time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	goodRS := mintRS(rsPriv, map[string]any{"role": "web_user", "sub": "rs"})
	parts := strings.Split(goodRS, ".")
	tampered := parts[0] + "." + b64(map[string]any{"role": "web_admin", "sub": "rs", "exp": exp}) + "." + parts[2]
	withClaims := func(extra map[string]any) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "mallory", "exp": exp}
		for k, v := range extra {
			c[k] = v
		}
		return c
	}

	for _, tc := range []struct {
		name, token, want string
	}{
		{"alg none", b64(map[string]any{"alg": "none", "typ": "JWT"}) + "." + b64(user) + ".", "algorithm"},
		{"alg None with a signature", b64(map[string]any{"alg": "None"}) + "." + b64(user) + ".c2ln", "algorithm"},
		{"HS256 signed with the RSA public key PEM", signHS(t, pubPEM, nil, user), "bad signature"},
		{"HS256 with the RSA PEM and the RSA key's kid", signHS(t, pubPEM, map[string]any{"kid": kid}, user), "algorithm"},
		{"HS256 with the RSA PEM minus its newline", signHS(t, []byte(strings.TrimSpace(string(pubPEM))), nil, user), "bad signature"},
		{"wrong kid", signHS(t, []byte(pgtest.Secret), map[string]any{"kid": "no-such-key"}, user), "unknown key id"},
		{"kid path traversal", signHS(t, []byte(pgtest.Secret), map[string]any{"kid": "../../../../etc/passwd"}, user), "unknown key id"},
		{"another RSA key under our kid", func() string {
			var set map[string][]map[string]any
			_ = json.Unmarshal(otherPriv, &set)
			set["keys"][0]["kid"] = kid
			b, _ := json.Marshal(set)
			return mintRS(b, map[string]any{"role": "web_user"})
		}(), "bad signature"},
		{"tampered payload", tampered, "bad signature"},
		{"signature stripped", parts[0] + "." + parts[1] + ".", "bad signature"},
		{"expired", pgtest.Token(t, map[string]any{"role": "web_user", "exp": now.Add(-time.Hour).Unix()}), "expired"},
		{"nbf in the future", pgtest.Token(t, map[string]any{"role": "web_user", "nbf": now.Add(time.Hour).Unix()}), "not yet valid"},
		{"no exp", signHS(t, []byte(pgtest.Secret), nil, jwt.MapClaims{"role": "web_user"}), "exp"},
		{"role postgres", pgtest.Token(t, map[string]any{"role": "postgres"}), `role "postgres" is not allowed`},
		{"role authenticator", pgtest.Token(t, map[string]any{"role": "authenticator"}), "not allowed"},
		{"role with quotes", pgtest.Token(t, map[string]any{"role": `web"user`}), "not allowed"},
		{"role with a quote and SQL", pgtest.Token(t, map[string]any{"role": `web_user'; reset role; --`}), "not allowed"},
		{"role with a NUL", pgtest.Token(t, map[string]any{"role": "web_user\x00"}), "NUL"},
		{"role not a string", pgtest.Token(t, map[string]any{"role": []string{"web_user"}}), "not a string"},
		{"no role claim, no anon role", pgtest.Token(t, map[string]any{"sub": "x"}), "no role"},
		{"claims not an object", b64(map[string]any{"alg": "HS256"}) + "." + base64.RawURLEncoding.EncodeToString([]byte(`"x"`)) + ".AAAA", "malformed"},
		{"not a JWT", "hunter2", "malformed"},
		{"four segments", goodRS + ".x", "malformed"},
		{"crit header", signHS(t, []byte(pgtest.Secret), map[string]any{"crit": []string{"exp"}}, user), "crit"},
		{"duplicate role claims, signed", signRaw(t, []byte(pgtest.Secret), fmt.Sprintf(`{"role":"web_user","exp":%d,"role":"web_admin"}`, exp)), "appears more than once"},
		{"1 MB token", strings.Repeat("a", 1<<20), "larger than 65536 bytes"},
		{"token over the verifier's limit", "eyJ" + strings.Repeat("a", 20000), "longer than 16384 bytes"},
		{"claims with the admin role", signHS(t, []byte("not-the-secret-0123456789abcdef0123"), nil, withClaims(map[string]any{"role": "web_admin"})), "bad signature"},
	} {
		cfg, err := pgconn.ParseConfig(env.DSN("x"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Password = tc.token
		start := time.Now()
		c, err := pgconn.ConnectConfig(ctx(t), cfg)
		if err == nil {
			_ = c.Close(ctx(t))
			t.Errorf("%s: logged in", tc.name)
			continue
		}
		pe := pgErr(err)
		if pe == nil || pe.Code != "28P01" || pe.Severity != "FATAL" || !strings.HasPrefix(pe.Message, "token rejected") || !strings.Contains(pe.Message, tc.want) {
			t.Errorf("%s: got %v", tc.name, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%s: refusal took %s", tc.name, d)
		}
	}
	// The client from before and new ones are served.
	if got := rows(t, before, whoami); got[0][1] != "bob" {
		t.Fatalf("client logged in before: %q", got)
	}
	for name, tok := range map[string]string{"HS256": pgtest.UserToken(t, "carol"), "RS256": goodRS} {
		c := env.Connect(tok)
		if got := rows(t, c, "select current_user"); got[0][0] != "web_user" {
			t.Fatalf("%s after the hostile tokens: %q", name, got)
		}
	}
}

// A role that only allowed_roles lets through and that the server does not
// know: the login succeeds (pgtoken cannot know), but nothing runs, and the
// quoting holds (current_user never changes).
func TestAllowedRoleWithQuotesIsQuotedSafely(t *testing.T) {
	role := `web"user'; reset role; --\`
	env := pgtest.Start(t, func(c *config.Config) {
		c.JWT.AllowedRoles = append(c.JWT.AllowedRoles, role)
	})
	c := env.Connect(pgtest.Token(t, map[string]any{"role": role, "sub": "q"}))
	for _, sql := range []string{"select current_user", "begin; select current_user; commit"} {
		_, err := c.Exec(ctx(t), sql).ReadAll()
		pe := pgErr(err)
		if pe == nil || pe.Code != "22023" && pe.Code != "42704" || !strings.Contains(pe.Message, `web"user`) {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	b := &pgconn.Batch{}
	b.ExecParams("select current_user", nil, nil, nil, nil)
	if _, err := c.ExecBatch(ctx(t), b).ReadAll(); pgErr(err) == nil {
		t.Fatalf("extended: %v", err)
	}
}
