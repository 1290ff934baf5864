// Package session runs one client's connection: login with a token, then
// every transaction on a pooled server connection with the client's role
// and claims set first.
//
// Two goroutines touch a session. The client goroutine (run) reads the
// client, decides where the prelude goes, and writes to the attached server
// connection. The attached server connection's reader goroutine calls
// ServerMessage for every server message, matches it against the queue of
// units the client goroutine pushed, swallows pgtoken's own answers, relays
// the rest, and gives the server connection back to the pool when the
// transaction is over. Shared state lives under mu; neither goroutine holds
// mu while it blocks on the network.
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

	// params are the client's session settings (startup parameters and
	// captured session-level SETs), applied to whichever server connection
	// runs its transactions.
	params map[string]string

	mu   sync.Mutex
	cond *sync.Cond // signalled when pending drops, upkeep ends, or conn changes

	conn       *pool.Conn // attached server connection, or nil
	q          unitQueue
	pending    int  // ReadyForQuery answers outstanding on conn
	midBatch   bool // extended messages sent since the last Sync
	writing    bool // the client goroutine is filling conn.W
	maint      bool // pgtoken's upkeep query runs on conn
	status     byte // last transaction status reported on conn
	skipping   bool // after an extended-protocol error the server ignores messages until Sync
	lostBatch  bool // conn broke in the middle of a batch: drop the client's messages until Sync
	cancelling int  // cancel requests in flight for conn
	capture    bool // a session-level SET ran: read settings back before release
	custom     map[string]bool
	ended      bool      // the client is gone
	reset      bool      // session mode: the conn was reset for the next client
	txLost     bool      // the conn broke while the client was inside a transaction
	hold       bool      // the conn carries session-level identity: never release it now
	idleSince  time.Time // when the last answer left nothing in flight
	cmpl       int       // statement completions seen in the head uQuery unit
	errored    bool      // the head unit's batch failed

	out       []byte // client output, guarded by mu
	spare     []byte
	flushMu   sync.Mutex // serializes writes to the client socket
	clientErr error      // first write error to the client (guarded by flushMu)

	// Client goroutine only.
	lastActive        time.Time              // when the client's last batch was read (idle_transaction_timeout)
	wconn             *pool.Conn             // conn the client goroutine has written to in this batch
	predicted         byte                   // transaction status expected once everything sent is answered
	preludePending    bool                   // the current batch still needs the extended prelude
	chainOpen         bool                   // the batch ran COMMIT/ROLLBACK AND CHAIN
	skipUntilSync     bool                   // a local error in this batch: drop messages until Sync
	unitBase          byte                   // transaction status the current Query or batch starts from
	batchGen          uint64                 // counts Queries and batches, for the statement caches
	stmts             map[string]*clientStmt // the client's named statements
	unnamedStmt       *clientStmt            // the client's unnamed statement
	unnamedGen        uint64                 // counts the client's unnamed Parses
	portals           map[string]*clientStmt
	unnamedPortal     *clientStmt
	unnamedPortalLive bool              // the client bound the unnamed portal in the current transaction
	startParams       map[string]string // the settings the client logged in with
	scan              []sqlscan.Statement
	cuts              []cut
}

// txEnds reports whether a statement of this kind ends the transaction, so
// whatever follows it in the same Query or batch runs in a new one.
func txEnds(k sqlscan.Kind) bool {
	return k == sqlscan.KindCommit || k == sqlscan.KindRollback || k == sqlscan.KindPrepareTransaction
}

// needsNoRole reports whether a statement of this kind runs no user code and
// resolves no names, so the extended prelude may follow it (it must follow
// BEGIN ISOLATION LEVEL, which refuses to run after any query).
func needsNoRole(k sqlscan.Kind) bool {
	return k == sqlscan.KindBegin || k == sqlscan.KindSetTransaction
}

// predict returns the transaction status after statements of these kinds
// run from status st without error ('T' stands for "in a transaction").
func predict(st byte, stmts []sqlscan.Statement) byte {
	for i := range stmts {
		st = predictOne(st, &stmts[i])
	}
	return st
}

func predictOne(st byte, s *sqlscan.Statement) byte {
	switch s.Kind {
	case sqlscan.KindBegin:
		return 'T'
	case sqlscan.KindCommit, sqlscan.KindRollback, sqlscan.KindPrepareTransaction:
		if s.Flags&sqlscan.FlagChain != 0 {
			return 'T'
		}
		return 'I'
	}
	return st
}
