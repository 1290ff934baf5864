package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/wire"
)

// Handler receives what a server connection reads while it is attached to a
// client session. The conn's reader goroutine calls it; calls never overlap.
type Handler interface {
	// ServerMessage must consume the message whose header was just read
	// from c.R (with Frame, Body, Stream or Skip).
	ServerMessage(c *Conn, typ byte, n int) error
	// ServerIdle is called on the handler that took the last message when
	// nothing more is buffered, before the reader blocks: the moment to
	// flush what was relayed.
	ServerIdle(c *Conn)
	// ServerGone is called once when the connection breaks while attached.
	ServerGone(c *Conn, err error)
}

// handlerBox lets a Handler interface value live in an atomic.Pointer.
type handlerBox struct{ h Handler }

// Conn is one logged-in server connection. Its reader goroutine runs for the
// connection's whole life: while the conn is attached it hands every message
// to the session's Handler; while it idles in the pool it watches for the
// server closing it, so a dead conn never reaches a client.
type Conn struct {
	pool *Pool
	nc   net.Conn

	// R is read only by the conn's own goroutine (and by handlers it calls).
	R *wire.Reader
	// W is written by whoever holds the conn: the attached session's
	// client goroutine, or the reader goroutine during maintenance.
	W *wire.Writer

	PID    uint32
	secret []byte

	// Params holds the session-level settings pgtoken applied on this
	// conn (name → value), so a client's settings are only sent when they
	// differ. Owned by the holder of the conn.
	Params map[string]string
	// Prepared tracks which prelude statements exist on this server
	// connection. Owned by the holder of the conn.
	Prepared map[string]bool
	// Stmts tracks the clients' statements prepared here under pgtoken's
	// names. Owned by the holder of the conn.
	Stmts *StmtCache
	// UnnamedOwner and UnnamedGen say whose unnamed statement (session id
	// and that session's Parse generation) the conn holds. Owned by the
	// holder of the conn.
	UnnamedOwner, UnnamedGen uint64
	// IdentityOf is the session whose role and claims are set for the
	// session on the server (committed, by a Query of pgtoken's own ahead
	// of a procedure), 0 for none: a procedure that rolls back its
	// transaction falls back to it. Owned by the holder.
	IdentityOf uint64
	// Owner is the session whose state the conn may hold (settings,
	// temporary objects, locks, ...): 0 for none (a new conn), or
	// OwnerUnknown. Another session resets it first. Owned by the holder.
	Owner uint64
	// Stale lists statements Postgres reported stale: they are closed
	// before the conn's next use, so they are parsed again. Owned by the
	// holder.
	Stale []string
	// StaleSeen is the pool's stale-statement epoch the holder last
	// applied to Stmts (Pool.StaleSince).
	StaleSeen uint64
	// CancelSent: a cancel request reached the conn's server process;
	// the next client's first statement is preceded by a fence, which a
	// late request can only cancel. CancelUncertain: one may still be on
	// its way, so the conn is closed rather than reused. Owned by the
	// holder.
	CancelSent, CancelUncertain bool

	poolState // the pool's bookkeeping (pool.go)

	handler atomic.Pointer[handlerBox]
	dead    atomic.Bool
	// busy is set while the reader goroutine holds server bytes it has
	// not handed on: the conn must not change hands then (a FATAL the
	// server sent right after its last answer would reach the next
	// client).
	busy atomic.Bool
	born time.Time // when it logged in, by the pool's clock
	// lastUsed is when the conn last went back to the pool, or was put
	// there by a background login (unix nanos, by the pool's clock; 0 for
	// a conn that never was).
	lastUsed atomic.Int64

	closeOnce sync.Once
}

// OwnerUnknown is Conn.Owner for a conn whose state nobody knows.
const OwnerUnknown = ^uint64(0)

// Attach hands the conn's incoming messages to h.
func (c *Conn) Attach(h Handler) { c.handler.Store(&handlerBox{h}) }

// Detach stops handing messages to the attached handler.
func (c *Conn) Detach() { c.handler.Store(nil) }

// Drained reports whether the reader goroutine has handed on every server
// byte it read; only then may the conn change hands.
func (c *Conn) Drained() bool { return !c.busy.Load() }

// Dead reports whether the connection is known to be broken.
func (c *Conn) Dead() bool { return c.dead.Load() }

// Pool returns the pool the conn belongs to.
func (c *Conn) Pool() *Pool { return c.pool }

// Close breaks the connection; the reader goroutine notices and the pool
// frees its slot.
func (c *Conn) Close() {
	c.closeOnce.Do(func() {
		c.dead.Store(true)
		_ = c.nc.Close()
	})
}

// Flush writes what W buffers to the server.
func (c *Conn) Flush() error {
	if err := c.W.Flush(); err != nil {
		c.Close()
		return fmt.Errorf("write to server: %w", err)
	}
	return nil
}

// Cancel asks the server to cancel whatever this connection runs, over a
// separate connection as the protocol requires, and waits until the
// server has taken the request (it closes the socket after signalling).
func (c *Conn) Cancel(ctx context.Context) error {
	addr := c.nc.RemoteAddr()
	var d net.Dialer
	cc, err := d.DialContext(ctx, addr.Network(), addr.String())
	if err != nil {
		return fmt.Errorf("cancel: dial server: %w", err)
	}
	defer cc.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = cc.SetDeadline(dl)
	}
	msg := pgproto3.CancelRequest{ProcessID: c.PID, SecretKey: c.secret}
	b, err := msg.Encode(nil)
	if err != nil {
		return fmt.Errorf("cancel: encode: %w", err)
	}
	if _, err := cc.Write(b); err != nil {
		return fmt.Errorf("cancel: write: %w", err)
	}
	var one [1]byte
	_, _ = cc.Read(one[:]) // returns when the server closes the socket
	return nil
}

// readLoop runs for the conn's life.
func (c *Conn) readLoop() {
	var err error
	for {
		var typ byte
		var n int
		typ, n, err = c.R.Next()
		if err != nil {
			break
		}
		c.busy.Store(true)
		hb := c.handler.Load()
		if hb == nil {
			if err = c.idleMessage(typ); err != nil {
				break
			}
			c.busy.Store(c.R.Buffered() > 0)
			continue
		}
		if err = hb.h.ServerMessage(c, typ, n); err != nil {
			break
		}
		// Tell the session once nothing more is buffered (it may let the
		// conn go then, and flushes its client), or at once if the
		// message detached it: what is buffered then (a FATAL as the
		// server terminates the conn, say) is not its, and nothing would
		// flush its output later.
		if c.R.Buffered() == 0 {
			c.busy.Store(false)
			hb.h.ServerIdle(c)
		} else if c.handler.Load() != hb {
			hb.h.ServerIdle(c)
		}
	}
	c.Close()
	if hb := c.handler.Load(); hb != nil {
		hb.h.ServerGone(c, err)
	}
	c.pool.gone(c, err)
}

// idleMessage handles what a server sends while no client holds the conn:
// notices and parameter reports are dropped; an error (the server is
// terminating the connection) or anything else ends the conn.
func (c *Conn) idleMessage(typ byte) error {
	switch typ {
	case 'N', 'S', 'A':
		return c.R.Skip()
	case 'E':
		return c.readError("while idle")
	default:
		return fmt.Errorf("server sent %q while idle", typ)
	}
}

// readError consumes the ErrorResponse whose header was just read and
// returns it as an error saying when it came.
func (c *Conn) readError(when string) error {
	body, err := c.R.Body()
	if err != nil {
		return err
	}
	var e pgproto3.ErrorResponse
	if err := e.Decode(body); err != nil {
		return fmt.Errorf("server sent a malformed error %s: %w", when, err)
	}
	return fmt.Errorf("server sent an error %s: %s (SQLSTATE %s)", when, e.Message, e.Code)
}

// ErrConnLost is wrapped by errors about a server connection that broke.
var ErrConnLost = errors.New("server connection lost")
