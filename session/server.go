package session

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/session/lockdown"
	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/session/sqlscan"
	"github.com/pgtoken/pgtoken/wire"
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
	// Upstream is the server connection string. Its own database is
	// served under its name (unless MappedOnly), and Databases maps other
	// client database names to upstreams of their own; any other name is
	// refused at login (3D000).
	Upstream    string
	Databases   map[string]Database
	MappedOnly  bool
	PoolSize    int
	WaitTimeout time.Duration
	// PoolLifecycle is every pool's minimum and reserve, server lifetime,
	// idle timeout and liveness check (SetPoolLifecycle changes it).
	PoolLifecycle pool.Lifecycle
	// ClientIdleTimeout closes a client idle outside a transaction longer
	// than this; QueryTimeout cancels a query running longer than this (0:
	// off, as PgBouncer's client_idle_timeout and query_timeout). A reload
	// changes them (SetClientTimeouts); sessions read them with
	// Server.ClientTimeouts.
	ClientIdleTimeout time.Duration
	QueryTimeout      time.Duration

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
	// ClientWriteTimeout bounds one write to a client: a client that does
	// not read for that long is cut off, and its server connection dropped.
	ClientWriteTimeout time.Duration
	// TokenLeeway is how long a transaction open when the client's token
	// expires may go on (jwt.leeway); then the session ends.
	TokenLeeway    time.Duration
	ConnectTimeout time.Duration
	StatementCache int // prepared statements kept per server connection

	// A suspicious failed login gets its FATAL after AuthFailureDelay;
	// such failures may drain AuthFailureRate per second (up to
	// AuthFailureBurst) per client address before its signature checks
	// wait (0: no limit). See backoff.go.
	AuthFailureDelay time.Duration
	AuthFailureRate  float64
	AuthFailureBurst int
	// Checks judges the upstream's lock-down (roles.go).
	Checks lockdown.Policy

	// Observer hears about logins, refusals, pool waits and transactions
	// (for metrics); nil means NopObserver.
	Observer Observer
	// AdminRoles may use the admin console (database "pgtoken" or
	// "pgbouncer"); none
	// disables it. Admin answers the console's SHOW CONFIG and RELOAD.
	AdminRoles []string
	Admin      AdminBackend
	// PeerID (0 to MaxPeerID) goes into the high bits of the process id of
	// every cancel key pgtoken issues; Peers maps the other peers' ids to
	// the addresses their clients connect to, where a CancelRequest for one
	// of their clients is forwarded.
	PeerID int
	Peers  map[int]string

	Logger *zap.Logger
}

// Server accepts clients and owns the pools.
type Server struct {
	cfg Config
	log *zap.Logger
	obs Observer

	// Swapped at run time by a reload; sessions already logged in keep
	// the identity they got.
	verifier atomic.Pointer[verifierBox]
	admins   atomic.Pointer[map[string]bool]
	peers    atomic.Pointer[map[int]string]
	timeouts atomic.Pointer[ClientTimeouts]

	poolsMu sync.Mutex
	pools   map[string]*pool.Pool
	// paused: PAUSE, KILL or SUSPEND of every database (control.go); pools
	// made later start paused too.
	paused pauseMode

	sessMu  sync.RWMutex
	clients map[uint32]*client // logged-in sessions and consoles by id
	logins  map[uint32]net.Conn
	nextID  atomic.Uint32

	conns        atomic.Int64     // accepted connections, logging in or not
	readBufs     *wire.BufferPool // client read buffers, lent only while bytes wait in them
	preludeStmts ownStmts         // the extended prelude's statement per number of settings
	sessionStmts ownStmts         // the same, setting them for the session (procedures, settings replay)
	limiter      failureLimiter   // suspicious signature checks per client address (backoff.go)
	roles        roleState        // upstream lock-down facts per pool (roles.go)
	upstreamDB   string           // the upstream DSN's own database
	draining     atomic.Bool      // Shutdown or Close began: no new sessions or transactions
	refusing     atomic.Bool      // StopAccepting: no new clients; those logged in go on
	stats        *statsWindow     // SHOW STATS' averages (admin_stats.go)

	lnMu      sync.Mutex
	listeners map[net.Listener]struct{}

	wg   sync.WaitGroup
	ctx  context.Context
	stop context.CancelFunc
}

// client is one registry entry: a proxied session or an admin console.
type client struct {
	sess    *Session
	con     *console
	appName string
	tls     bool
	// terminated: a FATAL was sent and the socket closed; the client's
	// goroutine is on its way out.
	terminated bool
}

type verifierBox struct{ v Verifier }

// Cancel keys: pgtoken issues BackendKeyData process ids of the form
//
//	bit 31: 0 (clients treat the id as a signed int)
//	bits 28-30: the peer id of the pgtoken that issued it
//	bit 27: set only on a CancelRequest forwarded by a peer
//	bits 0-26: a per-process counter
const (
	peerShift    = 28
	MaxPeerID    = 7 // the largest peer id
	forwardedBit = 1 << 27
	counterMask  = forwardedBit - 1
)

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
	up, err := pgconn.ParseConfig(cfg.Upstream)
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	if cfg.PoolSize <= 0 {
		return nil, fmt.Errorf("pool size must be positive, got %d", cfg.PoolSize)
	}
	if cfg.PeerID < 0 || cfg.PeerID > MaxPeerID {
		return nil, fmt.Errorf("peer id must be 0 to %d, got %d", MaxPeerID, cfg.PeerID)
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
	obs := cfg.Observer
	if obs == nil {
		obs = NopObserver{}
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Server{
		cfg:       cfg,
		log:       log,
		obs:       obs,
		pools:     map[string]*pool.Pool{},
		clients:   map[uint32]*client{},
		logins:    map[uint32]net.Conn{},
		listeners: map[net.Listener]struct{}{},
		readBufs:  wire.NewBufferPool(clientReadBuffer),
		limiter:   failureLimiter{rate: rate.Limit(cfg.AuthFailureRate), burst: max(cfg.AuthFailureBurst, 1)},
		stats:     newStatsWindow(time.Now()),
		ctx:       ctx,
		stop:      stop,
	}
	go s.refreshStats(statsPeriod) // ends with ctx
	s.preludeStmts = ownStmts{prefix: "pgtoken_prelude_", local: true}
	s.sessionStmts = ownStmts{prefix: "pgtoken_session_", local: false}
	s.wg.Add(1)
	go s.watch()
	s.upstreamDB = up.Database
	if s.upstreamDB == "" {
		s.upstreamDB = up.User // as Postgres does
	}
	s.SetVerifier(cfg.Verifier)
	s.SetAdminRoles(cfg.AdminRoles)
	s.SetChecks(cfg.Checks)
	s.SetPeers(cfg.Peers)
	s.SetClientTimeouts(ClientTimeouts{Idle: cfg.ClientIdleTimeout, Query: cfg.QueryTimeout})
	var seed [4]byte
	_, _ = rand.Read(seed[:])
	s.nextID.Store(binary.BigEndian.Uint32(seed[:]))
	return s, nil
}

// SetVerifier makes v check the tokens of logins from now on.
func (s *Server) SetVerifier(v Verifier) { s.verifier.Store(&verifierBox{v}) }

// SetAdminRoles sets the roles that may use the admin console (database
// pgtoken); none disables it.
func (s *Server) SetAdminRoles(roles []string) {
	m := make(map[string]bool, len(roles))
	for _, r := range roles {
		m[r] = true
	}
	s.admins.Store(&m)
}

// SetPeers sets the addresses of the other pgtoken peers by peer id.
func (s *Server) SetPeers(peers map[int]string) {
	m := maps.Clone(peers)
	if m == nil {
		m = map[int]string{}
	}
	s.peers.Store(&m)
}

// Serve accepts clients on l until it is closed, or Shutdown or Close is
// called.
func (s *Server) Serve(l net.Listener) error {
	s.lnMu.Lock()
	if s.draining.Load() || s.refusing.Load() {
		s.lnMu.Unlock()
		_ = l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.lnMu.Unlock()
	defer func() {
		s.lnMu.Lock()
		delete(s.listeners, l)
		s.lnMu.Unlock()
	}()
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.draining.Load() || s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
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

// closeListeners stops accepting.
func (s *Server) closeListeners() {
	s.lnMu.Lock()
	for l := range s.listeners {
		_ = l.Close()
	}
	s.lnMu.Unlock()
}

// Shutdown stops accepting and lets clients finish: a client between
// transactions is closed at once with FATAL 57P01; one inside a transaction
// (or with answers in flight) when it gets there. When ctx ends first the
// rest are closed the same way. Then the pools close. It returns ctx's
// error if clients had to be cut off.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	s.closeListeners()
	s.sessMu.RLock()
	for _, nc := range s.logins {
		_ = nc.Close() // not logged in yet: nothing to finish
	}
	s.sessMu.RUnlock()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var err error
	for s.closeIdle() > 0 || s.conns.Load() > 0 {
		select {
		case <-ctx.Done():
			err = ctx.Err()
			s.log.Warn("shutdown timeout: closing the clients still in a transaction")
		case <-tick.C:
			continue
		}
		break
	}
	s.Close()
	return err
}

// closeIdle terminates every client between transactions and consoles,
// and reports how many clients remain.
func (s *Server) closeIdle() int {
	s.sessMu.RLock()
	var idle []*client
	n := 0
	for _, c := range s.clients {
		if c.terminated {
			n++
			continue
		}
		if c.con != nil || c.sess.betweenTransactions() {
			idle = append(idle, c)
		}
		n++
	}
	s.sessMu.RUnlock()
	for _, c := range idle {
		s.terminate(c, "terminating connection due to administrator command")
	}
	return n
}

// betweenTransactions reports whether the session holds no transaction and
// has nothing in flight, so closing it loses nothing.
func (sess *Session) betweenTransactions() bool {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.conn == nil {
		return !sess.t.Dropping()
	}
	return sess.srv.cfg.Mode == ModeSession && sess.t.Idle() && !sess.writing && !sess.cancelling
}

// Close stops accepting, closes every client at once with FATAL 57P01,
// and closes the pools.
func (s *Server) Close() {
	s.draining.Store(true)
	s.closeListeners()
	s.sessMu.RLock()
	all := make([]*client, 0, len(s.clients))
	for _, c := range s.clients {
		all = append(all, c)
	}
	for _, nc := range s.logins {
		_ = nc.Close()
	}
	s.sessMu.RUnlock()
	var wg sync.WaitGroup
	for _, c := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.terminate(c, "terminating connection due to administrator command")
		}()
	}
	wg.Wait()
	s.stop()
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

// terminate sends a client FATAL 57P01 after whatever it has been sent
// whole, and closes its socket; its goroutine then ends the session
// (dropping or cleaning its server connection as after any disconnect).
func (s *Server) terminate(c *client, msg string) {
	s.terminateWith(c, wire.Fatalf(wire.CodeAdminShutdown, "%s", msg))
}

// terminateSession ends a logged-in session with e (FATAL).
func (s *Server) terminateSession(sess *Session, e *wire.Error) {
	s.sessMu.RLock()
	c := s.clients[sess.id]
	s.sessMu.RUnlock()
	if c != nil && c.sess == sess {
		s.terminateWith(c, e)
	}
}

// terminateWith sends a client e after whatever it has been sent whole,
// and closes its socket.
func (s *Server) terminateWith(c *client, e *wire.Error) {
	s.sessMu.Lock()
	if c.terminated {
		s.sessMu.Unlock()
		return
	}
	c.terminated = true
	s.sessMu.Unlock()
	if c.con != nil {
		c.con.terminate(e)
		return
	}
	sess := c.sess
	// A client that does not read must not hold this up.
	_ = sess.nc.SetWriteDeadline(time.Now().Add(2 * time.Second))
	sess.mu.Lock()
	sess.out.buf = wire.AppendError(sess.out.buf, e)
	// A flusher at work (the client goroutine, or the server reader's)
	// writes the FATAL after what it has; the socket closes only once it
	// is through, or the FATAL could be lost (the lock is not held while
	// waiting).
	// It waits at most as long as the write deadline set above.
	for deadline := time.Now().Add(2 * time.Second); sess.out.flushing && time.Now().Before(deadline); {
		sess.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		sess.mu.Lock()
	}
	_ = sess.flushLocked(false)
	sess.mu.Unlock()
	_ = sess.nc.Close()
	sess.log.Info("client terminated", zap.String("reason", e.Message))
}

// errShuttingDown is what a client that wants a new transaction hears once
// shutdown began (wrapped, so acquireError and loginConnectError pass it on).
func errShuttingDown() error {
	return fmt.Errorf("%w", wire.Fatalf(wire.CodeAdminShutdown, "terminating connection due to administrator command"))
}

// Serves reports whether clients may ask for database db: a key of
// Databases, or the upstream's own database (unless MappedOnly).
func (s *Server) Serves(db string) bool {
	s.poolsMu.Lock()
	defer s.poolsMu.Unlock()
	return s.serves(db)
}

// serves is Serves under poolsMu.
func (s *Server) serves(db string) bool {
	if _, ok := s.cfg.Databases[db]; ok {
		return true
	}
	return db == s.upstreamDB && !s.cfg.MappedOnly
}

// Databases lists the database names clients may ask for, sorted.
func (s *Server) Databases() []string {
	s.poolsMu.Lock()
	defer s.poolsMu.Unlock()
	var out []string
	for name := range s.cfg.Databases {
		out = append(out, name)
	}
	if !s.cfg.MappedOnly {
		if _, ok := s.cfg.Databases[s.upstreamDB]; !ok {
			out = append(out, s.upstreamDB)
		}
	}
	slices.Sort(out)
	return out
}

// upstreamFor returns the connection settings and pool size of a database
// clients may ask for (under poolsMu).
func (s *Server) upstreamFor(db string) (*pgconn.Config, int, error) {
	if !s.serves(db) {
		return nil, 0, wire.Fatalf(wire.CodeInvalidCatalogName, "database %q does not exist", db)
	}
	dsn, size := s.cfg.Upstream, s.cfg.PoolSize
	if d, ok := s.cfg.Databases[db]; ok {
		dsn = d.DSN
		if d.PoolSize > 0 {
			size = d.PoolSize
		}
	}
	pgcfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, 0, fmt.Errorf("upstream for database %q: %w", db, err)
	}
	return pgcfg, size, nil
}

// poolFor returns the pool of a database clients may ask for, creating it
// on first use.
func (s *Server) poolFor(db string) (*pool.Pool, error) {
	s.poolsMu.Lock()
	defer s.poolsMu.Unlock()
	if p, ok := s.pools[db]; ok {
		return p, nil
	}
	pgcfg, size, err := s.upstreamFor(db)
	if err != nil {
		return nil, err
	}
	p, err := pool.New(pool.Config{
		Name:           db,
		PgConfig:       pgcfg,
		Size:           size,
		WaitTimeout:    s.cfg.WaitTimeout,
		Lifecycle:      s.cfg.PoolLifecycle,
		ConnectTimeout: s.cfg.ConnectTimeout,
		StatementCache: s.cfg.StatementCache,
		Logger:         s.log,
		AfterConnect:   s.readRoles(db), // roles.go
		// Every wait for a server connection, a login's included, so that
		// the metric and SHOW STATS agree.
		OnWait: s.obs.PoolWait,
	})
	if err != nil {
		return nil, err
	}
	if s.paused != pauseNone {
		p.Hold()
	}
	s.pools[db] = p
	return p, nil
}

// upstreamConfig is the server login of a database pgtoken serves (under
// poolsMu), for the console's SHOW DATABASES.
func (s *Server) upstreamConfig(db string) (*pgconn.Config, error) {
	pgcfg, _, err := s.upstreamFor(db)
	return pgcfg, err
}

// sizeFor is the pool size of a client database name (under poolsMu).
func (s *Server) sizeFor(db string) int {
	if d, ok := s.cfg.Databases[db]; ok && d.PoolSize > 0 {
		return d.PoolSize
	}
	return s.cfg.PoolSize
}

// Resize sets the default pool size and the sizes of mapped databases (0:
// the default), for the pools there are and those made later. A smaller
// pool closes idle server connections beyond its size now and busy ones
// when their transaction ends.
func (s *Server) Resize(defaultSize int, perDB map[string]int) {
	s.poolsMu.Lock()
	defer s.poolsMu.Unlock()
	if defaultSize > 0 {
		s.cfg.PoolSize = defaultSize
	}
	dbs := maps.Clone(s.cfg.Databases)
	for name, n := range perDB {
		if d, ok := dbs[name]; ok {
			d.PoolSize = n
			dbs[name] = d
		}
	}
	s.cfg.Databases = dbs
	for name, p := range s.pools {
		p.Resize(s.sizeFor(name))
	}
}

// acquire takes a server connection for a session.
func (s *Server) acquire(ctx context.Context, p *pool.Pool) (*pool.Conn, error) {
	if s.draining.Load() {
		return nil, errShuttingDown()
	}
	return p.Acquire(ctx) // the wait goes to s.obs through pool.Config.OnWait
}

// release gives a clean, idle server connection back. In transaction mode
// that ends a transaction: it is counted for metrics and SHOW STATS.
func (s *Server) release(p *pool.Pool, c *pool.Conn) {
	if s.cfg.Mode == ModeTransaction {
		d := c.HeldFor()
		p.NoteTransaction(d)
		s.obs.TransactionDone(d)
	}
	p.Release(c)
}

// newID returns a process id for a new connection: this peer's id in the
// high bits, a counter below.
func (s *Server) newID() uint32 {
	for {
		if n := s.nextID.Add(1) & counterMask; n != 0 {
			return uint32(s.cfg.PeerID)<<peerShift | n
		}
	}
}

// register gives a session its cancel key and enters it in the registry
// under its id (a new id if that one is somehow taken).
func (s *Server) register(sess *Session, c *client) {
	var key [4]byte
	_, _ = rand.Read(key[:])
	sess.key = key[:]
	c.sess = sess
	s.sessMu.Lock()
	for sess.id == 0 || s.clients[sess.id] != nil {
		sess.id = s.newID()
	}
	s.clients[sess.id] = c
	s.sessMu.Unlock()
}

func (s *Server) unregister(id uint32, c *client) {
	s.sessMu.Lock()
	if s.clients[id] == c {
		delete(s.clients, id)
	}
	s.sessMu.Unlock()
}

// cancel handles a CancelRequest: one for a client of another peer goes to
// that peer; one for a session here goes to the server connection that
// runs its statement; one for a console cancels its running command.
func (s *Server) cancel(pid uint32, key []byte) {
	if peer := int(pid>>peerShift) & MaxPeerID; peer != s.cfg.PeerID {
		s.forwardCancel(peer, pid, key)
		return
	}
	pid &^= forwardedBit
	s.sessMu.RLock()
	c := s.clients[pid]
	s.sessMu.RUnlock()
	var want []byte
	if c != nil && c.con != nil {
		want = c.con.key
	} else if c != nil {
		want = c.sess.key
	}
	if c == nil || subtle.ConstantTimeCompare(want, key) != 1 {
		if ce := s.log.Check(zap.DebugLevel, "cancel request for an unknown session"); ce != nil {
			ce.Write(zap.Uint32("pid", pid))
		}
		return
	}
	if c.con != nil {
		c.con.cancelCommand()
		return
	}
	c.sess.cancel()
}

// forwardCancel sends a CancelRequest on to the peer that issued the
// process id, marked as forwarded so that it is never passed on again.
func (s *Server) forwardCancel(peer int, pid uint32, key []byte) {
	log := s.log.With(zap.Int("peer", peer), zap.Uint32("pid", pid&^forwardedBit))
	if pid&forwardedBit != 0 {
		log.Warn("cancel request forwarded by a peer names another peer: check the peers setting of every pgtoken")
		return
	}
	addr := (*s.peers.Load())[peer]
	if addr == "" {
		if ce := log.Check(zap.DebugLevel, "cancel request for an unknown peer"); ce != nil {
			ce.Write()
		}
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		log.Warn("forwarding a cancel request to a peer failed", zap.String("addr", addr), zap.Error(err))
		return
	}
	defer nc.Close()
	dl, _ := ctx.Deadline()
	_ = nc.SetDeadline(dl)
	msg := pgproto3.CancelRequest{ProcessID: pid | forwardedBit, SecretKey: key}
	b, err := msg.Encode(nil)
	if err == nil {
		_, err = nc.Write(b)
	}
	if err != nil {
		log.Warn("forwarding a cancel request to a peer failed", zap.String("addr", addr), zap.Error(err))
		return
	}
	var one [1]byte
	_, _ = nc.Read(one[:]) // the peer closes the socket once it has acted
}

// cancel asks the server to cancel the session's running statement. Only
// one request is on its way at a time (a flood of them has no more effect
// than one), and the server connection is not released to another client
// until it arrived; that client's first statement on it is then preceded
// by one of pgtoken's own, which a request arriving late can only cancel
// (the fence, see claim). A request that could not be delivered in time
// may still arrive: the connection is closed instead of released. A
// statement still waiting for a server connection is cancelled without
// running.
func (sess *Session) cancel() {
	sess.mu.Lock()
	if stop := sess.acquiring; stop != nil {
		sess.mu.Unlock()
		stop()
		return
	}
	c := sess.conn
	if c == nil || sess.t.Quiet() || sess.cancelling {
		sess.mu.Unlock()
		return
	}
	sess.cancelling = true
	sess.mu.Unlock()
	ctx, cancel := context.WithTimeout(sess.srv.ctx, 5*time.Second)
	err := c.Cancel(ctx)
	cancel()
	sess.mu.Lock()
	sess.cancelling = false
	c.CancelSent = true
	if err != nil {
		sess.log.Warn("forwarding cancel request failed; the server connection will be closed", zap.Error(err))
		c.CancelUncertain = true
	}
	if sess.conn == c {
		sess.maybeRelease()
	} else if c.CancelUncertain {
		c.Close()
	}
	sess.mu.Unlock()
}

// PoolInfo describes one pool, for metrics and the admin console.
type PoolInfo struct {
	Database string
	User     string // the upstream user
	Mode     Mode
	Clients  int // logged-in clients of this database
	pool.Stats
}

// Stats is a snapshot of the server for metrics.
type Stats struct {
	Connections int // accepted client connections, logging in or logged in
	Sessions    int // logged-in clients (consoles aside)
	Consoles    int // admin console clients
	Pools       []PoolInfo
}

// Stats reports clients and pools.
func (s *Server) Stats() Stats {
	st := Stats{Connections: int(s.conns.Load())}
	perDB := map[string]int{}
	s.sessMu.RLock()
	for _, c := range s.clients {
		if c.con != nil {
			st.Consoles++
			continue
		}
		st.Sessions++
		perDB[c.sess.db]++
	}
	s.sessMu.RUnlock()
	s.poolsMu.Lock()
	for name, p := range s.pools {
		st.Pools = append(st.Pools, PoolInfo{Database: name, User: p.User(), Mode: s.cfg.Mode, Clients: perDB[name], Stats: p.Stats()})
	}
	s.poolsMu.Unlock()
	slices.SortFunc(st.Pools, func(a, b PoolInfo) int { return strings.Compare(a.Database, b.Database) })
	return st
}

// Draining reports whether pgtoken stopped accepting clients: Shutdown,
// Close or StopAccepting began.
func (s *Server) Draining() bool { return s.draining.Load() || s.refusing.Load() }

// StopAccepting closes the listeners; clients logged in go on as before
// (the console's SHUTDOWN WAIT_FOR_CLIENTS).
func (s *Server) StopAccepting() {
	s.lnMu.Lock()
	s.refusing.Store(true)
	s.lnMu.Unlock()
	s.closeListeners()
}

// Observer hears about events worth counting. Its methods are called on
// the hot path, so they must be cheap, never block and be safe for
// concurrent use; NopObserver is the default.
type Observer interface {
	// LoginSucceeded: a client logged in (a console too).
	LoginSucceeded()
	// AuthFailed: a login was refused; reason is one of AuthFailureReasons.
	AuthFailed(reason string)
	// GuardRejected: a statement was refused (guard or pooling mode).
	GuardRejected()
	// PoolWait: a client waited d for a server connection (zero when one
	// was idle), at a transaction's start or at a login that had to open
	// one; the same waits SHOW STATS sums in total_wait_time.
	PoolWait(d time.Duration)
	// TransactionDone: a transaction held its server connection for d
	// (transaction mode).
	TransactionDone(d time.Duration)
	// InternalError: something that must never happen did (a bug); kind
	// is one of InternalErrorKinds. It is logged at ERROR too.
	InternalError(kind string)
	// ServerReset: a server connection that served another client was
	// reset before this client's transaction (the hand-over reset).
	ServerReset()
}

// Kinds of internal errors, as reported to Observer.InternalError.
const (
	// BugStalledAnswer: the server's answers waited in the client's output
	// longer than stallBound with nobody writing them.
	BugStalledAnswer = "stalled_answer"
	// BugDesync: the server sent a message no pending request expects.
	BugDesync = "desync"
)

// InternalErrorKinds lists every kind InternalError may be given.
var InternalErrorKinds = []string{BugStalledAnswer, BugDesync}

// NopObserver ignores every event.
type NopObserver struct{}

func (NopObserver) LoginSucceeded()               {}
func (NopObserver) AuthFailed(string)             {}
func (NopObserver) GuardRejected()                {}
func (NopObserver) PoolWait(time.Duration)        {}
func (NopObserver) TransactionDone(time.Duration) {}
func (NopObserver) InternalError(string)          {}
func (NopObserver) ServerReset()                  {}

// Reasons a login is refused, as reported to Observer.AuthFailed.
const (
	AuthMalformed    = "malformed"
	AuthBadSignature = "bad_signature"
	AuthUnknownKID   = "unknown_kid"
	AuthAlgorithm    = "algorithm"
	AuthExpired      = "expired"
	AuthNotYetValid  = "not_yet_valid"
	AuthIssuer       = "issuer"
	AuthAudience     = "audience"
	AuthRole         = "role"
	AuthNoRole       = "no_role"
	AuthTLSRequired  = "tls_required"
	AuthNotAdmin     = "not_admin"
	AuthThrottled    = "throttled" // the token could not be checked in time: too many failures from the address
	AuthDatabase     = "database"  // a database pgtoken does not serve
	AuthLockdown     = "lockdown"  // the role, or the upstream login, fails a lock-down check
	AuthOther        = "other"
)

// AuthFailureReasons lists every reason AuthFailed may be given.
var AuthFailureReasons = []string{AuthMalformed, AuthBadSignature, AuthUnknownKID, AuthAlgorithm, AuthExpired,
	AuthNotYetValid, AuthIssuer, AuthAudience, AuthRole, AuthNoRole, AuthTLSRequired, AuthNotAdmin, AuthThrottled, AuthDatabase, AuthLockdown, AuthOther}

// authReason maps a verifier's refusal to its metric label.
func authReason(r authn.Reason) string {
	switch r {
	case authn.ReasonMalformed:
		return AuthMalformed
	case authn.ReasonBadSignature:
		return AuthBadSignature
	case authn.ReasonUnknownKID:
		return AuthUnknownKID
	case authn.ReasonAlgorithm:
		return AuthAlgorithm
	case authn.ReasonExpired:
		return AuthExpired
	case authn.ReasonNotYetValid:
		return AuthNotYetValid
	case authn.ReasonIssuer:
		return AuthIssuer
	case authn.ReasonAudience:
		return AuthAudience
	case authn.ReasonRole:
		return AuthRole
	case authn.ReasonNoRole:
		return AuthNoRole
	}
	return AuthOther
}
