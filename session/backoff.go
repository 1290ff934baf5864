package session

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/wire"
)

// Slowing down token guessing, without refusing anyone's valid token.
//
// pgtoken never refuses a login because of other logins' failures. A login
// whose password is no correctly signed token — malformed, a bad
// signature, an unknown key id, an algorithm not allowed, an empty or
// oversized password — is suspicious: its FATAL is sent only after
// limits.auth_failure_delay, so one connection guesses slowly.
//
// Guessing over many connections at once is bounded per client IP address
// by a token bucket (x/time/rate) that only suspicious signature checks
// drain: limits.auth_failure_rate per second, up to
// limits.auth_failure_burst. While an address's bucket is empty, its
// tokens wait for their signature check (checks in flight count as
// drained), so its suspicious checks never exceed burst + rate × time. A
// token found in the verifier's cache of verified tokens is not checked
// again and never waits; a token the verifier accepts, or refuses only for
// its claims (expired, not yet valid, wrong issuer or audience, role not
// allowed: it was correctly signed), drains nothing and is answered at
// once. Only a wait longer than the startup timeout leaves refuses a
// login: FATAL 53300.
//
// At most limiterMaxEntries addresses are remembered; an address whose
// bucket is full is forgotten first (a full bucket is a new one), then any
// with no check in flight. Addresses are whole IPs (all clients behind one
// NAT or proxy share one); non-TCP peers are not limited.

// limiterMaxEntries bounds the addresses remembered.
const limiterMaxEntries = 10000

// failureLimiter holds the per-address buckets. The zero value limits
// nothing; set rate and burst first.
type failureLimiter struct {
	rate  rate.Limit // refill per second; 0: no limit
	burst int

	mu  sync.Mutex
	m   map[string]*addrBudget
	now func() time.Time // nil: time.Now (tests replace it)
}

// addrBudget is one address's bucket and its checks in flight.
type addrBudget struct {
	lim      *rate.Limiter
	inflight int
}

func (l *failureLimiter) clock() time.Time {
	if l.now != nil {
		return l.now()
	}
	return time.Now()
}

// errThrottled refuses a login whose token could not be checked before the
// startup timeout.
var errThrottled = errors.New("token check throttled")

// acquire waits until ip may have one more signature checked, or fails
// when that would take past deadline (or ctx ends). done must be called
// once the check is over, saying whether it was suspicious.
func (l *failureLimiter) acquire(ctx context.Context, ip string, deadline time.Time) (done func(suspicious bool), err error) {
	if l.rate <= 0 || ip == "" {
		return func(bool) {}, nil
	}
	for {
		now := l.clock()
		b, wait := l.take(ip, now)
		if b != nil {
			return func(suspicious bool) { l.release(b, suspicious) }, nil
		}
		if !deadline.IsZero() && now.Add(wait).After(deadline) {
			return nil, errThrottled
		}
		// Checks in flight may end well within the wait: look again soon.
		t := time.NewTimer(min(wait, 50*time.Millisecond))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
}

// take counts a check of ip as in flight if its budget allows one at now;
// otherwise it says how long until it will, if nothing else changes.
func (l *failureLimiter) take(ip string, now time.Time) (*addrBudget, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.get(ip, now)
	avail := b.lim.TokensAt(now) - float64(b.inflight)
	if avail >= 1 {
		b.inflight++
		return b, 0
	}
	return nil, max(time.Duration((1-avail)/float64(l.rate)*float64(time.Second)), time.Millisecond)
}

// release ends a check; a suspicious one drains the bucket (into debt if
// it is empty, so later checks wait longer).
func (l *failureLimiter) release(b *addrBudget, suspicious bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b.inflight--
	if suspicious {
		b.lim.ReserveN(l.clock(), 1)
	}
}

// get returns ip's budget, making one (under mu).
func (l *failureLimiter) get(ip string, now time.Time) *addrBudget {
	if b := l.m[ip]; b != nil {
		return b
	}
	if l.m == nil {
		l.m = map[string]*addrBudget{}
	}
	if len(l.m) >= limiterMaxEntries {
		l.evict(now)
	}
	b := &addrBudget{lim: rate.NewLimiter(l.rate, l.burst)}
	l.m[ip] = b
	return b
}

// evict makes room (under mu): budgets that are full and idle go first
// (forgetting them changes nothing); if that frees too little, any idle
// ones; if every address has a check in flight, any.
func (l *failureLimiter) evict(now time.Time) {
	for ip, b := range l.m {
		if b.inflight == 0 && b.lim.TokensAt(now) >= float64(l.burst) {
			delete(l.m, ip)
		}
	}
	for ip, b := range l.m {
		if len(l.m) < limiterMaxEntries*9/10 {
			return
		}
		if b.inflight == 0 {
			delete(l.m, ip)
		}
	}
	for ip := range l.m {
		if len(l.m) < limiterMaxEntries {
			return
		}
		delete(l.m, ip) // its holder releases through its own pointer
	}
}

// size is the number of addresses remembered.
func (l *failureLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// limiterKey is the address a client's checks are counted under; "" for
// peers that are not limited.
func limiterKey(addr net.Addr) string {
	if a, ok := addr.(*net.TCPAddr); ok && a.IP != nil {
		return a.IP.String()
	}
	return ""
}

// cachedVerifier is a Verifier that can tell, without checking a
// signature, that it accepted a token before (*authn.Verifier).
type cachedVerifier interface {
	Cached(token string) *authn.Identity
}

// verifyToken checks a login's token: at once if the verifier has it
// cached, else once the client's address may have a signature checked.
func (s *Server) verifyToken(a *attempt, token string) (*authn.Identity, error) {
	v := s.verifier.Load().v
	if cv, ok := v.(cachedVerifier); ok {
		if id := cv.Cached(token); id != nil {
			return id, nil
		}
	}
	done, err := s.limiter.acquire(s.ctx, limiterKey(a.nc.RemoteAddr()), a.deadline)
	if err != nil {
		if errors.Is(err, errThrottled) {
			a.log.Warn("too many failed logins from this address: a token could not be checked before the startup timeout")
			s.obs.AuthFailed(AuthThrottled)
			return nil, &wire.Error{Severity: wire.SeverityFatal, Code: wire.CodeTooManyConnections,
				Message: "pgtoken: too many failed logins from this address; the token could not be checked in time, retry later",
				Err:     err}
		}
		return nil, err
	}
	id, err := v.Verify(token)
	done(suspicious(err))
	return id, err
}

// errNotAToken marks the refusal of a password that is no token at all
// (empty, too large): as suspicious as a bad signature.
var errNotAToken = errors.New("the password is not a token")

// suspicious reports whether a failed login looks like guessing: its
// password was no correctly signed token.
func suspicious(err error) bool {
	if err == nil {
		return false
	}
	if ae, ok := errors.AsType[*authn.Error](err); ok {
		switch ae.Reason {
		case authn.ReasonMalformed, authn.ReasonBadSignature, authn.ReasonUnknownKID, authn.ReasonAlgorithm:
			return true
		}
		return false // refused for its claims: it was correctly signed
	}
	return errors.Is(err, errNotAToken)
}

// delayFailure holds a suspicious login's FATAL back for
// limits.auth_failure_delay (less if the startup timeout comes first, or
// shutdown begins).
func (s *Server) delayFailure(a *attempt, err error) {
	d := s.cfg.AuthFailureDelay
	if d <= 0 || !suspicious(err) {
		return
	}
	if !a.deadline.IsZero() {
		// Leave time to write the FATAL before the deadline cuts the
		// connection.
		d = min(d, time.Until(a.deadline)-100*time.Millisecond)
	}
	if d <= 0 {
		return
	}
	if ce := a.log.Check(zap.DebugLevel, "delaying the answer to a failed login"); ce != nil {
		ce.Write(zap.Duration("delay", d))
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.ctx.Done():
	}
}
