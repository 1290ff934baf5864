package session

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"

	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/session/tracker"
	"github.com/pgtoken/pgtoken/wire"
)

// benchIdentity is what a small, realistic token verifies to: a role and
// four claims (role, sub, iat, exp).
func benchIdentity() *authn.Identity {
	return &authn.Identity{
		Role: "bench_user",
		Sub:  "bench-client-1",
		Settings: []authn.Setting{
			{Name: "jwt.claims.exp", Value: "1795000000"},
			{Name: "jwt.claims.iat", Value: "1794913600"},
			{Name: "jwt.claims.role", Value: "bench_user"},
			{Name: "jwt.claims.sub", Value: "bench-client-1"},
		},
	}
}

// BenchmarkPreludeBuild is the once-per-session cost of building both forms
// of the prelude from a verified identity.
func BenchmarkPreludeBuild(b *testing.B) {
	id := benchIdentity()
	stmts := ownStmts{prefix: "pgtoken_prelude_", local: true} // shared by a Server's sessions
	b.ReportAllocs()
	for b.Loop() {
		if _, err := newPrelude(id, &stmts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPreludeAppend is the per-transaction cost: the prebuilt prelude
// is appended, not rebuilt, in front of the client's message in the server
// connection's write buffer (simple: inside the Query; extended: Bind and
// Execute of the shared set_config statement before the client's Bind).
func BenchmarkPreludeAppend(b *testing.B) {
	pre, err := newPrelude(benchIdentity(), &ownStmts{prefix: "pgtoken_prelude_", local: true})
	if err != nil {
		b.Fatal(err)
	}
	const sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 4242;"
	b.Run("simple", func(b *testing.B) {
		w := wire.NewWriter(io.Discard, 32<<10)
		b.SetBytes(int64(len(pre.simple)))
		b.ReportAllocs()
		for b.Loop() {
			at := w.Begin('Q')
			w.AppendString(pre.simple)
			w.AppendString(sql)
			w.AppendBytes([]byte{0})
			w.End(at)
			w.Reset(io.Discard)
		}
	})
	b.Run("extended", func(b *testing.B) {
		w := wire.NewWriter(io.Discard, 32<<10)
		b.ReportAllocs()
		for b.Loop() {
			w.Bind("", pre.stmt.name, pre.args)
			w.Execute("")
			w.Reset(io.Discard)
		}
	})
}

// discardConn is a client socket that takes every write.
type discardConn struct {
	net.Conn
	n int64
}

func (c *discardConn) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

// transactionAnswer is the server's answer to one simple-protocol
// transaction through pgtoken: one CommandComplete per prelude statement
// (swallowed), then the client's result of rows DataRows of four 32-byte
// text columns (relayed), CommandComplete and ReadyForQuery.
func transactionAnswer(preludeStmts, rows int) []byte {
	var b []byte
	for i := 0; i < preludeStmts; i++ {
		b = wire.AppendCommandComplete(b, "SET")
	}
	at := len(b)
	b = append(b, 'T', 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, 4)
	for i := 0; i < 4; i++ {
		b = append(b, 'c', byte('a'+i), 0)
		b = binary.BigEndian.AppendUint32(b, 0)
		b = binary.BigEndian.AppendUint16(b, 0)
		b = binary.BigEndian.AppendUint32(b, 25)
		b = binary.BigEndian.AppendUint16(b, 0xffff)
		b = binary.BigEndian.AppendUint32(b, 0xffffffff)
		b = binary.BigEndian.AppendUint16(b, 0)
	}
	binary.BigEndian.PutUint32(b[at+1:], uint32(len(b)-at-1))
	val := bytes.Repeat([]byte("v"), 32)
	for r := 0; r < rows; r++ {
		at := len(b)
		b = append(b, 'D', 0, 0, 0, 0)
		b = binary.BigEndian.AppendUint16(b, 4)
		for c := 0; c < 4; c++ {
			b = binary.BigEndian.AppendUint32(b, 32)
			b = append(b, val...)
		}
		binary.BigEndian.PutUint32(b[at+1:], uint32(len(b)-at-1))
	}
	b = wire.AppendCommandComplete(b, "SELECT")
	rfq := wire.ReadyForQuery('I')
	return append(b, rfq[:]...)
}

// relaySession is a logged-in session attached to a server connection whose
// reader is fed from memory and whose client socket discards.
type relaySession struct {
	cuts   []tracker.Range
	s      *Session
	c      *pool.Conn
	src    *bytes.Reader
	client *discardConn
}

func newRelaySession(b testing.TB) *relaySession {
	pre, err := newPrelude(benchIdentity(), &ownStmts{prefix: "pgtoken_prelude_", local: true})
	if err != nil {
		b.Fatal(err)
	}
	src := bytes.NewReader(nil)
	c := &pool.Conn{
		R: wire.NewReader(src, pool.DefaultReadBuffer, pool.DefaultMaxMessage),
		W: wire.NewWriter(io.Discard, pool.DefaultWriteBuffer),
	}
	client := &discardConn{}
	s := &Session{srv: &Server{}, nc: client, log: zap.NewNop(), pre: pre, conn: c, t: tracker.New(false)}
	s.t.Attach(false)
	s.cond = sync.NewCond(&s.mu)
	// The transaction never ends in a release: this session keeps the conn
	// as if its client goroutine were always writing.
	s.writing = true
	return &relaySession{s: s, c: c, src: src, client: client, cuts: []tracker.Range{{At: 0, N: len(pre.simple)}}}
}

// transaction feeds one answer through the handler exactly as the conn's
// reader goroutine does (ServerMessage per message, ServerIdle when the
// buffer is drained), with the unit the client goroutine would have queued.
func (rs *relaySession) transaction(answer []byte) error {
	s, c := rs.s, rs.c
	s.mu.Lock()
	s.t.Push(tracker.Unit{Kind: tracker.Query, Skip: s.pre.statements, Cuts: rs.cuts})
	s.mu.Unlock()
	rs.src.Reset(answer)
	c.R.Reset(rs.src)
	for {
		typ, n, err := c.R.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.ServerMessage(c, typ, n); err != nil {
			return err
		}
		if c.R.Buffered() == 0 {
			s.ServerIdle(c)
		}
	}
}

// BenchmarkRelay runs the server-answer path of a session: the prelude's
// completions are swallowed, the result's DataRows are copied to the client
// output and flushed. The server connection's reader is fed from memory
// (pool.Conn's reader goroutine and socket are not involved: a pool.Conn
// can only be made by logging in to a server). Steady state must not
// allocate.
func BenchmarkRelay(b *testing.B) {
	for _, tc := range []struct {
		name string
		rows int
	}{{"1row", 1}, {"1000rows", 1000}} {
		b.Run(tc.name, func(b *testing.B) {
			rs := newRelaySession(b)
			answer := transactionAnswer(rs.s.pre.statements, tc.rows)
			b.SetBytes(int64(len(answer)))
			b.ReportAllocs()
			for b.Loop() {
				if err := rs.transaction(answer); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestRelayAllocs pins BenchmarkRelay's claim and checks what the client
// received: everything but the prelude's completions.
func TestRelayAllocs(t *testing.T) {
	rs := newRelaySession(t)
	answer := transactionAnswer(rs.s.pre.statements, 1000)
	swallowed := rs.s.pre.statements * len(wire.AppendCommandComplete(nil, "SET"))
	if err := rs.transaction(answer); err != nil {
		t.Fatal(err)
	}
	if got, want := rs.client.n, int64(len(answer)-swallowed); got != want {
		t.Fatalf("client received %d bytes, want %d", got, want)
	}
	allocs := testing.AllocsPerRun(50, func() {
		if err := rs.transaction(answer); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("relaying a 1,000-row result: %.1f allocs per transaction, want 0", allocs)
	}
}
