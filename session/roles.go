package session

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/wire"
)

// Token roles with dangerous attributes.
//
// allowed_roles says which roles a token may name; it does not say what
// those roles are. A role that is a superuser or has BYPASSRLS ignores
// row-level security, and pgtoken's own upstream login role is the one whose
// memberships let it SET ROLE to every token role. A token naming one of
// them is refused at login unless jwt.privileged_roles names the role.
//
// The attributes are read from pg_roles by every new server connection
// (pool.Config.AfterConnect), so they follow ALTER ROLE once the pool opens
// a connection; the first login of a database opens one if the pool has
// none yet.

// roleQuery lists the roles that need the check: superusers, roles with
// BYPASSRLS, and the login role itself (session_user, and current_user in
// case the DSN's options set a role).
const roleQuery = `SELECT rolname::text, rolsuper, rolbypassrls, rolname IN (session_user, current_user)
FROM pg_catalog.pg_roles
WHERE rolsuper OR rolbypassrls OR rolname IN (session_user, current_user)`

// roleAttrs are the attributes of one role that make it dangerous as a
// token role.
type roleAttrs struct {
	super, bypassRLS, login bool
}

// upstreamRoles is what one pool's latest server login saw.
type upstreamRoles struct {
	login string               // session_user of the upstream connection
	roles map[string]roleAttrs // only roles with at least one attribute set
}

// roleState is the Server's knowledge of upstream roles, per pool (by
// client database name). The zero value is ready to use.
type roleState struct {
	mu     sync.Mutex
	pools  map[string]*upstreamRoles
	warned map[string]bool // pools whose superuser login was logged

	// privileged replaces Config.PrivilegedRoles once SetPrivilegedRoles
	// was called (a reload).
	privileged atomic.Pointer[[]string]
}

func (rs *roleState) get(db string) *upstreamRoles {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.pools[db]
}

// store records what a login saw and reports whether this is the first
// time the pool's login was found to be a superuser.
func (rs *roleState) store(db string, u *upstreamRoles) (warn bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.pools == nil {
		rs.pools = map[string]*upstreamRoles{}
		rs.warned = map[string]bool{}
	}
	rs.pools[db] = u
	if u.roles[u.login].super && !rs.warned[db] {
		rs.warned[db] = true
		return true
	}
	return false
}

// SetPrivilegedRoles replaces jwt.privileged_roles for logins from now on.
func (s *Server) SetPrivilegedRoles(roles []string) {
	r := slices.Clone(roles)
	s.roles.privileged.Store(&r)
}

func (s *Server) isPrivileged(role string) bool {
	if p := s.roles.privileged.Load(); p != nil {
		return slices.Contains(*p, role)
	}
	return slices.Contains(s.cfg.PrivilegedRoles, role)
}

// readRoles returns the pool hook that reads role attributes on each new
// server connection of database db. A failure fails that connection:
// pgtoken does not let tokens in on a database whose roles it cannot see.
func (s *Server) readRoles(db string) func(context.Context, *pgconn.PgConn) error {
	return func(ctx context.Context, pc *pgconn.PgConn) error {
		// A simple query: it leaves no statement behind on the connection.
		results, err := pc.Exec(ctx, roleQuery).ReadAll()
		if err == nil && len(results) != 1 {
			err = fmt.Errorf("%d results", len(results))
		}
		if err != nil {
			s.log.Error("cannot read role attributes from pg_roles; refusing this server connection",
				zap.String("database", db), zap.Error(err))
			return &wire.Error{Severity: wire.SeverityError, Code: wire.CodeConnectionFailure,
				Message: "pgtoken could not check the upstream roles (the reason is in the pgtoken log)", Err: err}
		}
		res := results[0]
		u := &upstreamRoles{roles: map[string]roleAttrs{}}
		for _, row := range res.Rows {
			if len(row) != 4 {
				continue
			}
			a := roleAttrs{super: string(row[1]) == "t", bypassRLS: string(row[2]) == "t", login: string(row[3]) == "t"}
			u.roles[string(row[0])] = a
		}
		u.login = pc.ParameterStatus("session_authorization")
		if u.login == "" || !u.roles[u.login].login {
			// No (or an unexpected) session_authorization report: take
			// the login role from the rows.
			for name, a := range u.roles {
				if a.login {
					u.login = name
					break
				}
			}
		}
		if s.roles.store(db, u) {
			s.log.Warn("pgtoken's upstream login role is a superuser: anything that gets past the guard, or any function that resets the role, runs as superuser; log in as a NOINHERIT role that is not a superuser (docs/SECURITY.md)",
				zap.String("database", db), zap.String("login_role", u.login))
		}
		return nil
	}
}

// checkRole refuses a verified token whose role is a superuser, bypasses
// row-level security or is the upstream login role, unless the role is in
// jwt.privileged_roles. It learns the upstream's roles by opening a server
// connection if the database's pool has never had one.
func (s *Server) checkRole(a *attempt, db, role string) error {
	p, err := s.poolFor(db)
	if err != nil {
		return err
	}
	info := s.roles.get(db)
	if info == nil {
		ctx := s.ctx
		if t := s.cfg.StartupTimeout; t > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, t)
			defer cancel()
		}
		c, err := p.Acquire(ctx)
		if err != nil {
			return loginConnectError(err)
		}
		p.Release(c)
		if info = s.roles.get(db); info == nil {
			return wire.Fatalf(wire.CodeInternal, "pgtoken: upstream roles unknown")
		}
	}
	attrs, ok := info.roles[role]
	if !ok || s.isPrivileged(role) {
		return nil
	}
	var what []string
	if attrs.super {
		what = append(what, "is a superuser")
	}
	if attrs.bypassRLS {
		what = append(what, "bypasses row-level security (BYPASSRLS)")
	}
	if attrs.login {
		what = append(what, "is pgtoken's own upstream login role")
	}
	if len(what) == 0 {
		return nil
	}
	a.log.Warn("token names a privileged role; refused", zap.String("role", role), zap.Strings("because", what))
	return s.authFailed(AuthRole, wire.Fatalf(wire.CodeInvalidPassword,
		"token rejected (role not allowed): role %q %s; pgtoken refuses such a role unless jwt.privileged_roles names it",
		role, strings.Join(what, " and ")))
}
