package session_test

// Tokens shaped exactly as the issuers of the seed documents make them
// (Ory Kratos' PostgREST and Hasura templates, KrakenD, SuperTokens,
// Platformatic, Auth0) log in through pgtoken, and their claims read back
// from Postgres under the names docs/CONFIG.md documents ("How claim names
// become settings"), in both protocols.

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// jwksHandler serves a replaceable JWKS document at path, counting requests.
type jwksHandler struct {
	path     string
	doc      atomic.Pointer[[]byte]
	requests atomic.Int32
}

func (h *jwksHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.requests.Add(1)
	if r.URL.Path != h.path {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(*h.doc.Load())
}

func (h *jwksHandler) set(keys ...map[string]any) {
	b, _ := json.Marshal(map[string]any{"keys": keys})
	h.doc.Store(&b)
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func rsaJWK(k *rsa.PrivateKey, kid string) map[string]any {
	return map[string]any{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
		"n": b64url(k.N.Bytes()), "e": b64url(big.NewInt(int64(k.E)).Bytes())}
}

func ecJWK(k *ecdsa.PrivateKey, kid string) map[string]any {
	pub, err := k.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		panic(err)
	}
	return map[string]any{"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
		"x": b64url(pub[1:33]), "y": b64url(pub[33:])}
}

// signWith signs claims with method and key, with a kid header if given.
func signWith(t *testing.T, method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writeJSON(t *testing.T, path string, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSeedIssuerTokens(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	dir := t.TempDir()
	now := time.Now()
	exp := now.Add(time.Hour).Unix()
	identity := "9f425a8d-7efc-4768-8f23-7647a74fdf13"

	// Ory Kratos signs with the private EdDSA JWK it is given
	// (jwk.eddsa.json, as oathkeeper credentials generate writes it), and
	// PostgREST, Hasura and pgtoken verify with that same file.
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	const kratosKID = "10dd524d-decb-48ff-b84d-7d389c10f2f7"
	kratosJWK := writeJSON(t, filepath.Join(dir, "jwk.eddsa.json"), map[string]any{"keys": []map[string]any{{
		"use": "sig", "kty": "OKP", "kid": kratosKID, "crv": "Ed25519", "alg": "EdDSA",
		"x": b64url(edPub), "d": b64url(edPriv.Seed()),
	}}})
	kratos := func(mapped jwt.MapClaims) string { // the tokenizer's claims, then the Jsonnet mapper's
		c := jwt.MapClaims{"jti": "4b8a5f0e-1d1b-4b5c-9a51-0b7f5d0c2e11", "iss": "https://kratos.example/",
			"exp": exp, "sub": identity, "sid": "0d2f7f0e-77b2-4f4b-8a8e-3e1c0b6e9a55", "nbf": now.Unix(), "iat": now.Unix()}
		for k, v := range mapped {
			c[k] = v
		}
		return signWith(t, jwt.SigningMethodEdDSA, edPriv, kratosKID, c)
	}

	// KrakenD signs with a symmetric oct JWK under kid "sim2".
	krakendSecret := make([]byte, 32)
	_, _ = rand.Read(krakendSecret)
	krakendJWK := writeJSON(t, filepath.Join(dir, "symmetric.json"), map[string]any{"keys": []map[string]any{{
		"kty": "oct", "alg": "HS256", "kid": "sim2", "k": b64url(krakendSecret),
	}}})

	// SuperTokens serves its keys at <apiDomain>/auth/jwt/jwks.json and
	// rotates them (kids d-<timestamp>).
	stOld, _ := rsa.GenerateKey(rand.Reader, 2048)
	stNew, _ := rsa.GenerateKey(rand.Reader, 2048)
	st := &jwksHandler{path: "/auth/jwt/jwks.json"}
	st.set(rsaJWK(stOld, "d-1700000000000"))
	stSrv := httptest.NewServer(st)
	defer stSrv.Close()

	// An Auth0 tenant (or any issuer Platformatic's allowedDomains lists):
	// keys at <iss>/.well-known/jwks.json, iss with a trailing '/'.
	auth0Key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	auth0 := &jwksHandler{path: "/.well-known/jwks.json"}
	auth0.set(ecJWK(auth0Key, "auth0-key-1"))
	auth0Srv := httptest.NewServer(auth0)
	defer auth0Srv.Close()
	unlisted := &jwksHandler{path: "/.well-known/jwks.json"}
	unlisted.set(ecJWK(auth0Key, "auth0-key-1"))
	unlistedSrv := httptest.NewServer(unlisted)
	defer unlistedSrv.Close()
	auth0Claims := func(iss string) jwt.MapClaims {
		return jwt.MapClaims{"iss": iss, "sub": "auth0|64f1c2", "aud": []string{"https://api.example.com", iss + "userinfo"},
			"iat": now.Unix(), "exp": exp, "azp": "Xy12", "scope": "openid profile",
			"https://myapp.example.com/role": "web_user", "https://myapp.example.com/email": "ada@example.com"}
	}

	hasura := map[string]any{"x-hasura-default-role": "web_user", "x-hasura-allowed-roles": []string{"web_user"}, "x-hasura-user-id": identity}
	for _, tc := range []struct {
		name   string
		config func(*config.Config)
		token  func() string
		want   map[string]string // SQL expression → its value
	}{
		{"Ory Kratos, PostgREST template (EdDSA JWK)",
			func(c *config.Config) { c.JWT.JWKS = config.StringList{"file://" + kratosJWK} },
			func() string { return kratos(jwt.MapClaims{"role": "web_user", "userId": identity}) },
			map[string]string{
				"current_setting('jwt.claims.userId')": identity, // setting names ignore case
				"current_setting('jwt.claims.userid')": identity,
				"current_setting('jwt.claims.sub')":    identity,
				"current_setting('jwt.claims.iss')":    "https://kratos.example/",
				"current_setting('jwt.claims.role')":   "web_user",
			}},
		{"Ory Kratos, Hasura template (namespaced object)",
			func(c *config.Config) {
				c.JWT.JWKS = config.StringList{"file://" + kratosJWK}
				c.JWT.RoleClaim = ".x-hasura-default-role"
				c.Claims.Namespaces = config.StringList{"https://hasura.io/jwt/claims"}
			},
			func() string { return kratos(jwt.MapClaims{"https://hasura.io/jwt/claims": hasura}) },
			map[string]string{
				"current_setting('jwt.claims.x_hasura_user_id')":       identity,
				"current_setting('jwt.claims.x_hasura_default_role')":  "web_user",
				"current_setting('jwt.claims.x_hasura_allowed_roles')": `["web_user"]`,
				"current_setting('jwt.claims.sub')":                    identity,
				// claims.json keeps the token's own claims.
				"current_setting('request.jwt.claims')::jsonb->'https://hasura.io/jwt/claims'->>'x-hasura-user-id'": identity,
				"current_setting('jwt.claims.https___hasura_io_jwt_claims', true) is null":                          "true",
			}},
		{"KrakenD (oct JWK with a kid, roles array)",
			func(c *config.Config) {
				c.JWT.JWKS = config.StringList{"file://" + krakendJWK}
				c.JWT.RoleClaim = ".roles[0]"
			},
			func() string {
				return signWith(t, jwt.SigningMethodHS256, krakendSecret, "sim2", jwt.MapClaims{
					"aud": "https://your.krakend.io", "iss": "https://your-backend", "sub": "1234567890qwertyuio",
					"jti": "mnb23vcsrt756yuiomnbvcx98ertyuiop", "roles": []string{"web_user", "role_b"}, "exp": exp})
			},
			map[string]string{
				"current_setting('jwt.claims.roles')": `["web_user","role_b"]`,
				"current_setting('jwt.claims.aud')":   "https://your.krakend.io",
				"current_setting('jwt.claims.sub')":   "1234567890qwertyuio",
				"current_setting('jwt.claims.jti')":   "mnb23vcsrt756yuiomnbvcx98ertyuiop",
			}},
		{"SuperTokens (JWKS URL, issuer checked, rotated kid)",
			func(c *config.Config) {
				c.JWT.JWKS = config.StringList{stSrv.URL + "/auth/jwt/jwks.json"}
				c.JWT.Issuer = stSrv.URL + "/auth"
				c.JWT.RoleClaim = ".st-role.v[0]"
			},
			func() string {
				// Rotated after pgtoken fetched the set: the new kid makes it
				// fetch once more.
				st.set(rsaJWK(stOld, "d-1700000000000"), rsaJWK(stNew, "d-1700086400000"))
				return signWith(t, jwt.SigningMethodRS256, stNew, "d-1700086400000", jwt.MapClaims{
					"iat": now.Unix(), "exp": exp, "sub": identity, "tId": "public", "rsub": identity,
					"sessionHandle": "2b1c0c8e-5d3c-4c1e-9f4a-6d1a2e3f4b5c", "refreshTokenHash1": "a3f1",
					"parentRefreshTokenHash1": nil, "antiCsrfToken": nil, "iss": stSrv.URL + "/auth",
					"st-role": map[string]any{"v": []string{"web_user"}, "t": 1700000000000},
					"st-perm": map[string]any{"v": []string{}, "t": 1700000000000},
					"st-ev":   map[string]any{"v": true, "t": 1700000000000},
				})
			},
			map[string]string{
				"current_setting('jwt.claims.st_role')":       `{"t":1700000000000,"v":["web_user"]}`,
				"current_setting('jwt.claims.st_ev')":         `{"t":1700000000000,"v":true}`,
				"current_setting('jwt.claims.sessionhandle')": "2b1c0c8e-5d3c-4c1e-9f4a-6d1a2e3f4b5c",
				"current_setting('jwt.claims.tId')":           "public",
				"current_setting('jwt.claims.antiCsrfToken')": "null",
			}},
		{"Platformatic (shared secret, namespace prefix)",
			func(c *config.Config) {
				c.JWT.Secret = "platformatic-shared-secret-0123456789abcdef"
				c.JWT.RoleClaim = ".X-PLATFORMATIC-ROLE"
				c.Claims.Namespaces = config.StringList{"https://platformatic.dev/"}
			},
			func() string {
				return signWith(t, jwt.SigningMethodHS256, []byte("platformatic-shared-secret-0123456789abcdef"), "", jwt.MapClaims{
					"https://platformatic.dev/X-PLATFORMATIC-USER-ID": 42, "https://platformatic.dev/X-PLATFORMATIC-ROLE": "web_user", "exp": exp})
			},
			map[string]string{
				"current_setting('jwt.claims.x_platformatic_user_id')": "42",
				"current_setting('jwt.claims.X_PLATFORMATIC_ROLE')":    "web_user",
			}},
		{"Auth0 / Platformatic allowedDomains (JWKS from the issuer, namespaced claims)",
			func(c *config.Config) {
				c.JWT.Secret = ""
				c.JWT.JWKSIssuers = config.StringList{auth0Srv.URL}
				c.JWT.RoleClaim = ".role"
				c.Claims.Namespaces = config.StringList{"https://myapp.example.com/"}
			},
			func() string {
				return signWith(t, jwt.SigningMethodES256, auth0Key, "auth0-key-1", auth0Claims(auth0Srv.URL+"/"))
			},
			map[string]string{
				"current_setting('jwt.claims.role')":  "web_user",
				"current_setting('jwt.claims.email')": "ada@example.com",
				"current_setting('jwt.claims.sub')":   "auth0|64f1c2",
				"current_setting('jwt.claims.scope')": "openid profile",
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := pgtest.Config(pg, db)
			cfg.JWT.Secret = "" // each issuer's own keys only
			tc.config(&cfg)
			env := pgtest.StartWith(t, pg, db, cfg)
			c := env.Connect(tc.token())
			exprs := []string{"current_user::text"}
			want := []string{"web_user"}
			for e, v := range tc.want {
				exprs = append(exprs, e+"::text")
				want = append(want, v)
			}
			sql := "select " + strings.Join(exprs, ", ")
			// Simple protocol (the SET LOCAL prelude) and extended protocol
			// (the set_config prelude).
			simple := rows(t, c, sql)
			res := c.ExecParams(ctx(t), sql, nil, nil, nil, nil).Read()
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			extended := flatten([]*pgconn.Result{res})
			for name, got := range map[string][][]string{"simple": simple, "extended": extended} {
				if fmt.Sprint(got) != fmt.Sprint([][]string{want}) {
					for i := range exprs {
						if len(got) == 1 && i < len(got[0]) && got[0][i] != want[i] {
							t.Errorf("%s protocol: %s = %q, want %q", name, exprs[i], got[0][i], want[i])
						}
					}
					t.Fatalf("%s protocol: %q", name, got)
				}
			}
		})
	}
	if n := st.requests.Load(); n != 2 {
		t.Errorf("SuperTokens JWKS fetched %d times, want 2 (at start, and once for the rotated kid)", n)
	}

	// A token from an issuer jwt.jwks_issuers does not list is refused at
	// login, and its issuer is never asked for keys.
	cfg := pgtest.Config(pg, db)
	cfg.JWT.Secret = ""
	cfg.JWT.JWKSIssuers = config.StringList{auth0Srv.URL}
	env := pgtest.StartWith(t, pg, db, cfg)
	claims := auth0Claims(unlistedSrv.URL + "/")
	claims["role"] = "web_user"
	_, err := pgconn.Connect(ctx(t), env.DSN(signWith(t, jwt.SigningMethodES256, auth0Key, "auth0-key-1", claims)))
	if pe := pgErr(err); pe == nil || pe.Code != "28P01" || !strings.Contains(pe.Message, "is not trusted") {
		t.Fatalf("unlisted issuer: %v", err)
	}
	if n := unlisted.requests.Load(); n != 0 {
		t.Fatalf("the unlisted issuer was asked for keys %d times", n)
	}
}
