package authn

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// issuerServer is an issuer serving its JWKS at /.well-known/jwks.json,
// over TLS or not, counting every request it gets.
type issuerServer struct {
	*httptest.Server
	doc      atomic.Pointer[[]byte]
	requests atomic.Int32
}

func newIssuerServer(t *testing.T, tls bool, doc []byte) *issuerServer {
	t.Helper()
	s := &issuerServer{}
	s.doc.Store(&doc)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		if r.URL.Path != "/.well-known/jwks.json" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(*s.doc.Load())
	})
	if tls {
		s.Server = httptest.NewTLSServer(h)
	} else {
		s.Server = httptest.NewServer(h)
	}
	t.Cleanup(s.Close)
	return s
}

func (s *issuerServer) set(doc []byte) { s.doc.Store(&doc) }

// trustAll is an HTTP client that trusts the TLS test servers' certificates.
func trustAll(servers ...*issuerServer) *http.Client {
	for _, s := range servers {
		if s.TLS != nil {
			return s.Client()
		}
	}
	return http.DefaultClient
}

func TestJWKSIssuers(t *testing.T) {
	k := keys()
	now := time.Now()
	plain := newIssuerServer(t, false, jwksDoc(t, jwkSpec{key: k.ec256, kid: "p1", alg: "ES256"}))
	tls := newIssuerServer(t, true, jwksDoc(t, jwkSpec{key: k.rsa1, kid: "t1", alg: "RS256"}))
	// Serves a key that signs the tokens claiming to come from it, but is
	// not listed: it must never be asked.
	unlisted := newIssuerServer(t, false, jwksDoc(t, jwkSpec{key: k.ec256, kid: "u1", alg: "ES256"}, jwkSpec{key: k.ed, kid: "u2", alg: "EdDSA"}))

	var log refreshLog
	v := newV(t, Config{
		JWKSIssuers:   []string{plain.URL, tls.URL + "/"}, // a trailing '/' does not matter
		HTTPClient:    trustAll(tls),
		OnJWKSRefresh: log.hook,
		CacheSize:     -1,
	})
	if p, s := plain.requests.Load(), tls.requests.Load(); p != 1 || s != 1 {
		t.Fatalf("requests at start: plain %d, TLS %d; want 1 each", p, s)
	}
	if ok, fails := log.counts(); ok != 2 || fails != 0 || v.KeyCount() != 2 {
		t.Fatalf("refreshes %d ok %d failed, %d keys", ok, fails, v.KeyCount())
	}
	// The keys fetched at start are in the derived allowlist at once.
	if got := v.parser.Load().algs; strings.Join(got, " ") != "RS256 ES256" {
		t.Fatalf("derived algorithms = %v", got)
	}
	tok := func(method jwt.SigningMethod, key any, kid, iss string) string {
		h := map[string]any{}
		if kid != "" {
			h["kid"] = kid
		}
		extra := map[string]any{"iss": iss}
		if iss == "" {
			extra["iss"] = nil
		}
		return sign(t, method, key, h, claimsAt(now, extra))
	}
	mustVerify(t, v, tok(jwt.SigningMethodES256, k.ec256, "p1", plain.URL))
	mustVerify(t, v, tok(jwt.SigningMethodES256, k.ec256, "", plain.URL+"/")) // no kid: the issuer's one ES256 key
	mustVerify(t, v, tok(jwt.SigningMethodRS256, k.rsa1, "t1", tls.URL))      // as Auth0 spells its iss, and not
	mustVerify(t, v, tok(jwt.SigningMethodRS256, k.rsa1, "t1", tls.URL+"/"))

	// Rotation at the TLS issuer: the unknown kid makes exactly one request
	// there, and none at the other issuer.
	tls.set(jwksDoc(t, jwkSpec{key: k.rsa1, kid: "t1", alg: "RS256"}, jwkSpec{key: k.rsa2, kid: "t2", alg: "RS256"}))
	mustVerify(t, v, tok(jwt.SigningMethodRS256, k.rsa2, "t2", tls.URL))
	if p, s := plain.requests.Load(), tls.requests.Load(); p != 1 || s != 2 {
		t.Fatalf("requests after the rotation: plain %d, TLS %d; want 1, 2", p, s)
	}
	// Another unknown kid within the rate limit: refused without a request.
	expectReason(t, mustErr(v.Verify(tok(jwt.SigningMethodRS256, k.rsa2, "t3", tls.URL))), ReasonUnknownKID)
	if s := tls.requests.Load(); s != 2 {
		t.Fatalf("rate limit: TLS issuer asked %d times, want 2", s)
	}

	// Any other iss, or none, is refused, and nobody is asked anything.
	for _, bad := range []struct {
		tok    string
		reason Reason
	}{
		{tok(jwt.SigningMethodES256, k.ec256, "u1", unlisted.URL), ReasonIssuer},
		{tok(jwt.SigningMethodES256, k.ec256, "u1", unlisted.URL+"/"), ReasonIssuer},
		{tok(jwt.SigningMethodES256, k.ec256, "", unlisted.URL), ReasonIssuer},
		{tok(jwt.SigningMethodES256, k.ec256, "p1", plain.URL+"/x"), ReasonIssuer},
		{tok(jwt.SigningMethodES256, k.ec256, "p1", strings.Replace(plain.URL, "http://", "https://", 1)), ReasonIssuer},
		{tok(jwt.SigningMethodES256, k.ec256, "p1", ""), ReasonIssuer},
		// No listed issuer has an EdDSA key, so no key can check it; the
		// refresh tried for a new key type goes nowhere either.
		{tok(jwt.SigningMethodEdDSA, k.ed, "u2", unlisted.URL), ReasonAlgorithm},
	} {
		expectReason(t, mustErr(v.Verify(bad.tok)), bad.reason)
	}
	if u, p, s := unlisted.requests.Load(), plain.requests.Load(), tls.requests.Load(); u != 0 || p != 1 || s != 2 {
		t.Fatalf("requests after unlisted issuers: unlisted %d, plain %d, TLS %d; want 0, 1, 2", u, p, s)
	}

	// An issuer's keys serve that issuer only: the TLS issuer's key with
	// the plain issuer's iss is unknown there.
	e := expectReason(t, mustErr(v.Verify(tok(jwt.SigningMethodRS256, k.rsa1, "t1", plain.URL))), ReasonUnknownKID)
	if !strings.Contains(e.Error(), `"t1"`) {
		t.Fatal(e)
	}
}

// A burst of tokens from an issuer's newly rotated key: one request serves
// them all, as for jwt.jwks.
func TestJWKSIssuerRotationBurst(t *testing.T) {
	k := keys()
	now := time.Now()
	srv := newIssuerServer(t, false, jwksDoc(t, jwkSpec{key: k.ec256, kid: "old"}))
	v := newV(t, Config{JWKSIssuers: []string{srv.URL}, CacheSize: -1})
	srv.set(jwksDoc(t, jwkSpec{key: k.ec256, kid: "old"}, jwkSpec{key: k.ec384, kid: "new"}))
	before := srv.requests.Load()
	verifyAtOnce(t, v, 20, func(i int) string {
		return sign(t, jwt.SigningMethodES384, k.ec384, map[string]any{"kid": "new"}, claimsAt(now, map[string]any{"iss": srv.URL, "sub": fmt.Sprint(i)}))
	})
	if n := srv.requests.Load() - before; n != 1 {
		t.Fatalf("%d JWKS requests, want 1", n)
	}
}

// jwt.jwks_issuers alongside a shared secret and jwt.jwks: a listed iss
// takes its issuer's keys only; any other token the other keys, without a
// request to any issuer.
func TestJWKSIssuersAlongsideOtherKeys(t *testing.T) {
	k := keys()
	now := time.Now()
	issuer := newIssuerServer(t, true, jwksDoc(t, jwkSpec{key: k.ec256, kid: "i1", alg: "ES256"}))
	jwks := newJWKSServer(t, jwksDoc(t, jwkSpec{key: k.ed, kid: "j1"}))
	unlisted := newIssuerServer(t, false, jwksDoc(t, jwkSpec{key: k.ec256, kid: "i1", alg: "ES256"}))
	v := newV(t, Config{Secret: testSecret, JWKS: []string{jwks.URL}, JWKSIssuers: []string{issuer.URL}, HTTPClient: trustAll(issuer), CacheSize: -1})
	hs := func(extra map[string]any) string {
		return sign(t, jwt.SigningMethodHS256, []byte(testSecret), nil, claimsAt(now, extra))
	}
	mustVerify(t, v, hs(nil))
	mustVerify(t, v, hs(map[string]any{"iss": unlisted.URL}))
	mustVerify(t, v, sign(t, jwt.SigningMethodEdDSA, k.ed, map[string]any{"kid": "j1"}, claimsAt(now, map[string]any{"iss": unlisted.URL})))
	mustVerify(t, v, sign(t, jwt.SigningMethodES256, k.ec256, map[string]any{"kid": "i1"}, claimsAt(now, map[string]any{"iss": issuer.URL})))
	// The secret does not speak for a listed issuer, nor the issuer's key
	// for anyone else.
	expectReason(t, mustErr(v.Verify(hs(map[string]any{"iss": issuer.URL}))), ReasonUnknownKID)
	expectReason(t, mustErr(v.Verify(sign(t, jwt.SigningMethodES256, k.ec256, nil, claimsAt(now, map[string]any{"iss": unlisted.URL})))), ReasonUnknownKID)
	if n := unlisted.requests.Load(); n != 0 {
		t.Fatalf("the unlisted issuer was asked %d times", n)
	}
	if n := issuer.requests.Load(); n != 1 {
		t.Fatalf("the listed issuer was asked %d times, want 1 (at start)", n)
	}
}

func TestJWKSIssuersConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{JWKSIssuers: []string{"ftp://idp.example"}}, "not an http(s)://host issuer URL"},
		{Config{JWKSIssuers: []string{"https://"}}, "not an http(s)://host issuer URL"},
		{Config{JWKSIssuers: []string{"idp.example"}}, "not an http(s)://host issuer URL"},
		{Config{JWKSIssuers: []string{"https://idp.example/?tenant=1"}}, "no user, query or fragment"},
		{Config{JWKSIssuers: []string{"https://u:p@idp.example"}}, "no user, query or fragment"},
		{Config{JWKSIssuers: []string{"https://idp.example", "https://idp.example/"}}, "listed twice"},
		{Config{JWKSIssuers: []string{"https://a.example"}, Issuer: "https://b.example"}, "can never be accepted"},
	} {
		tc.cfg.AllowedRoles = []string{"web_user"}
		_, err := New(context.Background(), tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.cfg.JWKSIssuers, err, tc.want)
		}
	}
	// jwt.issuer naming the one listed issuer is fine, with or without '/'.
	srv := newIssuerServer(t, false, jwksDoc(t, jwkSpec{key: keys().ec256, kid: "a"}))
	v := newV(t, Config{JWKSIssuers: []string{srv.URL + "/"}, Issuer: srv.URL})
	mustVerify(t, v, sign(t, jwt.SigningMethodES256, keys().ec256, map[string]any{"kid": "a"}, claimsAt(time.Now(), map[string]any{"iss": srv.URL})))
}
