package session_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// connectFrom logs in to pgtoken from a given loopback source address.
func connectFrom(env *pgtest.Env, src, token string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(env.DSN(token))
	if err != nil {
		return nil, err
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	cfg.DialFunc = d.DialContext
	cx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pgconn.ConnectConfig(cx, cfg)
}

func TestRepeatedAuthFailuresBackOff(t *testing.T) {
	noGoroutineLeaks(t)
	env := pgtest.Start(t, func(c *config.Config) {
		c.Limits.AuthFailuresBeforeBackoff = 3
		c.Limits.AuthBackoff = config.Duration(time.Second)
	})
	before := env.Connect(pgtest.UserToken(t, "bob"))
	good := pgtest.UserToken(t, "alice")
	bad := pgtest.Token(t, map[string]any{"role": "web_user", "exp": time.Now().Add(-time.Hour).Unix()})
	login := func(token string) error {
		c, err := pgconn.Connect(ctx(t), env.DSN(token))
		if err == nil {
			_ = c.Close(ctx(t))
		}
		return err
	}
	wantReason := func(err error, reason string) {
		t.Helper()
		if pe := pgErr(err); pe == nil || pe.Code != "28P01" || !strings.Contains(pe.Message, reason) {
			t.Fatalf("got %v, want 28P01 %q", err, reason)
		}
	}

	// Two failures, then a success: the count starts again.
	for range 2 {
		wantReason(login(bad), "expired")
	}
	if err := login(good); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		wantReason(login(bad), "expired")
	}
	if err := login(good); err != nil {
		t.Fatalf("a success clears the failures: %v", err)
	}
	// Three failures in a row: the address is refused, good token or not,
	// before it is even asked for one.
	wantReason(login("garbage"), "malformed")
	wantReason(login(bad), "expired")
	wantReason(login(bad), "expired")
	start := time.Now()
	wantReason(login(good), "too many failed logins from this address; retry in 1s")
	nc := dialPgtoken(t, env)
	sendRaw(t, nc, startupFor(t, env))
	if f := readFatal(t, nc, 2*time.Second); f.code != "28P01" || !strings.Contains(f.message, "too many failed logins") {
		t.Fatalf("refused before the password request: %v", f)
	}
	// Clients logged in already are not affected; other addresses neither.
	if got := rows(t, before, whoami); got[0][1] != "bob" {
		t.Fatalf("client from before: %q", got)
	}
	if c, err := connectFrom(env, "127.0.0.2", good); err != nil {
		if !strings.Contains(err.Error(), "too many failed") {
			t.Logf("cannot connect from 127.0.0.2 (%v): skipping that part", err)
		} else {
			t.Fatalf("another address is refused too: %v", err)
		}
	} else {
		_ = c.Close(ctx(t))
	}
	// The backoff ends.
	time.Sleep(time.Second - time.Since(start) + 100*time.Millisecond)
	if err := login(good); err != nil {
		t.Fatalf("after the backoff: %v", err)
	}
	// Refusals that are not the token's fault do not count.
	for range 2 {
		wantReason(login(bad), "expired")
	}
	for range 4 {
		nc := dialPgtoken(t, env)
		sendRaw(t, nc, encodeMsgs(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"database": "x"}}))
		if f := readFatal(t, nc, 2*time.Second); f.code != "28000" {
			t.Fatalf("no user: %v", f)
		}
	}
	if err := login(good); err != nil {
		t.Fatalf("after refusals for other reasons: %v", err)
	}
}

func TestBackoffDoesNotAnswerTheStartupOfOthers(t *testing.T) {
	// The refusal is sent right after the startup packet: the client is
	// never asked for its token.
	env := pgtest.Start(t, func(c *config.Config) {
		c.Limits.AuthFailuresBeforeBackoff = 1
		c.Limits.AuthBackoff = config.Duration(5 * time.Second)
	})
	_, err := pgconn.Connect(ctx(t), env.DSN("x"))
	if pe := pgErr(err); pe == nil || !strings.Contains(pe.Message, "malformed") {
		t.Fatalf("first: %v", err)
	}
	nc := dialPgtoken(t, env)
	sendRaw(t, nc, startupFor(t, env))
	fe := pgproto3.NewFrontend(nc, nc)
	_ = nc.SetReadDeadline(time.Now().Add(3 * time.Second))
	m, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := m.(*pgproto3.ErrorResponse); !ok || e.Code != "28P01" || !strings.Contains(e.Message, "retry in 5s") {
		t.Fatalf("first answer to the startup packet: %#v", m)
	}
}
