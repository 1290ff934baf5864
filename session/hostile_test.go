package session_test

// Hostile clients (issue 4): garbage, truncated and oversized packets,
// absurd lengths, silence, clients that stop reading, too many clients.
// Each gets a FATAL ErrorResponse where the protocol allows (or a close)
// within a bound time; a normal client keeps working meanwhile; the
// client's goroutine ends (the server's connection count drops back) and
// nothing of pgtoken outlives the test (goleak).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/goleak"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// noGoroutineLeaks fails the test if goroutines started during it still
// run once it and its cleanups are done. Call it first, so that its cleanup
// runs last, after pgtest's (which closes pgtoken) and the clients'.
func noGoroutineLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		if !t.Failed() {
			goleak.VerifyNone(t, ignore)
		}
	})
}

// fatalAnswer is what a hostile client got back: the ErrorResponse (if any)
// and how the connection ended.
type fatalAnswer struct {
	severity, code, message, hint string
	closed                        bool // the connection ended (EOF or reset) after it
}

func (f fatalAnswer) String() string {
	return f.severity + " " + f.code + " " + f.message + " (hint: " + f.hint + ")"
}

// readFatal reads what the server sends until the connection ends,
// skipping other messages, and returns the first ErrorResponse. It fails
// the test if the connection is still open after d.
func readFatal(t *testing.T, nc net.Conn, d time.Duration) fatalAnswer {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(d))
	var f fatalAnswer
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(nc, hdr[:]); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the connection is still open after %s (got %v)", d, f)
			}
			f.closed = true
			return f
		}
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if n < 0 || n > 1<<20 {
			t.Fatalf("bad message from pgtoken: %q length %d", hdr[0], n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(nc, body); err != nil {
			f.closed = true
			return f
		}
		if hdr[0] == 'E' && f.code == "" {
			var e pgproto3.ErrorResponse
			if err := e.Decode(body); err != nil {
				t.Fatalf("bad ErrorResponse: %v", err)
			}
			f.severity, f.code, f.message, f.hint = e.Severity, e.Code, e.Message, e.Hint
		}
	}
}

func dialPgtoken(t *testing.T, env *pgtest.Env) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", env.App.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return nc
}

func encodeMsgs(t *testing.T, msgs ...interface{ Encode([]byte) ([]byte, error) }) []byte {
	t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func startupFor(t *testing.T, env *pgtest.Env) []byte {
	return encodeMsgs(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "anyone", "database": env.DB}})
}

func sendRaw(t *testing.T, nc net.Conn, b []byte) {
	t.Helper()
	_ = nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// expectByte reads one byte (an SSLRequest answer).
func expectByte(t *testing.T, nc net.Conn, want byte) {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	if _, err := io.ReadFull(nc, b[:]); err != nil || b[0] != want {
		t.Fatalf("want %q, got %q (%v)", want, b[0], err)
	}
}

// loginRaw logs in over a raw socket and returns it after ReadyForQuery.
func loginRaw(t *testing.T, env *pgtest.Env, token string) net.Conn {
	t.Helper()
	nc := dialPgtoken(t, env)
	sendRaw(t, nc, startupFor(t, env))
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(nc, nc)
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		switch m := m.(type) {
		case *pgproto3.AuthenticationCleartextPassword:
			sendRaw(t, nc, encodeMsgs(t, &pgproto3.PasswordMessage{Password: token}))
		case *pgproto3.ErrorResponse:
			t.Fatalf("login: %s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			_ = nc.SetReadDeadline(time.Time{})
			return nc
		}
	}
}

// waitClients waits until pgtoken counts n client connections.
func waitClients(t *testing.T, env *pgtest.Env, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := env.App.Server.Stats().Connections
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgtoken still counts %d client connections, want %d", got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// isReset reports whether err is the peer resetting the connection.
func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset by peer")
}

func be32(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }

func TestHostileClients(t *testing.T) {
	noGoroutineLeaks(t)
	cert, key := selfSigned(t, t.TempDir())
	env := pgtest.Start(t, func(c *config.Config) {
		c.Limits.StartupTimeout = config.Duration(time.Second)
		c.TLS.Cert, c.TLS.Key = cert, key
	})
	good := env.Connect(pgtest.UserToken(t, "bob"))
	stillServes := func(t *testing.T) {
		t.Helper()
		if got := rows(t, good, whoami); got[0][1] != "bob" {
			t.Fatalf("the normal client: %q", got)
		}
	}
	tok := pgtest.UserToken(t, "mallory")
	ssl := be32(8)
	ssl = append(ssl, be32(80877103)...)

	for _, tc := range []struct {
		name string
		// send does the hostile part; it may read answers itself.
		send func(t *testing.T, nc net.Conn)
		// code is the SQLSTATE of the FATAL wanted, "" for a close
		// without one; msg a part of its message.
		code, msg string
		within    time.Duration
	}{
		{name: "http request", code: "08P01", msg: "invalid startup packet",
			send: func(t *testing.T, nc net.Conn) { sendRaw(t, nc, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) }},
		{name: "garbage protocol code", code: "0A000", msg: "unsupported frontend protocol",
			send: func(t *testing.T, nc net.Conn) { sendRaw(t, nc, []byte{0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78}) }},
		{name: "binary garbage", code: "08P01", msg: "invalid startup packet",
			send: func(t *testing.T, nc net.Conn) { sendRaw(t, nc, bytes.Repeat([]byte{0xff, 0x00, 0x13, 0x37}, 300)) }},
		{name: "length below minimum", code: "08P01", msg: "invalid message length",
			send: func(t *testing.T, nc net.Conn) { sendRaw(t, nc, []byte{0, 0, 0, 3, 0}) }},
		{name: "length 0x7fffffff", code: "08P01", msg: "2147483647 bytes",
			send: func(t *testing.T, nc net.Conn) { sendRaw(t, nc, be32(0x7fffffff)) }},
		{name: "length 0xffffffff", code: "08P01", msg: "invalid startup packet",
			send: func(t *testing.T, nc net.Conn) { sendRaw(t, nc, be32(0xffffffff)) }},
		{name: "huge startup packet", code: "08P01", msg: "limit 10000",
			send: func(t *testing.T, nc net.Conn) {
				b := append(be32(200000), be32(3<<16)...)
				sendRaw(t, nc, append(b, bytes.Repeat([]byte("user\x00x\x00"), 100)...))
			}},
		{name: "truncated startup packet then close", code: "",
			send: func(t *testing.T, nc net.Conn) {
				sendRaw(t, nc, startupFor(t, env)[:12])
				_ = nc.(*net.TCPConn).CloseWrite()
			}},
		{name: "startup parameters not terminated", code: "08P01", msg: "invalid startup packet",
			send: func(t *testing.T, nc net.Conn) {
				b := append(be32(4+4+6), be32(3<<16)...)
				sendRaw(t, nc, append(b, "user\x00x"...))
			}},
		{name: "no user", code: "28000", msg: "no PostgreSQL user name",
			send: func(t *testing.T, nc net.Conn) {
				sendRaw(t, nc, encodeMsgs(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"database": "x"}}))
			}},
		{name: "protocol 2.0", code: "0A000", msg: "unsupported frontend protocol 2.0",
			send: func(t *testing.T, nc net.Conn) {
				sendRaw(t, nc, append(append(be32(4+4+12), be32(2<<16)...), "user\x00anyone\x00\x00"[:12]...))
			}},
		{name: "protocol 4.0", code: "0A000", msg: "unsupported frontend protocol 4.0",
			send: func(t *testing.T, nc net.Conn) {
				sendRaw(t, nc, encodeMsgs(t, &pgproto3.StartupMessage{ProtocolVersion: 4 << 16, Parameters: map[string]string{"user": "x"}}))
			}},
		{name: "replication", code: "0A000", msg: "replication",
			send: func(t *testing.T, nc net.Conn) {
				sendRaw(t, nc, encodeMsgs(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "x", "replication": "true"}}))
			}},
		{name: "SSLRequest with plaintext in the same packet", code: "08P01", msg: "unencrypted data after SSL request",
			send: func(t *testing.T, nc net.Conn) {
				sendRaw(t, nc, append(append([]byte(nil), ssl...), startupFor(t, env)...))
			}},
		{name: "SSLRequest then garbage for a handshake", code: "",
			send: func(t *testing.T, nc net.Conn) {
				sendRaw(t, nc, ssl)
				expectByte(t, nc, 'S')
				sendRaw(t, nc, bytes.Repeat([]byte{0x16, 0x03, 0x01, 0xff}, 64))
				// A TLS alert may come back; then the close.
				_ = nc.SetReadDeadline(time.Now().Add(3 * time.Second))
				if _, err := io.Copy(io.Discard, nc); err != nil && !isReset(err) {
					t.Fatalf("after a bad handshake: %v", err)
				}
			}},
		{name: "SSLRequest then giving up mid-handshake", code: "",
			send: func(t *testing.T, nc net.Conn) {
				sendRaw(t, nc, ssl)
				expectByte(t, nc, 'S')
				_ = nc.Close() // gives up mid-handshake
			}},
		{name: "garbage CancelRequest", code: "",
			send: func(t *testing.T, nc net.Conn) { sendRaw(t, nc, append(be32(16), be32(80877102)...)) }},
		{name: "short CancelRequest", code: "",
			send: func(t *testing.T, nc net.Conn) { sendRaw(t, nc, append(be32(8), be32(80877102)...)) }},
		{name: "silent client", code: "08P01", msg: "startup timed out", within: 3 * time.Second,
			send: func(t *testing.T, nc net.Conn) {}},
		{name: "no password after startup", code: "08P01", msg: "startup timed out", within: 3 * time.Second,
			send: func(t *testing.T, nc net.Conn) { sendRaw(t, nc, startupFor(t, env)) }},
		{name: "half a password", code: "08P01", msg: "startup timed out", within: 3 * time.Second,
			send: func(t *testing.T, nc net.Conn) {
				sendRaw(t, nc, startupFor(t, env))
				sendRaw(t, nc, encodeMsgs(t, &pgproto3.PasswordMessage{Password: tok})[:20])
			}},
		{name: "query instead of password", code: "08P01", msg: "expected a password message",
			send: func(t *testing.T, nc net.Conn) {
				sendRaw(t, nc, startupFor(t, env))
				sendRaw(t, nc, encodeMsgs(t, &pgproto3.Query{String: "select 1"}))
			}},
		{name: "password length 0xffffffff", code: "08P01", msg: "invalid password packet",
			send: func(t *testing.T, nc net.Conn) {
				sendRaw(t, nc, startupFor(t, env))
				sendRaw(t, nc, append([]byte{'p'}, be32(0xffffffff)...))
			}},
		{name: "1 MB password", code: "28P01", msg: "password is larger than 65536 bytes",
			send: func(t *testing.T, nc net.Conn) {
				sendRaw(t, nc, startupFor(t, env))
				sendRaw(t, nc, encodeMsgs(t, &pgproto3.PasswordMessage{Password: strings.Repeat("eyJhbGciOiJIUzI1NiJ9", 1<<20/20)}))
			}},
		{name: "empty password", code: "28P01", msg: "password is empty",
			send: func(t *testing.T, nc net.Conn) {
				sendRaw(t, nc, startupFor(t, env))
				sendRaw(t, nc, encodeMsgs(t, &pgproto3.PasswordMessage{Password: ""}))
			}},
		{name: "query length 0xffffffff after login",
			send: func(t *testing.T, nc net.Conn) {
				nc2 := loginRaw(t, env, tok)
				sendRaw(t, nc2, append([]byte{'Q'}, be32(0xffffffff)...))
				_ = nc.Close()
				f := readFatal(t, nc2, 5*time.Second)
				if f.code != "08P01" || !strings.Contains(f.message, "invalid message length") || !f.closed {
					t.Fatalf("got %v", f)
				}
			}},
		{name: "unknown message type after login",
			send: func(t *testing.T, nc net.Conn) {
				nc2 := loginRaw(t, env, tok)
				sendRaw(t, nc2, []byte{'z', 0, 0, 0, 4})
				_ = nc.Close()
				f := readFatal(t, nc2, 5*time.Second)
				if f.code != "08P01" || !strings.Contains(f.message, "invalid frontend message type") || !f.closed {
					t.Fatalf("got %v", f)
				}
			}},
		{name: "unterminated query after login",
			send: func(t *testing.T, nc net.Conn) {
				nc2 := loginRaw(t, env, tok)
				sendRaw(t, nc2, []byte{'Q', 0, 0, 0, 7, 's', 'e', 'l'})
				_ = nc.Close()
				f := readFatal(t, nc2, 5*time.Second)
				if f.code != "08P01" || !strings.Contains(f.message, "malformed Query") || !f.closed {
					t.Fatalf("got %v", f)
				}
			}},
		{name: "truncated message then close after login",
			send: func(t *testing.T, nc net.Conn) {
				nc2 := loginRaw(t, env, tok)
				sendRaw(t, nc2, []byte{'Q', 0, 0, 1, 0, 's'})
				_ = nc2.(*net.TCPConn).CloseWrite()
				_ = nc.Close()
				if f := readFatal(t, nc2, 5*time.Second); !f.closed {
					t.Fatalf("got %v", f)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			within := tc.within
			if within == 0 {
				within = 2 * time.Second
			}
			start := time.Now()
			nc := dialPgtoken(t, env)
			tc.send(t, nc)
			if tc.code != "" || tc.msg != "" {
				f := readFatal(t, nc, within+time.Second)
				if f.code != tc.code || f.severity != "FATAL" || !strings.Contains(f.message, tc.msg) || !f.closed {
					t.Fatalf("got %v, closed %t; want FATAL %s %q and a close", f, f.closed, tc.code, tc.msg)
				}
			} else if f := readFatal(t, nc, within+time.Second); f.code != "" && f.code != "08P01" {
				t.Fatalf("got %v", f)
			}
			if d := time.Since(start); d > within {
				t.Fatalf("took %s (bound %s)", d, within)
			}
			stillServes(t)
			waitClients(t, env, 1)
		})
	}

	t.Run("client that stops reading a big result", func(t *testing.T) {
		hog := loginRaw(t, env, tok)
		// About 200 MB; the client reads none of it.
		sendRaw(t, hog, encodeMsgs(t, &pgproto3.Query{String: "select repeat('x', 2000) from generate_series(1, 100000)"}))
		time.Sleep(300 * time.Millisecond)
		for range 3 {
			stillServes(t) // on the pool's other connection
		}
		_ = hog.Close()
		waitClients(t, env, 1)
		stillServes(t)
	})
}

func TestMaxClientConn(t *testing.T) {
	noGoroutineLeaks(t)
	env := pgtest.Start(t, func(c *config.Config) { c.Limits.MaxClientConn = 2 })
	a := env.Connect(pgtest.UserToken(t, "alice"))
	env.Connect(pgtest.UserToken(t, "bob"))
	for range 3 {
		_, err := pgconn.Connect(ctx(t), env.DSN(pgtest.UserToken(t, "carol")))
		pe := pgErr(err)
		if pe == nil || pe.Code != "53300" || pe.Severity != "FATAL" || !strings.Contains(pe.Message, "max_client_conn 2") {
			t.Fatalf("third client: %v", err)
		}
	}
	// A raw client too gets the FATAL, without sending anything.
	nc := dialPgtoken(t, env)
	if f := readFatal(t, nc, 3*time.Second); f.code != "53300" || !f.closed {
		t.Fatalf("raw third client: %v", f)
	}
	if got := rows(t, a, whoami); got[0][1] != "alice" {
		t.Fatalf("first client: %q", got)
	}
	_ = a.Close(ctx(t))
	waitClients(t, env, 1)
	c := env.Connect(pgtest.UserToken(t, "carol"))
	if got := rows(t, c, whoami); got[0][1] != "carol" {
		t.Fatalf("once there was room: %q", got)
	}
}
