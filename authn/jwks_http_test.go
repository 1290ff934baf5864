package authn

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"
)

const (
	modeOK = iota
	modeFail
	modeHang
)

// jwksServer serves a replaceable JWKS document on 127.0.0.1.
type jwksServer struct {
	*httptest.Server
	doc      atomic.Pointer[[]byte]
	mode     atomic.Int32
	delay    atomic.Int64 // per response, in ns
	requests atomic.Int32
	release  chan struct{}
}

func newJWKSServer(t *testing.T, doc []byte) *jwksServer {
	t.Helper()
	s := &jwksServer{release: make(chan struct{})}
	s.doc.Store(&doc)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		time.Sleep(time.Duration(s.delay.Load()))
		switch s.mode.Load() {
		case modeFail:
			http.Error(w, "down", http.StatusInternalServerError)
			return
		case modeHang:
			select {
			case <-r.Context().Done():
			case <-s.release:
			}
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(*s.doc.Load())
	}))
	t.Cleanup(func() {
		close(s.release)
		s.Close()
	})
	return s
}

func (s *jwksServer) set(doc []byte) { s.doc.Store(&doc) }

// refreshLog records OnJWKSRefresh calls.
type refreshLog struct {
	mu    sync.Mutex
	ok    int
	fails []error
}

func (l *refreshLog) hook(url string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.fails = append(l.fails, err)
	} else {
		l.ok++
	}
}

func (l *refreshLog) counts() (int, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok, len(l.fails)
}

func TestHTTPJWKSRotation(t *testing.T) {
	k := keys()
	now := time.Now()
	srv := newJWKSServer(t, jwksDoc(t, jwkSpec{key: k.rsa1, kid: "k1", alg: "RS256"}))
	var log refreshLog
	v := newV(t, Config{JWKS: []string{srv.URL + "/jwks.json"}, OnJWKSRefresh: log.hook})
	if ok, fails := log.counts(); ok != 1 || fails != 0 {
		t.Fatalf("refresh hook: %d ok, %d failed; want 1, 0", ok, fails)
	}
	if v.KeyCount() != 1 {
		t.Fatalf("KeyCount = %d", v.KeyCount())
	}
	tok1 := sign(t, jwt.SigningMethodRS256, k.rsa1, map[string]any{"kid": "k1"}, claimsAt(now, nil))
	id1 := mustVerify(t, v, tok1)

	// Rotate to an EC key with a new kid (and a new key type, so also a new
	// algorithm); an unknown-kid refresh picks it up.
	srv.set(jwksDoc(t,
		jwkSpec{key: k.ec256, kid: "k2"},
		jwkSpec{key: []byte("an-oct-key-that-is-32-bytes-long!!"), kid: "h1"},
		jwkSpec{key: k.rsa2, kid: "k3", alg: "RS256"},
	))
	tok2 := sign(t, jwt.SigningMethodES256, k.ec256, map[string]any{"kid": "k2"}, claimsAt(now, nil))
	start := time.Now()
	mustVerify(t, v, tok2)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("rotation took %v", d)
	}
	if ok, _ := log.counts(); ok != 2 {
		t.Fatalf("refresh hook ok count = %d, want 2", ok)
	}
	mustVerify(t, v, sign(t, jwt.SigningMethodHS256, []byte("an-oct-key-that-is-32-bytes-long!!"), map[string]any{"kid": "h1"}, claimsAt(now, nil)))
	mustVerify(t, v, sign(t, jwt.SigningMethodRS256, k.rsa2, map[string]any{"kid": "k3"}, claimsAt(now, nil)))
	if v.KeyCount() != 3 {
		t.Fatalf("KeyCount = %d", v.KeyCount())
	}
	// k1 was removed from the JWKS: its token is refused, even though its
	// identity had been cached.
	if v.cache.len() == 0 || id1 == nil {
		t.Fatal("nothing cached")
	}
	expectReason(t, mustErr(v.Verify(tok1)), ReasonUnknownKID)
	// With no RSA key left RS256 would not even be allowed; here k3 keeps it.
	if got := v.parser.Load().algs; len(got) != 5 || got[3] != "RS256" || got[4] != "ES256" {
		t.Fatalf("derived algorithms = %v", got)
	}

	// Endpoint down: known keys keep working, unknown kids fail fast.
	srv.Close()
	mustVerify(t, v, tok2)
	mustVerify(t, v, sign(t, jwt.SigningMethodES256, k.ec256, map[string]any{"kid": "k2"}, claimsAt(now, map[string]any{"sub": "fresh"})))
	start = time.Now()
	expectReason(t, mustErr(v.Verify(sign(t, jwt.SigningMethodES256, k.ec256, map[string]any{"kid": "k9"}, claimsAt(now, nil)))), ReasonUnknownKID)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("unknown kid with the endpoint down took %v", d)
	}
}

// TestHTTPJWKSRotationBurst: many connections with tokens from a newly
// rotated key arrive at once; one refresh serves them all.
func TestHTTPJWKSRotationBurst(t *testing.T) {
	k := keys()
	now := time.Now()
	srv := newJWKSServer(t, jwksDoc(t, jwkSpec{key: k.ec256, kid: "old"}))
	v := newV(t, Config{JWKS: []string{srv.URL}, CacheSize: -1})
	srv.set(jwksDoc(t, jwkSpec{key: k.ec256, kid: "old"}, jwkSpec{key: k.ec384, kid: "new"}))
	srv.delay.Store(int64(200 * time.Millisecond))
	before := srv.requests.Load()
	verifyAtOnce(t, v, 20, func(i int) string {
		return sign(t, jwt.SigningMethodES384, k.ec384, map[string]any{"kid": "new"}, claimsAt(now, map[string]any{"sub": fmt.Sprint(i)}))
	})
	if n := srv.requests.Load() - before; n != 1 {
		t.Fatalf("%d JWKS requests, want 1", n)
	}
}

// verifyAtOnce verifies n tokens concurrently; each must be accepted.
func verifyAtOnce(t *testing.T, v *Verifier, n int, token func(i int) string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		tok := token(i)
		wg.Go(func() {
			if _, err := v.Verify(tok); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestHTTPJWKSUnknownKIDBounded(t *testing.T) {
	k := keys()
	now := time.Now()
	for _, mode := range []int32{modeHang, modeFail} {
		srv := newJWKSServer(t, jwksDoc(t, jwkSpec{key: k.ed, kid: "e1"}))
		var log refreshLog
		v := newV(t, Config{JWKS: []string{srv.URL}, OnJWKSRefresh: log.hook, CacheSize: -1})
		known := sign(t, jwt.SigningMethodEdDSA, k.ed, map[string]any{"kid": "e1"}, claimsAt(now, nil))
		mustVerify(t, v, known)
		srv.mode.Store(mode)
		before := srv.requests.Load()
		start := time.Now()
		unknown := sign(t, jwt.SigningMethodEdDSA, k.ed, map[string]any{"kid": "e2"}, claimsAt(now, nil))
		expectReason(t, mustErr(v.Verify(unknown)), ReasonUnknownKID)
		d := time.Since(start)
		if d > 2*time.Second {
			t.Fatalf("mode %d: unknown kid refused after %v", mode, d)
		}
		if mode == modeHang && d < 900*time.Millisecond {
			t.Fatalf("hanging endpoint: refused after %v, before the 1s wait", d)
		}
		if srv.requests.Load() != before+1 {
			t.Fatalf("mode %d: %d refresh requests, want 1", mode, srv.requests.Load()-before)
		}
		if _, fails := log.counts(); fails != 1 {
			t.Fatalf("mode %d: refresh hook saw %d failures, want 1", mode, fails)
		}
		// Known keys still work; a second unknown kid is rate-limited (no
		// request) and refused at once.
		mustVerify(t, v, known)
		start = time.Now()
		expectReason(t, mustErr(v.Verify(unknown)), ReasonUnknownKID)
		if d := time.Since(start); d > 200*time.Millisecond {
			t.Fatalf("mode %d: rate-limited unknown kid took %v", mode, d)
		}
		if srv.requests.Load() != before+1 {
			t.Fatalf("mode %d: rate limit did not hold", mode)
		}
	}
}

func TestHTTPJWKSServerClosed(t *testing.T) {
	k := keys()
	now := time.Now()
	srv := newJWKSServer(t, jwksDoc(t, jwkSpec{key: k.ed, kid: "e1"}))
	var log refreshLog
	v := newV(t, Config{JWKS: []string{srv.URL}, OnJWKSRefresh: log.hook, CacheSize: -1})
	srv.Close() // connections are refused from now on
	mustVerify(t, v, sign(t, jwt.SigningMethodEdDSA, k.ed, map[string]any{"kid": "e1"}, claimsAt(now, nil)))
	start := time.Now()
	expectReason(t, mustErr(v.Verify(sign(t, jwt.SigningMethodEdDSA, k.ed, map[string]any{"kid": "e2"}, claimsAt(now, nil)))), ReasonUnknownKID)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("unknown kid refused after %v", d)
	}
	if ok, fails := log.counts(); ok != 1 || fails != 1 {
		t.Fatalf("hook: %d ok, %d failed; want 1, 1 (the refresh attempt for e2)", ok, fails)
	}
	mustVerify(t, v, sign(t, jwt.SigningMethodEdDSA, k.ed, map[string]any{"kid": "e1"}, claimsAt(now, map[string]any{"sub": "later"})))
}

func TestHTTPJWKSDownAtStart(t *testing.T) {
	k := keys()
	now := time.Now()
	srv := newJWKSServer(t, jwksDoc(t, jwkSpec{key: k.ec384, kid: "p"}))
	srv.mode.Store(modeFail)
	var log refreshLog
	v := newV(t, Config{JWKS: []string{srv.URL}, OnJWKSRefresh: log.hook})
	if ok, fails := log.counts(); ok != 0 || fails != 1 {
		t.Fatalf("hook: %d ok, %d failed", ok, fails)
	}
	if v.KeyCount() != 0 {
		t.Fatalf("KeyCount = %d", v.KeyCount())
	}
	tok := sign(t, jwt.SigningMethodES384, k.ec384, map[string]any{"kid": "p"}, claimsAt(now, nil))
	// No keys, no derived algorithm; the endpoint comes back and the kid
	// lookup refreshes.
	srv.mode.Store(modeOK)
	mustVerify(t, v, tok)
	if v.KeyCount() != 1 {
		t.Fatalf("KeyCount = %d", v.KeyCount())
	}
}

func TestHTTPJWKSBackgroundRefresh(t *testing.T) {
	k := keys()
	now := time.Now()
	srv := newJWKSServer(t, jwksDoc(t, jwkSpec{key: k.ec256, kid: "a"}))
	var log refreshLog
	v := newV(t, Config{JWKS: []string{srv.URL}, OnJWKSRefresh: log.hook, JWKSRefreshInterval: 20 * time.Millisecond})
	tokA := sign(t, jwt.SigningMethodES256, k.ec256, map[string]any{"kid": "a"}, claimsAt(now, nil))
	mustVerify(t, v, tokA)

	srv.mode.Store(modeFail)
	waitFor(t, func() bool { _, f := log.counts(); return f >= 2 })
	mustVerify(t, v, sign(t, jwt.SigningMethodES256, k.ec256, map[string]any{"kid": "a"}, claimsAt(now, map[string]any{"sub": "during outage"})))

	srv.set(jwksDoc(t, jwkSpec{key: k.ec256, kid: "a"}, jwkSpec{key: k.ec521, kid: "b"}))
	srv.mode.Store(modeOK)
	waitFor(t, func() bool { return v.KeyCount() == 2 })
	// Picked up by the background refresh, before any token asked for it.
	mustVerify(t, v, sign(t, jwt.SigningMethodES512, k.ec521, map[string]any{"kid": "b"}, claimsAt(now, nil)))
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCloseStopsGoroutines(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	k := keys()
	srv := newJWKSServer(t, jwksDoc(t, jwkSpec{key: k.ed, kid: "e"}))
	var log refreshLog
	v, err := New(context.Background(), Config{
		JWKS:                []string{srv.URL, srv.URL + "/second"},
		AllowedRoles:        []string{"web_user"},
		JWKSRefreshInterval: 10 * time.Millisecond,
		OnJWKSRefresh:       log.hook,
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { ok, _ := log.counts(); return ok >= 6 })
	mustVerify(t, v, sign(t, jwt.SigningMethodEdDSA, k.ed, map[string]any{"kid": "e"}, claimsAt(time.Now(), nil)))
	v.Close()
	v.Close() // idempotent
	srv.Close()
	goleak.VerifyNone(t, ignore)
	// Verify still works with the keys it has.
	mustVerify(t, v, sign(t, jwt.SigningMethodEdDSA, k.ed, map[string]any{"kid": "e"}, claimsAt(time.Now(), map[string]any{"sub": "after close"})))
}

func TestContextCancelStopsRefresh(t *testing.T) {
	k := keys()
	srv := newJWKSServer(t, jwksDoc(t, jwkSpec{key: k.ed, kid: "e"}))
	ctx, cancel := context.WithCancel(context.Background())
	v, err := New(ctx, Config{JWKS: []string{srv.URL}, AllowedRoles: []string{"web_user"}, JWKSRefreshInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	waitFor(t, func() bool { return srv.requests.Load() >= 3 })
	cancel()
	time.Sleep(50 * time.Millisecond)
	n := srv.requests.Load()
	time.Sleep(100 * time.Millisecond)
	if m := srv.requests.Load(); m != n {
		t.Fatalf("refreshes continued after ctx was canceled: %d -> %d", n, m)
	}
}

func TestHTTPClientOption(t *testing.T) {
	k := keys()
	srv := newJWKSServer(t, jwksDoc(t, jwkSpec{key: k.ed, kid: "e"}))
	var used atomic.Bool
	client := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		used.Store(true)
		return http.DefaultTransport.RoundTrip(r)
	})}
	v := newV(t, Config{JWKS: []string{srv.URL}, HTTPClient: client})
	if !used.Load() || v.KeyCount() != 1 {
		t.Fatalf("custom client used = %v, KeyCount = %d", used.Load(), v.KeyCount())
	}
	if v.ownTransport != nil {
		t.Fatal("own transport created despite HTTPClient")
	}
	_, err := New(context.Background(), Config{JWKS: []string{"http://"}, AllowedRoles: []string{"a"}})
	if err == nil || errors.Is(err, context.Canceled) {
		t.Fatalf("New with host-less URL: %v", err)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
