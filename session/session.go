// Package session runs one client's connection: login with a token, then
// every transaction on a pooled server connection with the client's role
// and claims set first.
//
// # Goroutines and the threading rule
//
// Two goroutines serve a logged-in client:
//
//   - the client goroutine (run, client.go) reads the client, asks the
//     transaction tracker (session/tracker) what must precede each message,
//     and is the only writer to the attached server connection;
//   - the server connection's reader goroutine (pool/conn.go) is the only
//     reader of that connection; it hands each server message to the
//     session (ServerMessage, handler.go), which feeds it to the tracker
//     and appends what the client must see to the client output.
//
// Their shared state (the tracker, the attached connection, the client
// output) lives under Session.mu. The rule: no lock is held across a read
// or a write, and no goroutine waits for a lock whose holder waits on the
// network. Bytes are read whole before mu is taken, and written after it is
// released; a decision under mu appends to buffers only. The client
// goroutine waits (on cond) only for ReadyForQuery answers, which the
// server always flushes, or for answers the tracker knows are skipped.
// Client output is written by one goroutine at a time (the flusher, see
// output.go); the other leaves its bytes for it and never waits, except
// that the server reader waits for the client to drain a full output
// buffer (backpressure), bounded by limits.client_write_timeout.
package session

import (
	"context"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/session/sqlscan"
	"github.com/pgtoken/pgtoken/session/tracker"
	"github.com/pgtoken/pgtoken/wire"
)

// Session is one client connection after login.
type Session struct {
	srv   *Server
	id    uint32
	key   []byte // cancel key the client was given
	nc    net.Conn
	cr    *wire.Reader
	log   *zap.Logger
	ident *authn.Identity
	pre   *prelude
	pool  *pool.Pool
	db    string
	addr  string
	start time.Time
	ctx   context.Context

	mu   sync.Mutex
	cond *sync.Cond // signalled when answers arrive, the conn changes, or output drains

	t    *tracker.Tracker
	conn *pool.Conn // attached server connection, or nil

	// writing: the client goroutine is composing or writing to conn.W, so
	// conn may not be let go until it is done (endBatch).
	writing bool
	// syncing: the reader goroutine writes a Sync pgtoken owes the server
	// (ServerIdle); the client goroutine waits before it writes.
	syncing bool
	ended   bool // the client is gone
	wiped   bool // DISCARD ALL ran after the client left: the conn holds nothing
	hold    bool // the conn carries the client's identity for the session: never release it now
	// cancelling: a cancel request for conn is on its way; conn is not let
	// go until it arrived.
	cancelling bool
	// txLost: the conn broke while the client sat inside a transaction;
	// its next statement fails.
	txLost    bool
	idleSince time.Time // when the last answer left nothing in flight

	// params are the client's session settings (startup parameters and
	// captured session-level SETs), applied to whichever server connection
	// runs its transactions; startParams what it logged in with.
	params      map[string]string
	startParams map[string]string
	// capture: the client changed session settings; they are read back
	// once the transaction may have ended. custom names the placeholder
	// settings it set (pg_settings does not list them).
	capture bool
	custom  map[string]bool
	// settingsGen counts the client's session-setting changes (SETs seen,
	// RESET ALL, DISCARD ALL); a read-back reflects the changes up to the
	// count it was queued at. captureGen is that count for the read-back
	// in flight, -1 for none.
	settingsGen uint64
	captureGen  int64
	lastReset   uint64 // settingsGen of the last RESET ALL or DISCARD ALL

	out   output     // client output (output.go)
	stall stallWatch // the watch's memory (watch.go)

	// The client's prepared statements and portals (stmts.go). Touched by
	// the client goroutine, and by completions under mu.
	stmts             map[string]*clientStmt
	unnamedStmt       *clientStmt
	unnamedGen        uint64
	portals           map[string]*clientStmt
	unnamedPortal     *clientStmt
	unnamedPortalLive bool   // the client bound the unnamed portal in the current transaction
	batchGen          uint64 // counts Queries and batches, for the statement caches
	syncPoints        uint64 // counts the client's Syncs, Queries and FunctionCalls (client goroutine)
	ownConn           bool   // session mode: the server connection holds only this client's state (noteOwnConn)

	// Client goroutine only.
	wconn      *pool.Conn // conn the client goroutine wrote to since it last flushed
	lastActive time.Time  // when the client's last message was read (idle timeouts)
	scan       []sqlscan.Statement
	cuts       []int
	acquiring  context.CancelFunc // cancels a wait for a server connection (a CancelRequest); under mu
	expiry     *time.Timer        // fires jwt.leeway after the token's exp (lifetime.go)
}
