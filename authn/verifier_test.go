package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

func TestHMACSecret(t *testing.T) {
	v := newV(t, Config{Secret: testSecret, ClaimsPrefix: "jwt.claims"})
	now := time.Now()
	for _, m := range []*jwt.SigningMethodHMAC{jwt.SigningMethodHS256, jwt.SigningMethodHS384, jwt.SigningMethodHS512} {
		t.Run(m.Alg(), func(t *testing.T) {
			exp := now.Add(time.Hour).Unix()
			tok := sign(t, m, []byte(testSecret), nil, map[string]any{"role": "web_user", "sub": "alice", "jti": "j-" + m.Alg(), "exp": exp})
			id := mustVerify(t, v, tok)
			if id.Role != "web_user" || id.Sub != "alice" || id.JTI != "j-"+m.Alg() {
				t.Fatalf("identity = %+v", id)
			}
			if !id.ExpiresAt.Equal(time.Unix(exp, 0)) {
				t.Fatalf("ExpiresAt = %v, want %v", id.ExpiresAt, time.Unix(exp, 0))
			}
			want := []Setting{
				{"jwt.claims.exp", fmt.Sprint(exp)},
				{"jwt.claims.jti", "j-" + m.Alg()},
				{"jwt.claims.role", "web_user"},
				{"jwt.claims.sub", "alice"},
			}
			if !reflect.DeepEqual(id.Settings, want) {
				t.Fatalf("Settings = %q, want %q", id.Settings, want)
			}
		})
	}
	if got := v.KeyCount(); got != 1 {
		t.Fatalf("KeyCount = %d, want 1", got)
	}
}

func TestDerivedAlgorithms(t *testing.T) {
	k := keys()
	jwks := writeFile(t, "jwks.json", jwksDoc(t,
		jwkSpec{key: k.ec384, kid: "e"},
		jwkSpec{key: k.ed, kid: "d"},
	))
	pemPath := writeFile(t, "rsa.pem", pemPKIX(t, &k.rsa1.PublicKey))
	v := newV(t, Config{JWKS: []string{fileURL(jwks)}, PublicKeys: []string{pemPath}})
	want := []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES384", "EdDSA"}
	if got := v.parser.Load().algs; !reflect.DeepEqual(got, want) {
		t.Fatalf("derived algorithms = %v, want %v", got, want)
	}
	v2 := newV(t, Config{Secret: testSecret})
	if got := v2.parser.Load().algs; !reflect.DeepEqual(got, []string{"HS256", "HS384", "HS512"}) {
		t.Fatalf("derived algorithms = %v", got)
	}
	// An RS256 token against a secret-only verifier: algorithm not allowed.
	tok := sign(t, jwt.SigningMethodRS256, k.rsa1, nil, claimsAt(time.Now(), nil))
	e := expectReason(t, mustErr(v2.Verify(tok)), ReasonAlgorithm)
	if e.Error() != `token algorithm "RS256" is not allowed` {
		t.Fatalf("Error() = %q", e.Error())
	}
}

func mustErr(_ *Identity, err error) error { return err }

func TestExplicitAlgorithms(t *testing.T) {
	k := keys()
	pemPath := writeFile(t, "rsa.pem", pemPKIX(t, &k.rsa1.PublicKey))
	v := newV(t, Config{Secret: testSecret, PublicKeys: []string{pemPath}, Algorithms: []string{"RS256"}})
	now := time.Now()
	mustVerify(t, v, sign(t, jwt.SigningMethodRS256, k.rsa1, nil, claimsAt(now, nil)))
	expectReason(t, mustErr(v.Verify(sign(t, jwt.SigningMethodRS384, k.rsa1, nil, claimsAt(now, nil)))), ReasonAlgorithm)
	expectReason(t, mustErr(v.Verify(sign(t, jwt.SigningMethodHS256, []byte(testSecret), nil, claimsAt(now, nil)))), ReasonAlgorithm)
}

func TestAlgNone(t *testing.T) {
	for _, algs := range [][]string{{"none"}, {"HS256", "none"}, {"NONE"}, {"None"}} {
		_, err := New(context.Background(), Config{Secret: testSecret, AllowedRoles: []string{"a"}, Algorithms: algs})
		if err == nil || !strings.Contains(err.Error(), `"none" is never accepted`) {
			t.Fatalf("New with Algorithms %q: err = %v", algs, err)
		}
	}
	unsigned := b64(`{"alg":"none","typ":"JWT"}`) + "." + b64(`{"role":"web_user"}`) + "."
	for _, cfg := range []Config{
		{Secret: testSecret},
		{Secret: testSecret, Algorithms: []string{"HS256"}},
	} {
		v := newV(t, cfg)
		e := expectReason(t, mustErr(v.Verify(unsigned)), ReasonAlgorithm)
		if e.Error() != `token algorithm "none" is not allowed` {
			t.Fatalf("Error() = %q", e.Error())
		}
		// "none" with a signature made with the secret changes nothing.
		sig := rawHS(t, jwt.SigningMethodHS256, `{"alg":"none"}`, `{"role":"web_user"}`, []byte(testSecret))
		expectReason(t, mustErr(v.Verify(sig)), ReasonAlgorithm)
	}
}

// TestAlgorithmConfusion signs HS256 tokens with the RSA public key (PEM
// bytes, and DER bytes) as the HMAC secret.
func TestAlgorithmConfusion(t *testing.T) {
	k := keys()
	pemBytes := pemPKIX(t, &k.rsa1.PublicKey)
	der, _ := x509.MarshalPKIXPublicKey(&k.rsa1.PublicKey)
	pemPath := writeFile(t, "rsa.pem", pemBytes)
	jwksPath := writeFile(t, "jwks.json", jwksDoc(t, jwkSpec{key: k.rsa1, kid: "r1"}))
	now := time.Now()
	forged := func(header map[string]any, secret []byte) string {
		return sign(t, jwt.SigningMethodHS256, secret, header, claimsAt(now, nil))
	}
	cases := []struct {
		name string
		cfg  Config
		tok  string
		want Reason
	}{
		{"pem key, derived algs", Config{PublicKeys: []string{pemPath}}, forged(nil, pemBytes), ReasonAlgorithm},
		{"pem key, HS256 listed", Config{PublicKeys: []string{pemPath}, Algorithms: []string{"RS256", "HS256"}}, forged(nil, pemBytes), ReasonAlgorithm},
		{"pem key, der secret", Config{PublicKeys: []string{pemPath}, Algorithms: []string{"RS256", "HS256"}}, forged(nil, der), ReasonAlgorithm},
		{"pem key plus other secret", Config{PublicKeys: []string{pemPath}, Secret: testSecret}, forged(nil, pemBytes), ReasonBadSignature},
		{"jwks kid, derived algs", Config{JWKS: []string{fileURL(jwksPath)}}, forged(map[string]any{"kid": "r1"}, pemBytes), ReasonAlgorithm},
		{"jwks kid, HS256 listed", Config{JWKS: []string{fileURL(jwksPath)}, Secret: testSecret, Algorithms: []string{"RS256", "HS256"}}, forged(map[string]any{"kid": "r1"}, pemBytes), ReasonAlgorithm},
		{"jwks no kid, HS256 listed", Config{JWKS: []string{fileURL(jwksPath)}, Algorithms: []string{"RS256", "HS256"}}, forged(nil, pemBytes), ReasonAlgorithm},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := newV(t, c.cfg)
			expectReason(t, mustErr(v.Verify(c.tok)), c.want)
			// The genuine RS256 token is still accepted.
			hdr := map[string]any{}
			if len(c.cfg.JWKS) > 0 {
				hdr["kid"] = "r1"
			}
			mustVerify(t, v, sign(t, jwt.SigningMethodRS256, k.rsa1, hdr, claimsAt(now, nil)))
		})
	}
}

func TestJWKSFileAllAlgorithms(t *testing.T) {
	k := keys()
	oct := []byte("an-oct-key-that-is-32-bytes-long!!")
	doc := jwksDoc(t,
		jwkSpec{key: k.rsa1, kid: "rsa"},
		jwkSpec{key: k.ec256, kid: "ec256"},
		jwkSpec{key: k.ec384, kid: "ec384", alg: "ES384"},
		jwkSpec{key: k.ec521, kid: "ec521"},
		jwkSpec{key: k.ed, kid: "ed"},
		jwkSpec{key: oct, kid: "oct"},
		jwkSpec{key: k.rsa2, kid: "rsa-enc", use: "enc"},
		jwkSpec{key: k.rsa2, kid: "rsa-wrap", ops: []jwkset.KEYOPS{jwkset.KeyOpsWrapKey}},
	)
	v := newV(t, Config{JWKS: []string{fileURL(writeFile(t, "jwks.json", doc))}, ClaimsPrefix: "jwt.claims"})
	if got := v.KeyCount(); got != 6 {
		t.Fatalf("KeyCount = %d, want 6 (enc and wrapKey keys are not signature keys)", got)
	}
	now := time.Now()
	cases := []struct {
		m   jwt.SigningMethod
		key any
		kid string
	}{
		{jwt.SigningMethodRS256, k.rsa1, "rsa"},
		{jwt.SigningMethodRS384, k.rsa1, "rsa"},
		{jwt.SigningMethodRS512, k.rsa1, "rsa"},
		{jwt.SigningMethodPS256, k.rsa1, "rsa"},
		{jwt.SigningMethodPS384, k.rsa1, "rsa"},
		{jwt.SigningMethodPS512, k.rsa1, "rsa"},
		{jwt.SigningMethodES256, k.ec256, "ec256"},
		{jwt.SigningMethodES384, k.ec384, "ec384"},
		{jwt.SigningMethodES512, k.ec521, "ec521"},
		{jwt.SigningMethodEdDSA, k.ed, "ed"},
		{jwt.SigningMethodHS256, oct, "oct"},
		{jwt.SigningMethodHS384, oct, "oct"},
		{jwt.SigningMethodHS512, oct, "oct"},
	}
	for _, c := range cases {
		t.Run(c.m.Alg()+"/kid", func(t *testing.T) {
			id := mustVerify(t, v, sign(t, c.m, c.key, map[string]any{"kid": c.kid}, claimsAt(now, map[string]any{"sub": c.m.Alg()})))
			if id.Role != "web_user" || id.Sub != c.m.Alg() {
				t.Fatalf("identity = %+v", id)
			}
		})
		// Each key type occurs once in the JWKS, so kid-less tokens work too.
		t.Run(c.m.Alg()+"/nokid", func(t *testing.T) {
			mustVerify(t, v, sign(t, c.m, c.key, nil, claimsAt(now, map[string]any{"sub": "nokid"})))
		})
	}
	t.Run("wrong curve for kid", func(t *testing.T) {
		// golang-jwt will not sign ES256 with a P-384 key; the key choice
		// fails before the signature is looked at anyway.
		tok := b64(`{"alg":"ES256","kid":"ec384"}`) + "." + b64(`{"role":"web_user"}`) + "." + b64("sig")
		e := expectReason(t, mustErr(v.Verify(tok)), ReasonAlgorithm)
		if e.Error() != `token algorithm ES256 does not match key "ec384"` {
			t.Fatalf("Error() = %q", e.Error())
		}
	})
	t.Run("JWK alg restricts", func(t *testing.T) {
		tok := sign(t, jwt.SigningMethodES384, k.ec384, map[string]any{"kid": "ec384"}, claimsAt(now, nil))
		mustVerify(t, v, tok)
		// ES512 with the P-521 key under kid ec384 would be refused too; here
		// an RSA token naming an EC kid.
		tok = sign(t, jwt.SigningMethodRS256, k.rsa1, map[string]any{"kid": "ec384"}, claimsAt(now, nil))
		expectReason(t, mustErr(v.Verify(tok)), ReasonAlgorithm)
	})
	t.Run("enc key not used", func(t *testing.T) {
		tok := sign(t, jwt.SigningMethodRS256, k.rsa2, map[string]any{"kid": "rsa-enc"}, claimsAt(now, nil))
		expectReason(t, mustErr(v.Verify(tok)), ReasonUnknownKID)
	})
	t.Run("unknown kid", func(t *testing.T) {
		tok := sign(t, jwt.SigningMethodRS256, k.rsa1, map[string]any{"kid": "nope"}, claimsAt(now, nil))
		e := expectReason(t, mustErr(v.Verify(tok)), ReasonUnknownKID)
		if e.Error() != `token key id "nope" is unknown` {
			t.Fatalf("Error() = %q", e.Error())
		}
	})
	t.Run("signed by other key", func(t *testing.T) {
		tok := sign(t, jwt.SigningMethodRS256, k.rsa2, map[string]any{"kid": "rsa"}, claimsAt(now, nil))
		expectReason(t, mustErr(v.Verify(tok)), ReasonBadSignature)
	})
}

func TestJWKSFileJWKAlgMismatch(t *testing.T) {
	k := keys()
	doc := jwksDoc(t, jwkSpec{key: k.rsa1, kid: "r", alg: "RS256"})
	v := newV(t, Config{JWKS: []string{fileURL(writeFile(t, "jwks.json", doc))}})
	now := time.Now()
	mustVerify(t, v, sign(t, jwt.SigningMethodRS256, k.rsa1, map[string]any{"kid": "r"}, claimsAt(now, nil)))
	// RS384 is not derived from a key whose JWK says RS256.
	expectReason(t, mustErr(v.Verify(sign(t, jwt.SigningMethodRS384, k.rsa1, map[string]any{"kid": "r"}, claimsAt(now, nil)))), ReasonAlgorithm)
	v2 := newV(t, Config{JWKS: []string{fileURL(writeFile(t, "jwks.json", doc))}, Algorithms: []string{"RS256", "RS384"}})
	e := expectReason(t, mustErr(v2.Verify(sign(t, jwt.SigningMethodRS384, k.rsa1, map[string]any{"kid": "r"}, claimsAt(now, nil)))), ReasonAlgorithm)
	if e.Error() != `token algorithm RS384 does not match key "r"` {
		t.Fatalf("Error() = %q", e.Error())
	}
}

func TestOctAndSecretWithoutKID(t *testing.T) {
	oct1 := []byte("oct-one-0123456789abcdef0123456789")
	oct2 := []byte("oct-two-0123456789abcdef0123456789")
	now := time.Now()
	one := writeFile(t, "one.json", jwksDoc(t, jwkSpec{key: oct1, kid: "o1"}))
	v := newV(t, Config{Secret: testSecret, JWKS: []string{fileURL(one)}})
	if v.KeyCount() != 2 {
		t.Fatalf("KeyCount = %d", v.KeyCount())
	}
	// Secret and the single oct key are both tried (a VerificationKeySet).
	mustVerify(t, v, sign(t, jwt.SigningMethodHS256, oct1, nil, claimsAt(now, nil)))
	mustVerify(t, v, sign(t, jwt.SigningMethodHS256, []byte(testSecret), nil, claimsAt(now, nil)))
	mustVerify(t, v, sign(t, jwt.SigningMethodHS256, oct1, map[string]any{"kid": "o1"}, claimsAt(now, nil)))
	// With a kid, only that key: the secret does not verify it.
	expectReason(t, mustErr(v.Verify(sign(t, jwt.SigningMethodHS256, []byte(testSecret), map[string]any{"kid": "o1"}, claimsAt(now, nil)))), ReasonBadSignature)
	expectReason(t, mustErr(v.Verify(sign(t, jwt.SigningMethodHS256, []byte(testSecret), map[string]any{"kid": "o9"}, claimsAt(now, nil)))), ReasonUnknownKID)
	// An empty kid counts as no kid.
	mustVerify(t, v, sign(t, jwt.SigningMethodHS256, []byte(testSecret), map[string]any{"kid": ""}, claimsAt(now, nil)))

	two := writeFile(t, "two.json", jwksDoc(t, jwkSpec{key: oct1, kid: "o1"}, jwkSpec{key: oct2, kid: "o2"}))
	v2 := newV(t, Config{Secret: testSecret, JWKS: []string{fileURL(two)}})
	// Two oct keys: a kid-less token is only checked against the secret.
	expectReason(t, mustErr(v2.Verify(sign(t, jwt.SigningMethodHS256, oct1, nil, claimsAt(now, nil)))), ReasonBadSignature)
	mustVerify(t, v2, sign(t, jwt.SigningMethodHS256, oct2, map[string]any{"kid": "o2"}, claimsAt(now, nil)))

	v3 := newV(t, Config{JWKS: []string{fileURL(two)}})
	e := expectReason(t, mustErr(v3.Verify(sign(t, jwt.SigningMethodHS256, oct1, nil, claimsAt(now, nil)))), ReasonUnknownKID)
	if e.Error() != "token has no kid and no key without a kid can check HS256" {
		t.Fatalf("Error() = %q", e.Error())
	}
}

func TestPEMFiles(t *testing.T) {
	k := keys()
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&k.rsa2.PublicKey)})
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	certDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.ec384.PublicKey, k.ec384)
	if err != nil {
		t.Fatal(err)
	}
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})
	paths := []string{
		writeFile(t, "rsa1.pem", pemPKIX(t, &k.rsa1.PublicKey)),
		writeFile(t, "rsa2.pem", pkcs1),
		writeFile(t, "ec.pem", append(pemPKIX(t, &k.ec256.PublicKey), pemPKIX(t, &k.ec521.PublicKey)...)),
		writeFile(t, "ed.pem", pemPKIX(t, k.ed.Public())),
		writeFile(t, "cert.pem", cert),
	}
	v := newV(t, Config{PublicKeys: paths})
	if got := v.KeyCount(); got != 6 {
		t.Fatalf("KeyCount = %d, want 6", got)
	}
	now := time.Now()
	for _, c := range []struct {
		m   jwt.SigningMethod
		key any
	}{
		{jwt.SigningMethodRS256, k.rsa1},
		{jwt.SigningMethodRS512, k.rsa2}, // second RSA key: tried from the key set
		{jwt.SigningMethodPS256, k.rsa2},
		{jwt.SigningMethodES256, k.ec256},
		{jwt.SigningMethodES384, k.ec384},
		{jwt.SigningMethodES512, k.ec521},
		{jwt.SigningMethodEdDSA, k.ed},
	} {
		mustVerify(t, v, sign(t, c.m, c.key, nil, claimsAt(now, map[string]any{"sub": c.m.Alg()})))
	}
	// PEM keys are kid-less and no JWKS is configured: a kid names nothing,
	// so it is ignored and the PEM keys decide.
	mustVerify(t, v, sign(t, jwt.SigningMethodRS256, k.rsa1, map[string]any{"kid": "x"}, claimsAt(now, nil)))
	// An HS token: no HMAC key at all.
	expectReason(t, mustErr(v.Verify(sign(t, jwt.SigningMethodHS256, []byte(testSecret), nil, claimsAt(now, nil)))), ReasonAlgorithm)

	privDER, _ := x509.MarshalPKCS8PrivateKey(k.ec256)
	bad := map[string][]byte{
		"private key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}),
		"no pem":      []byte("not a key"),
		"garbage":     pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("junk")}),
		"other type":  pem.EncodeToMemory(&pem.Block{Type: "X", Bytes: []byte("junk")}),
	}
	for name, data := range bad {
		_, err := New(context.Background(), Config{PublicKeys: []string{writeFile(t, "k.pem", data)}, AllowedRoles: []string{"a"}})
		if err == nil {
			t.Fatalf("%s: New succeeded", name)
		}
		if strings.Contains(err.Error(), "BEGIN") || strings.Contains(err.Error(), "junk") {
			t.Fatalf("%s: error shows key material: %v", name, err)
		}
	}
	if _, err := New(context.Background(), Config{PublicKeys: []string{"/does/not/exist.pem"}, AllowedRoles: []string{"a"}}); err == nil {
		t.Fatal("missing file: New succeeded")
	}
}

func TestReasons(t *testing.T) {
	clk := newFakeClock()
	now := clk.Now()
	v := newV(t, Config{
		Secret:     testSecret,
		Issuer:     "https://issuer.example",
		Audience:   "pgtoken",
		Leeway:     30 * time.Second,
		RequireExp: true,
	})
	v.now = clk.Now
	good := map[string]any{"role": "web_user", "iss": "https://issuer.example", "aud": "pgtoken", "exp": now.Add(time.Minute).Unix()}
	with := func(extra map[string]any) string {
		c := map[string]any{}
		for k, x := range good {
			c[k] = x
		}
		for k, x := range extra {
			if x == nil {
				delete(c, k)
			} else {
				c[k] = x
			}
		}
		return sign(t, jwt.SigningMethodHS256, []byte(testSecret), nil, c)
	}
	valid := with(nil)
	parts := strings.Split(valid, ".")
	cases := []struct {
		name   string
		tok    string
		reason Reason
		msg    string // exact Error() when set
		is     error  // errors.Is target when set
	}{
		{"empty", "", ReasonMalformed, "token is not three dot-separated segments", jwt.ErrTokenMalformed},
		{"one segment", "abc", ReasonMalformed, "token is not three dot-separated segments", nil},
		{"four segments", valid + ".x", ReasonMalformed, "", nil},
		{"bad base64", "!!!." + parts[1] + "." + parts[2], ReasonMalformed, "token is not base64url-encoded JSON", nil},
		{"header not json", b64("nope") + "." + parts[1] + "." + parts[2], ReasonMalformed, "", nil},
		{"too long", strings.Repeat("a", 1<<20), ReasonMalformed, "token is longer than 16384 bytes", nil},
		{"too long, well formed", parts[0] + "." + strings.Repeat("A", 1<<20) + "." + parts[2], ReasonMalformed, "token is longer than 16384 bytes", nil},
		{"no alg", rawHS(t, jwt.SigningMethodHS256, `{"typ":"JWT"}`, `{"role":"web_user"}`, []byte(testSecret)), ReasonMalformed, "token header has no alg", nil},
		{"unknown alg", rawHS(t, jwt.SigningMethodHS256, `{"alg":"HS999"}`, `{"role":"web_user"}`, []byte(testSecret)), ReasonAlgorithm, `token algorithm "HS999" is not allowed`, nil},
		{"crit", sign(t, jwt.SigningMethodHS256, []byte(testSecret), map[string]any{"crit": []string{"exp"}}, good), ReasonMalformed, "token header has a crit parameter, which is not supported", nil},
		{"kid not string", sign(t, jwt.SigningMethodHS256, []byte(testSecret), map[string]any{"kid": 7}, good), ReasonMalformed, "token kid is not a string", nil},
		{"wrong secret", sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), nil, good), ReasonBadSignature, "token signature is invalid", jwt.ErrTokenSignatureInvalid},
		{"tampered payload", parts[0] + "." + b64(`{"role":"admin","iss":"https://issuer.example","aud":"pgtoken"}`) + "." + parts[2], ReasonBadSignature, "", nil},
		{"tampered signature", parts[0] + "." + parts[1] + "." + flipLast(parts[2]), ReasonBadSignature, "", nil},
		{"no signature", parts[0] + "." + parts[1] + ".", ReasonBadSignature, "", nil},
		{"expired", with(map[string]any{"exp": now.Add(-31 * time.Second).Unix()}), ReasonExpired, "token expired", jwt.ErrTokenExpired},
		{"not yet valid", with(map[string]any{"nbf": now.Add(31 * time.Second).Unix()}), ReasonNotYetValid, "token is not valid yet", jwt.ErrTokenNotValidYet},
		{"wrong issuer", with(map[string]any{"iss": "https://evil.example"}), ReasonIssuer, `token issuer "https://evil.example" is wrong`, jwt.ErrTokenInvalidIssuer},
		{"no issuer", with(map[string]any{"iss": nil}), ReasonIssuer, "token has no iss claim", nil},
		{"wrong audience", with(map[string]any{"aud": []string{"a", "b"}}), ReasonAudience, "token audience is wrong", jwt.ErrTokenInvalidAudience},
		{"no audience", with(map[string]any{"aud": nil}), ReasonAudience, "token has no aud claim", nil},
		{"no exp", with(map[string]any{"exp": nil}), ReasonMalformed, "token has no exp claim", jwt.ErrTokenRequiredClaimMissing},
		{"exp not a number", with(map[string]any{"exp": "tomorrow"}), ReasonMalformed, "token claim exp is not a number", nil},
		{"iss not a string", with(map[string]any{"iss": 5}), ReasonMalformed, "token claim iss is not a string", nil},
		{"aud object", with(map[string]any{"aud": map[string]any{}}), ReasonMalformed, "token claim aud is not a string or an array of strings", nil},
		{"role not allowed", with(map[string]any{"role": "admin"}), ReasonRole, `token role "admin" is not allowed`, nil},
		{"role empty", with(map[string]any{"role": ""}), ReasonRole, `token role "" is not allowed`, nil},
		{"role too long", with(map[string]any{"role": strings.Repeat("r", 64)}), ReasonRole, `token role "` + strings.Repeat("r", 64) + `" is not allowed (longer than 63 bytes)`, nil},
		{"role number", with(map[string]any{"role": 5}), ReasonMalformed, "token role claim .role is not a string", nil},
		{"role null", with(map[string]any{"role": jsonNull{}}), ReasonMalformed, "token role claim .role is not a string", nil},
		{"no role", with(map[string]any{"role": nil}), ReasonNoRole, "token has no role claim .role", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id, err := v.Verify(c.tok)
			if id != nil {
				t.Fatalf("got identity %+v", id)
			}
			e := expectReason(t, err, c.reason)
			if c.msg != "" && e.Error() != c.msg {
				t.Fatalf("Error() = %q, want %q", e.Error(), c.msg)
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Fatalf("errors.Is(%v, %v) = false", err, c.is)
			}
			noSecrets(t, err, c.tok, testSecret, parts[1], parts[2])
		})
	}
	t.Run("leeway", func(t *testing.T) {
		mustVerify(t, v, valid)
		mustVerify(t, v, with(map[string]any{"exp": now.Add(-29 * time.Second).Unix()}))
		mustVerify(t, v, with(map[string]any{"nbf": now.Add(29 * time.Second).Unix()}))
		mustVerify(t, v, with(map[string]any{"aud": []string{"x", "pgtoken"}}))
	})
}

// jsonNull marshals as JSON null.
type jsonNull struct{}

func (jsonNull) MarshalJSON() ([]byte, error) { return []byte("null"), nil }

func flipLast(s string) string {
	b := []byte(s)
	if b[len(b)-2] == 'A' {
		b[len(b)-2] = 'B'
	} else {
		b[len(b)-2] = 'A'
	}
	return string(b)
}

func TestErrorStrings(t *testing.T) {
	for r, want := range map[Reason]string{
		ReasonMalformed:    "token is malformed",
		ReasonBadSignature: "token signature is invalid",
		ReasonUnknownKID:   "token key id is unknown",
		ReasonAlgorithm:    "token algorithm is not allowed",
		ReasonExpired:      "token expired",
		ReasonNotYetValid:  "token is not valid yet",
		ReasonIssuer:       "token issuer is wrong",
		ReasonAudience:     "token audience is wrong",
		ReasonRole:         "token role is not allowed",
		ReasonNoRole:       "token has no role claim",
	} {
		if got := (&Error{Reason: r}).Error(); got != want {
			t.Errorf("%q: Error() = %q, want %q", r, got, want)
		}
	}
	cause := errors.New("cause")
	e := &Error{Reason: ReasonMalformed, Detail: "token is odd", Err: cause}
	if e.Error() != "token is odd" || !errors.Is(e, cause) || e.Unwrap() != cause {
		t.Fatalf("Error = %q, Unwrap = %v", e.Error(), e.Unwrap())
	}
	if got := clip(strings.Repeat("é", 40)); !strings.HasSuffix(got, "…") || len(got) > 64+len("…") {
		t.Fatalf("clip = %q", got)
	}
}

func TestSettings(t *testing.T) {
	v := newV(t, Config{Secret: testSecret, ClaimsPrefix: "request.jwt.claim", ClaimsJSON: "request.jwt.claims"})
	payload := `{ "role" : "web_user", "sub":"u-1", "n": 1.5e+10, "big": 12345678901234567890, "neg": -0.0,
		"q": "he said \"hi\" \\ back\n", "u": "h\u00e9llo ☃ \ud83d\ude00", "lit": "a\\u0000b",
		"obj": { "z": 1, "a": [ true, null, { "y" : "x" } ] }, "arr": [1, 2 ,3], "t": true, "f": false, "nul": null,
		"https://hasura.io/jwt/claims": {"x-hasura-default-role": "web_user"}, "with space": 1, "$dollar": 1,
		"_ok$1": 2, "1abc": 3, "emptystr": "", "Upper": "X", "ünï": "x", "a-b": 1 }`
	id := mustVerify(t, v, hs256(t, payload))
	// Names outside [A-Za-z0-9_] are mapped (claimnames.go); "1abc" cannot
	// be (a part cannot start with a digit); the order ignores case.
	want := []Setting{
		{"request.jwt.claim._dollar", "1"},
		{"request.jwt.claim._n_", "x"},
		{"request.jwt.claim._ok_1", "2"},
		{"request.jwt.claim.a_b", "1"},
		{"request.jwt.claim.arr", "[1,2,3]"},
		{"request.jwt.claim.big", "12345678901234567890"},
		{"request.jwt.claim.emptystr", ""},
		{"request.jwt.claim.f", "false"},
		{"request.jwt.claim.https___hasura_io_jwt_claims", `{"x-hasura-default-role":"web_user"}`},
		{"request.jwt.claim.lit", `a\u0000b`},
		{"request.jwt.claim.n", "1.5e+10"},
		{"request.jwt.claim.neg", "-0.0"},
		{"request.jwt.claim.nul", "null"},
		{"request.jwt.claim.obj", `{"z":1,"a":[true,null,{"y":"x"}]}`},
		{"request.jwt.claim.q", "he said \"hi\" \\ back\n"},
		{"request.jwt.claim.role", "web_user"},
		{"request.jwt.claim.sub", "u-1"},
		{"request.jwt.claim.t", "true"},
		{"request.jwt.claim.u", "héllo ☃ 😀"},
		{"request.jwt.claim.Upper", "X"},
		{"request.jwt.claim.with_space", "1"},
		{"request.jwt.claims", `{"role":"web_user","sub":"u-1","n":1.5e+10,"big":12345678901234567890,"neg":-0.0,"q":"he said \"hi\" \\ back\n","u":"h\u00e9llo ☃ \ud83d\ude00","lit":"a\\u0000b","obj":{"z":1,"a":[true,null,{"y":"x"}]},"arr":[1,2,3],"t":true,"f":false,"nul":null,"https://hasura.io/jwt/claims":{"x-hasura-default-role":"web_user"},"with space":1,"$dollar":1,"_ok$1":2,"1abc":3,"emptystr":"","Upper":"X","ünï":"x","a-b":1}`},
	}
	if !reflect.DeepEqual(id.Settings, want) {
		for i := range max(len(want), len(id.Settings)) {
			var g, w Setting
			if i < len(id.Settings) {
				g = id.Settings[i]
			}
			if i < len(want) {
				w = want[i]
			}
			if g != w {
				t.Errorf("setting %d = %q, want %q", i, g, w)
			}
		}
		t.FailNow()
	}
	if id.Sub != "u-1" || id.JTI != "" || !id.ExpiresAt.IsZero() {
		t.Fatalf("identity = %+v", id)
	}

	// Only the JSON setting; and no settings at all.
	v2 := newV(t, Config{Secret: testSecret, ClaimsJSON: "request.jwt.claims"})
	id = mustVerify(t, v2, hs256(t, `{"role":"web_user","x":1}`))
	if !reflect.DeepEqual(id.Settings, []Setting{{"request.jwt.claims", `{"role":"web_user","x":1}`}}) {
		t.Fatalf("Settings = %q", id.Settings)
	}
	v3 := newV(t, Config{Secret: testSecret})
	if id = mustVerify(t, v3, hs256(t, `{"role":"web_user","x":1}`)); id.Settings != nil {
		t.Fatalf("Settings = %q", id.Settings)
	}
}

func TestSubAndJTIRendering(t *testing.T) {
	v := newV(t, Config{Secret: testSecret})
	for payload, want := range map[string][2]string{
		`{"role":"web_user","sub":"s","jti":"j"}`:                   {"s", "j"},
		`{"role":"web_user","sub":12.50,"jti":1e3}`:                 {"12.50", "1e3"},
		`{"role":"web_user","sub":{"b": 1, "a": [ 2 ]},"jti":null}`: {`{"b":1,"a":[2]}`, ""},
		`{"role":"web_user"}`:                                       {"", ""},
	} {
		id := mustVerify(t, v, hs256(t, payload))
		if id.Sub != want[0] || id.JTI != want[1] {
			t.Errorf("%s: Sub, JTI = %q, %q; want %q", payload, id.Sub, id.JTI, want)
		}
	}
}

func TestMalformedClaims(t *testing.T) {
	v := newV(t, Config{Secret: testSecret, ClaimsPrefix: "jwt.claims", ClaimsJSON: "request.jwt.claims"})
	cases := map[string]string{
		`{"role":"web_user","x":"a\u0000b"}`:       "token claims contain a NUL character",
		`{"role":"web_user","x":{"y":["\u0000"]}}`: "token claims contain a NUL character",
		`{"role":"web_user","a\u0000":1}`:          "token claims contain a NUL character",
		`{"role":"web_user\u0000"}`:                "token claims contain a NUL character",
		`{"role":"web_user","\\":"\\\u0000"}`:      "token claims contain a NUL character",
		`{"role":"web_user","role":"admin"}`:       `token claim "role" appears more than once`,
		`{"role":"web_user","x":1,"x":1}`:          `token claim "x" appears more than once`,
		"{\"role\":\"web_user\",\"x\":\"\xff\"}":   "token claims are not valid UTF-8",
		`[]`:                                       "token claims are not a JSON object",
		`"role"`:                                   "token claims are not a JSON object",
		`1`:                                        "token claims are not a JSON object",
		`null`:                                     "token claims are not a JSON object",
		`{"role":"web_user"`:                       "token is not base64url-encoded JSON",
	}
	for payload, msg := range cases {
		e := expectReason(t, mustErr(v.Verify(hs256(t, payload))), ReasonMalformed)
		if e.Error() != msg {
			t.Errorf("%s: Error() = %q, want %q", payload, e.Error(), msg)
		}
	}
	// An escaped backslash followed by "u0000" is text, not NUL.
	id := mustVerify(t, v, hs256(t, `{"role":"web_user","x":"\\u0000","y\\u0000":1}`))
	if got := settingMap(t, id.Settings)["jwt.claims.x"]; got != `\u0000` {
		t.Fatalf("x = %q", got)
	}
}

func TestRoleClaims(t *testing.T) {
	cases := []struct {
		path, anon, payload string
		role                string
		reason              Reason
	}{
		{".role", "", `{"role":"web_user"}`, "web_user", ""},
		{"", "", `{"role":"reporting"}`, "reporting", ""},
		{".realm_access.roles[0]", "", `{"realm_access":{"roles":["reporting","web_user"]}}`, "reporting", ""},
		{".realm_access.roles[1]", "", `{"realm_access":{"roles":["reporting","web_user"]}}`, "web_user", ""},
		{`."https://hasura.io/jwt/claims"."x-hasura-default-role"`, "", `{"https://hasura.io/jwt/claims":{"x-hasura-default-role":"web_user","x-hasura-allowed-roles":["web_user"]}}`, "web_user", ""},
		{".realm_access.roles[2]", "anon", `{"realm_access":{"roles":["reporting","web_user"]}}`, "anon", ""},
		{".realm_access.roles[2]", "", `{"realm_access":{"roles":["reporting","web_user"]}}`, "", ReasonNoRole},
		{".realm_access.roles[0]", "", `{"realm_access":{"roles":"web_user"}}`, "", ReasonNoRole},
		{".realm_access.roles[0]", "", `{"realm_access":{"roles":[["web_user"]]}}`, "", ReasonMalformed},
		{".role", "anon", `{"sub":"x"}`, "anon", ""},
		{".role", "anon", `{"role":"admin"}`, "", ReasonRole},
		{".role", "anon", `{"role":null}`, "", ReasonMalformed},
		{".role", "anon", `{"role":true}`, "", ReasonMalformed},
		{".a.b", "", `{"a":{"b":"web_user"}}`, "web_user", ""},
		{".a.b", "", `{"a":[{"b":"web_user"}]}`, "", ReasonNoRole},
		{".a[0].b", "", `{"a":[{"b":"web_user"}]}`, "web_user", ""},
		{`."a.b"`, "", `{"a.b":"web_user","a":{"b":"reporting"}}`, "web_user", ""},
		{`."q\"uote"`, "", `{"q\"uote":"web_user"}`, "web_user", ""},
		{".role", "", `{"role":"Web_User"}`, "", ReasonRole},
	}
	for _, c := range cases {
		t.Run(c.path+" "+c.payload, func(t *testing.T) {
			v := newV(t, Config{Secret: testSecret, RoleClaim: c.path, AnonRole: c.anon})
			id, err := v.Verify(hs256(t, c.payload))
			if c.reason != "" {
				expectReason(t, err, c.reason)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.Role != c.role {
				t.Fatalf("Role = %q, want %q", id.Role, c.role)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	jwksPath := writeFile(t, "jwks.json", []byte(`{"keys":[]}`))
	badJSON := writeFile(t, "bad.json", []byte(`{"keys":[{"kty":"RSA","n":"!!","e":"AQAB"}]}`))
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no roles", Config{Secret: testSecret}, "AllowedRoles must name at least one role"},
		{"empty role", Config{Secret: testSecret, AllowedRoles: []string{""}}, "role name is empty"},
		{"long role", Config{Secret: testSecret, AllowedRoles: []string{strings.Repeat("x", 64)}}, "longer than 63 bytes"},
		{"nul role", Config{Secret: testSecret, AllowedRoles: []string{"a\x00"}}, "NUL"},
		{"anon not allowed", Config{Secret: testSecret, AllowedRoles: []string{"a"}, AnonRole: "b"}, `AnonRole "b" is not in AllowedRoles`},
		{"no keys", Config{AllowedRoles: []string{"a"}}, "no verification key configured"},
		{"bad role path", Config{Secret: testSecret, AllowedRoles: []string{"a"}, RoleClaim: "role"}, "RoleClaim"},
		{"bad prefix", Config{Secret: testSecret, AllowedRoles: []string{"a"}, ClaimsPrefix: "jwt claims"}, "ClaimsPrefix"},
		{"bad prefix dot", Config{Secret: testSecret, AllowedRoles: []string{"a"}, ClaimsPrefix: "jwt..claims"}, "ClaimsPrefix"},
		{"bad json name", Config{Secret: testSecret, AllowedRoles: []string{"a"}, ClaimsJSON: "claims"}, "ClaimsJSON"},
		{"json name collides", Config{Secret: testSecret, AllowedRoles: []string{"a"}, ClaimsPrefix: "request.jwt", ClaimsJSON: "request.jwt.claims"}, "collide"},
		{"unknown alg", Config{Secret: testSecret, AllowedRoles: []string{"a"}, Algorithms: []string{"HS1"}}, "unsupported algorithm"},
		{"bad scheme", Config{JWKS: []string{"ftp://x/jwks"}, AllowedRoles: []string{"a"}}, "scheme must be file, http or https"},
		{"relative file", Config{JWKS: []string{"file://relative/jwks.json"}, AllowedRoles: []string{"a"}}, "file:///absolute/path"},
		{"missing file", Config{JWKS: []string{"file:///does/not/exist.json"}, AllowedRoles: []string{"a"}}, "no such file"},
		{"empty jwks", Config{JWKS: []string{fileURL(jwksPath)}, AllowedRoles: []string{"a"}}, "no usable signature verification key"},
		{"bad jwks", Config{JWKS: []string{fileURL(badJSON)}, AllowedRoles: []string{"a"}}, "JWKS"},
		{"negative max", Config{Secret: testSecret, AllowedRoles: []string{"a"}, MaxTokenBytes: -1}, "MaxTokenBytes"},
		{"negative leeway", Config{Secret: testSecret, AllowedRoles: []string{"a"}, Leeway: -1}, "Leeway"},
		{"negative wait", Config{Secret: testSecret, AllowedRoles: []string{"a"}, JWKSUnknownKIDWait: -1}, "JWKSUnknownKIDWait"},
		{"negative interval", Config{Secret: testSecret, AllowedRoles: []string{"a"}, JWKSRefreshInterval: -1}, "JWKSRefreshInterval"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, err := New(context.Background(), c.cfg)
			if err == nil {
				v.Close()
				t.Fatalf("New succeeded, want error containing %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
			if c.cfg.Secret != "" && strings.Contains(err.Error(), c.cfg.Secret) {
				t.Fatalf("error leaks the secret: %v", err)
			}
		})
	}
}

func TestMaxTokenBytes(t *testing.T) {
	v := newV(t, Config{Secret: testSecret, MaxTokenBytes: 64})
	tok := hs256(t, `{"role":"web_user","pad":"`+strings.Repeat("x", 100)+`"}`)
	e := expectReason(t, mustErr(v.Verify(tok)), ReasonMalformed)
	if e.Error() != "token is longer than 64 bytes" {
		t.Fatalf("Error() = %q", e.Error())
	}
	v2 := newV(t, Config{Secret: testSecret, MaxTokenBytes: 1 << 21})
	mustVerify(t, v2, hs256(t, `{"role":"web_user","pad":"`+strings.Repeat("x", 1<<20)+`"}`))
}

func TestReloadFiles(t *testing.T) {
	k := keys()
	path := writeFile(t, "jwks.json", jwksDoc(t, jwkSpec{key: k.ec256, kid: "a"}))
	v := newV(t, Config{JWKS: []string{fileURL(path)}})
	now := time.Now()
	tokA := sign(t, jwt.SigningMethodES256, k.ec256, map[string]any{"kid": "a"}, claimsAt(now, nil))
	mustVerify(t, v, tokA)
	mustVerify(t, v, tokA) // cached

	// Same kid, different key: after Reload the cached identity is gone.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := writeJWKS(path, jwksDoc(t, jwkSpec{key: other, kid: "a"}, jwkSpec{key: k.rsa1, kid: "b"})); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, v, tokA) // not re-read before Reload
	if err := v.Reload(); err != nil {
		t.Fatal(err)
	}
	expectReason(t, mustErr(v.Verify(tokA)), ReasonBadSignature)
	mustVerify(t, v, sign(t, jwt.SigningMethodES256, other, map[string]any{"kid": "a"}, claimsAt(now, nil)))
	mustVerify(t, v, sign(t, jwt.SigningMethodRS256, k.rsa1, map[string]any{"kid": "b"}, claimsAt(now, nil)))
	if v.KeyCount() != 2 {
		t.Fatalf("KeyCount = %d", v.KeyCount())
	}

	// A broken file: Reload fails and the keys in use stay.
	if err := writeJWKS(path, []byte("{")); err != nil {
		t.Fatal(err)
	}
	if err := v.Reload(); err == nil {
		t.Fatal("Reload succeeded on a broken file")
	}
	mustVerify(t, v, sign(t, jwt.SigningMethodRS256, k.rsa1, map[string]any{"kid": "b"}, claimsAt(now, map[string]any{"sub": "after"})))
}

func writeJWKS(path string, data []byte) error {
	return os.WriteFile(path, data, 0o600)
}

func TestConcurrentVerify(t *testing.T) {
	k := keys()
	path := writeFile(t, "jwks.json", jwksDoc(t, jwkSpec{key: k.ed, kid: "ed"}))
	v := newV(t, Config{Secret: testSecret, JWKS: []string{fileURL(path)}, CacheSize: 16, ClaimsPrefix: "jwt.claims"})
	now := time.Now()
	var toks []string
	for i := range 40 {
		c := claimsAt(now, map[string]any{"sub": fmt.Sprint(i)})
		if i%2 == 0 {
			toks = append(toks, sign(t, jwt.SigningMethodHS256, []byte(testSecret), nil, c))
		} else {
			toks = append(toks, sign(t, jwt.SigningMethodEdDSA, k.ed, map[string]any{"kid": "ed"}, c))
		}
	}
	bad := sign(t, jwt.SigningMethodHS256, []byte("wrong-secret-wrong-secret-wrong!"), nil, claimsAt(now, nil))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 400 {
				j := (i*7 + g) % len(toks)
				id, err := v.Verify(toks[j])
				if err != nil || id.Sub != fmt.Sprint(j) {
					errs <- fmt.Errorf("token %d: %v %+v", j, err, id)
					return
				}
				if i%50 == 0 {
					if _, err := v.Verify(bad); err == nil {
						errs <- errors.New("bad token accepted")
						return
					}
				}
				if g == 0 && i%100 == 0 {
					if err := v.Reload(); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := v.cache.len(); n > 16 {
		t.Fatalf("cache holds %d entries, more than CacheSize 16", n)
	}
}
