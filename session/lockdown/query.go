package lockdown

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Query reads the facts in one simple-protocol statement (it leaves no
// prepared statement behind), as the upstream login. Every row has six text
// columns: fact, role, and four that depend on the fact:
//
//	login      <session_user>  <current_database()>  <bootstrap superuser>
//	role       <name>          <attributes, space-separated>
//	temporary  <role>  DATABASE <name>  grant|owner|""  <PUBLIC, grantee or owner>
//	create     <role>  DATABASE|SCHEMA <name>  grant|owner|""  <...>
//	edge       <member>  <role granted to it>  builtin|""
//	owns       <login>  <object type>  <object identity>
//	privilege  <login>  <object type>  <object identity>  <table|role>  <column|clause>
//
// "Roles" are those the login can become (pg_has_role MEMBER, which for a
// superuser login is every role), the login included. Access rows exist
// only where has_*_privilege says the role has the privilege, or owns the
// object; their grant/owner columns say how, following the ACL the way
// Postgres does (a grant to PUBLIC, to the role, or to a role whose
// privileges it inherits). Superusers get no access rows: they have every
// privilege, and the superuser check names them.
const Query = `/* pgtoken lock-down checks */
WITH login AS (
  SELECT r.oid, r.rolname FROM pg_catalog.pg_roles r WHERE r.rolname = session_user
), cand AS (
  SELECT r.* FROM pg_catalog.pg_roles r, login l WHERE pg_catalog.pg_has_role(l.oid, r.oid, 'MEMBER')
), db AS (
  SELECT d.oid, d.datname, d.datdba, coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba)) AS acl
  FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()
), objs AS (
  SELECT 'temporary' AS fact, 'DATABASE' AS kind, d.oid AS obj, d.datname::text AS name, d.datdba AS owner, d.acl, 'TEMPORARY' AS priv FROM db d
  UNION ALL
  SELECT 'create', 'DATABASE', d.oid, d.datname::text, d.datdba, d.acl, 'CREATE' FROM db d
  UNION ALL
  SELECT 'create', 'SCHEMA', n.oid, n.nspname::text, n.nspowner, coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner)), 'CREATE'
  FROM pg_catalog.pg_namespace n
)
SELECT 'login', l.rolname::text, pg_catalog.current_database()::text,
  (SELECT b.rolname::text FROM pg_catalog.pg_roles b WHERE b.oid = 10), '', ''
FROM login l
UNION ALL
SELECT 'role', c.rolname::text, concat_ws(' ',
    CASE WHEN c.rolsuper THEN 'superuser' END, CASE WHEN c.rolbypassrls THEN 'bypassrls' END,
    CASE WHEN c.rolinherit THEN 'inherit' END, CASE WHEN c.rolcreaterole THEN 'createrole' END,
    CASE WHEN c.rolcreatedb THEN 'createdb' END, CASE WHEN c.rolreplication THEN 'replication' END), '', '', ''
FROM cand c
UNION ALL
SELECT o.fact, c.rolname::text, o.kind, o.name, coalesce(w.how, ''), coalesce(w.via, '')
FROM cand c CROSS JOIN objs o
LEFT JOIN LATERAL (
  SELECT 'grant' AS how, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE g.rolname::text END AS via
  FROM pg_catalog.aclexplode(o.acl) a LEFT JOIN pg_catalog.pg_roles g ON g.oid = a.grantee
  WHERE a.privilege_type = o.priv AND (a.grantee = 0 OR pg_catalog.pg_has_role(c.oid, a.grantee, 'USAGE'))
  UNION ALL
  SELECT 'owner', ow.rolname::text FROM pg_catalog.pg_roles ow
  WHERE ow.oid = o.owner AND pg_catalog.pg_has_role(c.oid, o.owner, 'USAGE')
) w ON true
WHERE NOT c.rolsuper AND (pg_catalog.pg_has_role(c.oid, o.owner, 'USAGE') OR CASE o.kind
    WHEN 'DATABASE' THEN pg_catalog.has_database_privilege(c.oid, o.obj, o.priv)
    ELSE pg_catalog.has_schema_privilege(c.oid, o.obj, o.priv) END)
UNION ALL
SELECT 'edge', m.rolname::text, r.rolname::text, CASE WHEN r.oid < 16384 THEN 'builtin' ELSE '' END, '', ''
FROM pg_catalog.pg_auth_members am
JOIN pg_catalog.pg_roles m ON m.oid = am.member
JOIN pg_catalog.pg_roles r ON r.oid = am.roleid
WHERE am.member IN (SELECT oid FROM cand)
UNION ALL
SELECT CASE s.deptype WHEN 'o' THEN 'owns' ELSE 'privilege' END, l.rolname::text, o.type, o.identity,
  coalesce(col.tbl, dacl.forrole, ''), coalesce(col.col, dacl.clause, '')
FROM login l
JOIN pg_catalog.pg_shdepend s ON s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass AND s.refobjid = l.oid
CROSS JOIN LATERAL pg_catalog.pg_identify_object(s.classid, s.objid, s.objsubid) o
LEFT JOIN LATERAL (
  SELECT (pg_catalog.pg_identify_object(s.classid, s.objid, 0)).identity AS tbl, pg_catalog.quote_ident(a.attname) AS col
  FROM pg_catalog.pg_attribute a
  WHERE s.objsubid <> 0 AND s.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND a.attrelid = s.objid AND a.attnum = s.objsubid
) col ON true
LEFT JOIN LATERAL (
  SELECT pg_catalog.quote_ident(dr.rolname) AS forrole,
    coalesce('IN SCHEMA ' || pg_catalog.quote_ident(dn.nspname) || ' ', '') || 'REVOKE ALL ON ' ||
    CASE da.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES' WHEN 'f' THEN 'FUNCTIONS'
      WHEN 'T' THEN 'TYPES' WHEN 'n' THEN 'SCHEMAS' END AS clause
  FROM pg_catalog.pg_default_acl da
  JOIN pg_catalog.pg_roles dr ON dr.oid = da.defaclrole
  LEFT JOIN pg_catalog.pg_namespace dn ON dn.oid = da.defaclnamespace
  WHERE s.classid = 'pg_catalog.pg_default_acl'::pg_catalog.regclass AND da.oid = s.objid
) dacl ON true
WHERE s.deptype IN ('o', 'a') AND s.dbid IN (0, (SELECT oid FROM db))
  AND NOT (s.deptype = 'a' AND s.classid = 'pg_catalog.pg_database'::pg_catalog.regclass)`

// existsQuery tells which of the names in $1 are roles.
const existsQuery = `/* pgtoken lock-down checks: roles */
SELECT n FROM pg_catalog.unnest($1::text[]) n WHERE EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname = n)`

// Run reads the facts of the database conn is connected to, as conn's
// login. With names (the roles pgtoken serves) it also learns which of them
// exist, which Findings needs to report missing roles; it then runs a
// second, extended-protocol query, so give names only on a connection of
// its own (never one a pool will hand to clients).
func Run(ctx context.Context, conn *pgconn.PgConn, names []string) (*Facts, error) {
	results, err := conn.Exec(ctx, Query).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(results) != 1 {
		return nil, fmt.Errorf("lock-down query: %d results", len(results))
	}
	rows := make([][]string, len(results[0].Rows))
	for i, row := range results[0].Rows {
		rows[i] = make([]string, len(row))
		for j, v := range row {
			rows[i][j] = string(v)
		}
	}
	f, err := Parse(rows)
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return f, nil
	}
	arr := "{" + strings.Join(quoteArray(names), ",") + "}"
	res := conn.ExecParams(ctx, existsQuery, [][]byte{[]byte(arr)}, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, res.Err
	}
	f.asked = true
	f.exists = map[string]bool{}
	for _, row := range res.Rows {
		if len(row) == 1 {
			f.exists[string(row[0])] = true
		}
	}
	return f, nil
}

// quoteArray quotes each name as an element of a text[] literal.
func quoteArray(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(n) + `"`
	}
	return out
}

// Parse builds Facts from the rows of Query. Rows of an unexpected shape
// fail it: pgtoken does not serve a database it cannot judge.
func Parse(rows [][]string) (*Facts, error) {
	f := &Facts{roles: map[string]*roleFacts{}, edges: map[string][]edge{}, builtin: map[string]bool{}}
	role := func(name string) *roleFacts {
		r := f.roles[name]
		if r == nil {
			r = &roleFacts{}
			f.roles[name] = r
		}
		return r
	}
	for _, row := range rows {
		if len(row) != 6 {
			return nil, fmt.Errorf("lock-down query: a row of %d columns", len(row))
		}
		switch row[0] {
		case "login":
			f.Login, f.Database, f.Bootstrap = row[1], row[2], row[3]
		case "role":
			r := role(row[1])
			for _, a := range strings.Fields(row[2]) {
				switch a {
				case "superuser":
					r.super = true
				case "bypassrls":
					r.bypassRLS = true
				case "inherit":
					r.inherit = true
				case "createrole":
					r.createRole = true
				case "createdb":
					r.createDB = true
				case "replication":
					r.replication = true
				}
			}
		case "temporary", "create":
			r := role(row[1])
			r.access = append(r.access, access{check: Check(row[0]), kind: row[2], name: row[3], how: row[4], via: row[5]})
		case "edge":
			f.edges[row[1]] = append(f.edges[row[1]], edge{role: row[2]})
			if row[3] == "builtin" {
				f.builtin[row[2]] = true
			}
		case "owns":
			f.owns = append(f.owns, object{typ: row[2], identity: row[3]})
		case "privilege":
			f.privs = append(f.privs, object{typ: row[2], identity: row[3], extra1: row[4], extra2: row[5]})
		default:
			return nil, fmt.Errorf("lock-down query: unknown fact %q", row[0])
		}
	}
	if f.Login == "" {
		return nil, errors.New("lock-down query: the upstream login role is not in pg_roles")
	}
	if f.roles[f.Login] == nil {
		return nil, fmt.Errorf("lock-down query: no attributes of the upstream login %q", f.Login)
	}
	f.clean = len(f.builtin) == 0 && len(f.owns) == 0 && len(f.privs) == 0 && !f.roles[f.Login].inherit
	for _, r := range f.roles {
		slices.SortStableFunc(r.access, func(a, b access) int {
			return strings.Compare(string(a.check)+"\x00"+a.kind+"\x00"+a.name, string(b.check)+"\x00"+b.kind+"\x00"+b.name)
		})
		if r.super || r.bypassRLS || r.createRole || r.createDB || r.replication || len(r.access) > 0 {
			f.clean = false
		}
	}
	return f, nil
}
