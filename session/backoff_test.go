package session_test

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// backoffEnv is pgtoken with the defaults for failed logins (the test
// configuration turns them off), and failedDelay as the delay.
func backoffEnv(t *testing.T, failedDelay time.Duration) *pgtest.Env {
	d := config.Default().Limits
	return pgtest.Start(t, func(c *config.Config) {
		c.Limits.AuthFailureDelay = config.Duration(failedDelay)
		c.Limits.AuthFailureRate, c.Limits.AuthFailureBurst = d.AuthFailureRate, d.AuthFailureBurst
		c.Limits.StartupTimeout = d.StartupTimeout
	})
}

// emptyPassword logs in with an empty password and returns the FATAL.
func emptyPassword(t *testing.T, env *pgtest.Env) fatalAnswer {
	t.Helper()
	nc := dialPgtoken(t, env)
	sendRaw(t, nc, startupFor(t, env))
	fe := pgproto3.NewFrontend(nc, nc)
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if m, err := fe.Receive(); err != nil {
		t.Fatal(err)
	} else if _, ok := m.(*pgproto3.AuthenticationCleartextPassword); !ok {
		t.Fatalf("not asked for the token: %#v", m)
	}
	sendRaw(t, nc, encodeMsgs(t, &pgproto3.PasswordMessage{Password: ""}))
	return readFatal(t, nc, 10*time.Second)
}

// badSignature is a well-formed token signed with the wrong key.
func badSignature(t *testing.T) string {
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"role": "web_user", "exp": time.Now().Add(time.Hour).Unix()}).
		SignedString([]byte("not-the-secret-not-the-secret-not-the-secret"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Failed logins from one address — empty passwords, an expired token
// retried, many bad signatures at once — never make a valid token from
// that address fail.
func TestFailedLoginsNeverLockOutAValidToken(t *testing.T) {
	noGoroutineLeaks(t)
	env := backoffEnv(t, 200*time.Millisecond)
	login := func(token string) error {
		c, err := pgconn.Connect(ctx(t), env.DSN(token))
		if err == nil {
			_ = c.Close(ctx(t))
		}
		return err
	}
	expired := pgtest.Token(t, map[string]any{"role": "web_user", "exp": time.Now().Add(-time.Hour).Unix()})
	for range 5 {
		if f := emptyPassword(t, env); f.code != "28P01" || !strings.Contains(f.message, "empty") {
			t.Fatalf("empty password: %v", f)
		}
	}
	for range 5 {
		if pe := pgErr(login(expired)); pe == nil || pe.Code != "28P01" || !strings.Contains(pe.Message, "expired") {
			t.Fatalf("expired token: %v", pe)
		}
	}
	if err := login(pgtest.UserToken(t, "alice")); err != nil {
		t.Fatalf("a valid token after five empty passwords and five expired tokens: %v", err)
	}

	// Many bad signatures at once, from the same address: more than the
	// bucket holds. A valid token logs in during them and after them
	// (within the startup timeout: it may wait for its signature check).
	var wg sync.WaitGroup
	bad := badSignature(t)
	for range 3 * config.Default().Limits.AuthFailureBurst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if pe := pgErr(login(bad)); pe == nil || pe.Code != "28P01" && pe.Code != "53300" {
				t.Errorf("bad signature: %v", pe)
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	if err := login(pgtest.UserToken(t, "bob")); err != nil {
		t.Fatalf("a new valid token during the failures: %v", err)
	}
	wg.Wait()
	if err := login(pgtest.UserToken(t, "carol")); err != nil {
		t.Fatalf("a new valid token after the failures: %v", err)
	}
	// And from another address nothing waits at all.
	if c, err := connectFrom(env, "127.0.0.2", pgtest.UserToken(t, "dave")); err != nil {
		t.Logf("cannot connect from 127.0.0.2 (%v): skipping that part", err)
	} else {
		_ = c.Close(ctx(t))
	}
}

// A failed login whose password is no correctly signed token is answered
// late; an expired but correctly signed token is not an attack and is
// answered at once.
func TestSuspiciousFailuresAreAnsweredLate(t *testing.T) {
	const delay = 3 * time.Second
	env := backoffEnv(t, delay)
	start := time.Now()
	f := emptyPassword(t, env)
	if took := time.Since(start); took < delay || f.code != "28P01" {
		t.Fatalf("empty password answered after %s: %v", took, f)
	}
	start = time.Now()
	_, err := pgconn.Connect(ctx(t), env.DSN(badSignature(t)))
	if took := time.Since(start); took < delay || pgErr(err) == nil || !strings.Contains(pgErr(err).Message, "bad signature") {
		t.Fatalf("bad signature answered after %s: %v", took, err)
	}
	start = time.Now()
	_, err = pgconn.Connect(ctx(t), env.DSN(pgtest.Token(t, map[string]any{"role": "web_user", "exp": time.Now().Add(-time.Hour).Unix()})))
	if took := time.Since(start); took >= delay || pgErr(err) == nil || !strings.Contains(pgErr(err).Message, "expired") {
		t.Fatalf("expired token answered after %s: %v", took, err)
	}
	// Other refusals are not the token's: no delay either.
	dsn := strings.Replace(env.DSN(pgtest.UserToken(t, "alice")), "dbname="+env.DB, "dbname=nosuchdb", 1)
	start = time.Now()
	_, err = pgconn.Connect(ctx(t), dsn)
	if took := time.Since(start); took >= delay || pgErr(err) == nil || pgErr(err).Code != "3D000" {
		t.Fatalf("unknown database answered after %s: %v", took, err)
	}
}

// connectFrom logs in to pgtoken from a given loopback source address.
func connectFrom(env *pgtest.Env, src, token string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(env.DSN(token))
	if err != nil {
		return nil, err
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	cfg.DialFunc = d.DialContext
	cx, cancel := ctxTimeout(10 * time.Second)
	defer cancel()
	return pgconn.ConnectConfig(cx, cfg)
}
