// Package pool keeps the server connections of one upstream database.
//
// A conn is taken with Acquire at a transaction's first message and given
// back with Release when the transaction ends; only idle, clean conns go
// back. The idle list is a buffered channel, so handing a conn to a waiting
// client takes no lock shared beyond this pool, and waiters are served in
// arrival order.
package pool

import (
	"context"
	"errors"
	"fmt"
	"maps"
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

// Pool is a fixed-size set of server connections to one database.
type Pool struct {
	cfg   Config
	pgcfg *pgconn.Config
	log   *zap.Logger

	idle  chan *Conn    // conns ready for use
	slots chan struct{} // one token per live or connecting conn

	paramsMu sync.RWMutex
	params   map[string]string // ParameterStatus values of the latest login

	waiting atomic.Int64
	closed  chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
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
		idle:   make(chan *Conn, cfg.Size),
		slots:  make(chan struct{}, cfg.Size),
		closed: make(chan struct{}),
	}, nil
}

// Name is the client-facing database name.
func (p *Pool) Name() string { return p.cfg.Name }

// Size is the configured maximum of server connections.
func (p *Pool) Size() int { return p.cfg.Size }

// Stats is a snapshot of the pool's counters.
type Stats struct {
	Total, Idle, Waiting int
}

// Stats reports how many conns exist, idle, and how many clients wait.
func (p *Pool) Stats() Stats {
	return Stats{Total: len(p.slots), Idle: len(p.idle), Waiting: int(p.waiting.Load())}
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
	for {
		select {
		case c := <-p.idle:
			if c.Dead() {
				continue
			}
			return c, nil
		default:
		}
		break
	}
	p.waiting.Add(1)
	defer p.waiting.Add(-1)
	var timeout <-chan time.Time
	if p.cfg.WaitTimeout > 0 {
		t := time.NewTimer(p.cfg.WaitTimeout)
		defer t.Stop()
		timeout = t.C
	}
	for {
		select {
		case c := <-p.idle:
			if c.Dead() {
				continue
			}
			return c, nil
		case p.slots <- struct{}{}:
			c, err := p.connect(ctx)
			if err != nil {
				<-p.slots
				return nil, err
			}
			return c, nil
		case <-timeout:
			return nil, fmt.Errorf("%w after %s (pool size %d)", ErrWaitTimeout, p.cfg.WaitTimeout, p.cfg.Size)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-p.closed:
			return nil, ErrClosed
		}
	}
}

// Release gives back a conn. Only a conn that is idle and clean may be
// released; anything else must be Discarded.
func (p *Pool) Release(c *Conn) {
	c.Detach()
	if c.Dead() {
		return // its reader goroutine frees the slot
	}
	c.lastUsed.Store(time.Now().UnixNano())
	select {
	case <-p.closed:
		c.Close()
	default:
		p.idle <- c // never blocks: at most Size conns exist
	}
}

// Discard closes a conn that may hold state no other client may see.
func (p *Pool) Discard(c *Conn) {
	c.Detach()
	c.Close()
}

// gone is called by a conn's reader goroutine when the conn ended.
func (p *Pool) gone(c *Conn, err error) {
	<-p.slots
	if err != nil && !errors.Is(err, errClosedByUs) {
		p.log.Debug("server connection ended", zap.Uint32("pid", c.PID), zap.Error(err))
	}
}

var errClosedByUs = errors.New("closed by pgtoken")

// connect logs in a new conn with pgconn (TLS, SCRAM, MD5 as the DSN says)
// and takes over its socket.
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
	if err := pc.SyncConn(ctx); err != nil {
		_ = pc.Close(ctx)
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
		born:     time.Now(),
		done:     make(chan struct{}),
		log:      p.log,
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		c.readLoop()
	}()
	p.log.Debug("server connection opened", zap.Uint32("pid", c.PID))
	return c, nil
}

// Close closes idle conns and makes Acquire fail; conns in use are closed
// as they are released. It waits for every reader goroutine to end once
// all conns are closed.
func (p *Pool) Close() {
	p.once.Do(func() { close(p.closed) })
	for {
		select {
		case c := <-p.idle:
			c.Close()
		default:
			return
		}
	}
}

// Wait blocks until every conn's goroutine has ended (after Close and the
// release or discard of conns in use).
func (p *Pool) Wait() { p.wg.Wait() }
