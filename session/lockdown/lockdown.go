// Package lockdown checks that an upstream database is locked down the way
// pgtoken needs (docs/SECURITY.md, "Locking the database down"), for every
// role pgtoken serves and for its own upstream login.
//
// It has two halves. Run reads facts from the upstream with one catalog
// query (query.go); the facts do not depend on pgtoken's configuration, so
// they can be read on every new server connection and judged again after
// a reload. Everything else is plain code with no I/O: Facts.Findings
// judges the facts under a Policy (the served roles, the checks skipped,
// the privileged roles) and says, for each failure, what is wrong and the
// exact SQL that fixes it.
package lockdown

import (
	"fmt"
	"slices"
	"strings"
)

// Check names one lock-down check; the names are what checks.skip lists.
type Check string

// The checks. Each applies to every served role and to the upstream login
// unless its description says otherwise.
const (
	// Superuser: not a superuser (a superuser passes every other check,
	// since it has every privilege; only this one names it).
	Superuser Check = "superuser"
	// BypassRLS: not BYPASSRLS.
	BypassRLS Check = "bypassrls"
	// RoleAttributes: none of CREATEROLE, CREATEDB, REPLICATION.
	RoleAttributes Check = "role_attributes"
	// Temporary: no TEMPORARY on the database, directly, through a role
	// it inherits from, through PUBLIC, or by owning the database.
	Temporary Check = "temporary"
	// Create: no CREATE on the database (which creates schemas) or on any
	// schema, by grant (PUBLIC included) or by owning it.
	Create Check = "create"
	// PredefinedRoles: not a member, at any depth, of a predefined role
	// that reads or writes server files, reads or writes all data, reads
	// all statistics (other sessions' queries) or signals other backends.
	PredefinedRoles Check = "predefined_roles"
	// UpstreamLogin (served roles only): the role is not the upstream
	// login itself.
	UpstreamLogin Check = "upstream_login"
	// NoInherit (upstream login only): the login is NOINHERIT.
	NoInherit Check = "noinherit"
	// LoginPrivileges (upstream login only): the login owns nothing in the
	// database (nor any database or tablespace) and holds no privilege
	// granted to it directly (on tables, columns, sequences, functions,
	// schemas, types, languages, large objects, foreign servers, parameters,
	// tablespaces, default privileges); privileges on databases are left
	// to the temporary and create checks, CONNECT is needed.
	LoginPrivileges Check = "login_privileges"
)

// Checks lists every check, in the order findings are reported.
var Checks = []Check{Superuser, BypassRLS, RoleAttributes, Temporary, Create, PredefinedRoles, UpstreamLogin, NoInherit, LoginPrivileges}

// Granted is the name findings about served roles that are missing or not
// granted to the upstream login carry. It is not a lock-down check (it
// cannot be skipped and refuses nobody: such a role fails at SET ROLE).
const Granted Check = "granted"

// Valid reports whether name is a check.
func Valid(name string) bool { return slices.Contains(Checks, Check(name)) }

// CheckNames lists the checks' names, comma-separated.
func CheckNames() string {
	names := make([]string, len(Checks))
	for i, c := range Checks {
		names[i] = string(c)
	}
	return strings.Join(names, ", ")
}

// DangerousPredefined are the predefined roles PredefinedRoles refuses.
var DangerousPredefined = []string{
	"pg_read_server_files", "pg_write_server_files", "pg_execute_server_program",
	"pg_read_all_data", "pg_write_all_data", "pg_read_all_stats", "pg_monitor", "pg_signal_backend",
}

// predefinedPower says what each of DangerousPredefined lets a member do.
var predefinedPower = map[string]string{
	"pg_read_server_files":      "reads any file the server can",
	"pg_write_server_files":     "writes any file the server can",
	"pg_execute_server_program": "runs programs on the server",
	"pg_read_all_data":          "reads every table, whatever its grants",
	"pg_write_all_data":         "writes every table, whatever its grants",
	"pg_read_all_stats":         "sees every session's statements, with the claims in them",
	"pg_monitor":                "sees every session's statements, with the claims in them",
	"pg_signal_backend":         "cancels and terminates other sessions",
}

// Policy is how findings are judged: pgtoken's configuration.
type Policy struct {
	// Served are the roles a token may name (jwt.allowed_roles and
	// jwt.anon_role).
	Served []string
	// Console are the admin roles: a served role that is also one and does
	// not exist upstream is not reported (it may exist only for the
	// console).
	Console []string
	// Skip are the checks not applied (checks.skip).
	Skip []Check
	// Privileged roles may be served whatever their own findings
	// (jwt.privileged_roles); the upstream login's findings still refuse
	// them.
	Privileged []string
}

func (p *Policy) skips(c Check) bool { return p != nil && slices.Contains(p.Skip, c) }

func (p *Policy) serves(role string) bool { return p != nil && slices.Contains(p.Served, role) }

// Finding is one failed check.
type Finding struct {
	Check Check
	// Role is the role the finding is about; Login tells that it is the
	// upstream login (whose failures refuse every role).
	Role  string
	Login bool
	// Problem is a sentence saying what is wrong.
	Problem string
	// Fix holds the SQL statements that fix it, each ending in ";".
	Fix []string
	// Skipped: the check is in checks.skip. Allowed: the role is
	// privileged. Either way the finding refuses nobody.
	Skipped, Allowed bool
}

// Refuses reports whether the finding refuses logins.
func (f *Finding) Refuses() bool { return !f.Skipped && !f.Allowed && f.Check != Granted }

// FixSQL is the finding's fix as one line.
func (f *Finding) FixSQL() string { return strings.Join(f.Fix, " ") }

// Facts is what Run read from one upstream database, as the upstream login
// sees it. It is never changed once built.
type Facts struct {
	Database  string // current_database()
	Login     string // session_user
	Bootstrap string // the bootstrap superuser: the new owner in fixes

	roles   map[string]*roleFacts // the roles the login can become, itself included
	edges   map[string][]edge     // member → roles granted to it directly
	builtin map[string]bool       // predefined roles among the edges' targets
	owns    []object              // objects the login owns
	privs   []object              // objects whose ACL names the login
	exists  map[string]bool       // of the names Run was asked about, those that exist
	asked   bool                  // Run was given names
	clean   bool                  // no fact can fail a check (the usual case: a quick answer)
}

type roleFacts struct {
	super, bypassRLS, inherit, createRole, createDB, replication bool
	access                                                       []access
}

// access is a way a role may create things: TEMPORARY or CREATE on an
// object, by a grant to via (PUBLIC or a role), or by owning it through via.
type access struct {
	check Check  // Temporary or Create
	kind  string // DATABASE or SCHEMA
	name  string // the object's name
	how   string // "grant", "owner" or "" (not found)
	via   string
}

type edge struct{ role string }

// object is an object the login owns or has privileges on, as
// pg_identify_object names it.
type object struct {
	typ, identity string
	extra1        string // table column: the table; default acl: the owning role
	extra2        string // table column: the column; default acl: the REVOKE clause
}

// Served reports whether role is one the login can become (it exists and
// is granted to the login, or is the login).
func (f *Facts) Served(role string) bool { _, ok := f.roles[role]; return ok }

// Refusal returns the findings that refuse a login with role, nil if
// there are none: those of the upstream login, then the role's own.
func (f *Facts) Refusal(role string, p *Policy) []Finding {
	if f.clean && role != f.Login {
		return nil
	}
	var out []Finding
	for _, fd := range f.loginFindings(p) {
		if fd.Refuses() {
			out = append(out, fd)
		}
	}
	for _, fd := range f.roleFindings(role, p) {
		if fd.Refuses() {
			out = append(out, fd)
		}
	}
	return out
}

// Findings judges every served role and the upstream login: the upstream
// login's findings first, then each served role's in the order of
// p.Served, then (when Run was given the served roles' names) the served
// roles that are missing or not granted to the login.
func (f *Facts) Findings(p *Policy) []Finding {
	out := f.loginFindings(p)
	seen := map[string]bool{}
	for _, role := range p.Served {
		if seen[role] {
			continue
		}
		seen[role] = true
		if _, ok := f.roles[role]; ok || role == f.Login {
			out = append(out, f.roleFindings(role, p)...)
			continue
		}
		if !f.asked || !f.exists[role] && slices.Contains(p.Console, role) {
			continue
		}
		fd := Finding{Check: Granted, Role: role}
		if f.exists[role] {
			fd.Problem = fmt.Sprintf("role %s is not granted to the upstream login %s: tokens naming it fail at their first statement", quoteIdent(role), quoteIdent(f.Login))
		} else {
			fd.Problem = fmt.Sprintf("role %s does not exist: tokens naming it fail at their first statement", quoteIdent(role))
			fd.Fix = append(fd.Fix, "CREATE ROLE "+quoteIdent(role)+" NOLOGIN;")
		}
		fd.Fix = append(fd.Fix, "GRANT "+quoteIdent(role)+" TO "+quoteIdent(f.Login)+";")
		out = append(out, fd)
	}
	return out
}

// loginFindings judges the upstream login.
func (f *Facts) loginFindings(p *Policy) []Finding {
	r := f.roles[f.Login]
	if r == nil {
		return nil
	}
	var out []Finding
	add := func(fd Finding) {
		fd.Role, fd.Login = f.Login, true
		fd.Skipped = p.skips(fd.Check)
		out = append(out, fd)
	}
	who := "the upstream login " + quoteIdent(f.Login)
	for _, fd := range f.attributeFindings(r, who, f.Login) {
		add(fd)
	}
	if r.super {
		return out // a superuser has every privilege: only the superuser check names it
	}
	if r.inherit {
		add(Finding{Check: NoInherit,
			Problem: who + " is INHERIT: it holds the privileges of every token role at once outside SET ROLE",
			Fix:     []string{"ALTER ROLE " + quoteIdent(f.Login) + " NOINHERIT;"}})
	}
	// A login that inherits has its token roles' privileges: those are
	// reported for the token roles, not again for the login.
	for _, fd := range f.accessFindings(f.Login, r, who, func(via string) bool { return via != f.Login && p.serves(via) }) {
		add(fd)
	}
	for _, fd := range f.predefinedFindings(f.Login, who, func(role string) bool { return role != f.Login && p.serves(role) }) {
		add(fd)
	}
	if fd, ok := f.loginPrivileges(who); ok {
		add(fd)
	}
	return out
}

// roleFindings judges one served role (not the login's own findings).
func (f *Facts) roleFindings(role string, p *Policy) []Finding {
	var out []Finding
	allowed := slices.Contains(p.Privileged, role)
	add := func(fd Finding) {
		fd.Role = role
		fd.Skipped = p.skips(fd.Check)
		fd.Allowed = allowed
		out = append(out, fd)
	}
	who := "role " + quoteIdent(role)
	if role == f.Login {
		add(Finding{Check: UpstreamLogin,
			Problem: who + " is pgtoken's own upstream login: a token naming it runs with the login's own privileges"})
		return out // the login's own findings are reported as the login's
	}
	r := f.roles[role]
	if r == nil {
		return nil
	}
	for _, fd := range f.attributeFindings(r, who, role) {
		add(fd)
	}
	if r.super {
		return out
	}
	for _, fd := range f.accessFindings(role, r, who, func(string) bool { return false }) {
		add(fd)
	}
	for _, fd := range f.predefinedFindings(role, who, func(string) bool { return false }) {
		add(fd)
	}
	return out
}

// attributeFindings: superuser, bypassrls, role_attributes.
func (f *Facts) attributeFindings(r *roleFacts, who, role string) []Finding {
	var out []Finding
	alter := "ALTER ROLE " + quoteIdent(role)
	if r.super {
		out = append(out, Finding{Check: Superuser,
			Problem: who + " is a superuser: row-level security and every privilege check pass it by",
			Fix:     []string{alter + " NOSUPERUSER;"}})
	}
	if r.bypassRLS {
		out = append(out, Finding{Check: BypassRLS,
			Problem: who + " has BYPASSRLS: row-level security does not apply to it",
			Fix:     []string{alter + " NOBYPASSRLS;"}})
	}
	var attrs, fix []string
	for _, a := range []struct {
		on         bool
		name, undo string
	}{{r.createRole, "CREATEROLE", "NOCREATEROLE"}, {r.createDB, "CREATEDB", "NOCREATEDB"}, {r.replication, "REPLICATION", "NOREPLICATION"}} {
		if a.on {
			attrs = append(attrs, a.name)
			fix = append(fix, a.undo)
		}
	}
	if len(attrs) > 0 {
		out = append(out, Finding{Check: RoleAttributes,
			Problem: who + " has " + strings.Join(attrs, ", "),
			Fix:     []string{alter + " " + strings.Join(fix, " ") + ";"}})
	}
	return out
}

// accessFindings: temporary and create, one finding per object; ignore
// drops the ways through roles reported on their own.
func (f *Facts) accessFindings(role string, r *roleFacts, who string, ignore func(via string) bool) []Finding {
	var out []Finding
	for i := 0; i < len(r.access); {
		// The ways to one object are consecutive.
		j := i
		for j < len(r.access) && r.access[j].check == r.access[i].check && r.access[j].kind == r.access[i].kind && r.access[j].name == r.access[i].name {
			j++
		}
		ways := r.access[i:j]
		i = j
		a := ways[0]
		owner := ""
		for _, w := range ways {
			if w.how == "owner" {
				owner = w.via
			}
		}
		var why, fix []string
		for _, w := range ways {
			switch {
			case ignore(w.via):
				continue
			case w.how == "owner":
				why = append(why, "it owns "+f.ownerWords(a, w.via))
				fix = append(fix, f.ownerFix(a, w.via))
			case w.how == "grant" && w.via == owner:
				// The owner's own grant moves with the ownership.
			case w.how == "grant" && w.via == "PUBLIC":
				why = append(why, privilege(a)+" is granted to PUBLIC")
				fix = append(fix, "REVOKE "+privilege(a)+" ON "+a.kind+" "+quoteIdent(a.name)+" FROM PUBLIC;")
			case w.how == "grant":
				what := privilege(a) + " is granted to " + quoteIdent(w.via)
				if w.via != role {
					what += ", whose privileges it inherits"
				}
				why = append(why, what)
				fix = append(fix, "REVOKE "+privilege(a)+" ON "+a.kind+" "+quoteIdent(a.name)+" FROM "+quoteIdent(w.via)+";")
			default:
				why = append(why, "through a way pgtoken cannot tell")
			}
		}
		if len(why) == 0 {
			continue
		}
		var problem string
		if a.check == Temporary {
			problem = who + " may create temporary objects in database " + quoteIdent(a.name)
		} else if a.kind == "DATABASE" {
			problem = who + " may create schemas in database " + quoteIdent(a.name)
		} else {
			problem = who + " may create objects in schema " + quoteIdent(a.name)
		}
		out = append(out, Finding{Check: a.check, Problem: problem + ": " + strings.Join(dedupe(why), "; "), Fix: dedupe(fix)})
	}
	return out
}

func privilege(a access) string {
	if a.check == Temporary {
		return "TEMPORARY"
	}
	return "CREATE"
}

func (f *Facts) ownerWords(a access, owner string) string {
	if a.kind == "SCHEMA" && owner == "pg_database_owner" {
		return "database " + quoteIdent(f.Database) + ", and with it schema " + quoteIdent(a.name) + " (owned by pg_database_owner)"
	}
	return strings.ToLower(a.kind) + " " + quoteIdent(a.name) + " (as " + quoteIdent(owner) + ")"
}

func (f *Facts) ownerFix(a access, owner string) string {
	if a.kind == "SCHEMA" && owner == "pg_database_owner" {
		return "ALTER DATABASE " + quoteIdent(f.Database) + " OWNER TO " + quoteIdent(f.Bootstrap) + ";"
	}
	return "ALTER " + a.kind + " " + quoteIdent(a.name) + " OWNER TO " + quoteIdent(f.Bootstrap) + ";"
}

// predefinedFindings: a walk up the memberships of role; stop names the
// roles not walked through (reported on their own).
func (f *Facts) predefinedFindings(role, who string, stop func(string) bool) []Finding {
	type grant struct{ predefined, member, power string }
	var found []grant
	seen := map[string]bool{role: true}
	queue := []string{role}
	for len(queue) > 0 {
		m := queue[0]
		queue = queue[1:]
		for _, e := range f.edges[m] {
			if f.builtin[e.role] {
				if power := f.power(e.role); power != "" {
					found = append(found, grant{e.role, m, power})
				}
				continue
			}
			if seen[e.role] || stop(e.role) {
				continue
			}
			seen[e.role] = true
			queue = append(queue, e.role)
		}
	}
	if len(found) == 0 {
		return nil
	}
	var why, fix []string
	for _, g := range found {
		w := "a member of " + g.predefined
		if g.member != role {
			w += " through " + quoteIdent(g.member)
		}
		why = append(why, w+" (it "+g.power+")")
		fix = append(fix, "REVOKE "+quoteIdent(g.predefined)+" FROM "+quoteIdent(g.member)+";")
	}
	return []Finding{{Check: PredefinedRoles, Problem: who + " is " + strings.Join(dedupe(why), ", and "), Fix: dedupe(fix)}}
}

// power says what a predefined role, or one of DangerousPredefined it is a
// member of, lets its members do; "" if nothing PredefinedRoles refuses.
func (f *Facts) power(role string) string {
	seen := map[string]bool{}
	queue := []string{role}
	for len(queue) > 0 {
		r := queue[0]
		queue = queue[1:]
		if p, ok := predefinedPower[r]; ok {
			return p
		}
		for _, e := range f.edges[r] {
			if !seen[e.role] {
				seen[e.role] = true
				queue = append(queue, e.role)
			}
		}
	}
	return ""
}

// loginPrivileges: what the login owns and the privileges granted to it.
func (f *Facts) loginPrivileges(who string) (Finding, bool) {
	if len(f.owns) == 0 && len(f.privs) == 0 {
		return Finding{}, false
	}
	login := quoteIdent(f.Login)
	var why, fix []string
	if len(f.owns) > 0 {
		var names []string
		for _, o := range f.owns {
			names = append(names, o.typ+" "+o.identity)
		}
		why = append(why, "owns "+strings.Join(names, ", "))
		fix = append(fix, "REASSIGN OWNED BY "+login+" TO "+quoteIdent(f.Bootstrap)+";")
	}
	if len(f.privs) > 0 {
		var names []string
		for _, o := range f.privs {
			names = append(names, o.typ+" "+o.identity)
			fix = append(fix, revokeFrom(o, login))
		}
		why = append(why, "holds privileges granted to it directly on "+strings.Join(names, ", "))
	}
	return Finding{Check: LoginPrivileges,
		Problem: who + " " + strings.Join(why, ", and ") + "; it should have no privileges of its own",
		Fix:     dedupe(fix)}, true
}

// revokeFrom is the statement that takes the login's privileges on o away.
func revokeFrom(o object, login string) string {
	switch o.typ {
	case "default acl":
		return "ALTER DEFAULT PRIVILEGES FOR ROLE " + o.extra1 + " " + o.extra2 + " FROM " + login + ";"
	case "table column", "view column", "materialized view column", "foreign table column", "composite type column":
		return "REVOKE ALL (" + o.extra2 + ") ON TABLE " + o.extra1 + " FROM " + login + ";"
	}
	kind, ok := map[string]string{
		"table": "TABLE", "view": "TABLE", "materialized view": "TABLE", "foreign table": "TABLE",
		"sequence": "SEQUENCE", "function": "ROUTINE", "procedure": "ROUTINE", "aggregate": "ROUTINE",
		"schema": "SCHEMA", "type": "TYPE", "domain": "DOMAIN", "language": "LANGUAGE",
		"large object": "LARGE OBJECT", "foreign-data wrapper": "FOREIGN DATA WRAPPER", "server": "FOREIGN SERVER",
		"tablespace": "TABLESPACE", "parameter ACL": "PARAMETER", "database": "DATABASE",
	}[o.typ]
	if !ok {
		kind = strings.ToUpper(o.typ)
	}
	return "REVOKE ALL ON " + kind + " " + o.identity + " FROM " + login + ";"
}

// quoteIdent quotes an SQL identifier.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

func dedupe(xs []string) []string {
	var out []string
	for _, x := range xs {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}
