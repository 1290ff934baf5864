package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

const testSecret = "0123456789abcdef0123456789abcdef-test-secret"

type testKeySet struct {
	rsa1, rsa2          *rsa.PrivateKey
	ec256, ec384, ec521 *ecdsa.PrivateKey
	ed                  ed25519.PrivateKey
}

// keys generates the test keys once per test binary.
var keys = sync.OnceValue(func() *testKeySet {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	var k testKeySet
	var err error
	k.rsa1, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.rsa2, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.ec256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.ec384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	must(err)
	k.ec521, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	must(err)
	_, k.ed, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	return &k
})

// fakeClock is a settable time source for Verifier.now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newV builds a Verifier, defaulting AllowedRoles, and closes it at the end
// of the test.
func newV(t testing.TB, cfg Config) *Verifier {
	t.Helper()
	if cfg.AllowedRoles == nil {
		cfg.AllowedRoles = []string{"web_user", "anon", "reporting"}
	}
	v, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(v.Close)
	return v
}

// sign signs claims with method and key, adding header fields.
func sign(t testing.TB, method jwt.SigningMethod, key any, header map[string]any, claims map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, jwt.MapClaims(claims))
	for k, v := range header {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return s
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// rawHS builds a token from literal header and payload JSON, signed with
// HMAC (the header's alg must be an HS alg).
func rawHS(t testing.TB, method *jwt.SigningMethodHMAC, header, payload string, key []byte) string {
	t.Helper()
	signing := b64(header) + "." + b64(payload)
	sig, err := method.Sign(signing, key)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// hs256 signs payload (literal JSON) with the test secret.
func hs256(t testing.TB, payload string) string {
	return rawHS(t, jwt.SigningMethodHS256, `{"alg":"HS256","typ":"JWT"}`, payload, []byte(testSecret))
}

type jwkSpec struct {
	key  any // private or public key, or []byte for oct
	kid  string
	alg  string
	use  string
	ops  []jwkset.KEYOPS
	priv bool // include private material
}

// jwksDoc builds a JWKS document.
func jwksDoc(t testing.TB, specs ...jwkSpec) []byte {
	t.Helper()
	var set jwkset.JWKSMarshal
	set.Keys = []jwkset.JWKMarshal{}
	for _, s := range specs {
		key := s.key
		_, isOct := key.([]byte)
		if !s.priv && !isOct {
			key = publicOf(key)
		}
		j, err := jwkset.NewJWKFromKey(key, jwkset.JWKOptions{
			Metadata: jwkset.JWKMetadataOptions{KID: s.kid, ALG: jwkset.ALG(s.alg), USE: jwkset.USE(s.use), KEYOPS: s.ops},
			Marshal:  jwkset.JWKMarshalOptions{Private: s.priv || isOct},
		})
		if err != nil {
			t.Fatalf("jwk %q: %v", s.kid, err)
		}
		m := j.Marshal()
		if s.alg == "" {
			m.ALG = "" // jwkset adds EdDSA to Ed25519 keys; test the kid-only form too
		}
		set.Keys = append(set.Keys, m)
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func fileURL(p string) string { return "file://" + filepath.ToSlash(p) }

func pemPKIX(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// expectReason asserts err is an *Error with reason r.
func expectReason(t testing.TB, err error, r Reason) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want reason %q", r)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("got %T %v, want *Error", err, err)
	}
	if e.Reason != r {
		t.Fatalf("got reason %q (%v), want %q", e.Reason, e, r)
	}
	return e
}

func mustVerify(t testing.TB, v *Verifier, tok string) *Identity {
	t.Helper()
	id, err := v.Verify(tok)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return id
}

func claimsAt(now time.Time, extra map[string]any) map[string]any {
	c := map[string]any{"role": "web_user", "sub": "user-1", "exp": now.Add(time.Hour).Unix()}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	return c
}

// settingMap turns settings into a map, failing on duplicate names.
func settingMap(t testing.TB, s []Setting) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, x := range s {
		if _, dup := m[x.Name]; dup {
			t.Fatalf("duplicate setting %q", x.Name)
		}
		m[x.Name] = x.Value
	}
	return m
}

func noSecrets(t testing.TB, err error, secrets ...string) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	for _, s := range secrets {
		if len(s) >= 8 && strings.Contains(msg, s) {
			t.Fatalf("error message %q leaks a token or secret", msg)
		}
	}
}
