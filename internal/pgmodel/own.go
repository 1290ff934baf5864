package pgmodel

import (
	"strings"

	"github.com/pgtoken/pgtoken/session/lockdown"
)

// pgtoken's own statements.
//
// The model tells pgtoken's statements from the client's by their shape,
// as session/prelude.go, attach.go, login.go and roles.go write them:
//
//   - the prelude, reset and replay statements pgtoken prepares under the
//     names pgtoken_prelude_*, pgtoken_session_* and pgtoken_reset_*
//     (client statements that pgtoken prepares for a client are named
//     pgtoken_s_*: those are the client's);
//   - in a simple Query, the statements pgtoken writes in upper case with
//     E'' literals and quoted setting names: SET [LOCAL] ROLE E'…',
//     SET [LOCAL] "a"."b" TO E'…', RESET ROLE, RESET "a"."b", the reset
//     (RESET ALL, SELECT pg_catalog.set_config(…), CLOSE ALL, UNLISTEN *,
//     DISCARD TEMP, DISCARD SEQUENCES), DISCARD ALL and ROLLBACK after a
//     client left, the settings read-back, the role query, the check of
//     startup settings, and the cancel fence SELECT 1.
//
// Test clients spell their statements in lower case, so none of theirs
// looks like these.

// ownStmtName reports whether a prepared statement is pgtoken's own.
func ownStmtName(name string) bool {
	for _, p := range []string{"pgtoken_prelude_", "pgtoken_session_", "pgtoken_reset_"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// lockdownPrefix begins the text of pgtoken's lock-down checks
// (session/lockdown.Query).
const lockdownPrefix = "/* pgtoken lock-down checks */"

// lockdownBody is that text after its opening comment.
var lockdownBody = strings.TrimSpace(strings.TrimPrefix(lockdown.Query, lockdownPrefix))

// ownStatement reports whether one statement's text is pgtoken's.
func ownStatement(text string) bool {
	if text == lockdownBody {
		return true
	}
	for _, exact := range []string{"RESET ROLE", "RESET ALL", "CLOSE ALL", "UNLISTEN *", "DISCARD TEMP",
		"DISCARD SEQUENCES", "DISCARD ALL", "ROLLBACK", "SELECT 1"} {
		if text == exact {
			return true
		}
	}
	for _, prefix := range []string{"SET LOCAL ROLE E'", "SET ROLE E'", `SET LOCAL "`, `SET "`, `RESET "`,
		"SELECT pg_catalog.set_config(", "SELECT name, setting FROM pg_catalog.pg_settings",
		lockdownPrefix, "SELECT n, v FROM (VALUES"} {
		if strings.HasPrefix(text, prefix) {
			return true
		}
	}
	return false
}

// own parses pgtoken's reads of pg_settings and pg_roles and its check of
// startup settings, which the general grammar does not cover; nil for any
// other statement.
func (p *parser) own() *stmt {
	text := p.st.text()
	if strings.HasPrefix(p.st.src, lockdownPrefix) {
		p.i = len(p.st.toks) - 1
		return &stmt{kind: sOwnRoles}
	}
	if !p.peek().is("select") {
		return nil
	}
	var strs []string
	for _, t := range p.st.toks {
		if t.kind == tString {
			strs = append(strs, t.val)
		}
	}
	done := func(s *stmt) *stmt {
		p.i = len(p.st.toks) - 1
		return s
	}
	switch {
	case strings.Contains(text, "pg_catalog.pg_settings"):
		// SELECT name, setting FROM pg_catalog.pg_settings WHERE source =
		// 'session' [UNION ALL SELECT n, current_setting(n, true) FROM
		// (VALUES (E'name'::text), ...) v(n)]
		if len(strs) == 0 || strs[0] != "session" {
			return nil
		}
		return done(&stmt{kind: sOwnSettings, names: strs[1:]})
	case strings.HasPrefix(text, "SELECT n, v FROM (VALUES"):
		// (E'name',pg_catalog.set_config(E'name',E'value',true)), ...
		if len(strs)%3 != 0 {
			return nil
		}
		s := &stmt{kind: sOwnValues}
		for i := 0; i < len(strs); i += 3 {
			s.names = append(s.names, strs[i])
			s.vals = append(s.vals, strs[i+2])
		}
		return done(s)
	}
	return nil
}
