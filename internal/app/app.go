// Package app assembles a running pgtoken from a configuration: the token
// verifier, the client TLS setup, the session server and its listener. The
// serve command, make demo and the integration tests all start pgtoken
// through it.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/session"
	"github.com/pgtoken/pgtoken/session/sqlscan"
)

// App is a running pgtoken.
type App struct {
	Config   config.Config
	Log      *zap.Logger
	Server   *session.Server
	Verifier *authn.Verifier

	listener net.Listener
	cancel   context.CancelFunc
	done     chan error
	once     sync.Once
}

// NewLogger builds the zap logger the configuration asks for.
func NewLogger(level, format string) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log_level: %w", err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Encoding = "json"
	if format == "console" {
		zc.Encoding = "console"
		zc.EncoderConfig = zap.NewDevelopmentEncoderConfig()
	}
	zc.DisableStacktrace = true
	zc.Sampling = nil
	return zc.Build()
}

// AuthnConfig maps the configuration onto the verifier's.
func AuthnConfig(c config.Config, log *zap.Logger) authn.Config {
	return authn.Config{
		Secret:       c.JWT.Secret,
		JWKS:         c.JWT.JWKS,
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
		Logger:       log,
	}
}

// Start validates cfg and starts serving on cfg.Listen (use port 0 for any
// free port; Addr tells which).
func Start(ctx context.Context, cfg config.Config, log *zap.Logger) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(ctx)
	v, err := authn.New(ctx, AuthnConfig(cfg, log))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("jwt: %w", err)
	}
	tlsCfg, err := loadTLS(cfg.TLS)
	if err != nil {
		v.Close()
		cancel()
		return nil, err
	}
	dbs := map[string]session.Database{}
	for name, d := range cfg.Databases {
		dbs[name] = session.Database{DSN: d.Upstream, PoolSize: d.PoolSize}
	}
	srv, err := session.NewServer(session.Config{
		Mode:                   session.Mode(cfg.Pool.Mode),
		Upstream:               cfg.Upstream,
		Databases:              dbs,
		PoolSize:               cfg.Pool.Size,
		WaitTimeout:            cfg.Pool.WaitTimeout.D(),
		ConnectTimeout:         cfg.Pool.ConnectTimeout.D(),
		IdleTransactionTimeout: cfg.Pool.IdleTransactionTimeout.D(),
		StatementCache:         cfg.Pool.StatementCache,
		TLS:                    tlsCfg,
		RequireTLSForRemote:    cfg.TLS.RequireForRemote,
		Verifier:               v,
		Policy: sqlscan.Policy{
			ClaimsPrefix: cfg.Claims.Prefix,
			ClaimsJSON:   cfg.Claims.JSON,
			AllowDo:      cfg.Guard.AllowDo,
		},
		StartupTimeout:   cfg.Limits.StartupTimeout.D(),
		MaxStartupPacket: cfg.Limits.MaxStartupPacket,
		MaxPasswordBytes: cfg.Limits.MaxPassword,
		MaxMessage:       cfg.Limits.MaxMessage,
		MaxClientConn:    cfg.Limits.MaxClientConn,
		Logger:           log,
	})
	if err != nil {
		v.Close()
		cancel()
		return nil, err
	}
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		v.Close()
		cancel()
		return nil, fmt.Errorf("listen: %w", err)
	}
	a := &App{Config: cfg, Log: log, Server: srv, Verifier: v, listener: l, cancel: cancel, done: make(chan error, 1)}
	go func() { a.done <- srv.Serve(l) }()
	log.Info("pgtoken listening", zap.String("listen", l.Addr().String()), zap.String("mode", cfg.Pool.Mode),
		zap.String("upstream", config.RedactDSN(cfg.Upstream)))
	return a, nil
}

// Addr is the address pgtoken listens on.
func (a *App) Addr() string { return a.listener.Addr().String() }

// Port is the TCP port pgtoken listens on.
func (a *App) Port() int { return a.listener.Addr().(*net.TCPAddr).Port }

// Close stops pgtoken: no new clients, every session ends, pools close.
func (a *App) Close() error {
	var err error
	a.once.Do(func() {
		a.Server.Close()
		err = <-a.done
		a.Verifier.Close()
		a.cancel()
	})
	return err
}

// loadTLS reads the client-facing certificate, if configured.
func loadTLS(t config.TLS) (*tls.Config, error) {
	if t.Cert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("tls: %w", err)
		}
		return nil, fmt.Errorf("tls.cert/tls.key: %s", strings.TrimPrefix(err.Error(), "tls: "))
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}, nil
}
