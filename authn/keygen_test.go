package authn

import (
	"encoding/base64"
	"encoding/json"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

type jwkFields struct {
	Keys []map[string]any `json:"keys"`
}

func TestGenerateAndMintRoundTrip(t *testing.T) {
	for _, alg := range supportedAlgs {
		t.Run(alg, func(t *testing.T) {
			t.Parallel()
			priv, pub, err := GenerateJWKS(alg)
			if err != nil {
				t.Fatal(err)
			}
			var pv, pb jwkFields
			if err := json.Unmarshal(priv, &pv); err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(alg, "HS") {
				if pub != nil {
					t.Fatal("HS: a shared secret has no public half, yet public is not nil")
				}
				pub = priv // pgtoken verifies with the secret itself
			}
			if err := json.Unmarshal(pub, &pb); err != nil {
				t.Fatal(err)
			}
			if len(pv.Keys) != 1 || len(pb.Keys) != 1 {
				t.Fatalf("keys: %d private, %d public", len(pv.Keys), len(pb.Keys))
			}
			pk, uk := pv.Keys[0], pb.Keys[0]
			kid, _ := pk["kid"].(string)
			if raw, err := base64.RawURLEncoding.DecodeString(kid); err != nil || len(raw) < 16 {
				t.Fatalf("kid %q is not random base64url", kid)
			}
			if pk["alg"] != alg || pk["use"] != "sig" || uk["alg"] != alg || uk["use"] != "sig" || uk["kid"] != kid {
				t.Fatalf("private %v / public %v: alg, use or kid wrong", keysOnly(pk), keysOnly(uk))
			}
			if strings.HasPrefix(alg, "HS") {
				if pk["kty"] != "oct" || pk["k"] == nil {
					t.Fatal("HS: the private JWKS must hold the oct key")
				}
			} else {
				if pk["d"] == nil {
					t.Fatal("private JWKS has no private part")
				}
				for _, f := range []string{"d", "p", "q", "dp", "dq", "qi", "k"} {
					if _, ok := uk[f]; ok {
						t.Fatalf("public JWKS has private field %q", f)
					}
				}
			}

			v := newV(t, Config{JWKS: []string{fileURL(writeFile(t, "pub.json", pub))}, ClaimsPrefix: "jwt.claims"})
			now := time.Now().Truncate(time.Second)
			claims := map[string]any{"role": "web_user", "sub": "minted"}
			tok, err := Mint(priv, claims, time.Hour, now)
			if err != nil {
				t.Fatal(err)
			}
			if len(claims) != 2 {
				t.Fatal("Mint modified the caller's claims")
			}
			parsed, _, err := jwt.NewParser().ParseUnverified(tok, jwt.MapClaims{})
			if err != nil {
				t.Fatal(err)
			}
			if parsed.Header["kid"] != kid || parsed.Header["alg"] != alg {
				t.Fatalf("header = %v", parsed.Header)
			}
			id := mustVerify(t, v, tok)
			if id.Role != "web_user" || id.Sub != "minted" || !id.ExpiresAt.Equal(now.Add(time.Hour)) {
				t.Fatalf("identity = %+v", id)
			}
			set := settingMap(t, id.Settings)
			if set["jwt.claims.iat"] != strconv.FormatInt(now.Unix(), 10) {
				t.Fatalf("iat setting = %q", set["jwt.claims.iat"])
			}
		})
	}
}

func keysOnly(m map[string]any) []string {
	var out []string
	for k := range maps.Keys(m) {
		out = append(out, k)
	}
	return out
}

func TestMintOptions(t *testing.T) {
	priv, pub, err := GenerateJWKS("EdDSA")
	if err != nil {
		t.Fatal(err)
	}
	v := newV(t, Config{JWKS: []string{fileURL(writeFile(t, "pub.json", pub))}})
	now := time.Now().Truncate(time.Second)

	// ttl 0: no exp.
	tok, err := Mint(priv, map[string]any{"role": "web_user"}, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	if id := mustVerify(t, v, tok); !id.ExpiresAt.IsZero() {
		t.Fatalf("ExpiresAt = %v, want zero", id.ExpiresAt)
	}
	// An exp in the claims wins over ttl; a given iat is kept.
	exp := now.Add(5 * time.Minute).Unix()
	tok, err = Mint(priv, map[string]any{"role": "web_user", "exp": exp, "iat": 7}, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	id := mustVerify(t, v, tok)
	if id.ExpiresAt.Unix() != exp {
		t.Fatalf("ExpiresAt = %v, want %v", id.ExpiresAt, time.Unix(exp, 0))
	}
	c := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(tok, c); err != nil || c["iat"] != float64(7) {
		t.Fatalf("iat = %v (%v)", c["iat"], err)
	}
	// Zero now means the current time.
	tok, err = Mint(priv, map[string]any{"role": "web_user"}, time.Minute, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if id := mustVerify(t, v, tok); time.Until(id.ExpiresAt) < 50*time.Second {
		t.Fatalf("ExpiresAt = %v", id.ExpiresAt)
	}
	// A JWK without "alg": the algorithm comes from the key type.
	k := keys()
	noAlg := jwksDoc(t, jwkSpec{key: k.ec384, kid: "x", priv: true})
	tok, err = Mint(noAlg, map[string]any{"role": "web_user"}, time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	if p, _, _ := jwt.NewParser().ParseUnverified(tok, jwt.MapClaims{}); p.Header["alg"] != "ES384" {
		t.Fatalf("alg = %v", p.Header["alg"])
	}

	bad := []struct {
		name string
		jwks []byte
		ttl  time.Duration
		want string
	}{
		{"public key", pub, time.Minute, "no private part"},
		{"empty", []byte(`{"keys":[]}`), time.Minute, "holds no key"},
		{"not json", []byte(`nope`), time.Minute, "not a JWKS"},
		{"negative ttl", priv, -time.Second, "ttl"},
		{"enc key", jwksDoc(t, jwkSpec{key: k.ec256, kid: "e", use: "enc", priv: true}), time.Minute, "not sig"},
		{"alg mismatch", jwksDoc(t, jwkSpec{key: k.ec256, kid: "e", alg: "ES384", priv: true}), time.Minute, "cannot sign"},
	}
	for _, b := range bad {
		if _, err := Mint(b.jwks, map[string]any{"role": "x"}, b.ttl, now); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s: err = %v, want %q", b.name, err, b.want)
		}
	}
	for _, alg := range []string{"none", "HS1", "", "es256", "Ed25519"} {
		if _, _, err := GenerateJWKS(alg); err == nil {
			t.Errorf("GenerateJWKS(%q) succeeded", alg)
		}
	}
}
