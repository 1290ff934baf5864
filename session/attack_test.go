package session_test

// Attacks on pgtoken's promise (issue 12), class by class: a client with a
// valid low-privilege token tries to act as anyone else, or to leave
// something behind for the client that comes next on the same server
// connection. pgtoken runs with a pool of one server connection, in both
// pooling modes, in front of a database locked down as docs/SECURITY.md
// says and one with Postgres's default privileges (attack_env_test.go).
// Every outcome is read from Postgres: current_user, session_user, the
// claims, the rows row-level security lets through, pg_backend_pid() (the
// victim ran on the attacker's backend), pg_listening_channels(), pg_locks,
// pg_prepared_statements, lastval(), temporary objects, pg_stat_activity,
// and rows written (or not) by the attack. A failure says LEAK and what
// Postgres showed.
//
// Test names: TestAttack<class><what>; subtests name the setup, the mode,
// the variant and the protocol.

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// --- class 1: pgtoken's own statements are callable

// preludeStatements lists the prelude statements the attacker can see on
// its backend, with their number of settings. A pgtoken that hides them
// shows none: then the attacker guesses the names pgtoken used to have.
func preludeStatements(t *testing.T, rows [][]string) map[string]int {
	out := map[string]int{}
	for _, r := range rows {
		n, err := strconv.Atoi(r[1])
		if err == nil && n >= 2 {
			out[r[0]] = n / 2
		}
	}
	if len(out) == 0 {
		for n := 1; n <= 8; n++ {
			out["pgtoken_prelude_"+strconv.Itoa(n)] = n
		}
	}
	t.Logf("prelude statements on the attacker's backend: %v", out)
	return out
}

const listPreludesSQL = `select name, coalesce(array_length(parameter_types, 1), 0)::text from pg_prepared_statements
	where name ilike '%pgtoken%prelude%' order by name`

// preludeArgs is what the attacker binds into a prelude statement of n
// settings: the role it wants, the victim's sub, then padding.
func preludeArgs(n int, role, sub string) string {
	args := []string{"'role'", "'" + role + "'"}
	if n > 1 {
		args = append(args, "'jwt.claims.sub'", "'"+sub+"'")
	}
	for i := 2; i < n; i++ {
		args = append(args, fmt.Sprintf("'app.pad%d'", i), "'x'")
	}
	return strings.Join(args, ", ")
}

// columnList names k columns (CREATE TABLE AS needs distinct names).
func columnList(k int) string {
	cols := make([]string, k)
	for i := range cols {
		cols[i] = fmt.Sprintf("c%d", i)
	}
	return strings.Join(cols, ", ")
}

// preludeSpellings run a statement by name from SQL text; multi marks the
// ones that are more than one statement (no extended form).
var preludeSpellings = []struct {
	name  string
	multi bool
	sql   func(name string, n int, args string) string
}{
	{"explain-analyze-execute", false, func(n string, _ int, a string) string { return "explain analyze execute " + n + "(" + a + ")" }},
	{"explain-options-analyze-execute", false, func(n string, _ int, a string) string {
		return "explain (analyze, costs off, timing off, summary off) execute " + n + "(" + a + ")"
	}},
	{"EXPLAIN-ANALYZE-VERBOSE-EXECUTE-quoted-name", false, func(n string, _ int, a string) string {
		return `EXPLAIN ANALYZE VERBOSE EXECUTE "` + n + `"(` + a + ")"
	}},
	{"explain-analyze-execute-upper-case-name", false, func(n string, _ int, a string) string {
		return "explain analyze execute " + strings.ToUpper(n) + "(" + a + ")"
	}},
	{"explain-analyze-execute-unicode-name", false, func(n string, _ int, a string) string {
		return `explain analyze execute U&"` + strings.ReplaceAll(n, "_", `\005f`) + `"(` + a + ")"
	}},
	{"explain-analyze-execute-comments", false, func(n string, _ int, a string) string {
		return "explain /* x */ analyze\n\texecute -- y\n " + n + " /* z */ (" + a + ")"
	}},
	{"explain-analyze-json-execute", false, func(n string, _ int, a string) string {
		return "explain (analyze true, buffers, format json) execute " + n + "(" + a + ")"
	}},
	{"create-temp-table-on-commit-drop-as-execute", false, func(n string, k int, a string) string {
		return "create temp table atk_ctas (" + columnList(k) + ") on commit drop as execute " + n + "(" + a + ")"
	}},
	{"CREATE-TEMPORARY-TABLE-pg_temp-on-commit-drop-as-execute", false, func(n string, k int, a string) string {
		return "CREATE TEMPORARY TABLE pg_temp.atk_ctas2 (" + columnList(k) + ") ON COMMIT DROP AS EXECUTE " + n + "(" + a + ")"
	}},
	{"execute-alone", false, func(n string, _ int, a string) string { return "execute " + n + "(" + a + ")" }},
	{"select-then-execute", true, func(n string, _ int, a string) string { return "select 1; execute " + n + "(" + a + ")" }},
	{"execute-then-select", true, func(n string, _ int, a string) string { return "execute " + n + "(" + a + "); select 1" }},
}

// TestAttack1PreludeStatementRunFromSQL: after an extended-protocol query
// has put pgtoken's prelude statement on the backend, the attacker runs it
// with its own arguments (EXPLAIN ANALYZE EXECUTE, CREATE TABLE AS
// EXECUTE, EXECUTE inside a longer string, every spelling of the name),
// asking for web_admin or for no role at all (the upstream login) and the
// victim's sub. The same transaction must still run as the attacker's
// token and see only its rows; the next client must be itself.
func TestAttack1PreludeStatementRunFromSQL(t *testing.T) {
	eachAttackEnv(t, func(t *testing.T, a *atk) {
		// Another client with more claims puts a prelude of another
		// count on the backend (transaction mode: it stays connected).
		other := a.connect(t, a.token("web_user", "other", "extra1", 1, "extra2", 2, "extra3", 3))
		if _, err := extendedRows(t, other, "select 1"); err != nil {
			t.Fatal(err)
		}
		if a.mode == "session" {
			_ = other.Close(ctx(t))
		}
		c := a.connect(t, a.token("web_user", "mallory"))
		if _, err := extendedRows(t, c, "select 1"); err != nil {
			t.Fatal(err)
		}
		rows, err := simpleRows(t, c, listPreludesSQL)
		if err != nil {
			t.Fatal(err)
		}
		stmts := preludeStatements(t, rows)
		attackerPID := ""
		for _, sp := range preludeSpellings {
			t.Run(sp.name, func(t *testing.T) {
				for name, n := range stmts {
					for _, target := range []string{"web_admin", "none"} {
						attack := sp.sql(name, n, preludeArgs(n, target, "alice"))
						what := fmt.Sprintf("%s as %s", name, target)
						// Simple: the attack and the probes in one Query.
						rows, _ := simpleRows(t, c, attack+"; "+probeSQL+"; "+rlsSQL)
						if pid := a.checkIdents(t, what+" (simple, one query)", rows, "web_user", "mallory"); pid != "" {
							attackerPID = pid
						}
						// Simple: the attack alone inside a transaction.
						if _, err := simpleRows(t, c, "begin"); err != nil {
							t.Fatal(err)
						}
						_, _ = simpleRows(t, c, attack)
						rows, _ = simpleRows(t, c, probeSQL+"; "+rlsSQL)
						a.checkIdents(t, what+" (simple, alone in a transaction)", rows, "web_user", "mallory")
						_, _ = simpleRows(t, c, "rollback")
						if sp.multi {
							continue
						}
						// Extended: one batch.
						res, _ := c.ExecBatch(ctx(t), batchOf(attack, probeSQL, rlsSQL)).ReadAll()
						a.checkIdents(t, what+" (extended, one batch)", flatten(res), "web_user", "mallory")
						// Extended: BEGIN and the attack, then the probes in
						// the transaction's next batch.
						_, _ = c.ExecBatch(ctx(t), batchOf("begin", attack)).ReadAll()
						res, _ = c.ExecBatch(ctx(t), batchOf(probeSQL, rlsSQL)).ReadAll()
						a.checkIdents(t, what+" (extended, in a transaction)", flatten(res), "web_user", "mallory")
						_, _ = simpleRows(t, c, "rollback")
					}
				}
			})
		}
		a.probe(t, "the attacker's next transaction", c, false, "web_user", "mallory")
		if a.mode == "session" {
			_ = c.Close(ctx(t))
		}
		a.nextClientClean(t, "web_user", "alice", attackerPID)
	})
}

// TestAttack1PgtokenNamesInExtendedProtocol: Describe, Bind, Execute and
// Close of pgtoken's statement and portal names, a Parse that would
// replace pgtoken's statement, and a SQL PREPARE of a prelude name a later
// client will need. The batch goes on as the attacker's token; the
// attacker's next transactions and the next client (one with as many
// settings, one with more) run as themselves.
func TestAttack1PgtokenNamesInExtendedProtocol(t *testing.T) {
	eachAttackEnv(t, func(t *testing.T, a *atk) {
		r := a.raw(t, a.token("web_user", "mallory"))
		first := r.exchange(msgs(pbe(probeSQL), syncMsg))
		attackerPID := a.checkIdents(t, "the attacker's first batch", first.rows, "web_user", "mallory")
		names := preludeStatements(t, r.exchange(msgs(query(listPreludesSQL))).rows)
		var name string
		var n int
		for k, v := range names {
			if name == "" || k < name {
				name, n = k, v
			}
		}
		args := func(role string) [][]byte {
			out := [][]byte{[]byte("role"), []byte(role)}
			if n > 1 {
				out = append(out, []byte("jwt.claims.sub"), []byte("alice"))
			}
			for i := 2; i < n; i++ {
				out = append(out, []byte(fmt.Sprintf("app.pad%d", i)), []byte("x"))
			}
			return out
		}
		// The victim with more settings needs a prelude statement of a
		// count nobody has used on this backend yet.
		victimN := n + 1
		victimName := "pgtoken_prelude_" + strconv.Itoa(victimN)
		for _, v := range []struct {
			name string
			ms   []pgproto3.FrontendMessage
		}{
			{"describe-statement", msgs(&pgproto3.Describe{ObjectType: 'S', Name: name})},
			{"bind-unnamed-portal-execute", msgs(&pgproto3.Bind{PreparedStatement: name, Parameters: args("web_admin")}, &pgproto3.Execute{})},
			{"bind-named-portal-execute", msgs(&pgproto3.Bind{DestinationPortal: "atk", PreparedStatement: name, Parameters: args("none")}, &pgproto3.Execute{Portal: "atk"})},
			{"bind-upper-case-name", msgs(&pgproto3.Bind{PreparedStatement: strings.ToUpper(name), Parameters: args("web_admin")}, &pgproto3.Execute{})},
			{"close-statement", msgs(&pgproto3.Close{ObjectType: 'S', Name: name})},
			{"describe-prelude-portal", msgs(&pgproto3.Describe{ObjectType: 'P', Name: "pgtoken_prelude"})},
			{"execute-prelude-portal", msgs(&pgproto3.Execute{Portal: "pgtoken_prelude"})},
			{"close-prelude-portal", msgs(&pgproto3.Close{ObjectType: 'P', Name: "pgtoken_prelude"})},
			{"execute-unnamed-portal-without-bind", msgs(&pgproto3.Execute{})},
			{"parse-over-prelude-statement", msgs(&pgproto3.Parse{Name: name, Query: "select 1"})},
			{"parse-prelude-name-of-the-victim", msgs(&pgproto3.Parse{Name: victimName, Query: "select 1"})},
			{"parse-statement-cache-name", msgs(&pgproto3.Parse{Name: "pgtoken_s_000000000000000000000000", Query: "select 1"})},
			{"bind-into-prelude-portal", msgs(&pgproto3.Parse{Query: "select 1"}, &pgproto3.Bind{DestinationPortal: "pgtoken_prelude"}, &pgproto3.Execute{Portal: "pgtoken_prelude"})},
			{"sql-prepare-prelude-name-of-the-victim", msgs(query("select 1; prepare " + victimName + " as select 1"))},
			{"sql-prepare-prelude-name-alone", msgs(query("prepare " + victimName + " as select 1"))},
			{"sql-deallocate-prelude", msgs(query("deallocate " + name))},
			{"sql-deallocate-prepare-quoted-prelude", msgs(query(`deallocate prepare "` + name + `"`))},
			{"sql-select-then-deallocate-prelude", msgs(query("select 1; deallocate " + name))},
		} {
			t.Run(v.name, func(t *testing.T) {
				rp := r.exchange(msgs(v.ms, pbe(probeSQL), pbe(rlsSQL), syncMsg))
				t.Logf("answers: %q", rp.codes())
				a.checkIdents(t, v.name+": the rest of the batch", rp.rows, "web_user", "mallory")
				rp = r.exchange(msgs(pbe(probeSQL), pbe(rlsSQL), syncMsg))
				if len(identsOf(rp.rows)) == 0 {
					t.Errorf("%s: the attacker's next batch did not run: %q", v.name, rp.codes())
				}
				a.checkIdents(t, v.name+": the next batch", rp.rows, "web_user", "mallory")
				rp = r.exchange(msgs(query(probeSQL + ";" + rlsSQL)))
				a.checkIdents(t, v.name+": the next query", rp.rows, "web_user", "mallory")
			})
		}
		if a.mode == "session" {
			_ = r.nc.Close()
		}
		a.nextClientClean(t, "web_user", "alice", attackerPID)
		// A client with one more setting: its prelude statement is the one
		// the attacker tried to create or replace.
		v := a.connect(t, a.token("web_user", "bob", "extra", "1"))
		a.probe(t, "the next client with more claims (extended)", v, true, "web_user", "bob")
		a.probe(t, "the next client with more claims (simple)", v, false, "web_user", "bob")
	})
}
