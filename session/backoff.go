package session

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/wire"
)

// Per-address backoff after failed logins.
//
// limits.auth_failures_before_backoff failed token checks from one client
// IP address within limits.auth_backoff make pgtoken refuse that address's
// logins for limits.auth_backoff, right after the startup packet: the
// client is not asked for its token, nothing is verified and no server
// connection is used. A login whose token verifies clears the address's
// record. Addresses are whole IPs (all clients behind one NAT or proxy
// share one); non-TCP peers are not tracked. Records expire once their
// window and refusal are over (swept at most once per window), and at most
// backoffMaxEntries addresses are remembered: when full, expired records
// go first, then records of addresses that are not refused.

// backoffMaxEntries bounds the addresses remembered.
const backoffMaxEntries = 10000

// authBackoff counts failed logins per client IP. The zero value is ready
// to use.
type authBackoff struct {
	mu    sync.Mutex
	m     map[string]*backoffEntry
	swept time.Time        // when expired records were last dropped
	now   func() time.Time // nil: time.Now (tests replace it)
}

type backoffEntry struct {
	failures int       // within the window that began at since
	since    time.Time // start of the counting window
	until    time.Time // refused until then (zero: not refused)
}

func (b *authBackoff) clock() time.Time {
	if b.now != nil {
		return b.now()
	}
	return time.Now()
}

// blocked reports how long logins from ip are still refused (0: they are
// not).
func (b *authBackoff) blocked(ip string) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.m[ip]
	if e == nil {
		return 0
	}
	if left := e.until.Sub(b.clock()); left > 0 {
		return left
	}
	return 0
}

// failed records a failed login from ip and reports whether it made the
// address refused.
func (b *authBackoff) failed(ip string, limit int, window time.Duration) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock()
	if now.Sub(b.swept) > window {
		b.sweep(now, window)
	}
	e := b.m[ip]
	if e == nil {
		if b.m == nil {
			b.m = map[string]*backoffEntry{}
		}
		if len(b.m) >= backoffMaxEntries {
			b.evict(now, window)
		}
		e = &backoffEntry{since: now}
		b.m[ip] = e
	}
	if now.Sub(e.since) > window {
		e.failures, e.since = 0, now
	}
	e.failures++
	if e.failures < limit {
		return false
	}
	e.failures, e.since, e.until = 0, now, now.Add(window)
	return true
}

// sweep drops the records whose window and refusal are over (under mu);
// it runs at most once per window.
func (b *authBackoff) sweep(now time.Time, window time.Duration) {
	b.swept = now
	for ip, e := range b.m {
		if now.Sub(e.since) > window && !now.Before(e.until) {
			delete(b.m, ip)
		}
	}
}

// evict makes room (under mu): records whose window and refusal are over
// go first; if that frees nothing, records of addresses not refused; and
// if every address is refused, any one.
func (b *authBackoff) evict(now time.Time, window time.Duration) {
	b.sweep(now, window)
	if len(b.m) < backoffMaxEntries {
		return
	}
	for ip, e := range b.m {
		if !now.Before(e.until) {
			delete(b.m, ip)
			if len(b.m) < backoffMaxEntries*9/10 {
				return
			}
		}
	}
	for ip := range b.m {
		if len(b.m) < backoffMaxEntries {
			return
		}
		delete(b.m, ip)
	}
}

// succeeded forgets ip's failures.
func (b *authBackoff) succeeded(ip string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.m, ip)
}

// size is the number of addresses remembered.
func (b *authBackoff) size() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.m)
}

// backoffKey is the address a client's failures are counted under; "" for
// peers that are not tracked.
func backoffKey(addr net.Addr) string {
	if a, ok := addr.(*net.TCPAddr); ok && a.IP != nil {
		return a.IP.String()
	}
	return ""
}

// checkBackoff refuses a login from an address in backoff.
func (s *Server) checkBackoff(a *attempt) error {
	if s.cfg.AuthFailuresBeforeBackoff <= 0 {
		return nil
	}
	ip := backoffKey(a.nc.RemoteAddr())
	if ip == "" {
		return nil
	}
	left := s.backoff.blocked(ip)
	if left <= 0 {
		return nil
	}
	secs := int((left + time.Second - 1) / time.Second)
	return s.authFailed(AuthInBackoff, &wire.Error{Severity: wire.SeverityFatal, Code: wire.CodeInvalidPassword,
		Message: "too many failed logins from this address; retry in " + strconv.Itoa(secs) + "s",
		Err:     errBackoff})
}

// errBackoff marks a refusal by the backoff itself (not counted again).
var errBackoff = errors.New("address in auth backoff")

// noteLoginFailure counts a login refused because of its token.
func (s *Server) noteLoginFailure(a *attempt, err error) {
	if s.cfg.AuthFailuresBeforeBackoff <= 0 || !isTokenFailure(err) {
		return
	}
	ip := backoffKey(a.nc.RemoteAddr())
	if ip == "" {
		return
	}
	if s.backoff.failed(ip, s.cfg.AuthFailuresBeforeBackoff, s.cfg.AuthBackoff) {
		a.log.Warn("too many failed logins from this address: refusing its logins for a while",
			zap.String("ip", ip), zap.Int("failures", s.cfg.AuthFailuresBeforeBackoff), zap.Duration("backoff", s.cfg.AuthBackoff))
	}
}

// noteLoginSuccess clears the record of a client whose token verified.
func (s *Server) noteLoginSuccess(a *attempt) {
	if s.cfg.AuthFailuresBeforeBackoff <= 0 {
		return
	}
	if ip := backoffKey(a.nc.RemoteAddr()); ip != "" {
		s.backoff.succeeded(ip)
	}
}

// isTokenFailure reports whether a failed login was the token's fault:
// the verifier refused it, or the password was empty, too large or not
// usable. Refusals for other reasons (the backoff itself, a privileged
// role, TLS required, the server) do not count.
func isTokenFailure(err error) bool {
	if errors.Is(err, errBackoff) {
		return false
	}
	if _, ok := errors.AsType[*authn.Error](err); ok {
		return true
	}
	we, ok := errors.AsType[*wire.Error](err)
	return ok && we.Code == wire.CodeInvalidPassword && we.Err == nil && isMalformedToken(we.Message)
}

// isMalformedToken tells the 28P01 refusals of login.go that are about the
// password itself (empty, too large, unusable claims).
func isMalformedToken(msg string) bool {
	return strings.HasPrefix(msg, "token rejected (malformed)")
}
