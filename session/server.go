package session

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/session/sqlscan"
)

// Mode is the pooling mode.
type Mode string

// Pooling modes.
const (
	ModeTransaction Mode = "transaction" // a server connection per transaction
	ModeSession     Mode = "session"     // a server connection per client session
)

// Verifier checks a token; *authn.Verifier implements it.
type Verifier interface {
	Verify(token string) (*authn.Identity, error)
}

// Database is one upstream database a client may ask for.
type Database struct {
	DSN      string // pgconn connection string
	PoolSize int
}

// Config is what a Server needs. Defaults are filled in by the config
// package; a zero value here means "off" or "unlimited" where that makes
// sense.
type Config struct {
	Mode Mode
	// Upstream is the server connection string; the client's database
	// name replaces its database unless Databases maps the name.
	Upstream    string
	Databases   map[string]Database
	PoolSize    int
	WaitTimeout time.Duration

	TLS                 *tls.Config // client-side TLS; nil answers SSLRequest with 'N'
	RequireTLSForRemote bool        // refuse the token in clear text from non-loopback clients

	Verifier Verifier
	Policy   sqlscan.Policy

	StartupTimeout         time.Duration
	MaxStartupPacket       int
	MaxPasswordBytes       int
	MaxMessage             int // largest client message buffered whole
	MaxClientConn          int
	IdleTransactionTimeout time.Duration
	ConnectTimeout         time.Duration
	StatementCache         int // prepared statements kept per server connection

	Logger *zap.Logger
}

// Server accepts clients and owns the pools.
type Server struct {
	cfg Config
	log *zap.Logger

	poolsMu sync.Mutex
	pools   map[string]*pool.Pool

	sessMu   sync.RWMutex
	sessions map[uint32]*Session
	nextID   atomic.Uint32

	clients atomic.Int64
	wg      sync.WaitGroup
	ctx     context.Context
	stop    context.CancelFunc
}

// NewServer checks cfg and returns a Server.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Verifier == nil {
		return nil, errors.New("no token verifier configured")
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeTransaction
	}
	if cfg.Mode != ModeTransaction && cfg.Mode != ModeSession {
		return nil, fmt.Errorf("pool mode %q: want transaction or session", cfg.Mode)
	}
	if _, err := pgconn.ParseConfig(cfg.Upstream); err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	if cfg.PoolSize <= 0 {
		return nil, fmt.Errorf("pool size must be positive, got %d", cfg.PoolSize)
	}
	if cfg.MaxStartupPacket == 0 {
		cfg.MaxStartupPacket = 10000
	}
	if cfg.MaxPasswordBytes == 0 {
		cfg.MaxPasswordBytes = 64 << 10
	}
	if cfg.MaxMessage == 0 {
		cfg.MaxMessage = 64 << 20
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Server{
		cfg:      cfg,
		log:      log,
		pools:    map[string]*pool.Pool{},
		sessions: map[uint32]*Session{},
		ctx:      ctx,
		stop:     stop,
	}
	var seed [4]byte
	_, _ = rand.Read(seed[:])
	s.nextID.Store(binary.BigEndian.Uint32(seed[:]) &^ (1 << 31))
	return s, nil
}

// Serve accepts clients on l until it is closed or Close is called.
func (s *Server) Serve(l net.Listener) error {
	go func() {
		<-s.ctx.Done()
		_ = l.Close()
	}()
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Temporary failures (out of file descriptors): back off.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed", zap.Error(err), zap.Duration("retry_in", delay))
			select {
			case <-time.After(delay):
			case <-s.ctx.Done():
				return nil
			}
			continue
		}
		delay = 0
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(nc)
		}()
	}
}

// Close stops accepting, ends every session and closes the pools.
func (s *Server) Close() {
	s.stop()
	s.sessMu.RLock()
	for _, sess := range s.sessions {
		_ = sess.nc.Close()
	}
	s.sessMu.RUnlock()
	s.wg.Wait()
	s.poolsMu.Lock()
	pools := make([]*pool.Pool, 0, len(s.pools))
	for _, p := range s.pools {
		p.Close()
		pools = append(pools, p)
	}
	s.poolsMu.Unlock()
	for _, p := range pools {
		p.Wait()
	}
}

// poolFor returns the pool of a client database name, creating it on first
// use.
func (s *Server) poolFor(db string) (*pool.Pool, error) {
	s.poolsMu.Lock()
	defer s.poolsMu.Unlock()
	if p, ok := s.pools[db]; ok {
		return p, nil
	}
	dsn, size := s.cfg.Upstream, s.cfg.PoolSize
	var pgcfg *pgconn.Config
	if d, ok := s.cfg.Databases[db]; ok {
		dsn = d.DSN
		if d.PoolSize > 0 {
			size = d.PoolSize
		}
	}
	pgcfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("upstream for database %q: %w", db, err)
	}
	if _, mapped := s.cfg.Databases[db]; !mapped {
		pgcfg.Database = db
	}
	p, err := pool.New(pool.Config{
		Name:           db,
		PgConfig:       pgcfg,
		Size:           size,
		WaitTimeout:    s.cfg.WaitTimeout,
		ConnectTimeout: s.cfg.ConnectTimeout,
		StatementCache: s.cfg.StatementCache,
		Logger:         s.log,
	})
	if err != nil {
		return nil, err
	}
	s.pools[db] = p
	return p, nil
}

// acquire takes a server connection for a session.
func (s *Server) acquire(ctx context.Context, p *pool.Pool) (*pool.Conn, error) {
	return p.Acquire(ctx)
}

// release gives a clean, idle server connection back.
func (s *Server) release(p *pool.Pool, c *pool.Conn) {
	p.Release(c)
}

// register gives a session its id and cancel key.
func (s *Server) register(sess *Session) {
	var key [4]byte
	_, _ = rand.Read(key[:])
	sess.key = key[:]
	s.sessMu.Lock()
	for {
		id := s.nextID.Add(1) &^ (1 << 31)
		if _, taken := s.sessions[id]; !taken && id != 0 {
			sess.id = id
			break
		}
	}
	s.sessions[sess.id] = sess
	s.sessMu.Unlock()
}

func (s *Server) unregister(sess *Session) {
	s.sessMu.Lock()
	delete(s.sessions, sess.id)
	s.sessMu.Unlock()
}

// cancel forwards a CancelRequest to the server connection that runs the
// session's statement, if any.
func (s *Server) cancel(pid uint32, key []byte) {
	s.sessMu.RLock()
	sess := s.sessions[pid]
	s.sessMu.RUnlock()
	if sess == nil || subtle.ConstantTimeCompare(sess.key, key) != 1 {
		s.log.Debug("cancel request for an unknown session", zap.Uint32("pid", pid))
		return
	}
	sess.cancel()
}

// cancel asks the server to cancel the session's running statement. The
// server connection is not released to another client until the request
// has been delivered, so it can only hit this client's statement.
func (sess *Session) cancel() {
	sess.mu.Lock()
	c := sess.conn
	if c == nil || sess.pending == 0 && !sess.midBatch {
		sess.mu.Unlock()
		return
	}
	sess.cancelling++
	sess.mu.Unlock()
	ctx, cancel := context.WithTimeout(sess.srv.ctx, 5*time.Second)
	err := c.Cancel(ctx)
	cancel()
	if err != nil {
		sess.log.Warn("forwarding cancel request failed", zap.Error(err))
	}
	sess.mu.Lock()
	sess.cancelling--
	if sess.conn == c {
		sess.maybeRelease()
	}
	sess.mu.Unlock()
}
