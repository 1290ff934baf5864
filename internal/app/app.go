// Package app assembles a running pgtoken from a configuration: the token
// verifier, the client TLS setup, the session server and its listener, the
// metrics and health endpoints. It reloads what can change at run time and
// shuts down gracefully. The serve command, make demo and the integration
// tests all start pgtoken through it.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/metrics"
	"github.com/pgtoken/pgtoken/session"
	"github.com/pgtoken/pgtoken/session/lockdown"
	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/session/sqlscan"
)

// Options are the parts of a running pgtoken that do not come from the
// configuration.
type Options struct {
	// Version is reported by the console's SHOW VERSION and by
	// pgtoken_build_info.
	Version string
	// Level, when set, is the logger's level; a reload changes it.
	Level *zap.AtomicLevel
	// Load reads the configuration again for a reload (SIGHUP, the
	// console's RELOAD). Without it a reload re-applies the configuration
	// in use, which still re-reads keys and certificates.
	Load func() (config.Config, error)
}

// App is a running pgtoken.
type App struct {
	Log     *zap.Logger
	Server  *session.Server
	Metrics *metrics.Metrics

	opts     Options
	ctx      context.Context
	cancel   context.CancelFunc
	reloadMu sync.Mutex // one reload at a time
	cfg      atomic.Pointer[config.Config]
	verifier atomic.Pointer[authn.Verifier]
	cert     atomic.Pointer[tls.Certificate]

	listener net.Listener
	httpSrv  *http.Server
	httpLn   net.Listener
	done     chan error
	once     sync.Once
	closeErr error
	checked  chan struct{}  // closed when the start's upstream check is done
	checks   sync.WaitGroup // lock-down checks of the upstreams in the background
	stopped  chan struct{}  // closed when pgtoken has stopped (Shutdown, Close, the console's SHUTDOWN)
}

// AuthnConfig maps the configuration onto the verifier's.
func AuthnConfig(c config.Config, log *zap.Logger) authn.Config {
	return authn.Config{
		Secret:       c.JWT.Secret,
		JWKS:         c.JWT.JWKS,
		JWKSIssuers:  c.JWT.JWKSIssuers,
		PublicKeys:   c.JWT.PublicKeys,
		Algorithms:   c.JWT.Algorithms,
		Issuer:       c.JWT.Issuer,
		Audience:     c.JWT.Audience,
		Leeway:       c.JWT.Leeway.D(),
		RequireExp:   c.JWT.RequireExp,
		RoleClaim:    c.JWT.RoleClaim,
		AnonRole:     c.JWT.AnonRole,
		AllowedRoles: c.JWT.AllowedRoles,
		ClaimsPrefix: c.Claims.Prefix,
		ClaimsJSON:   c.Claims.JSON,
		CacheSize:    c.JWT.CacheSize,

		ClaimsNamespaces: c.Claims.Namespaces,
		Logger:           log,
	}
}

// Start validates cfg and starts serving on cfg.Listen (use port 0 for any
// free port; Addr tells which).
func Start(ctx context.Context, cfg config.Config, log *zap.Logger) (*App, error) {
	return StartWith(ctx, cfg, log, Options{})
}

// StartWith is Start with options.
func StartWith(ctx context.Context, cfg config.Config, log *zap.Logger, opts Options) (_ *App, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	ctx, cancel := context.WithCancel(ctx)
	a := &App{Log: log, opts: opts, ctx: ctx, cancel: cancel, done: make(chan error, 1), checked: make(chan struct{}), stopped: make(chan struct{})}
	a.Metrics = metrics.New(opts.Version)
	a.cfg.Store(&cfg)
	var cleanup []func()
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
			cancel()
		}
	}()

	v, cert, err := a.loadKeys(cfg)
	if err != nil {
		return nil, err
	}
	a.verifier.Store(v)
	cleanup = append(cleanup, func() { a.verifier.Load().Close() })
	a.cert.Store(cert)
	srv, err := session.NewServer(a.sessionConfig(cfg, v))
	if err != nil {
		return nil, err
	}
	a.Server = srv
	a.Metrics.Watch(metrics.Source{Stats: srv.Stats, KeyCount: func() int { return a.verifier.Load().KeyCount() }})

	l, err := listen(ctx, cfg.Listen, cfg.ReusePort)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	a.listener = l
	cleanup = append(cleanup, func() { _ = l.Close() })
	if cfg.MetricsListen != "" {
		ml, err := listen(ctx, cfg.MetricsListen, cfg.ReusePort)
		if err != nil {
			return nil, fmt.Errorf("metrics_listen: %w", err)
		}
		a.httpLn = ml
		a.httpSrv = &http.Server{
			Handler:           a.Metrics.Handler(a.ready, srv.DebugSessions),
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          zap.NewStdLog(log),
		}
		go func() { _ = a.httpSrv.Serve(ml) }()
		log.Info("metrics listening", zap.String("metrics_listen", ml.Addr().String()))
	}
	go func() { a.done <- srv.Serve(l) }()
	fields := []zap.Field{zap.String("listen", l.Addr().String()), zap.Bool("tls", cfg.TLS.Cert != ""),
		zap.String("mode", cfg.Pool.Mode), zap.String("upstream", config.RedactDSN(cfg.Upstream))}
	if cfg.PeerID != 0 || len(cfg.Peers) > 0 {
		fields = append(fields, zap.Int("peer_id", cfg.PeerID))
	}
	log.Info("pgtoken listening", fields...)
	a.runLockdownChecks(session.LogChanged)
	go func() {
		defer close(a.checked)
		a.checkUpstreams(cfg) // upstream.go
	}()
	return a, nil
}

// loadKeys loads what verifies tokens and the client-facing certificate
// (nil without TLS), as serve, a reload and pgtoken check all do.
func (a *App) loadKeys(cfg config.Config) (*authn.Verifier, *tls.Certificate, error) {
	ac := AuthnConfig(cfg, a.Log)
	if a.Metrics != nil {
		ac.OnJWKSRefresh = a.Metrics.JWKSRefreshed
	}
	v, err := authn.New(a.ctx, ac)
	if err != nil {
		return nil, nil, fmt.Errorf("jwt: %w", err)
	}
	if cfg.TLS.Cert == "" {
		return v, nil, nil
	}
	cert, err := loadCert(cfg.TLS)
	if err != nil {
		v.Close()
		return nil, nil, err
	}
	return v, cert, nil
}

// sessionConfig maps the configuration onto the session server's.
func (a *App) sessionConfig(cfg config.Config, v *authn.Verifier) session.Config {
	var tlsCfg *tls.Config
	if cfg.TLS.Cert != "" {
		tlsCfg = &tls.Config{
			MinVersion: tls.VersionTLS12,
			// Every handshake takes the certificate in use now, so a
			// reload reaches new connections at once.
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return a.cert.Load(), nil },
		}
	}
	dbs := map[string]session.Database{}
	for name, d := range cfg.Databases {
		dbs[name] = session.Database{DSN: d.Upstream, PoolSize: d.PoolSize}
	}
	sc := session.Config{
		Mode:                   session.Mode(cfg.Pool.Mode),
		Upstream:               cfg.Upstream,
		Databases:              dbs,
		MappedOnly:             !cfg.ServeUpstream,
		PoolSize:               cfg.Pool.Size,
		WaitTimeout:            cfg.Pool.WaitTimeout.D(),
		ConnectTimeout:         cfg.Pool.ConnectTimeout.D(),
		IdleTransactionTimeout: cfg.Pool.IdleTransactionTimeout.D(),
		StatementCache:         cfg.Pool.StatementCache,
		PoolLifecycle:          poolLifecycle(cfg.Pool),
		ClientIdleTimeout:      cfg.Pool.ClientIdleTimeout.D(),
		QueryTimeout:           cfg.Pool.QueryTimeout.D(),
		TLS:                    tlsCfg,
		RequireTLSForRemote:    cfg.TLS.RequireForRemote,
		Verifier:               v,
		Policy: sqlscan.Policy{
			ClaimsPrefix: cfg.Claims.Prefix,
			ClaimsJSON:   cfg.Claims.JSON,
			AllowDo:      cfg.Guard.AllowDo,
			// A server connection holds one client's statements in
			// session mode: listing them shows that client its own.
			ListStatements: cfg.Pool.Mode == "session",
		},
		StartupTimeout:     cfg.Limits.StartupTimeout.D(),
		MaxStartupPacket:   cfg.Limits.MaxStartupPacket,
		MaxPasswordBytes:   cfg.Limits.MaxPassword,
		MaxMessage:         cfg.Limits.MaxMessage,
		MaxClientConn:      cfg.Limits.MaxClientConn,
		ClientWriteTimeout: cfg.Limits.ClientWriteTimeout.D(),
		TokenLeeway:        cfg.JWT.Leeway.D(),
		AdminRoles:         cfg.AdminRoles,
		Admin:              backend{a},
		PeerID:             cfg.PeerID,
		Peers:              cfg.Peers,
		Logger:             a.Log,

		AuthFailureDelay: cfg.Limits.AuthFailureDelay.D(),
		AuthFailureRate:  cfg.Limits.AuthFailureRate,
		AuthFailureBurst: cfg.Limits.AuthFailureBurst,
		Checks:           checkPolicy(cfg),
	}
	if a.Metrics != nil {
		sc.Observer = a.Metrics
	}
	return sc
}

// checkPolicy is how the lock-down checks judge what they find.
func checkPolicy(cfg config.Config) lockdown.Policy {
	served := slices.Clone(cfg.JWT.AllowedRoles)
	if r := cfg.JWT.AnonRole; r != "" && !slices.Contains(served, r) {
		served = append(served, r)
	}
	skip := make([]lockdown.Check, len(cfg.Checks.Skip))
	for i, c := range cfg.Checks.Skip {
		skip[i] = lockdown.Check(c)
	}
	return lockdown.Policy{Served: served, Console: cfg.AdminRoles, Skip: skip, Privileged: cfg.JWT.PrivilegedRoles}
}

// runLockdownChecks runs the lock-down checks of every database pgtoken
// serves in the background, logging what they find (at start, and after a
// reload under reloadMu).
func (a *App) runLockdownChecks(log session.LogFindings) {
	if a.ctx.Err() != nil {
		return // closing
	}
	a.checks.Add(1)
	go func() {
		defer a.checks.Done()
		a.Server.CheckUpstreams(a.ctx, log)
	}()
}

// Check loads cfg as serve does — keys, JWKS and the TLS certificate, with
// the warnings serve logs going to log — and, unless offline, runs the
// lock-down checks against every database pgtoken would serve. An error
// means cfg cannot be served at all.
func Check(ctx context.Context, cfg config.Config, log *zap.Logger, offline bool) ([]session.UpstreamCheck, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a := &App{Log: log, ctx: ctx, cancel: cancel}
	v, cert, err := a.loadKeys(cfg)
	if err != nil {
		return nil, err
	}
	defer v.Close()
	a.cert.Store(cert)
	if offline {
		return nil, nil
	}
	srv, err := session.NewServer(a.sessionConfig(cfg, v))
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	return srv.CheckUpstreams(ctx, session.LogNone), nil
}

// UpstreamsChecked is closed once the login to each upstream tried at start
// has been logged (or pgtoken was closed first).
func (a *App) UpstreamsChecked() <-chan struct{} { return a.checked }

// Config is the configuration in effect (after reloads).
func (a *App) Config() config.Config { return *a.cfg.Load() }

// Verifier is the token verifier in use.
func (a *App) Verifier() *authn.Verifier { return a.verifier.Load() }

// Addr is the address pgtoken listens on.
func (a *App) Addr() string { return a.listener.Addr().String() }

// Port is the TCP port pgtoken listens on.
func (a *App) Port() int { return a.listener.Addr().(*net.TCPAddr).Port }

// MetricsAddr is the address of /metrics, /healthz and /readyz ("" when
// metrics_listen is not set).
func (a *App) MetricsAddr() string {
	if a.httpLn == nil {
		return ""
	}
	return a.httpLn.Addr().String()
}

// ShutdownTimeout is how long Shutdown should let transactions run
// (shutdown_timeout).
func (a *App) ShutdownTimeout() time.Duration { return a.cfg.Load().ShutdownTimeout.D() }

// Reload applies next: token verification (keys re-read, JWKS URLs,
// allowed roles and the rest of jwt), admin roles, peers, pool sizes and
// lifecycle, client timeouts, the TLS certificate and the log level,
// without dropping a connection. Other
// changed settings are logged as needing a restart. An invalid next, or one
// whose keys or certificate cannot be loaded, is refused and logged; the
// configuration in use stays.
func (a *App) Reload(next config.Config) error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	refuse := func(err error) error {
		a.Log.Error("reload refused; the configuration in use stays", zap.Error(err))
		return err
	}
	if err := next.Validate(); err != nil {
		return refuse(err)
	}
	cur := *a.cfg.Load()
	eff, applied, restart := config.Reload(cur, next)
	if (cur.TLS.Cert == "") != (eff.TLS.Cert == "") {
		eff.TLS.Cert, eff.TLS.Key = cur.TLS.Cert, cur.TLS.Key
		restart = append(restart, "tls.cert")
	}
	if err := eff.Validate(); err != nil {
		return refuse(err)
	}
	// Build what can fail before changing anything.
	v, cert, err := a.loadKeys(eff)
	if err != nil {
		return refuse(err)
	}
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(eff.LogLevel)); err != nil {
		v.Close()
		return refuse(fmt.Errorf("log_level: %w", err))
	}

	a.Server.SetVerifier(v)
	a.verifier.Swap(v).Close() // logins verifying now finish with the old one
	if cert != nil {
		a.cert.Store(cert)
	}
	a.Server.SetAdminRoles(eff.AdminRoles)
	a.Server.SetChecks(checkPolicy(eff))
	a.Server.SetPeers(eff.Peers)
	sizes := map[string]int{}
	for name, d := range eff.Databases {
		sizes[name] = d.PoolSize
	}
	a.Server.Resize(eff.Pool.Size, sizes)
	a.Server.SetPoolLifecycle(poolLifecycle(eff.Pool))
	a.Server.SetClientTimeouts(clientTimeouts(eff.Pool))
	if a.opts.Level != nil {
		a.opts.Level.SetLevel(lvl)
	}
	a.cfg.Store(&eff)
	for _, key := range restart {
		a.Log.Warn("setting changed but takes effect only after a restart; keeping the value in use", zap.String("key", key))
	}
	a.Log.Info("configuration reloaded", zap.Strings("changed", applied), zap.Int("keys", v.KeyCount()))
	a.runLockdownChecks(session.LogAll)
	return nil
}

// poolLifecycle is the pools' lifecycle as configured.
func poolLifecycle(c config.Pool) pool.Lifecycle {
	return pool.Lifecycle{
		MinSize:        c.MinSize,
		ReserveSize:    c.ReserveSize,
		ReserveTimeout: c.ReserveTimeout.D(),
		ServerLifetime: c.ServerLifetime.D(),
		IdleTimeout:    c.ServerIdleTimeout.D(),
		CheckDelay:     c.ServerCheckDelay.D(),
	}
}

// clientTimeouts are the client timeouts as configured.
func clientTimeouts(c config.Pool) session.ClientTimeouts {
	return session.ClientTimeouts{Idle: c.ClientIdleTimeout.D(), Query: c.QueryTimeout.D()}
}

// ReloadFromSource reads the configuration again (Options.Load) and
// applies it as Reload does.
func (a *App) ReloadFromSource() error {
	next := *a.cfg.Load()
	if a.opts.Load != nil {
		var err error
		if next, err = a.opts.Load(); err != nil {
			a.Log.Error("reload refused; the configuration in use stays", zap.Error(err))
			return err
		}
	}
	return a.Reload(next)
}

// Shutdown stops accepting and lets transactions in flight finish until
// ctx ends (see session.Server.Shutdown), then closes everything. It
// returns ctx's error if clients had to be cut off.
func (a *App) Shutdown(ctx context.Context) error {
	a.Log.Info("shutting down: waiting for transactions in flight")
	err := a.Server.Shutdown(ctx)
	if cerr := a.finish(); err == nil {
		err = cerr
	}
	return err
}

// Close stops pgtoken at once: every client gets FATAL 57P01, pools close.
func (a *App) Close() error {
	a.Server.Close()
	return a.finish()
}

// finish waits for the accept loop and stops the rest (once).
func (a *App) finish() error {
	a.once.Do(func() {
		a.closeErr = <-a.done
		if a.httpSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = a.httpSrv.Shutdown(ctx)
			cancel()
		}
		a.verifier.Load().Close()
		a.reloadMu.Lock() // no reload starts checks after this
		a.cancel()
		a.reloadMu.Unlock()
		a.checks.Wait()
		<-a.checked
		close(a.stopped)
	})
	return a.closeErr
}

// Stopped is closed once pgtoken has stopped, whoever stopped it (the
// console's SHUTDOWN among them); Err then tells how.
func (a *App) Stopped() <-chan struct{} { return a.stopped }

// Err is what stopping pgtoken returned (the accept loop's error), once
// Stopped is closed.
func (a *App) Err() error {
	<-a.stopped
	return a.closeErr
}

// loadCert reads the client-facing certificate.
func loadCert(t config.TLS) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("tls: %w", err)
		}
		return nil, fmt.Errorf("tls.cert/tls.key: %s", strings.TrimPrefix(err.Error(), "tls: "))
	}
	return &cert, nil
}

// listen opens a TCP listener, with SO_REUSEPORT when reusePort is set.
func listen(ctx context.Context, addr string, reusePort bool) (net.Listener, error) {
	var lc net.ListenConfig
	if reusePort {
		lc.Control = reusePortControl
	}
	return lc.Listen(ctx, "tcp", addr)
}

// backend answers the admin console's SHOW CONFIG, SHOW VERSION and RELOAD.
type backend struct{ a *App }

func (b backend) Version() string { return b.a.opts.Version }

func (b backend) Reload() error { return b.a.ReloadFromSource() }

// Shutdown stops pgtoken for the console's SHUTDOWN, in the background:
// the console's own connection is among those it closes. The serve
// command exits when Stopped is closed.
func (b backend) Shutdown(mode session.ShutdownMode) {
	a := b.a
	go func() {
		switch mode {
		case session.ShutdownNow:
			a.Log.Info("SHUTDOWN: closing every client")
			_ = a.Close()
		case session.ShutdownWaitForServers:
			timeout := a.ShutdownTimeout()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			_ = a.Shutdown(ctx) // logs, as SIGTERM's does
		case session.ShutdownWaitForClients:
			a.Log.Info("SHUTDOWN WAIT_FOR_CLIENTS: no new clients; stopping once every client has left")
			a.Server.StopAccepting()
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for a.Server.Stats().Connections > 0 {
				select {
				case <-tick.C:
				case <-a.stopped: // stopped another way meanwhile
					return
				}
			}
			_ = a.Close()
		}
	}()
}

func (b backend) ConfigRows() []session.ConfigRow {
	settings := config.Settings(b.a.Config())
	rows := make([]session.ConfigRow, len(settings))
	for i, s := range settings {
		rows[i] = session.ConfigRow{Key: s.Key, Value: s.Value, Default: s.Default, Changeable: s.Reload}
	}
	return rows
}
