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
//
// The lifecycle (lifecycle.go) follows PgBouncer: a janitor goroutine keeps
// MinSize conns open and closes idle ones past their lifetime or idle
// timeout; a conn past its lifetime is closed when it comes back; clients
// that waited ReserveTimeout may get ReserveSize extra conns; a conn idle
// longer than CheckDelay is checked before it is handed out (check.go).
//
// Threading rule: the mutex is never held across network I/O (a login, a
// write, a wait for an answer) nor while closing a socket, and nothing that
// holds it waits for anything else. A conn's reader goroutine calls into the
// pool (gone, and Release from a session's handler) holding at most the
// session's own mutex, never waiting on the network while it does.
package pool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/pgtoken/pgtoken/wire"
)

// Config describes one pool.
type Config struct {
	Name string // the client-facing database name, for logs and metrics
	// PgConfig is the upstream login as pgconn parsed it (TLS, SCRAM, MD5
	// and all); the pool never changes it.
	PgConfig    *pgconn.Config
	Size        int           // maximum server connections
	WaitTimeout time.Duration // how long Acquire waits for a free conn (0: no limit)
	// Lifecycle: minimum and reserve, lifetime, idle timeout, liveness
	// check (lifecycle.go).
	Lifecycle Lifecycle
	// ConnectTimeout bounds one login to the server, and a liveness check.
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
	// OnWait, when set, hears every wait that Stats.WaitTime sums, as it
	// ends (zero when an idle conn was at hand), so that metrics and the
	// admin console count the same waits. It must not block.
	OnWait       func(time.Duration)
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
	now   func() time.Time // the clock of lifetimes and idle times

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
	life       Lifecycle
	fillAfter  time.Time // no background login before this (after a failure)

	// checkDelay is life.CheckDelay, read without mu on every Acquire.
	checkDelay atomic.Int64

	// Failed logins of new conns are logged at most once per
	// loginFailureLogInterval; unlogged counts those left out since.
	failLog  *rate.Limiter
	unlogged atomic.Int64
	failing  atomic.Bool // the last login failed (and was counted)

	staleStmts staleSet // statements reported stale (stale.go)

	paramsMu sync.RWMutex
	params   map[string]string // ParameterStatus values of the latest login

	// Counters for SHOW STATS and metrics.
	xacts, xactNanos, queries, waitNanos, assignments atomic.Int64
	// checking counts conns under a liveness check now (SHOW POOLS'
	// sv_tested).
	checking atomic.Int32
	// generation is bumped by Reconnect: a conn that logged in under an
	// older one is closed instead of reused (the console's RECONNECT).
	generation atomic.Int64

	closed chan struct{}
	once   sync.Once
	wg     sync.WaitGroup // reader goroutines, the janitor, background logins
	kicks  chan struct{}  // wakes the janitor
	// ctx ends at Close: it bounds background logins.
	ctx    context.Context
	cancel context.CancelFunc
}

// waiter is a client waiting in Acquire. ch receives a conn, or nil when a
// slot was reserved for the waiter to log in a new conn itself. reserve is
// set (under mu) once it has waited ReserveTimeout: it may then have a
// conn beyond the size.
type waiter struct {
	ch      chan *Conn
	since   time.Time
	reserve bool
}

// poolState is the pool's bookkeeping on each conn: inUse and retired are
// guarded by Pool.mu; since belongs to the holder of the conn.
type poolState struct {
	inUse   bool  // handed out by Acquire, not yet given back
	retired bool  // no longer counted: closed or about to be
	since   int64 // when it was handed out (unix nanoseconds)
	// generation is the pool's Reconnect generation when the conn began
	// logging in; set before the conn is shared.
	generation int64
	checking   atomic.Bool // under a liveness check now
}

// New prepares a pool. It logs in lazily, but for MinSize conns opened in
// the background; Close ends its janitor.
func New(cfg Config) (*Pool, error) {
	return newPool(cfg, time.Now, janitorEvery)
}

// newPool is New with a clock for lifetimes and idle times, and the
// janitor's interval.
func newPool(cfg Config, now func() time.Time, every time.Duration) (*Pool, error) {
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
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{
		cfg:     cfg,
		pgcfg:   pgcfg,
		log:     log.With(zap.String("database", cfg.Name)),
		now:     now,
		size:    cfg.Size,
		life:    cfg.Lifecycle,
		conns:   map[*Conn]struct{}{},
		closed:  make(chan struct{}),
		kicks:   make(chan struct{}, 1),
		ctx:     ctx,
		cancel:  cancel,
		failLog: rate.NewLimiter(rate.Every(loginFailureLogInterval), 1),
	}
	p.checkDelay.Store(int64(cfg.Lifecycle.CheckDelay))
	p.wg.Add(1)
	go p.janitor(every)
	p.kick() // open MinSize conns now
	return p, nil
}

// loginFailureLogInterval is how often at most a pool logs that new server
// connections fail (a server that refuses every login would otherwise log
// once per client transaction).
const loginFailureLogInterval = 10 * time.Second

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
	// Used counts the idle conns idle at least CheckDelay (checked before
	// their next use); Tested the active ones under that check now.
	Used, Tested int
	// CloseNeeded counts conns to be closed when given back (Reconnect).
	CloseNeeded int

	// Totals since the pool was made.
	Transactions    int64
	Queries         int64
	TransactionTime time.Duration // summed over transactions
	WaitTime        time.Duration // summed over Acquire calls
	Assignments     int64         // conns handed out to clients
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
	now := p.now()
	for _, c := range p.idle {
		if p.staleAt(c, now) {
			st.Used++
		}
	}
	gen := p.generation.Load()
	for c := range p.conns {
		if c.generation < gen {
			st.CloseNeeded++
		}
	}
	p.mu.Unlock()
	st.Tested = int(p.checking.Load())
	st.Assignments = p.assignments.Load()
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
	// State is PgBouncer's name for it: active (handed out), tested (under
	// a liveness check), idle, or used (idle at least CheckDelay: checked
	// before its next use).
	State string
	// CloseNeeded: it is closed when given back (Reconnect) or its
	// lifetime is up.
	CloseNeeded   bool
	Local, Remote net.Addr
	TLS           *tls.ConnectionState // nil without TLS
	// Handler is the session the conn is attached to, if any.
	Handler Handler
}

// Conns lists the live server connections.
func (p *Pool) Conns() []ConnInfo {
	now := p.now()
	p.mu.Lock()
	gen, life := p.generation.Load(), p.life.ServerLifetime
	out := make([]ConnInfo, 0, len(p.conns))
	for c := range p.conns {
		ci := ConnInfo{PID: c.PID, Born: c.born, InUse: c.inUse, Local: c.nc.LocalAddr(), Remote: c.nc.RemoteAddr(),
			CloseNeeded: c.generation < gen || now.Sub(c.born) >= life}
		if lu := c.lastUsed.Load(); lu != 0 {
			ci.LastUsed = time.Unix(0, lu)
		}
		switch {
		case c.inUse && c.checking.Load():
			ci.State = "tested"
		case c.inUse:
			ci.State = "active"
		case p.staleAt(c, now):
			ci.State = "used"
		default:
			ci.State = "idle"
		}
		if tc, ok := c.nc.(*tls.Conn); ok {
			st := tc.ConnectionState()
			ci.TLS = &st
		}
		if hb := c.handler.Load(); hb != nil {
			ci.Handler = hb.h
		}
		out = append(out, ci)
	}
	p.mu.Unlock()
	return out
}

// Upstream is the server the pool logs in to: its first host and port,
// and the database name there.
func (p *Pool) Upstream() (host string, port uint16, database string) {
	return p.pgcfg.Host, p.pgcfg.Port, p.pgcfg.Database
}

// Lifecycle returns the lifecycle settings in force.
func (p *Pool) Lifecycle() Lifecycle {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.life
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
// when an idle conn was at hand; a login of a new conn, or a liveness
// check, counts as waiting). A conn that fails its liveness check is
// closed and another taken, within the same WaitTimeout.
func (p *Pool) AcquireWait(ctx context.Context) (*Conn, time.Duration, error) {
	start := time.Now()
	var deadline time.Time
	if p.cfg.WaitTimeout > 0 {
		deadline = start.Add(p.cfg.WaitTimeout)
	}
	waited := false
	for {
		c, w, err := p.take(ctx, deadline)
		waited = waited || w
		if err != nil {
			return nil, p.noteWait(start), err
		}
		if p.stale(c) {
			waited = true
			c.checking.Store(true)
			p.checking.Add(1)
			err := p.check(ctx, c)
			p.checking.Add(-1)
			c.checking.Store(false)
			if err != nil {
				p.Discard(c)
				if ce := p.log.Check(zap.DebugLevel, "server connection failed its liveness check; replacing it"); ce != nil {
					ce.Write(zap.Uint32("pid", c.PID), zap.Error(err))
				}
				if ctx.Err() != nil {
					return nil, p.noteWait(start), ctx.Err()
				}
				continue
			}
		}
		c.since = time.Now().UnixNano()
		p.assignments.Add(1)
		if !waited {
			p.waited(0)
			return c, 0, nil
		}
		return c, p.noteWait(start), nil
	}
}

// stale reports whether c has been idle at least CheckDelay since it was
// last given back (a conn that never was, just logged in, is not).
func (p *Pool) stale(c *Conn) bool { return p.staleAt(c, p.now()) }

// staleAt is stale at the time now.
func (p *Pool) staleAt(c *Conn, now time.Time) bool {
	lu := c.lastUsed.Load()
	if lu == 0 {
		return false
	}
	return now.Sub(time.Unix(0, lu)) >= time.Duration(p.checkDelay.Load())
}

// take returns a conn handed out to the caller: an idle one, a new login
// while the pool is below its size, or one granted after waiting in line
// until deadline (zero: no limit). waited is false only for an idle conn
// taken at once.
func (p *Pool) take(ctx context.Context, deadline time.Time) (c *Conn, waited bool, err error) {
	p.mu.Lock()
	if p.isClosed {
		p.mu.Unlock()
		return nil, false, ErrClosed
	}
	if !p.paused && len(p.waiters) == 0 {
		if c := p.popIdle(); c != nil {
			p.handOut(c)
			p.mu.Unlock()
			return c, false, nil
		}
		if p.total < p.size {
			p.total++
			p.connecting++
			p.mu.Unlock()
			c, err := p.dial(ctx)
			return c, true, err
		}
	}
	w := &waiter{ch: make(chan *Conn, 1), since: time.Now()}
	p.waiters = append(p.waiters, w)
	size := p.size
	var reserveC <-chan time.Time
	if p.life.ReserveSize > 0 && p.life.ReserveTimeout > 0 {
		t := time.NewTimer(p.life.ReserveTimeout)
		defer t.Stop()
		reserveC = t.C
	}
	p.mu.Unlock()

	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	for err == nil {
		select {
		case c := <-w.ch:
			if c == nil {
				c, err = p.dial(ctx)
			}
			return c, true, err
		case <-reserveC:
			reserveC = nil
			p.mu.Lock()
			p.reserveFor(w)
			p.grant()
			p.mu.Unlock()
		case <-timeout:
			err = fmt.Errorf("%w after %s (pool size %d)", ErrWaitTimeout, p.cfg.WaitTimeout, size)
		case <-ctx.Done():
			err = ctx.Err()
		case <-p.closed:
			err = ErrClosed
		}
	}
	p.mu.Lock()
	if p.dropWaiter(w) {
		p.mu.Unlock()
		return nil, true, err
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
	return nil, true, err
}

// reserveFor marks w, and every waiter ahead of it (they have waited
// longer), as entitled to a reserve conn (under mu).
func (p *Pool) reserveFor(w *waiter) {
	for _, x := range p.waiters {
		x.reserve = true
		if x == w {
			return
		}
	}
}

// limit is how many conns the pool may have while w is first in line
// (under mu): the size, plus the reserve once w has waited long enough.
func (p *Pool) limit(w *waiter) int {
	if w.reserve {
		return p.size + p.life.ReserveSize
	}
	return p.size
}

// noteWait adds the time since start to the wait total and returns it.
func (p *Pool) noteWait(start time.Time) time.Duration {
	d := time.Since(start)
	p.waited(d)
	return d
}

// waited counts one Acquire's wait: in the WaitTime total and to
// Config.OnWait. Every Acquire calls it once, so both see the same waits.
func (p *Pool) waited(d time.Duration) {
	p.waitNanos.Add(int64(d))
	if p.cfg.OnWait != nil {
		p.cfg.OnWait(d)
	}
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
// new conns while the pool is below its limit (under mu).
func (p *Pool) grant() {
	for len(p.waiters) > 0 && !p.paused && !p.isClosed {
		c := p.popIdle()
		if c != nil {
			p.handOut(c)
		} else if p.total < p.limit(p.waiters[0]) {
			p.total++
			p.connecting++
		} else {
			return
		}
		p.serveFirst(c)
	}
}

// serveFirst gives the first waiter c, or a slot to log in when c is nil
// (under mu).
func (p *Pool) serveFirst(c *Conn) {
	w := p.waiters[0]
	p.waiters[0] = nil
	p.waiters = p.waiters[1:]
	w.ch <- c // buffered: never blocks
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
	closed := p.isClosed
	if err = p.opened(c, err); err != nil {
		p.mu.Unlock()
		if c != nil {
			_ = c.nc.Close()
		}
		if closed || errors.Is(err, ErrClosed) || errors.Is(ctx.Err(), context.Canceled) {
			return nil, err // pgtoken or the client gave up: nothing to report
		}
		p.loginFailed(err)
		return nil, loginError(err)
	}
	p.handOut(c)
	p.mu.Unlock()
	if p.failing.Swap(false) {
		p.log.Info("server connections open again", zap.String("server", p.server()))
	}
	if ce := p.log.Check(zap.DebugLevel, "server connection opened"); ce != nil {
		ce.Write(zap.Uint32("pid", c.PID))
	}
	return c, nil
}

// opened settles the slot of a login that ended with c or err (under mu):
// a failed login frees it for a waiter; a conn is counted and its reader
// goroutine started, unless the pool closed meanwhile (ErrClosed: the
// caller closes c once mu is released).
func (p *Pool) opened(c *Conn, err error) error {
	p.connecting--
	if err == nil && p.isClosed {
		err = ErrClosed
	}
	if err != nil {
		p.total--
		p.grant()
		return err
	}
	p.conns[c] = struct{}{}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		c.readLoop()
	}()
	return nil
}

// Release gives back a conn. Only a conn that is idle and clean may be
// released; anything else must be Discarded. A conn connected longer than
// ServerLifetime, or logged in before a Reconnect, is closed instead.
func (p *Pool) Release(c *Conn) {
	c.Detach()
	now := p.now()
	c.lastUsed.Store(now.UnixNano())
	p.mu.Lock()
	p.giveBack(c)
	expired := now.Sub(c.born) >= p.life.ServerLifetime || p.outdated(c)
	closeIt := p.put(c, expired)
	p.mu.Unlock()
	if closeIt {
		c.Close()
		if ce := p.log.Check(zap.DebugLevel, "closing server connection"); expired && ce != nil {
			ce.Write(zap.Uint32("pid", c.PID), zap.String("reason", closeLifetime))
		}
	}
}

// put places a conn nobody holds (under mu): with the first waiter, in the
// idle list, or out of the pool when the pool is closed or above its size,
// or the conn expired (true: the caller closes it).
func (p *Pool) put(c *Conn, expired bool) (closeIt bool) {
	switch {
	case c.retired || c.Dead():
		// Its reader goroutine does the accounting.
		return false
	case p.isClosed:
		p.retire(c)
		return true
	case expired:
		p.retire(c)
		p.grant() // a waiter may log in a new one
		return true
	case !p.paused && len(p.waiters) > 0 && p.total <= p.limit(p.waiters[0]):
		p.handOut(c)
		p.serveFirst(c)
		return false
	case p.total > p.size:
		p.retire(c)
		return true
	}
	p.idle = append(p.idle, c)
	return false
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
// new size now (least recently used first) and busy ones as they are
// released.
func (p *Pool) Resize(n int) {
	if n <= 0 {
		return
	}
	p.mu.Lock()
	p.size = n
	var surplus []*Conn
	for p.total > p.size && len(p.idle) > 0 {
		c := p.idle[0]
		p.idle[0] = nil
		p.idle = p.idle[1:]
		p.retire(c)
		surplus = append(surplus, c)
	}
	p.grant()
	p.mu.Unlock()
	for _, c := range surplus {
		c.Close()
	}
	p.kick() // MinSize is capped at the size
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

// Reconnect closes every server connection once it is not in use: the
// idle ones now, those in use when they are given back (or, for one under
// its liveness check, when it passed). New ones log in as needed (PgBouncer's
// RECONNECT, e.g. after the upstream's address moved).
func (p *Pool) Reconnect() {
	p.generation.Add(1)
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	for _, c := range idle {
		p.retire(c)
	}
	p.grant() // waiters may log in new conns in the freed slots
	p.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
	p.kick() // MinSize
}

// outdated reports whether c logged in before the latest Reconnect.
func (p *Pool) outdated(c *Conn) bool { return c.generation < p.generation.Load() }

// Hold stops handing out conns, as Pause does, without waiting.
func (p *Pool) Hold() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

// Resume ends a Pause: waiting clients are served, and MinSize conns
// opened again.
func (p *Pool) Resume() {
	p.mu.Lock()
	p.paused = false
	p.grant()
	p.mu.Unlock()
	p.kick()
}

// gone is called by a conn's reader goroutine when the conn ended.
func (p *Pool) gone(c *Conn, err error) {
	p.mu.Lock()
	byUs := c.retired // the pool or a session closed it
	p.giveBack(c)
	p.retire(c)
	for i, x := range p.idle {
		if x == c {
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			break
		}
	}
	p.grant()
	refill := p.total < p.life.MinSize
	p.mu.Unlock()
	if refill {
		p.kick()
	}
	if err != nil && !byUs {
		if ce := p.log.Check(zap.DebugLevel, "server connection ended"); ce != nil {
			ce.Write(zap.Uint32("pid", c.PID), zap.Error(err))
		}
	}
}

// connect logs in a new conn with pgconn (TLS, SCRAM, MD5 as the DSN says)
// and takes over its socket; opened starts its reader goroutine.
func (p *Pool) connect(ctx context.Context) (*Conn, error) {
	if p.cfg.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.ConnectTimeout)
		defer cancel()
	}
	generation := p.generation.Load()
	pc, err := pgconn.ConnectConfig(ctx, p.pgcfg)
	if err != nil {
		return nil, err
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
		return nil, fmt.Errorf("sync new server connection: %w", err)
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
		born:     p.now(),
	}
	c.generation = generation
	return c, nil
}

// Close closes idle conns, stops the janitor and background logins, and
// makes Acquire fail; conns in use are closed as they are released. Wait
// then waits for every goroutine of the pool to end.
func (p *Pool) Close() {
	p.once.Do(func() {
		close(p.closed)
		p.cancel()
	})
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

// Wait blocks until every goroutine of the pool has ended (after Close and
// the release or discard of conns in use).
func (p *Pool) Wait() { p.wg.Wait() }

// loginFailed logs why a new server connection could not be made, at WARN
// and at most once per loginFailureLogInterval (with the number of
// failures left out since). A database that does not exist is the
// client's mistake, told to that client, and not logged here.
func (p *Pool) loginFailed(err error) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "3D000" {
		return
	}
	p.failing.Store(true)
	if !p.failLog.Allow() {
		p.unlogged.Add(1)
		return
	}
	fields := []zap.Field{zap.String("server", p.server()), zap.String("user", p.pgcfg.User), zap.Error(err)}
	if n := p.unlogged.Swap(0); n > 0 {
		fields = append(fields, zap.Int64("failures_not_logged", n))
	}
	p.log.Warn("could not open a server connection", fields...)
}

// server is the upstream's address, host:port.
func (p *Pool) server() string {
	return net.JoinHostPort(p.pgcfg.Host, fmt.Sprint(p.pgcfg.Port))
}

// loginError is what the client of a failed server login is told: that
// pgtoken could not connect to or log in to the server, not why (the
// server's answer may name upstream users or hosts); the log has the
// reason. A *wire.Error made for the client (AfterConnect's) stays.
func loginError(err error) error {
	var we *wire.Error
	if !errors.As(err, &we) {
		msg := "pgtoken could not connect to the server"
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			msg = "pgtoken could not log in to the server"
		}
		we = &wire.Error{Severity: wire.SeverityError, Code: wire.CodeConnectionFailure,
			Message: msg + " (the reason is in the pgtoken log)", Err: err}
	}
	// Wrapped, so that a client's login passes it on as it is rather than
	// as a generic failure (session.loginConnectError; errShuttingDown does
	// the same).
	return fmt.Errorf("%w", we)
}
