package session

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/wire"
)

// The per-address budget of suspicious signature checks, on a fake clock.
func TestFailureLimiterBookkeeping(t *testing.T) {
	now := time.Unix(1000, 0)
	l := &failureLimiter{rate: 2, burst: 3, now: func() time.Time { return now }}
	take := func(ip string) (*addrBudget, time.Duration) { return l.take(ip, now) }

	// A full bucket: three checks at once, the fourth waits while they are
	// in flight.
	var held []*addrBudget
	for i := range 3 {
		b, wait := take("a")
		if b == nil {
			t.Fatalf("check %d waits %s with a full bucket", i+1, wait)
		}
		held = append(held, b)
	}
	if b, wait := take("a"); b != nil || wait != 500*time.Millisecond {
		t.Fatalf("a fourth check in flight: %v, wait %s", b, wait)
	}
	if b, _ := take("b"); b == nil {
		t.Fatal("another address waits")
	}
	// Checks that were not suspicious drain nothing.
	for _, b := range held {
		l.release(b, false)
	}
	for range 3 {
		b, _ := take("a")
		if b == nil {
			t.Fatal("non-suspicious checks drained the bucket")
		}
		l.release(b, true)
	}
	// Three suspicious ones drained it: the next waits for the refill.
	if b, wait := take("a"); b != nil || wait != 500*time.Millisecond {
		t.Fatalf("after three suspicious checks: %v, wait %s", b, wait)
	}
	now = now.Add(500 * time.Millisecond)
	b, _ := take("a")
	if b == nil {
		t.Fatal("not refilled")
	}
	// Suspicious checks of an empty bucket go into debt: later ones wait
	// longer (burst + rate × time bounds them all).
	l.release(b, true)
	b, _ = take("b")
	l.release(b, true)
	if _, wait := take("a"); wait != 500*time.Millisecond {
		t.Fatalf("wait %s", wait)
	}
	now = now.Add(2 * time.Second)
	for range 3 {
		if b, _ := take("a"); b == nil {
			t.Fatal("the bucket does not refill to its burst")
		} else {
			l.release(b, true)
		}
	}

	// Bounded memory: a flood of addresses never grows the map past its
	// cap, and a drained address is remembered over full ones.
	l = &failureLimiter{rate: 2, burst: 3, now: func() time.Time { return now }}
	for range 3 {
		b, _ := l.take("drained", now)
		l.release(b, true)
	}
	for i := range 3 * limiterMaxEntries {
		b, _ := l.take(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), now)
		l.release(b, false)
		if n := l.size(); n > limiterMaxEntries {
			t.Fatalf("%d entries", n)
		}
	}
	if b, _ := l.take("drained", now); b != nil {
		t.Fatal("a drained address was forgotten while full ones were kept")
	}
}

func TestWhatIsSuspicious(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&authn.Error{Reason: authn.ReasonBadSignature}, true},
		{&authn.Error{Reason: authn.ReasonMalformed}, true},
		{&authn.Error{Reason: authn.ReasonUnknownKID}, true},
		{&authn.Error{Reason: authn.ReasonAlgorithm}, true},
		{&wire.Error{Code: wire.CodeInvalidPassword, Message: "token rejected (bad signature): x", Err: &authn.Error{Reason: authn.ReasonBadSignature}}, true},
		{&wire.Error{Code: wire.CodeInvalidPassword, Message: "token rejected (malformed): the password is empty", Err: errNotAToken}, true},
		// Correctly signed: not an attack.
		{&authn.Error{Reason: authn.ReasonExpired}, false},
		{&wire.Error{Code: wire.CodeInvalidPassword, Message: "token rejected (expired): x", Err: &authn.Error{Reason: authn.ReasonExpired}}, false},
		{wire.Fatalf(wire.CodeInvalidPassword, "token rejected (expired): token expired"), false},
		{&authn.Error{Reason: authn.ReasonNotYetValid}, false},
		{&authn.Error{Reason: authn.ReasonIssuer}, false},
		{&authn.Error{Reason: authn.ReasonAudience}, false},
		{&authn.Error{Reason: authn.ReasonRole}, false},
		{&authn.Error{Reason: authn.ReasonNoRole}, false},
		// Not the token's fault.
		{wire.Fatalf(wire.CodeInsufficientPrivilege, "pgtoken refuses to serve role"), false},
		{wire.Fatalf(wire.CodeInvalidCatalogName, `database "x" does not exist`), false},
		{wire.Fatalf(wire.CodeInvalidAuthorization, "pgtoken refuses to receive a token over an unencrypted connection"), false},
		{wire.Fatalf(wire.CodeProtocolViolation, "invalid startup packet"), false},
		{errors.New("anything else"), false},
		{nil, false},
	} {
		if got := suspicious(tc.err); got != tc.want {
			t.Errorf("%v: suspicious %t", tc.err, got)
		}
	}
}

// countingVerifier refuses every token as badly signed, except good,
// which it accepts; it counts its signature checks, and knows good as
// cached once it accepted it.
type countingVerifier struct {
	checks atomic.Int64
	good   string
	cached atomic.Bool
}

func (v *countingVerifier) Verify(tok string) (*authn.Identity, error) {
	v.checks.Add(1)
	time.Sleep(time.Millisecond) // a signature check takes a while
	if tok == v.good {
		v.cached.Store(true)
		return &authn.Identity{Role: "web_user", ExpiresAt: time.Now().Add(time.Hour)}, nil
	}
	return nil, &authn.Error{Reason: authn.ReasonBadSignature}
}

func (v *countingVerifier) Cached(tok string) *authn.Identity {
	if tok == v.good && v.cached.Load() {
		return &authn.Identity{Role: "web_user", ExpiresAt: time.Now().Add(time.Hour)}
	}
	return nil
}

// attemptLogin sends a startup packet and a password from addr and
// returns pgtoken's answer to the password (safe to call from any
// goroutine).
func attemptLogin(s *Server, addr net.Addr, password string) (pgproto3.BackendMessage, error) {
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.handle(peerConn{server, addr})
	}()
	defer func() {
		_ = client.Close()
		<-done
	}()
	_ = client.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(client, client)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "u", "database": "d"}})
	if err := fe.Flush(); err != nil {
		return nil, err
	}
	if m, err := fe.Receive(); err != nil {
		return nil, err
	} else if !isCleartextRequest(m) {
		return nil, fmt.Errorf("not asked for the token: %#v", m)
	}
	fe.Send(&pgproto3.PasswordMessage{Password: password})
	if err := fe.Flush(); err != nil {
		return nil, err
	}
	return fe.Receive()
}

// loginWith is attemptLogin that fails the test on an error.
func loginWith(t *testing.T, s *Server, addr net.Addr, password string) pgproto3.BackendMessage {
	t.Helper()
	m, err := attemptLogin(s, addr, password)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Many clients of one address guessing at once get no more signature
// checks than the bucket allows; a token checked before is let through
// without a check while they do.
func TestFailureLimiterBoundsSignatureChecks(t *testing.T) {
	v := &countingVerifier{good: "good-token"}
	const rate, burst = 20, 5
	s := newLoginTestServer(t, func(c *Config) {
		c.Verifier = v
		c.AuthFailureRate, c.AuthFailureBurst = rate, burst
		c.StartupTimeout = 3 * time.Second
	})
	addr := &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 6000}
	// The good token, checked once before the flood (it is database "d"
	// that this Server does not serve: the token got that far).
	if e, ok := loginWith(t, s, addr, "good-token").(*pgproto3.ErrorResponse); !ok || e.Code != "3D000" {
		t.Fatalf("good token: %#v", e)
	}
	v.checks.Store(0)
	start := time.Now()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				m, err := attemptLogin(s, addr, "guess")
				if e, ok := m.(*pgproto3.ErrorResponse); err != nil || !ok || e.Code != "28P01" && e.Code != "53300" {
					t.Errorf("guess: %#v %v", m, err)
					return
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	// The cached token is answered without a check, and without waiting
	// for the bucket.
	if e, ok := loginWith(t, s, addr, "good-token").(*pgproto3.ErrorResponse); !ok || e.Code != "3D000" {
		t.Fatalf("good token during the flood: %#v", e)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)
	checks := v.checks.Load()
	if max := int64(burst + rate*elapsed.Seconds() + 1); checks > max {
		t.Fatalf("%d signature checks in %s; the bucket allows %d", checks, elapsed, max)
	}
	if checks < burst {
		t.Fatalf("only %d checks: the flood did not run", checks)
	}
	// Another address has its own bucket.
	if e, ok := loginWith(t, s, &net.TCPAddr{IP: net.ParseIP("127.0.0.2"), Port: 6000}, "guess").(*pgproto3.ErrorResponse); !ok || e.Code != "28P01" {
		t.Fatalf("other address: %#v", e)
	}
}
