package app

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/internal/config"
)

// upstream is one configured upstream: the default one (database "") or
// that of a mapped database.
type upstream struct {
	database string
	dsn      string
}

func upstreams(cfg config.Config) []upstream {
	out := []upstream{{dsn: cfg.Upstream}}
	for _, name := range slices.Sorted(maps.Keys(cfg.Databases)) {
		out = append(out, upstream{database: name, dsn: cfg.Databases[name].Upstream})
	}
	return out
}

// checkUpstreams logs in to each configured upstream once, at start, so
// that a wrong password, an unreachable host or a TLS mismatch shows in the
// log at once rather than at the first client: ERROR with the server's own
// reason, INFO when it answers. pgtoken serves either way (the server may
// come up later); /readyz tells the same reason until it does.
func (a *App) checkUpstreams(cfg config.Config) {
	for _, u := range upstreams(cfg) {
		fields := []zap.Field{zap.String("upstream", config.RedactDSN(u.dsn))}
		if u.database != "" {
			fields = append(fields, zap.String("database", u.database))
		}
		version, err := probe(a.ctx, u.dsn, cfg.Pool.ConnectTimeout.D())
		var pe *pgconn.PgError
		switch {
		case a.ctx.Err() != nil:
			return // closed before the check ended
		case errors.As(err, &pe) && pe.Code == "3D000" && u.database == "":
			// Clients name the database they want; the DSN's is only a default.
			a.Log.Info("upstream answers; the database its connection string names does not exist (clients name their own)",
				append(fields, zap.String("server_version", version))...)
		case err != nil:
			a.Log.Error("cannot log in to the upstream; clients will be refused until it accepts pgtoken's login",
				append(fields, zap.Error(err))...)
		default:
			a.Log.Info("upstream answers", append(fields, zap.String("server_version", version))...)
		}
	}
}

// ready reports why pgtoken cannot serve clients, or nil: it is shutting
// down, it has no key to verify tokens with, or no upstream accepts its
// login (with the server's reason). A pool holding live server
// connections shows an upstream works; otherwise one login to each
// upstream is tried until one succeeds. A server that answers that the
// database does not exist still answers.
func (a *App) ready(ctx context.Context) error {
	if a.Server.Draining() {
		return errors.New("shutting down")
	}
	if a.verifier.Load().KeyCount() == 0 {
		return errors.New("no token verification key loaded")
	}
	for _, p := range a.Server.Stats().Pools {
		if p.Active+p.Idle > 0 {
			return nil
		}
	}
	var first error
	for _, u := range upstreams(*a.cfg.Load()) {
		_, err := probe(ctx, u.dsn, 2*time.Second)
		var pe *pgconn.PgError
		if err == nil || errors.As(err, &pe) && pe.Code == "3D000" {
			return nil
		}
		if first == nil {
			first = err
		}
	}
	return first
}

// probe logs in to an upstream once and returns the server's version, or
// why the login failed: the server's own refusal (a wrong password, a
// database that does not exist, too many connections), or what kept
// pgtoken from reaching it (refused, timed out, TLS). The error names the
// server, user and database, never the password; a *pgconn.PgError is in
// its chain when the server answered.
func probe(ctx context.Context, dsn string, timeout time.Duration) (version string, err error) {
	pc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return "", errors.New("upstream: invalid connection string")
	}
	if timeout > 0 {
		pc.ConnectTimeout = timeout
	}
	server := net.JoinHostPort(pc.Host, strconv.Itoa(int(pc.Port)))
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err == nil {
		version = conn.ParameterStatus("server_version")
		_ = conn.Close(ctx)
		return version, nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return "", &refused{pe: pe, msg: fmt.Sprintf("upstream %s refused pgtoken's login as user %q to database %q: %s (SQLSTATE %s)",
			server, pc.User, pc.Database, pe.Message, pe.Code)}
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) && errors.Unwrap(ce) != nil {
		err = errors.Unwrap(ce) // without the "failed to connect to user=... database=..." prefix
	}
	return "", fmt.Errorf("cannot reach upstream %s: %w", server, err)
}

// refused is a login the server refused, described with its server, user
// and database.
type refused struct {
	pe  *pgconn.PgError
	msg string
}

func (e *refused) Error() string { return e.msg }
func (e *refused) Unwrap() error { return e.pe }
