package session

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/authn"
)

// refuseAll is a verifier that refuses every token.
type refuseAll struct{}

func (refuseAll) Verify(string) (*authn.Identity, error) {
	return nil, &authn.Error{Reason: authn.ReasonBadSignature}
}

// peerConn is a connection whose peer claims to be at addr.
type peerConn struct {
	net.Conn
	addr net.Addr
}

func (c peerConn) RemoteAddr() net.Addr { return c.addr }

var remotePeer = &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 50123}

var (
	testCertOnce sync.Once
	testCert     tls.Certificate
)

// selfSignedCert is an in-memory certificate for 127.0.0.1 and localhost.
func selfSignedCert(t testing.TB) tls.Certificate {
	testCertOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		testCert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	})
	return testCert
}

// newLoginTestServer is a Server that needs no Postgres: every token is refused
// before a server connection would be used.
func newLoginTestServer(t testing.TB, mutate func(*Config)) *Server {
	t.Helper()
	cfg := Config{
		Upstream:            "host=127.0.0.1 port=1 user=nobody dbname=nothing sslmode=disable connect_timeout=1",
		PoolSize:            1,
		Verifier:            refuseAll{},
		RequireTLSForRemote: true,
		StartupTimeout:      5 * time.Second,
		TLS:                 &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{selfSignedCert(t)}},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// handleFrom runs the server's connection handler on one end of a pipe whose
// peer claims to be at addr, and returns the other end.
func handleFrom(t *testing.T, s *Server, addr net.Addr) net.Conn {
	t.Helper()
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.handle(peerConn{server, addr})
	}()
	t.Cleanup(func() {
		_ = client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("the connection handler did not return")
		}
	})
	_ = client.SetDeadline(time.Now().Add(5 * time.Second))
	return client
}

func writeStartup(t *testing.T, w io.Writer) {
	t.Helper()
	b, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "u", "database": "d"}}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
}

// firstAnswer reads the first message pgtoken sends after the startup.
func firstAnswer(t *testing.T, r io.Reader) pgproto3.BackendMessage {
	t.Helper()
	fe := pgproto3.NewFrontend(r, io.Discard)
	m, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestRemoteClientsMustUseTLS(t *testing.T) {
	s := newLoginTestServer(t, nil)

	// In clear text from a remote address: refused before the password
	// is asked for, with a hint naming sslmode=require.
	c := handleFrom(t, s, remotePeer)
	writeStartup(t, c)
	m := firstAnswer(t, c)
	e, ok := m.(*pgproto3.ErrorResponse)
	if !ok || e.Severity != "FATAL" || e.Code != "28000" || !strings.Contains(e.Message, "unencrypted") || !strings.Contains(e.Hint, "sslmode=require") {
		t.Fatalf("remote clear text: %#v", m)
	}

	// From loopback addresses, clear text is asked for the token.
	for _, ip := range []string{"127.0.0.1", "127.9.9.9", "::1"} {
		c := handleFrom(t, s, &net.TCPAddr{IP: net.ParseIP(ip), Port: 5000})
		writeStartup(t, c)
		if m := firstAnswer(t, c); !isCleartextRequest(m) {
			t.Fatalf("loopback %s: %#v", ip, m)
		}
	}
	// An IPv4-mapped remote address is remote.
	c = handleFrom(t, s, &net.TCPAddr{IP: net.ParseIP("::ffff:198.51.100.1"), Port: 5000})
	writeStartup(t, c)
	if _, ok := firstAnswer(t, c).(*pgproto3.ErrorResponse); !ok {
		t.Fatal("IPv4-mapped remote address let through in clear text")
	}

	// Over TLS, a remote client is asked for the token.
	c = handleFrom(t, s, remotePeer)
	if _, err := c.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'S' {
		t.Fatalf("SSLRequest answer %q (%v)", b[0], err)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}) // TLS 1.2 is still accepted
	writeStartup(t, tc)
	if m := firstAnswer(t, tc); !isCleartextRequest(m) {
		t.Fatalf("remote over TLS: %#v", m)
	}

	// TLS 1.1 is not.
	c = handleFrom(t, s, remotePeer)
	_, _ = c.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
	_, _ = io.ReadFull(c, b[:])
	tc = tls.Client(c, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11})
	if err := tc.Handshake(); err == nil {
		t.Fatal("TLS 1.1 handshake succeeded")
	}

	// With the setting off, a remote client may send its token in clear.
	s2 := newLoginTestServer(t, func(c *Config) { c.RequireTLSForRemote = false })
	c = handleFrom(t, s2, remotePeer)
	writeStartup(t, c)
	if m := firstAnswer(t, c); !isCleartextRequest(m) {
		t.Fatalf("setting off: %#v", m)
	}
}

func isCleartextRequest(m pgproto3.BackendMessage) bool {
	_, ok := m.(*pgproto3.AuthenticationCleartextPassword)
	return ok
}

// FuzzStartup feeds arbitrary bytes to the connection handler as a client
// would send them: it must never panic and must end (answer and close)
// promptly once the client is done sending.
func FuzzStartup(f *testing.F) {
	sm := func(v uint32, kv ...string) []byte {
		body := binary.BigEndian.AppendUint32(nil, v)
		for _, s := range kv {
			body = append(append(body, s...), 0)
		}
		body = append(body, 0)
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)
	}
	pw := func(s string) []byte {
		b := []byte{'p'}
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)+5))
		return append(append(b, s...), 0)
	}
	ssl := []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}
	f.Add(sm(3<<16, "user", "u", "database", "d"))
	f.Add(append(sm(3<<16, "user", "u"), pw("eyJhbGciOiJIUzI1NiJ9.e30.x")...))
	f.Add(append(sm(3<<16|2, "user", "u", "_pq_.x", "1"), pw("t")...))
	f.Add(append(append([]byte(nil), ssl...), sm(3<<16, "user", "u")...))
	f.Add(ssl)
	f.Add([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30, 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
	f.Add([]byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 1, 2, 3, 4})
	f.Add(sm(2<<16, "user", "u"))
	f.Add(sm(3<<16, "user"))
	f.Add(sm(3<<16, "replication", "true", "user", "u"))
	f.Add([]byte{0x7f, 0xff, 0xff, 0xff})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add(append(sm(3<<16, "user", "u"), 'p', 0xff, 0xff, 0xff, 0xff))
	f.Add(append(sm(3<<16, "user", "u"), 'Q', 0, 0, 0, 5, 0))
	var (
		once sync.Once
		s    *Server
	)
	f.Fuzz(func(t *testing.T, data []byte) {
		once.Do(func() {
			cfg := Config{
				Upstream: "host=127.0.0.1 port=1 user=nobody dbname=nothing sslmode=disable",
				PoolSize: 1, Verifier: refuseAll{}, StartupTimeout: 3 * time.Second,
				MaxStartupPacket: 10000, MaxPasswordBytes: 4096,
				TLS: &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{selfSignedCert(t)}},
			}
			var err error
			if s, err = NewServer(cfg); err != nil {
				t.Fatal(err)
			}
		})
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.handle(peerConn{server, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}})
		}()
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			_, _ = io.Copy(io.Discard, client)
		}()
		_ = client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_, _ = client.Write(data)
		_ = client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("the connection handler hangs on %q", data)
		}
		<-drained
	})
}
