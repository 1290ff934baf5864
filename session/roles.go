package session

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/singleflight"

	"github.com/pgtoken/pgtoken/session/lockdown"
	"github.com/pgtoken/pgtoken/wire"
)

// Lock-down checks of the upstream (session/lockdown, docs/SECURITY.md).
//
// jwt.allowed_roles says which roles a token may name; it does not say what
// those roles may do in the database. Every new server connection of a pool
// reads the lock-down facts as the upstream login (pool.Config.AfterConnect)
// and keeps them for its database, so they follow ALTER ROLE, GRANT and
// REVOKE once the pool opens a connection; the first login of a database
// opens one if the pool has none yet, and a refusal based on facts older
// than factsMaxAge reads them again first (so a fix takes effect at the next
// login, not only once the pool reconnects). A login is refused with FATAL 42501
// when the upstream login, or the role its token names, fails a check that
// checks.skip does not list (a role in jwt.privileged_roles is not judged by
// its own findings). If the facts cannot be read, the server connection
// fails and so do logins (57P03, the reason in the log).
//
// Findings are logged, with the SQL that fixes them, when a database's
// facts are first read or change, and at every start and reload
// (CheckUpstreams, which pgtoken check runs too): failures at ERROR,
// skipped checks, privileged roles and served roles missing upstream at
// WARN.

// roleState is the Server's knowledge of the upstream per pool (by client
// database name). The zero value is ready to use once a policy is set.
type roleState struct {
	mu     sync.Mutex
	facts  map[string]readFacts
	logged map[string]string // per database: the findings last logged

	policy  atomic.Pointer[lockdown.Policy]
	refresh singleflight.Group // by database: a re-read for refused logins
}

// readFacts are facts and when they were read.
type readFacts struct {
	*lockdown.Facts
	at time.Time
}

// factsMaxAge is how old the facts a login is refused on may be.
const factsMaxAge = 2 * time.Second

func (rs *roleState) get(db string) readFacts {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.facts[db]
}

func (rs *roleState) store(db string, f *lockdown.Facts) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.facts == nil {
		rs.facts = map[string]readFacts{}
	}
	rs.facts[db] = readFacts{f, time.Now()}
}

// changed records what was logged for db and reports whether it differs
// from what was logged before (always true when force is set).
func (rs *roleState) changed(db, logged string, force bool) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.logged == nil {
		rs.logged = map[string]string{}
	}
	old, ok := rs.logged[db]
	rs.logged[db] = logged
	return force || !ok || old != logged
}

// SetChecks sets how the lock-down is judged for logins from now on (the
// served, console and privileged roles, the checks skipped).
func (s *Server) SetChecks(p lockdown.Policy) {
	p.Served = slices.Clone(p.Served)
	p.Console = slices.Clone(p.Console)
	p.Skip = slices.Clone(p.Skip)
	p.Privileged = slices.Clone(p.Privileged)
	s.roles.policy.Store(&p)
}

// readRoles returns the pool hook that reads the lock-down facts on each
// new server connection of database db. A failure fails that connection:
// pgtoken does not let tokens in on a database it cannot judge.
func (s *Server) readRoles(db string) func(context.Context, *pgconn.PgConn) error {
	return func(ctx context.Context, pc *pgconn.PgConn) error {
		f, err := lockdown.Run(ctx, pc, nil)
		if err != nil {
			s.log.Error("cannot read the upstream's roles and privileges (lock-down checks); refusing this server connection",
				zap.String("database", db), zap.Error(err))
			return &wire.Error{Severity: wire.SeverityError, Code: wire.CodeConnectionFailure,
				Message: "pgtoken could not check the upstream roles (the reason is in the pgtoken log)", Err: err}
		}
		s.roles.store(db, f)
		s.logFindings(db, f.Findings(s.roles.policy.Load()), false)
		return nil
	}
}

// logFindings logs a database's findings, unless they are what was logged
// for it last (force: log them anyway). Findings about missing roles, which
// only CheckUpstreams makes, are logged whenever given.
func (s *Server) logFindings(db string, fs []lockdown.Finding, force bool) {
	var key strings.Builder
	for _, f := range fs {
		if f.Check != lockdown.Granted {
			fmt.Fprintf(&key, "%s|%s|%s|%t|%t\n", f.Check, f.Role, f.Problem, f.Skipped, f.Allowed)
		}
	}
	again := s.roles.changed(db, key.String(), force)
	for _, f := range fs {
		level, msg := zapcore.ErrorLevel, "upstream role fails a lock-down check: pgtoken refuses logins with it"
		switch {
		case f.Check == lockdown.Granted:
			level, msg = zapcore.WarnLevel, "served role cannot be used: logins with it fail at their first statement"
		case !again:
			continue
		case f.Skipped:
			level, msg = zapcore.WarnLevel, "upstream role fails a lock-down check that checks.skip turns off"
		case f.Allowed:
			level, msg = zapcore.WarnLevel, "upstream role fails a lock-down check; jwt.privileged_roles lets it in"
		case f.Login:
			msg = "pgtoken's upstream login fails a lock-down check: pgtoken refuses every login to this database"
		}
		if ce := s.log.Check(level, msg); ce != nil {
			fields := []zap.Field{zap.String("database", db), zap.String("check", string(f.Check)),
				zap.String("role", f.Role), zap.String("problem", f.Problem)}
			if len(f.Fix) > 0 {
				fields = append(fields, zap.String("fix", f.FixSQL()))
			}
			ce.Write(fields...)
		}
	}
}

// checkRole refuses a verified token when the upstream login, or the role
// the token names, fails a lock-down check. It learns the database's facts
// by opening a server connection if the pool has never had one.
func (s *Server) checkRole(a *attempt, db, role string) error {
	p, err := s.poolFor(db)
	if err != nil {
		return err
	}
	f := s.roles.get(db)
	if f.Facts == nil {
		ctx := s.ctx
		if !a.deadline.IsZero() {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, a.deadline)
			defer cancel()
		}
		c, err := p.Acquire(ctx)
		if err != nil {
			return loginConnectError(err)
		}
		p.Release(c)
		if f = s.roles.get(db); f.Facts == nil {
			return wire.Fatalf(wire.CodeInternal, "pgtoken: upstream roles unknown")
		}
	}
	refusal := f.Refusal(role, s.roles.policy.Load())
	if len(refusal) > 0 && time.Since(f.at) > factsMaxAge {
		// Perhaps fixed since: read again (once for every login waiting).
		nf, err, _ := s.roles.refresh.Do(db, func() (any, error) { return s.refreshFacts(db) })
		if err != nil {
			a.log.Warn("cannot read the upstream's roles and privileges again; judging by what was read before", zap.Error(err))
		} else {
			refusal = nf.(*lockdown.Facts).Refusal(role, s.roles.policy.Load())
		}
	}
	if len(refusal) == 0 {
		return nil
	}
	var checks []string
	for _, fd := range refusal {
		checks = append(checks, string(fd.Check))
	}
	a.log.Warn("token role refused: a lock-down check fails", zap.String("role", role), zap.Strings("checks", checks))
	s.obs.AuthFailed(AuthLockdown)
	return refusalError(role, db, refusal)
}

// refusalError is what a client refused by lock-down checks is told: the
// failed checks and what is wrong in the message, the fix in the hint.
func refusalError(role, db string, refusal []lockdown.Finding) *wire.Error {
	var problems, fix, checks []string
	for _, fd := range refusal {
		problems = append(problems, string(fd.Check)+": "+fd.Problem)
		for _, sql := range fd.Fix {
			if !slices.Contains(fix, sql) {
				fix = append(fix, sql)
			}
		}
		if !slices.Contains(checks, string(fd.Check)) {
			checks = append(checks, string(fd.Check))
		}
	}
	var hint strings.Builder
	if len(fix) > 0 {
		fmt.Fprintf(&hint, "Run as a superuser in database %q: %s ", db, strings.Join(fix, " "))
	}
	if slices.Contains(checks, string(lockdown.UpstreamLogin)) {
		hint.WriteString("Remove the role from jwt.allowed_roles. ")
	}
	fmt.Fprintf(&hint, "Or turn the check off: checks.skip: [%s] (docs/SECURITY.md).", strings.Join(checks, ", "))
	return &wire.Error{Severity: wire.SeverityFatal, Code: wire.CodeInsufficientPrivilege,
		Message: fmt.Sprintf("pgtoken refuses to serve role %q in database %q: %s", role, db, strings.Join(problems, "; ")),
		Hint:    hint.String()}
}

// LogFindings says what CheckUpstreams logs.
type LogFindings int

// What CheckUpstreams logs.
const (
	LogNone    LogFindings = iota // nothing: the caller reports the findings (pgtoken check)
	LogChanged                    // findings not logged for the database before (start)
	LogAll                        // every finding (reload)
)

// UpstreamCheck is what CheckUpstreams found in one database.
type UpstreamCheck struct {
	Database string // as clients name it
	Login    string // the upstream login
	Findings []lockdown.Finding
	Err      error // the database could not be checked
}

// CheckUpstreams logs in to every database clients may ask for, once, on
// a connection of its own, and runs the lock-down checks for the served
// roles, logging what log says (serve at start and on reload; pgtoken check
// prints them instead). It does not change what logins are judged by: that
// follows the pools' own server connections.
func (s *Server) CheckUpstreams(ctx context.Context, log LogFindings) []UpstreamCheck {
	p := s.roles.policy.Load()
	var out []UpstreamCheck
	for _, db := range s.Databases() {
		uc := UpstreamCheck{Database: db}
		f, err := s.checkUpstream(ctx, db, p.Served)
		if err != nil {
			uc.Err = err
			if log != LogNone && ctx.Err() == nil {
				s.log.Error("cannot run the lock-down checks of an upstream database", zap.String("database", db), zap.Error(err))
			}
			out = append(out, uc)
			continue
		}
		uc.Login, uc.Findings = f.Login, f.Findings(p)
		if log == LogNone {
			out = append(out, uc)
			continue
		}
		s.logFindings(db, uc.Findings, log == LogAll)
		if !slices.ContainsFunc(uc.Findings, func(f lockdown.Finding) bool { return f.Refuses() }) {
			s.log.Info("upstream lock-down checks pass", zap.String("database", db), zap.String("login_role", f.Login))
		}
		out = append(out, uc)
	}
	return out
}

// refreshFacts reads a database's facts again on a connection of its own,
// keeps them and logs findings that changed.
func (s *Server) refreshFacts(db string) (*lockdown.Facts, error) {
	f, err := s.checkUpstream(s.ctx, db, nil)
	if err != nil {
		return nil, err
	}
	s.roles.store(db, f)
	s.logFindings(db, f.Findings(s.roles.policy.Load()), false)
	return f, nil
}

// checkUpstream reads the facts of one database on a connection of its own.
func (s *Server) checkUpstream(ctx context.Context, db string, served []string) (*lockdown.Facts, error) {
	s.poolsMu.Lock()
	pgcfg, _, err := s.upstreamFor(db)
	s.poolsMu.Unlock()
	if err != nil {
		return nil, err
	}
	if t := s.cfg.ConnectTimeout; t > 0 {
		pgcfg.ConnectTimeout = t
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 3*t)
		defer cancel()
	}
	conn, err := pgconn.ConnectConfig(ctx, pgcfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	return lockdown.Run(ctx, conn, served)
}
