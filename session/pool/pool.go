// Package pool keeps the server connections of one upstream database.
//
// A conn is taken with Acquire at a transaction's first message and given
// back with Release when the transaction ends; only idle, clean conns go
// back. One short mutex per pool guards the idle list (most recently used
// first, as PgBouncer does), the count of conns and the queue of waiting
// clients, who are served in arrival order: a released conn goes straight
// to the first waiter. The size can change at run time (Resize): a smaller
// pool closes idle conns beyond it and retires busy ones as they come back.
// Pause stops handing out conns until Resume.
package pool

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/wire"
)

// Config describes one pool.
type Config struct {
	Name string // the client-facing database name, for logs and metrics
	// PgConfig is the upstream login as pgconn parsed it (TLS, SCRAM, MD5
	// and all); the pool never changes it.
	PgConfig    *pgconn.Config
	Size        int           // maximum server connections
	WaitTimeout time.Duration // how long Acquire waits for a free conn
	// ConnectTimeout bounds one login to the server.
	ConnectTimeout time.Duration
	// ReadBuffer and WriteBuffer size each conn's buffers; MaxMessage is
	// the largest server message buffered whole (larger ones stream).
	ReadBuffer, WriteBuffer, MaxMessage int
	// StatementCache bounds the prepared statements kept per conn.
	StatementCache int
	Logger         *zap.Logger
	// AfterConnect, when set, runs on every new server connection once it
	// is logged in, before pgtoken takes it over; an error fails the login
	// (and should be a *wire.Error).
	AfterConnect func(ctx context.Context, pc *pgconn.PgConn) error
}

// Default buffer sizes.
const (
	DefaultReadBuffer  = 32 << 10
	DefaultWriteBuffer = 32 << 10
	DefaultMaxMessage  = 1 << 20
)

// ErrWaitTimeout is returned by Acquire when no conn became free in time.
var ErrWaitTimeout = errors.New("timed out waiting for a server connection")

// ErrClosed is returned by Acquire after Close.
var ErrClosed = errors.New("pool is closed")

// Pool is a resizable set of server connections to one database.
type Pool struct {
	cfg   Config
	pgcfg *pgconn.Config
	log   *zap.Logger

	// mu guards what follows; it is never held across network I/O.
	mu         sync.Mutex
	size       int                // maximum of live conns
	idle       []*Conn            // ready for use; the last released is taken first
	total      int                // live conns not retired, plus logins in progress
	connecting int                // logins in progress
	busy       int                // conns handed out and not given back
	waiters    []*waiter          // clients waiting for a conn, in arrival order
	conns      map[*Conn]struct{} // live conns not retired
	paused     bool
	isClosed   bool

	paramsMu sync.RWMutex
	params   map[string]string // ParameterStatus values of the latest login

	// Counters for SHOW STATS and metrics.
	xacts, xactNanos, queries, waitNanos atomic.Int64

	closed chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

// waiter is a client waiting in Acquire. ch receives a conn, or nil when a
// slot was reserved for the waiter to log in a new conn itself.
type waiter struct {
	ch    chan *Conn
	since time.Time
}

// poolState is the pool's bookkeeping on each conn: inUse and retired are
// guarded by Pool.mu; since belongs to the holder of the conn.
type poolState struct {
	inUse   bool  // handed out by Acquire, not yet given back
	retired bool  // no longer counted: closed or about to be
	since   int64 // when it was handed out (unix nanoseconds)
}

// New prepares a pool; it connects lazily.
func New(cfg Config) (*Pool, error) {
	if cfg.PgConfig == nil {
		return nil, errors.New("pool needs an upstream configuration")
	}
	pgcfg := cfg.PgConfig.Copy()
	if cfg.Size <= 0 {
		return nil, fmt.Errorf("pool size must be positive, got %d", cfg.Size)
	}
	if cfg.ReadBuffer == 0 {
		cfg.ReadBuffer = DefaultReadBuffer
	}
	if cfg.WriteBuffer == 0 {
		cfg.WriteBuffer = DefaultWriteBuffer
	}
	if cfg.MaxMessage == 0 {
		cfg.MaxMessage = DefaultMaxMessage
	}
	if cfg.ConnectTimeout > 0 {
		pgcfg.ConnectTimeout = cfg.ConnectTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Pool{
		cfg:    cfg,
		pgcfg:  pgcfg,
		log:    log.With(zap.String("database", cfg.Name)),
		size:   cfg.Size,
		conns:  map[*Conn]struct{}{},
		closed: make(chan struct{}),
	}, nil
}

// Name is the client-facing database name.
func (p *Pool) Name() string { return p.cfg.Name }

// Size is the current maximum of server connections.
func (p *Pool) Size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.size
}

// User is the upstream user the pool logs in as.
func (p *Pool) User() string { return p.pgcfg.User }

// Stats is a snapshot of the pool.
type Stats struct {
	Size       int // maximum of server connections
	Total      int // live conns and logins in progress
	Active     int // conns handed out to clients
	Idle       int // conns ready for use
	Connecting int // logins in progress
	Waiting    int // clients waiting for a conn
	MaxWait    time.Duration
	Paused     bool

	// Totals since the pool was made.
	Transactions    int64
	Queries         int64
	TransactionTime time.Duration // summed over transactions
	WaitTime        time.Duration // summed over Acquire calls
}

// Stats reports the pool's state and counters.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	st := Stats{
		Size: p.size, Total: p.total, Active: p.busy, Idle: len(p.idle),
		Connecting: p.connecting, Waiting: len(p.waiters), Paused: p.paused,
	}
	if len(p.waiters) > 0 {
		st.MaxWait = time.Since(p.waiters[0].since)
	}
	p.mu.Unlock()
	st.Transactions = p.xacts.Load()
	st.Queries = p.queries.Load()
	st.TransactionTime = time.Duration(p.xactNanos.Load())
	st.WaitTime = time.Duration(p.waitNanos.Load())
	return st
}

// NoteQuery counts a client's Query or Execute (one atomic add).
func (p *Pool) NoteQuery() { p.queries.Add(1) }

// NoteTransaction counts a finished transaction that held a conn for d.
func (p *Pool) NoteTransaction(d time.Duration) {
	p.xacts.Add(1)
	if d > 0 {
		p.xactNanos.Add(int64(d))
	}
}

// ConnInfo describes one server connection, for the admin console.
type ConnInfo struct {
	PID            uint32
	Born, LastUsed time.Time
	InUse          bool
	Local, Remote  net.Addr
	// Handler is the session the conn is attached to, if any.
	Handler Handler
}

// Conns lists the live server connections.
func (p *Pool) Conns() []ConnInfo {
	p.mu.Lock()
	out := make([]ConnInfo, 0, len(p.conns))
	for c := range p.conns {
		ci := ConnInfo{PID: c.PID, Born: c.born, InUse: c.inUse, Local: c.nc.LocalAddr(), Remote: c.nc.RemoteAddr()}
		if lu := c.lastUsed.Load(); lu != 0 {
			ci.LastUsed = time.Unix(0, lu)
		}
		if hb := c.handler.Load(); hb != nil {
			ci.Handler = hb.h
		}
		out = append(out, ci)
	}
	p.mu.Unlock()
	return out
}

// HeldFor is how long the conn has been out of the pool (for its holder).
func (c *Conn) HeldFor() time.Duration {
	return time.Duration(time.Now().UnixNano() - c.since)
}

// ServerParams returns the ParameterStatus values the server reported at
// the latest login, or nil before any login.
func (p *Pool) ServerParams() map[string]string {
	p.paramsMu.RLock()
	defer p.paramsMu.RUnlock()
	return p.params
}

// Acquire returns an idle conn, logging in a new one while fewer than Size
// exist, or waits up to WaitTimeout (or ctx) for one to be released.
func (p *Pool) Acquire(ctx context.Context) (*Conn, error) {
	c, _, err := p.AcquireWait(ctx)
	return c, err
}

// AcquireWait is Acquire that also tells how long the caller waited (zero
// when an idle conn was at hand; a login of a new conn counts as waiting).
func (p *Pool) AcquireWait(ctx context.Context) (*Conn, time.Duration, error) {
	p.mu.Lock()
	if p.isClosed {
		p.mu.Unlock()
		return nil, 0, ErrClosed
	}
	if !p.paused && len(p.waiters) == 0 {
		if c := p.popIdle(); c != nil {
			p.handOut(c)
			p.mu.Unlock()
			c.since = time.Now().UnixNano()
			return c, 0, nil
		}
		if p.total < p.size {
			p.total++
			p.connecting++
			p.mu.Unlock()
			start := time.Now()
			c, err := p.dial(ctx)
			return c, p.noteWait(start), err
		}
	}
	w := &waiter{ch: make(chan *Conn, 1), since: time.Now()}
	p.waiters = append(p.waiters, w)
	size := p.size
	p.mu.Unlock()

	var timeout <-chan time.Time
	if p.cfg.WaitTimeout > 0 {
		t := time.NewTimer(p.cfg.WaitTimeout)
		defer t.Stop()
		timeout = t.C
	}
	var err error
	select {
	case c := <-w.ch:
		if c == nil {
			c, err = p.dial(ctx)
			return c, p.noteWait(w.since), err
		}
		c.since = time.Now().UnixNano()
		return c, p.noteWait(w.since), nil
	case <-timeout:
		err = fmt.Errorf("%w after %s (pool size %d)", ErrWaitTimeout, p.cfg.WaitTimeout, size)
	case <-ctx.Done():
		err = ctx.Err()
	case <-p.closed:
		err = ErrClosed
	}
	p.mu.Lock()
	if p.dropWaiter(w) {
		p.mu.Unlock()
		return nil, p.noteWait(w.since), err
	}
	p.mu.Unlock()
	// Something was granted just as the wait ended: give it back.
	if c := <-w.ch; c != nil {
		p.Release(c)
	} else {
		p.mu.Lock()
		p.total--
		p.connecting--
		p.grant()
		p.mu.Unlock()
	}
	return nil, p.noteWait(w.since), err
}

// noteWait adds the time since start to the wait total and returns it.
func (p *Pool) noteWait(start time.Time) time.Duration {
	d := time.Since(start)
	p.waitNanos.Add(int64(d))
	return d
}

// popIdle takes the most recently released live conn (under mu). A dead
// one is dropped: its reader goroutine does the accounting.
func (p *Pool) popIdle() *Conn {
	for n := len(p.idle); n > 0; n = len(p.idle) {
		c := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		if !c.Dead() {
			return c
		}
	}
	return nil
}

// handOut marks c as taken (under mu).
func (p *Pool) handOut(c *Conn) {
	c.inUse = true
	p.busy++
}

// giveBack unmarks c as taken (under mu).
func (p *Pool) giveBack(c *Conn) {
	if c.inUse {
		c.inUse = false
		p.busy--
	}
}

// retire stops counting c (under mu); the caller closes it.
func (p *Pool) retire(c *Conn) {
	if !c.retired {
		c.retired = true
		p.total--
		delete(p.conns, c)
	}
}

// grant serves waiters in order with idle conns, or with slots to log in
// new conns while the pool is below its size (under mu).
func (p *Pool) grant() {
	for len(p.waiters) > 0 && !p.paused && !p.isClosed {
		c := p.popIdle()
		if c != nil {
			p.handOut(c)
		} else if p.total < p.size {
			p.total++
			p.connecting++
		} else {
			return
		}
		w := p.waiters[0]
		p.waiters[0] = nil
		p.waiters = p.waiters[1:]
		w.ch <- c // buffered: never blocks
	}
}

// dropWaiter removes w from the queue; false means it was already served.
func (p *Pool) dropWaiter(w *waiter) bool {
	for i, x := range p.waiters {
		if x == w {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			return true
		}
	}
	return false
}

// dial logs in a new conn on a slot already counted in total and
// connecting, and hands it out.
func (p *Pool) dial(ctx context.Context) (*Conn, error) {
	c, err := p.connect(ctx)
	p.mu.Lock()
	p.connecting--
	if err == nil && p.isClosed {
		_ = c.nc.Close()
		err = ErrClosed
	}
	if err != nil {
		p.total--
		p.grant()
		p.mu.Unlock()
		return nil, err
	}
	p.conns[c] = struct{}{}
	p.handOut(c)
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		c.readLoop()
	}()
	if ce := p.log.Check(zap.DebugLevel, "server connection opened"); ce != nil {
		ce.Write(zap.Uint32("pid", c.PID))
	}
	c.since = time.Now().UnixNano()
	return c, nil
}

// Release gives back a conn. Only a conn that is idle and clean may be
// released; anything else must be Discarded.
func (p *Pool) Release(c *Conn) {
	c.Detach()
	c.lastUsed.Store(time.Now().UnixNano())
	p.mu.Lock()
	p.giveBack(c)
	closeIt := false
	switch {
	case c.retired || c.Dead():
		// Its reader goroutine does the accounting.
	case p.isClosed || p.total > p.size:
		p.retire(c)
		closeIt = true
	case !p.paused && len(p.waiters) > 0:
		p.handOut(c)
		w := p.waiters[0]
		p.waiters[0] = nil
		p.waiters = p.waiters[1:]
		w.ch <- c
	default:
		p.idle = append(p.idle, c)
	}
	p.mu.Unlock()
	if closeIt {
		c.Close()
	}
}

// Discard closes a conn that may hold state no other client may see.
func (p *Pool) Discard(c *Conn) {
	c.Detach()
	p.mu.Lock()
	p.giveBack(c)
	p.retire(c)
	p.grant()
	p.mu.Unlock()
	c.Close()
}

// Resize changes the maximum of server connections. Growing lets waiting
// clients log in new conns at once; shrinking closes idle conns beyond the
// new size now and busy ones as they are released.
func (p *Pool) Resize(n int) {
	if n <= 0 {
		return
	}
	p.mu.Lock()
	p.size = n
	var surplus []*Conn
	for p.total > p.size {
		c := p.popIdle()
		if c == nil {
			break
		}
		p.retire(c)
		surplus = append(surplus, c)
	}
	p.grant()
	p.mu.Unlock()
	for _, c := range surplus {
		c.Close()
	}
}

// Pause stops handing out conns (Acquire waits, up to WaitTimeout), waits
// until every conn in use has been given back, then closes the idle ones,
// so the server can be restarted. If ctx ends first the pool stays paused.
func (p *Pool) Pause(ctx context.Context) error {
	p.Hold()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		p.mu.Lock()
		if !p.paused {
			p.mu.Unlock()
			return errors.New("resumed before every server connection was released")
		}
		if p.busy == 0 && p.connecting == 0 {
			idle := p.idle
			p.idle = nil
			for _, c := range idle {
				p.retire(c)
			}
			p.mu.Unlock()
			for _, c := range idle {
				c.Close()
			}
			return nil
		}
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.closed:
			return ErrClosed
		case <-tick.C:
		}
	}
}

// Hold stops handing out conns, as Pause does, without waiting.
func (p *Pool) Hold() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

// Resume ends a Pause: waiting clients are served.
func (p *Pool) Resume() {
	p.mu.Lock()
	p.paused = false
	p.grant()
	p.mu.Unlock()
}

// gone is called by a conn's reader goroutine when the conn ended.
func (p *Pool) gone(c *Conn, err error) {
	p.mu.Lock()
	p.giveBack(c)
	p.retire(c)
	for i, x := range p.idle {
		if x == c {
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			break
		}
	}
	p.grant()
	p.mu.Unlock()
	if err != nil && !errors.Is(err, errClosedByUs) {
		if ce := p.log.Check(zap.DebugLevel, "server connection ended"); ce != nil {
			ce.Write(zap.Uint32("pid", c.PID), zap.Error(err))
		}
	}
}

var errClosedByUs = errors.New("closed by pgtoken")

// connect logs in a new conn with pgconn (TLS, SCRAM, MD5 as the DSN says)
// and takes over its socket; dial starts its reader goroutine.
func (p *Pool) connect(ctx context.Context) (*Conn, error) {
	if p.cfg.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.ConnectTimeout)
		defer cancel()
	}
	pc, err := pgconn.ConnectConfig(ctx, p.pgcfg)
	if err != nil {
		return nil, &wire.Error{Severity: wire.SeverityError, Code: wire.CodeConnectionFailure,
			Message: "pgtoken could not connect to the server", Err: err}
	}
	if p.cfg.AfterConnect != nil {
		if err := p.cfg.AfterConnect(ctx, pc); err != nil {
			_ = pc.Close(ctx)
			return nil, err
		}
	}
	// SyncConn goes last, right before Hijack: any pgconn operation (the
	// login, AfterConnect's query) may leave pgconn's background reader in
	// a read on the socket, which would then take the first answer meant
	// for the conn's own reader.
	if err := pc.SyncConn(ctx); err != nil {
		_ = pc.Close(ctx)
		// The server may end a connection as soon as it is made (killed,
		// shutting down): a connection failure, not an internal error.
		return nil, &wire.Error{Severity: wire.SeverityError, Code: wire.CodeConnectionFailure,
			Message: "pgtoken could not connect to the server", Err: fmt.Errorf("sync new server connection: %w", err)}
	}
	hc, err := pc.Hijack()
	if err != nil {
		_ = pc.Close(ctx)
		return nil, fmt.Errorf("take over server connection: %w", err)
	}
	p.paramsMu.Lock()
	p.params = maps.Clone(hc.ParameterStatuses)
	p.paramsMu.Unlock()
	c := &Conn{
		pool:     p,
		nc:       hc.Conn,
		R:        wire.NewReader(hc.Conn, p.cfg.ReadBuffer, p.cfg.MaxMessage),
		W:        wire.NewWriter(hc.Conn, p.cfg.WriteBuffer),
		PID:      hc.PID,
		secret:   hc.SecretKey,
		Params:   map[string]string{},
		Prepared: map[string]bool{},
		Stmts:    NewStmtCache(p.cfg.StatementCache),
		born:     time.Now(),
		done:     make(chan struct{}),
		log:      p.log,
	}
	return c, nil
}

// Close closes idle conns and makes Acquire fail; conns in use are closed
// as they are released. It waits for every reader goroutine to end once
// all conns are closed.
func (p *Pool) Close() {
	p.once.Do(func() { close(p.closed) })
	p.mu.Lock()
	p.isClosed = true
	idle := p.idle
	p.idle = nil
	for _, c := range idle {
		p.retire(c)
	}
	p.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
}

// Wait blocks until every conn's goroutine has ended (after Close and the
// release or discard of conns in use).
func (p *Pool) Wait() { p.wg.Wait() }
