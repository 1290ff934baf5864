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
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/internal/testpg"
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
		// pgtoken refuses to list them: try the names it uses.
		for n := 1; n <= 8; n++ {
			out["pgtoken_prelude_"+strconv.Itoa(n)] = n
			out["pgtoken_session_"+strconv.Itoa(n)] = n
		}
	}
	t.Logf("prelude statements on the attacker's backend: %v", out)
	return out
}

// listPreludesSQL finds pgtoken's statements on the backend however they
// are named: by name, or by what they do.
const listPreludesSQL = `select name, coalesce(array_length(parameter_types, 1), 0)::text from pg_prepared_statements
	where name ilike '%pgtoken%' or statement ilike '%set_config%' order by name`

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
		// pgtoken may refuse to list the statements on the connection
		// (pg_prepared_statements): the names it uses are tried then.
		rows, _ := simpleRows(t, c, listPreludesSQL)
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
		a.thenVictim(t, func() { _ = c.Close(ctx(t)) }, attackerPID, cleanOpts{})
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
		a.thenVictim(t, r.close, attackerPID, cleanOpts{})
		// A client with one more setting: its prelude statement is the one
		// the attacker tried to create or replace.
		v := a.connect(t, a.token("web_user", "bob", "extra", "1"))
		a.probe(t, "the next client with more claims (extended)", v, true, "web_user", "bob")
		a.probe(t, "the next client with more claims (simple)", v, false, "web_user", "bob")
	})
}

// --- class 2: a transaction that starts mid-batch runs without the prelude

// midBatchQueries are simple Queries a client may send between
// extended-protocol messages before Sync; Postgres commits the batch's
// implicit transaction when one arrives.
var midBatchQueries = []string{
	"select 1", "SELECT 'x' AS y", "", ";", "-- only a comment", "set statement_timeout = 0",
	"begin", "commit", "rollback", "end", "abort", "select 1/0",
	"reset all", "discard all", "deallocate all", "prepare atk_q as select 1", "vacuum api.notes",
	"commit; select 1", "select 1; commit", "begin; commit",
}

// txEnders end a transaction; some chain a new one.
var txEnders = []string{
	"commit", "COMMIT WORK", "Commit Transaction", "end", "END TRANSACTION", "abort", "ABORT WORK",
	"rollback", "ROLLBACK TRANSACTION", "commit and chain", "COMMIT AND NO CHAIN", "rollback and chain",
	"end and chain", "abort and chain", "/* c */ commit", "commit -- c\n", "commit;", "\n\tcommit\n",
}

// TestAttack1OwnStatementsDropped: pgtoken's own statements vanish under
// it — the client's DEALLOCATE ALL (run on the server in session mode,
// mid-batch too), or a function that runs DEALLOCATE ALL — and the next
// prelude's Bind fails, in front of a client's Query that no Sync follows
// as well. Nothing may run without the prelude, the client must get every
// answer it is owed, the transactions after must work, and the next client
// on the backend must be clean.
func TestAttack1OwnStatementsDropped(t *testing.T) {
	eachAttackEnv(t, func(t *testing.T, a *atk) {
		r := a.raw(t, a.token("web_user", "mallory"))
		attackerPID := a.checkIdents(t, "first batch", r.exchange(msgs(pbe(probeSQL), syncMsg)).rows, "web_user", "mallory")
		for _, drop := range []string{"deallocate all", "select api.forget_statements()"} {
			t.Run(drop, func(t *testing.T) {
				works := func(what string) {
					t.Helper()
					rp := r.exchange(msgs(pbe(probeSQL), syncMsg))
					if len(identsOf(rp.rows)) != 1 {
						t.Errorf("%s: the next transaction did not run: %q", what, rp.codes())
					}
					a.checkIdents(t, what, rp.rows, "web_user", "mallory")
				}
				variants := [][]pgproto3.FrontendMessage{
					msgs(query(drop), pbe(probeSQL), syncMsg),
					msgs(pbe("select 1"), query(drop), pbe(probeSQL), pbe(rlsSQL), syncMsg),
					// The prelude in front of "select 1" fails (after a
					// function dropped them) and the server skips the
					// Query: only a Sync of pgtoken's answers it.
					msgs(query(drop), pbe("select 1"), query(probeSQL)),
					msgs(query(drop), pbe("select 1"), loCreat()),
				}
				if drop == "deallocate all" {
					variants = append(variants, msgs(pbe("select 1"), query(drop+"; "+probeSQL), pbe(probeSQL), syncMsg))
				}
				for i, ms := range variants {
					rp := r.exchange(ms)
					t.Logf("variant %d: errors %q, %d probes ran", i, rp.codes(), len(identsOf(rp.rows)))
					a.checkIdents(t, fmt.Sprintf("variant %d", i), rp.rows, "web_user", "mallory")
					if rp.ended != nil {
						t.Fatalf("variant %d: the connection ended: %v", i, rp.ended)
					}
					works(fmt.Sprintf("after variant %d", i))
					works(fmt.Sprintf("after variant %d, again", i))
				}
			})
		}
		a.thenVictim(t, r.close, attackerPID, cleanOpts{})
	})
}

// TestAttack2QueryOrFunctionCallMidBatch: Parse/Bind/Execute, then a
// simple Query (every kind) or a FunctionCall before Sync, then more
// Executes: every statement after the Query must still run as the token,
// also when the batch ends with Parse("begin") and the transaction goes on
// in later messages, with Flush between every message, and after errors
// and storms of Syncs.
func TestAttack2QueryOrFunctionCallMidBatch(t *testing.T) {
	eachAttackEnv(t, func(t *testing.T, a *atk) {
		r := a.raw(t, a.token("web_user", "mallory"))
		attackerPID := a.checkIdents(t, "first batch", r.exchange(msgs(pbe(probeSQL), syncMsg)).rows, "web_user", "mallory")
		type variant struct {
			name  string
			ms    []pgproto3.FrontendMessage
			each  bool     // one write per message (Flush between them)
			after []string // simple queries after the batch: probes run in the same transaction
		}
		var variants []variant
		for _, q := range midBatchQueries {
			variants = append(variants, variant{name: fmt.Sprintf("query-%q", q),
				ms: msgs(pbe("select 1"), query(q), pbe(probeSQL), pbe(rlsSQL), syncMsg)})
		}
		variants = append(variants,
			variant{name: "functioncall", ms: msgs(pbe("select 1"), loCreat(), pbe(probeSQL), pbe(rlsSQL), syncMsg)},
			variant{name: "functioncall-first", ms: msgs(loCreat(), pbe(probeSQL), pbe(rlsSQL), syncMsg)},
			variant{name: "two-queries", ms: msgs(pbe("select 1"), query("select 1"), query("select 2"), pbe(probeSQL), syncMsg)},
			variant{name: "query-then-parse-begin-ends-batch", ms: msgs(pbe("select 1"), query("select 1"), pbe("begin"), syncMsg),
				after: []string{probeSQL + "; " + rlsSQL, "rollback"}},
			variant{name: "functioncall-then-parse-begin-ends-batch", ms: msgs(pbe("select 1"), loCreat(), pbe("begin"), syncMsg),
				after: []string{probeSQL + "; " + rlsSQL, "rollback"}},
			variant{name: "query-then-begin-isolation-ends-batch", ms: msgs(pbe("select 1"), query("select 1"), pbe("start transaction isolation level serializable"), syncMsg),
				after: []string{probeSQL, "rollback"}},
			variant{name: "flush-between-messages", each: true, ms: msgs(
				&pgproto3.Parse{Query: "select 1"}, flushMsg, &pgproto3.Bind{}, flushMsg, &pgproto3.Execute{}, flushMsg,
				query("select 1"), flushMsg,
				&pgproto3.Parse{Query: probeSQL}, flushMsg, &pgproto3.Bind{}, flushMsg, &pgproto3.Execute{}, flushMsg, syncMsg)},
			variant{name: "flush-then-functioncall", each: true, ms: msgs(pbe("select 1"), flushMsg, loCreat(), flushMsg, pbe(probeSQL), syncMsg)},
			variant{name: "error-then-sync-storm", ms: msgs(pbe("select 1/0"), pbe(probeSQL), syncMsg, syncMsg, syncMsg, syncMsg, syncMsg,
				pbe(probeSQL), syncMsg, query(probeSQL))},
			variant{name: "sync-storm-then-query-mid-batch", ms: msgs(syncMsg, syncMsg, syncMsg, pbe("select 1"), query("select 1"), pbe(probeSQL), syncMsg)},
			variant{name: "suspended-portal-then-query", ms: msgs(&pgproto3.Parse{Query: "select generate_series(1, 3)"}, &pgproto3.Bind{},
				&pgproto3.Execute{MaxRows: 1}, query("select 1"), pbe(probeSQL), syncMsg)},
			variant{name: "describe-first-then-query", ms: msgs(&pgproto3.Parse{Name: "atk_d", Query: probeSQL}, &pgproto3.Describe{ObjectType: 'S', Name: "atk_d"},
				query("select 1"), &pgproto3.Bind{PreparedStatement: "atk_d"}, &pgproto3.Execute{}, syncMsg, &pgproto3.Close{ObjectType: 'S', Name: "atk_d"}, syncMsg)},
		)
		for _, v := range variants {
			t.Run(v.name, func(t *testing.T) {
				var rp reply
				if v.each {
					r.sendEach(v.ms)
					rp = r.expect(v.ms, 30*time.Second)
				} else {
					rp = r.exchange(v.ms)
				}
				t.Logf("errors: %q; %d probes ran", rp.codes(), len(identsOf(rp.rows)))
				a.checkIdents(t, v.name, rp.rows, "web_user", "mallory")
				for _, q := range v.after {
					a.checkIdents(t, v.name+", then "+q, r.exchange(msgs(query(q))).rows, "web_user", "mallory")
				}
				_ = r.exchange(msgs(query("rollback")))
			})
		}
		a.thenVictim(t, r.close, attackerPID, cleanOpts{})
	})
}

// TestAttack2TransactionEndsMidBatchOrString: COMMIT, ROLLBACK, END,
// ABORT, with and without AND CHAIN, in every spelling, as an Execute in
// the middle of a batch (with and without a BEGIN before) and in the middle
// of a Query string (with odd separators): whatever runs after them runs as
// the token.
func TestAttack2TransactionEndsMidBatchOrString(t *testing.T) {
	eachAttackEnv(t, func(t *testing.T, a *atk) {
		r := a.raw(t, a.token("web_user", "mallory"))
		attackerPID := a.checkIdents(t, "first batch", r.exchange(msgs(pbe(probeSQL), syncMsg)).rows, "web_user", "mallory")
		for _, e := range txEnders {
			t.Run(fmt.Sprintf("%q", e), func(t *testing.T) {
				check := func(what string, ms ...any) {
					t.Helper()
					rp := r.exchange(msgs(ms...))
					if len(identsOf(rp.rows)) == 0 && len(rp.errs) == 0 {
						t.Errorf("%s: no probe ran", what)
					}
					a.checkIdents(t, what, rp.rows, "web_user", "mallory")
					rp = r.exchange(msgs(query(probeSQL + "; " + rlsSQL)))
					if len(identsOf(rp.rows)) != 1 {
						t.Errorf("%s: the next query's probe did not run: %q", what, rp.codes())
					}
					a.checkIdents(t, what+", the next query", rp.rows, "web_user", "mallory")
					_ = r.exchange(msgs(query("rollback")))
				}
				check("extended, after begin", pbe("begin"), pbe(probeSQL), pbe(e), pbe(probeSQL), pbe(rlsSQL), syncMsg)
				check("extended, implicit transaction", pbe(probeSQL), pbe(e), pbe(probeSQL), pbe(rlsSQL), syncMsg)
				check("extended, ender then flush", pbe("begin"), pbe(e), flushMsg, pbe(probeSQL), syncMsg)
				check("extended, ender ends the batch", pbe("begin"), pbe(e), syncMsg, pbe(probeSQL), syncMsg)
				stripped := strings.TrimSuffix(strings.TrimSpace(e), ";")
				for _, sep := range []string{"; ", ";\n", " /* ; */ ;", ";;", " -- ;\n;"} {
					check(fmt.Sprintf("simple, separator %q", sep),
						query("begin; "+probeSQL+"; "+stripped+sep+probeSQL+sep+rlsSQL))
					check(fmt.Sprintf("simple, no begin, separator %q", sep),
						query(probeSQL+"; "+stripped+sep+probeSQL+sep+rlsSQL))
				}
				check("simple, twice", query("begin; "+stripped+"; "+stripped+"; "+probeSQL+"; "+rlsSQL))
			})
		}
		a.thenVictim(t, r.close, attackerPID, cleanOpts{})
	})
}

// TestAttack2PrepareTransactionMidBatchOrString: on a server that allows
// prepared transactions, PREPARE TRANSACTION ends the transaction in the
// middle of a batch or a Query string; what follows runs as the token.
func TestAttack2PrepareTransactionMidBatchOrString(t *testing.T) {
	pg := testpg.New(t, testpg.Options{Settings: map[string]string{"max_prepared_transactions": "10"}})
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i, mode := range attackModes {
		db := fmt.Sprintf("app%d", i)
		if err := pg.CreateDatabase(c, db); err != nil {
			t.Fatal(err)
		}
		if err := pg.ApplySQLFile(c, db, filepath.Join(pgtest.Root(), "testdata", "sql", "schema.sql")); err != nil {
			t.Fatal(err)
		}
		t.Run("locked/"+mode, func(t *testing.T) {
			a := startAttackOn(t, pg, db, setupLocked, mode, nil)
			r := a.raw(t, a.token("web_user", "mallory"))
			gid := 0
			next := func() string { gid++; return fmt.Sprintf("'atk_%s_%d'", mode, gid) }
			for _, v := range []struct {
				name string
				ms   func() []pgproto3.FrontendMessage
			}{
				{"extended-after-begin", func() []pgproto3.FrontendMessage {
					return msgs(pbe("begin"), pbe(probeSQL), pbe("prepare transaction "+next()), pbe(probeSQL), pbe(rlsSQL), syncMsg)
				}},
				{"extended-ends-batch", func() []pgproto3.FrontendMessage {
					return msgs(pbe("begin"), pbe("PREPARE TRANSACTION "+next()), syncMsg, pbe(probeSQL), syncMsg)
				}},
				{"extended-then-query", func() []pgproto3.FrontendMessage {
					return msgs(pbe("begin"), pbe("prepare transaction "+next()), query(probeSQL), pbe(probeSQL), syncMsg)
				}},
				{"simple-mid-string", func() []pgproto3.FrontendMessage {
					return msgs(query("begin; " + probeSQL + "; prepare transaction " + next() + "; " + probeSQL + "; " + rlsSQL))
				}},
				{"simple-mid-string-comments", func() []pgproto3.FrontendMessage {
					return msgs(query("begin; prepare /* x */ transaction " + next() + " -- ;\n; " + probeSQL))
				}},
			} {
				t.Run(v.name, func(t *testing.T) {
					rp := r.exchange(v.ms())
					t.Logf("errors: %q; %d probes ran", rp.codes(), len(identsOf(rp.rows)))
					a.checkIdents(t, v.name, rp.rows, "web_user", "mallory")
					rp = r.exchange(msgs(query(probeSQL + "; " + rlsSQL)))
					a.checkIdents(t, v.name+", the next query", rp.rows, "web_user", "mallory")
					_ = r.exchange(msgs(query("rollback")))
				})
			}
			for _, row := range a.superuser("select gid from pg_prepared_xacts where database = current_database()") {
				a.superuser("rollback prepared '" + row[0] + "'")
			}
		})
	}
}

// TestAttack2ProcedureThatCommits: CALL of an owner-written procedure that
// writes a row, COMMITs and writes another. In both protocols every row it
// writes is written as the token (or the CALL fails before anything is
// kept); the statements after the CALL run as the token.
func TestAttack2ProcedureThatCommits(t *testing.T) {
	eachAttackEnv(t, func(t *testing.T, a *atk) {
		r := a.raw(t, a.token("web_user", "mallory"))
		for _, v := range []struct {
			name string
			ms   func(call string) []pgproto3.FrontendMessage
		}{
			{"simple-call-alone", func(c string) []pgproto3.FrontendMessage { return msgs(query(c)) }},
			{"simple-call-then-probe", func(c string) []pgproto3.FrontendMessage { return msgs(query(c + "; " + probeSQL)) }},
			{"simple-begin-call", func(c string) []pgproto3.FrontendMessage {
				return msgs(query("begin; " + c + "; " + probeSQL + "; commit"))
			}},
			{"extended-call-alone", func(c string) []pgproto3.FrontendMessage { return msgs(pbe(c), syncMsg) }},
			{"extended-call-then-probe", func(c string) []pgproto3.FrontendMessage { return msgs(pbe(c), pbe(probeSQL), syncMsg) }},
			{"extended-select-call-probe", func(c string) []pgproto3.FrontendMessage {
				return msgs(pbe("select 1"), pbe(c), pbe(probeSQL), syncMsg)
			}},
			{"extended-call-upper-case", func(c string) []pgproto3.FrontendMessage {
				return msgs(pbe(strings.Replace(c, "call api.commit_between", "CALL API.COMMIT_BETWEEN", 1)), pbe(probeSQL), syncMsg)
			}},
			{"extended-call-comment-first", func(c string) []pgproto3.FrontendMessage {
				return msgs(pbe("/* x */ "+c), pbe(probeSQL), syncMsg)
			}},
			{"extended-call-then-query", func(c string) []pgproto3.FrontendMessage {
				return msgs(pbe(c), query(probeSQL), pbe(probeSQL), syncMsg)
			}},
			{"extended-begin-call-commit", func(c string) []pgproto3.FrontendMessage {
				return msgs(pbe("begin"), pbe(c), pbe(probeSQL), pbe("commit"), syncMsg)
			}},
		} {
			t.Run(v.name, func(t *testing.T) {
				rp := r.exchange(v.ms("call api.commit_between('" + v.name + "')"))
				t.Logf("errors: %q", rp.codes())
				a.checkIdents(t, v.name, rp.rows, "web_user", "mallory")
				_ = r.exchange(msgs(query("rollback")))
				checkCommitBetween(t, a, v.name+":", "web_user", "mallory")
			})
		}
	})
}

// checkCommitBetween checks the rows api.commit_between wrote: each as the
// token, and an ":after" row for every ":before" row (a procedure whose
// second half could not write ran as someone without the token role's
// privileges).
func checkCommitBetween(t *testing.T, a *atk, prefix, role, sub string) {
	t.Helper()
	rows := a.logRows(prefix)
	before, after := map[string]bool{}, map[string]bool{}
	for _, r := range rows {
		tag, who, s := r[0], r[1], r[2]
		if who != role || s != sub {
			t.Errorf("LEAK: api.commit_between wrote %q as current_user=%s sub=%s (backend %s); want %s/%s", tag, who, s, r[3], role, sub)
		}
		if b, ok := strings.CutSuffix(tag, ":before"); ok {
			before[b] = true
		}
		if b, ok := strings.CutSuffix(tag, ":after"); ok {
			after[b] = true
		}
	}
	for b := range before {
		if !after[b] {
			t.Errorf("LEAK: api.commit_between(%q) kept its first row but its part after COMMIT could not write as %s: it ran as another role (the upstream login?)", b, role)
		}
	}
}

// TestAttack2EscapedClientReadsAndCancelsOthers: what an escape to the
// upstream login buys. Another client of pgtoken (a second database on the
// same cluster, same upstream login) runs a long query; the attacker, after
// a Query mid-batch, looks for its text — its prelude, claims included — in
// pg_stat_activity and cancels its backend. Postgres must show the
// attacker no query text of another backend, and the other client's query
// must complete (its row is written).
func TestAttack2EscapedClientReadsAndCancelsOthers(t *testing.T) {
	eachAttackEnv(t, func(t *testing.T, a *atk) {
		b := startAttack(t, a.setup, "transaction", nil)
		secret := "bystander-secret-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		by := b.connect(t, b.token("web_user", secret))
		done := b.startActive(t, by, "select pg_sleep(3); insert into api.attack_log(tag) values ('bystander-done')", "pg_sleep(3)")
		r := a.raw(t, a.token("web_anon", "anonymous"))
		look := `select 'seen', query from pg_stat_activity where pid <> pg_backend_pid() and query like '%bystander-secret%'`
		kill := `select 'cancel', pg_cancel_backend(pid)::text from pg_stat_activity where pid <> pg_backend_pid() and query like '%bystander-secret%'`
		for _, v := range []struct {
			name string
			ms   []pgproto3.FrontendMessage
		}{
			{"query-mid-batch", msgs(pbe("select 1"), query("select 1"), pbe(look), pbe(kill), syncMsg)},
			{"functioncall-mid-batch", msgs(pbe("select 1"), loCreat(), pbe(look), pbe(kill), syncMsg)},
			{"plain", msgs(query(look + "; " + kill))},
		} {
			rp := r.exchange(v.ms)
			for _, row := range rp.rows {
				if row[0] == "seen" && strings.Contains(row[1], secret) {
					t.Errorf("LEAK %s: pg_stat_activity showed the attacker another client's query with its claims: %.200q", v.name, row[1])
				}
				if row[0] == "cancel" && row[1] == "true" {
					t.Errorf("LEAK %s: Postgres let the attacker cancel another client's backend", v.name)
				}
			}
		}
		if err := <-done; err != nil {
			t.Errorf("LEAK: the other client's query failed: %v", err)
		}
		if rows := b.logRows("bystander-done"); len(rows) != 1 {
			t.Errorf("LEAK: the other client's query did not complete (attack_log rows %q)", rows)
		}
	})
}

// --- class 3: code written at run time

// tempSchemaName finds the name of the attacker's temporary schema
// (pg_temp_N), creating it if needed; without TEMPORARY it guesses.
func tempSchemaName(t *testing.T, rows [][]string) string {
	for _, r := range rows {
		if len(r) == 2 && r[0] == "tempschema" && r[1] != "" && r[1] != "-" {
			return r[1]
		}
	}
	return "pg_temp_3"
}

const tempSchemaSQL = `begin; create temp table atk_ns (x int) on commit drop;
	select 'tempschema', coalesce(pg_my_temp_schema()::regnamespace::text, '-'); commit`

// tempSpellings name the temporary schema: where an object is created
// (with a statement before that, if any) and how it is called.
func tempSpellings(ns string) []struct{ name, before, create, call string } {
	return []struct{ name, before, create, call string }{
		{"pg_temp", "", "pg_temp.", "pg_temp."},
		{"quoted-pg_temp", "", `"pg_temp".`, `"pg_temp".`},
		{"upper-case-PG_TEMP", "", "PG_TEMP.", "PG_TEMP."},
		{"unicode-escape", "", `U&"pg\005ftemp".`, `U&"pg\005ftemp".`},
		{"unicode-escape-uescape", "", `U&"pg!005ftemp" UESCAPE '!'.`, `U&"pg!005ftemp" UESCAPE '!'.`},
		{"set-local-search-path", "set local search_path = pg_temp", "", `U&"pg\005ftemp".`},
		{"set_config-search-path", "select set_config('search_path', 'pg_temp', true)", "", `U&"pg\005ftemp".`},
		{"numbered-" + ns, "", ns + ".", ns + "."},
	}
}

// runtimeBodies are PL/pgSQL function bodies that build an identity change
// at run time, out of the guard's sight.
var runtimeBodies = []struct{ name, body string }{
	{"concatenated-set-role", `begin execute 'SE'||'T ROLE web_admin'; end`},
	{"concatenated-set-role-none", `begin execute 'SE'||'T ROLE NONE'; end`},
	{"variable-set-role", `declare s text := 'SE'; begin execute s || 'T ROLE web_admin'; end`},
	{"chr-set-role", `begin execute chr(83)||'ET ROLE web_admin'; end`},
	{"reversed-set-role", `begin execute reverse('nimda_bew ELOR TES'); end`},
	{"hex-decoded-set-role", `begin execute convert_from('\x53455420524f4c45207765625f61646d696e', 'UTF8'); end`},
	{"set_config-built-at-run-time", `begin execute 'select se'||'t_config($1, $2, false)' using 'jwt.'||'claims.sub', 'alice'; end`},
	{"set-claim-not-carried", `begin execute 'SE'||'T jwt.'||'claims.admin = ''yes'''; end`},
	{"set-app-setting", `begin execute 'SE'||'T app.x = ''left by mallory'''; end`},
}

// TestAttack3RuntimeBuiltIdentityChange: with TEMPORARY (Postgres's
// default), a temporary PL/pgSQL function in any spelling of the temporary
// schema builds SET ROLE or set_config at run time; or changes another
// temporary function's SET role at run time. Neither the rest of the
// transaction, nor the attacker's next one, nor the next client may run as
// anything but its token.
func TestAttack3RuntimeBuiltIdentityChange(t *testing.T) {
	eachAttackEnv(t, func(t *testing.T, a *atk) {
		c := a.connect(t, a.token("web_user", "mallory"))
		rows, _ := simpleRows(t, c, tempSchemaSQL)
		_, _ = simpleRows(t, c, "rollback") // without TEMPORARY the transaction failed
		ns := tempSchemaName(t, rows)
		attackerPID := a.probe(t, "the attacker", c, false, "web_user", "mallory")
		i := 0
		for _, sp := range tempSpellings(ns) {
			for _, body := range runtimeBodies {
				t.Run(sp.name+"/"+body.name, func(t *testing.T) {
					for _, extended := range []bool{false, true} {
						i++
						f := fmt.Sprintf("atk_f%d", i)
						stmts := []string{
							fmt.Sprintf("create function %s%s() returns void language plpgsql as $atk$%s$atk$", sp.create, f, body.body),
							fmt.Sprintf("select %s%s()", sp.call, f),
							probeSQL, rlsSQL,
						}
						if sp.before != "" {
							stmts = append([]string{sp.before}, stmts...)
						}
						a.runAttack(t, c, sp.name+"/"+body.name, extended, stmts)
					}
				})
			}
			t.Run(sp.name+"/alter-function-set-role-at-run-time", func(t *testing.T) {
				for _, extended := range []bool{false, true} {
					i++
					f, g := fmt.Sprintf("atk_f%d", i), fmt.Sprintf("atk_g%d", i)
					stmts := []string{
						fmt.Sprintf("create function %s%s() returns setof text language sql as 'select owner from api.todos'", sp.create, g),
						fmt.Sprintf("create function %s%s() returns void language plpgsql as $atk$begin execute 'ALTER FUNCTION pg_temp.%s() SE'||'T role = web_admin'; end$atk$", sp.create, f, g),
						fmt.Sprintf("select %s%s()", sp.call, f),
						fmt.Sprintf("select 'rls', %s%s()", sp.call, g),
						probeSQL,
					}
					if sp.before != "" {
						stmts = append([]string{sp.before}, stmts...)
					}
					a.runAttack(t, c, sp.name+"/alter-function", extended, stmts)
				}
			})
		}
		a.thenVictim(t, func() { _ = c.Close(ctx(t)) }, attackerPID, cleanOpts{})
	})
}

// runStmts runs statements as one Query (simple) or as one batch of
// Parse/Bind/Execute (extended) and returns the rows Postgres sent.
func runStmts(t *testing.T, c *pgconn.PgConn, extended bool, stmts []string) ([][]string, error) {
	t.Helper()
	if !extended {
		return simpleRows(t, c, strings.Join(stmts, ";\n"))
	}
	res, err := c.ExecBatch(ctx(t), batchOf(stmts...)).ReadAll()
	return flatten(res), err
}

// runAttack runs statements as one Query (simple) or as one batch of
// Parse/Bind/Execute (extended), then checks what Postgres says they and
// the client's next transaction ran as.
func (a *atk) runAttack(t *testing.T, c *pgconn.PgConn, what string, extended bool, stmts []string) {
	t.Helper()
	var rows [][]string
	var err error
	rows, err = runStmts(t, c, extended, stmts)
	what += map[bool]string{false: " (simple)", true: " (extended)"}[extended]
	t.Logf("%s: %v", what, err)
	a.checkIdents(t, what, rows, "web_user", "mallory")
	rows, err = simpleRows(t, c, probeSQL+"; "+rlsSQL)
	if err != nil {
		t.Errorf("%s: the next transaction failed: %v", what, err)
	}
	a.checkIdents(t, what+", the next transaction", rows, "web_user", "mallory")
}

// TestAttack3TempTableShadowsTodos: a temporary table named todos, created
// in any spelling of the temporary schema, would come before api.todos in
// the search path of the next client on the backend; a trigger on it runs
// the attacker's code as that client and copies the client's rows into a
// table the attacker reads later. The victim's insert must reach
// api.todos, the attacker must find none of the victim's rows, and nothing
// temporary may be left for the client after.
func TestAttack3TempTableShadowsTodos(t *testing.T) {
	eachSetupAndMode(t, attackSetups, attackModes, func(t *testing.T, setup dbSetup, mode string) {
		for _, sp := range tempSpellings("pg_temp_N") {
			for _, extended := range []bool{false, true} {
				name := sp.name + map[bool]string{false: "/simple", true: "/extended"}[extended]
				t.Run(name, func(t *testing.T) {
					a := startAttack(t, setup, mode, nil)
					c := a.connect(t, a.token("web_user", "mallory"))
					rows, _ := simpleRows(t, c, tempSchemaSQL)
					_, _ = simpleRows(t, c, "rollback")
					ns := tempSchemaName(t, rows)
					in := strings.ReplaceAll(sp.create, "pg_temp_N", ns)
					call := strings.ReplaceAll(sp.call, "pg_temp_N", ns) // functions need the schema
					stmts := []string{
						fmt.Sprintf("create table %stodos (like api.todos including defaults)", in),
						fmt.Sprintf("create table %sloot (owner text, title text)", in),
						fmt.Sprintf("create function %ssteal() returns trigger language plpgsql as $atk$begin insert into loot select owner, title from api.todos; return new; end$atk$", in),
						fmt.Sprintf("create trigger steal before insert on %stodos for each row execute function %ssteal()", in, call),
					}
					if sp.before != "" {
						stmts = append([]string{sp.before}, stmts...)
					}
					_, err := runStmts(t, c, extended, stmts)
					t.Logf("attack: %v", err)
					attackerPID := a.probe(t, "the attacker", c, false, "web_user", "mallory")
					if mode == "session" {
						_ = c.Close(ctx(t))
					}
					// The victim writes and reads her todos.
					note := "alice-secret-" + strconv.FormatInt(time.Now().UnixNano(), 36)
					v := a.connect(t, a.token("web_user", "alice"))
					rows, err = simpleRows(t, v, "insert into todos (title) values ('"+note+"'); "+probeSQL+"; select 'seen', title from todos")
					if err != nil {
						t.Logf("victim: %v", err)
					}
					a.checkIdents(t, "the victim", rows, "web_user", "alice")
					if got := a.superuser("select count(*) from api.todos where title = '" + note + "'"); got[0][0] != "1" {
						t.Errorf("LEAK: the victim's insert did not reach api.todos (%s rows there): it went into a table the attacker made", got[0][0])
					}
					seen := 0
					for _, r := range rows {
						if r[0] == "seen" {
							seen++
						}
					}
					if seen != 4 {
						t.Errorf("LEAK: the victim's select from todos saw %d rows, want her 4 of api.todos", seen)
					}
					_ = v.Close(ctx(t))
					// The attacker comes back for the loot.
					if mode == "session" {
						c = a.connect(t, a.token("web_user", "mallory"))
					}
					rows, _ = simpleRows(t, c, "select 'loot', owner, title from "+call+"loot")
					for _, r := range rows {
						if r[0] == "loot" && r[1] != "mallory" {
							t.Errorf("LEAK: the attacker's table holds a row of %s: %q", r[1], r[2])
							break
						}
					}
					// (The victim's insert took a value from the sequence: the
					// next client's lastval() is another test's business.)
					a.thenVictim(t, func() { _ = c.Close(ctx(t)) }, attackerPID, cleanOpts{victimUsedSequence: true})
				})
			}
		}
	})
}

// --- class 4: state left for the next client

// leftoverVariant is one way to leave something on the backend: sql runs
// as one Query (simple) or as one batch, one statement per Parse
// (extended, with args bound to the last statement).
type leftoverVariant struct {
	name     string
	extended bool
	sql      []string
	args     []string
	claims   []any // more claims of the attacker's token (name, value pairs)
}

// leaveForNext runs each variant in a fresh database and pgtoken per setup
// and mode: the attacker (web_user mallory) runs it, then alice comes next
// on the same backend and must find nothing of it.
func leaveForNext(t *testing.T, variants []leftoverVariant) {
	eachSetupAndMode(t, attackSetups, attackModes, func(t *testing.T, setup dbSetup, mode string) {
		for _, v := range variants {
			t.Run(v.name, func(t *testing.T) {
				a := startAttack(t, setup, mode, nil)
				c := a.connect(t, a.token("web_user", "mallory", v.claims...))
				var err error
				if v.extended {
					b := &pgconn.Batch{}
					for i, s := range v.sql {
						var params [][]byte
						if i == len(v.sql)-1 {
							for _, x := range v.args {
								params = append(params, []byte(x))
							}
						}
						b.ExecParams(s, params, nil, nil, nil)
					}
					_, err = c.ExecBatch(ctx(t), b).ReadAll()
				} else {
					_, err = simpleRows(t, c, strings.Join(v.sql, "; "))
				}
				t.Logf("attack: %v", err)
				pid := a.probe(t, "the attacker", c, false, "web_user", "mallory")
				a.thenVictim(t, func() { _ = c.Close(ctx(t)) }, pid, cleanOpts{})
			})
		}
	})
}

// bothProtocols makes a simple and an extended variant of each statement
// list.
func bothProtocols(vs ...leftoverVariant) []leftoverVariant {
	var out []leftoverVariant
	for _, v := range vs {
		s, e := v, v
		s.name += "/simple"
		e.name += "/extended"
		e.extended = true
		out = append(out, s, e)
	}
	return out
}

const leftValue = "left by mallory"

// TestAttack4SettingsLeftForNextClient: session-level settings of any name
// outside the claims (placeholders never appear in pg_settings), set by
// set_config(..., false) in every form, by SET, by an owner-written
// function, or a claim the next client's token does not carry: the next
// client on the backend must not see them.
func TestAttack4SettingsLeftForNextClient(t *testing.T) {
	l := "'" + leftValue + "'"
	leaveForNext(t, append(bothProtocols(
		leftoverVariant{name: "set_config-false", sql: []string{"select set_config('app.x', " + l + ", false)"}},
		leftoverVariant{name: "SET_CONFIG-qualified-upper-case", sql: []string{"SELECT PG_CATALOG.SET_CONFIG('app.x', " + l + ", FALSE)"}},
		leftoverVariant{name: "set_config-in-from", sql: []string{"select * from set_config('app.x', " + l + ", false)"}},
		leftoverVariant{name: "set_config-is_local-text-f", sql: []string{"select set_config('app.x', " + l + ", 'f')"}},
		leftoverVariant{name: "set_config-is_local-expression", sql: []string{"select set_config('app.x', " + l + ", 1 = 0)"}},
		leftoverVariant{name: "set_config-mixed-case-name", sql: []string{"select set_config('App.X', " + l + ", false)"}},
		leftoverVariant{name: "set_config-in-values", sql: []string{"values (set_config('app.x', " + l + ", false))"}},
		leftoverVariant{name: "set_config-value-from-subquery", sql: []string{"select set_config('app.x', v, false) from (values (" + l + ")) s(v)"}},
		leftoverVariant{name: "set_config-inside-begin-commit", sql: []string{"begin", "select set_config('app.x', " + l + ", false)", "commit"}},
		leftoverVariant{name: "set-session", sql: []string{"set app.x = " + l}},
		leftoverVariant{name: "SET-SESSION-quoted-parts", sql: []string{`SET SESSION "app"."x" TO ` + l}},
		leftoverVariant{name: "set-inside-begin-commit", sql: []string{"begin", "set app.z = " + l, "commit"}},
		leftoverVariant{name: "owner-function-app-setting", sql: []string{"select api.remember('app.y', " + l + ")"}},
		leftoverVariant{name: "owner-function-claim-not-carried", sql: []string{"select api.remember('jwt.claims.extra', " + l + ")"}},
	),
		leftoverVariant{name: "set_config-is_local-bound/extended", extended: true, sql: []string{"select set_config('app.x', $1, $2)"}, args: []string{leftValue, "false"}},
		leftoverVariant{name: "owner-function-bound-name/extended", extended: true, sql: []string{"select api.remember($1, $2)"}, args: []string{"app.y", leftValue}},
	))
}

// TestAttack4NoTransactionBlockStatementsLeaveNothing: statements that
// cannot run in a transaction block (VACUUM, CREATE INDEX CONCURRENTLY)
// run with the role and claims set at session level around them; when
// they fail, nothing of that may stay — the attacker's token carries a
// claim the next client's does not.
func TestAttack4NoTransactionBlockStatementsLeaveNothing(t *testing.T) {
	extra := []any{"extra", leftValue}
	var vs []leftoverVariant
	for _, q := range []string{"vacuum api.notes", "vacuum api.nonexistent", "VACUUM (ANALYZE, bogus_option) api.notes",
		"vacuum api.todos, api.nonexistent", "create index concurrently on api.notes (body)", "analyze api.notes"} {
		vs = append(vs, leftoverVariant{name: strings.ReplaceAll(q, " ", "-"), sql: []string{q}, claims: extra})
	}
	leaveForNext(t, vs)
}

// TestAttack4SequenceValueLeftForNextClient: nextval (directly or by an
// insert's default) leaves lastval() and currval() on the backend; the next
// client must get "not yet defined in this session".
func TestAttack4SequenceValueLeftForNextClient(t *testing.T) {
	leaveForNext(t, bothProtocols(
		leftoverVariant{name: "nextval", sql: []string{"select nextval('api.todos_id_seq')"}},
		leftoverVariant{name: "insert-default", sql: []string{"insert into todos (title) values ('mallory was here')"}},
		leftoverVariant{name: "nextval-other-sequence", sql: []string{"select nextval('api.attack_log_id_seq')"}},
		leftoverVariant{name: "insert-inside-begin-commit", sql: []string{"begin", "insert into api.attack_log (tag) values ('seq')", "commit"}},
	))
}

// TestAttack4AdvisoryLocksAndListenLeftForNextClient: session-level
// advisory locks and LISTEN, taken inside owner-written functions (the
// guard sees only a function call) or directly in any spelling: the next
// client must hold no advisory lock and listen to nothing.
func TestAttack4AdvisoryLocksAndListenLeftForNextClient(t *testing.T) {
	leaveForNext(t, bothProtocols(
		leftoverVariant{name: "owner-function-advisory-lock", sql: []string{"select api.take_lock(4242)"}},
		leftoverVariant{name: "owner-function-listen", sql: []string{"select api.listen_to('atk_chan')"}},
		leftoverVariant{name: "pg_advisory_lock", sql: []string{"select pg_advisory_lock(4242)"}},
		leftoverVariant{name: "pg_catalog-qualified", sql: []string{"select pg_catalog.pg_advisory_lock(4242)"}},
		leftoverVariant{name: "unicode-escaped-name", sql: []string{`select U&"pg\005fadvisory\005flock"(4242)`}},
		leftoverVariant{name: "try-shared-two-keys", sql: []string{"select pg_try_advisory_lock_shared(42, 42)"}},
		leftoverVariant{name: "lock-in-from", sql: []string{"select * from pg_advisory_lock(4242)"}},
		leftoverVariant{name: "listen", sql: []string{"listen atk_chan"}},
		leftoverVariant{name: "LISTEN-quoted", sql: []string{`LISTEN "atk_chan"`}},
	))
}

// TestAttack4SessionIdentityLeftByOwnerFunction: an owner-written function
// (against docs/SECURITY.md's advice) sets role and claims at session
// level. The next client's own transactions get its prelude, but code that
// runs after a COMMIT inside its procedure, and a claim its token does not
// carry, would see the attacker's leftovers. Nothing the victim's procedure
// writes may carry the attacker's role or sub.
func TestAttack4SessionIdentityLeftByOwnerFunction(t *testing.T) {
	const sub = "mallory-says-admin"
	sql := "select api.remember('role', 'web_admin'), api.remember('jwt.claims.sub', '" + sub + "'), api.remember('jwt.claims.admin', 'yes')"
	eachSetupAndMode(t, attackSetups, attackModes, func(t *testing.T, setup dbSetup, mode string) {
		for _, extended := range []bool{false, true} {
			t.Run(map[bool]string{false: "simple", true: "extended"}[extended], func(t *testing.T) {
				a := startAttack(t, setup, mode, nil)
				c := a.connect(t, a.token("web_user", "mallory"))
				_, err := runStmts(t, c, extended, []string{sql})
				t.Logf("attack: %v", err)
				pid := a.probe(t, "the attacker's next transaction", c, false, "web_user", "mallory")
				if mode == "session" {
					_ = c.Close(ctx(t))
				}
				v := a.raw(t, a.token("web_user", "alice"))
				rp := v.exchange(msgs(pbe("call api.commit_between('victim')"), pbe(probeSQL), syncMsg))
				t.Logf("victim: %q", rp.codes())
				a.checkIdents(t, "the victim", rp.rows, "web_user", "alice")
				for _, r := range a.logRows("victim:") {
					if r[1] == "web_admin" || r[2] == sub {
						t.Errorf("LEAK: the victim's procedure wrote %q, after its COMMIT, as current_user=%s sub=%s: the attacker's session-level role and claims (backend %s; attacker on %s)", r[0], r[1], r[2], r[3], pid)
					}
				}
				v.close()
				// (The victim's procedure took sequence values itself.)
				a.nextClientClean(t, "web_user", "alice", pid, cleanOpts{victimUsedSequence: true})
			})
		}
	})
}

// TestAttack4PreparedStatementTextsOfOtherClients: a client prepares
// statements — SQL PREPARE (whose stored text Postgres takes from the
// whole Query message, pgtoken's prelude with the client's claims
// included) and protocol-level ones holding a literal — and another client
// (another role, or the same) comes next on the backend: pg_prepared_statements
// must show it neither the first client's claims nor its literals.
func TestAttack4PreparedStatementTextsOfOtherClients(t *testing.T) {
	eachSetupAndMode(t, attackSetups, attackModes, func(t *testing.T, setup dbSetup, mode string) {
		for _, firstRole := range []string{"web_admin", "web_user"} {
			t.Run("first-"+firstRole, func(t *testing.T) {
				a := startAttack(t, setup, mode, nil)
				stamp := strconv.FormatInt(time.Now().UnixNano(), 36)
				secret, literal := "claim-secret-"+stamp, "literal-secret-"+stamp
				first := a.connect(t, a.token(firstRole, "alice", "secret", secret))
				for _, sql := range []string{
					"prepare atk_sql as select title from todos where title <> 'x'",
					"execute atk_sql",
				} {
					if _, err := simpleRows(t, first, sql); err != nil {
						t.Logf("%s: %v", sql, err)
					}
				}
				if _, err := first.Prepare(ctx(t), "atk_proto", "select '"+literal+"' || title from todos", nil); err != nil {
					t.Fatal(err)
				}
				if err := first.ExecPrepared(ctx(t), "atk_proto", nil, nil, nil).Read().Err; err != nil {
					t.Fatal(err)
				}
				pid := a.probe(t, "the first client", first, false, firstRole, "alice")
				if mode == "session" {
					_ = first.Close(ctx(t))
				}
				a.nextClientClean(t, "web_user", "mallory", pid, cleanOpts{secrets: []string{secret, literal}})
			})
		}
	})
}

// TestAttack4WithHoldCursorLeftForNextClient: a cursor WITH HOLD over the
// first client's rows outlives its transaction on the backend; the next
// client must not be able to fetch from it.
func TestAttack4WithHoldCursorLeftForNextClient(t *testing.T) {
	eachSetupAndMode(t, attackSetups, attackModes, func(t *testing.T, setup dbSetup, mode string) {
		for _, v := range []struct{ name, sql string }{
			{"declare-with-hold", "declare atk_c cursor with hold for select owner, title from todos"},
			{"DECLARE-NO-SCROLL-WITH-HOLD", "DECLARE atk_c NO SCROLL CURSOR WITH HOLD FOR SELECT owner, title FROM todos"},
			{"declare-binary-insensitive-with-hold", "declare atk_c binary insensitive cursor with hold for select owner, title from todos"},
			{"declare-in-explicit-transaction", "begin; declare atk_c cursor with hold for select owner, title from todos; commit"},
		} {
			t.Run(v.name, func(t *testing.T) {
				a := startAttack(t, setup, mode, nil)
				first := a.connect(t, a.token("web_user", "alice"))
				_, err := simpleRows(t, first, v.sql)
				t.Logf("declare: %v", err)
				pid := a.probe(t, "the first client", first, false, "web_user", "alice")
				if mode == "session" {
					_ = first.Close(ctx(t))
				}
				next := a.connect(t, a.token("web_user", "mallory"))
				rows, err := simpleRows(t, next, "fetch all from atk_c")
				for _, r := range rows {
					if len(r) == 2 && r[0] != "mallory" {
						t.Errorf("LEAK: the next client fetched a row of %s from the first client's cursor: %q", r[0], r[1])
						break
					}
				}
				t.Logf("fetch: %d rows, %v", len(rows), err)
				_ = next.Close(ctx(t))
				a.nextClientClean(t, "web_user", "mallory", pid, cleanOpts{})
			})
		}
	})
}

// --- class 5: cancel

// repeat calls f (with the count so far) until stop is closed, then
// sends how many times it did.
func repeat(stop <-chan struct{}, f func(i int)) <-chan int {
	n := make(chan int, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				n <- i
				return
			default:
			}
			f(i)
		}
	}()
	return n
}

// cancelFlood sends CancelRequests with a client's key until stop is
// closed.
func cancelFlood(addr string, pid uint32, key []byte, stop <-chan struct{}) <-chan int {
	return repeat(stop, func(int) { _ = sendCancel(addr, pid, key) })
}

// TestAttack5CancelFloodHitsOnlyItsOwnQueries: a client floods
// CancelRequests for its own short queries while a victim sleeps and an
// innocent client runs short inserts, all on the same server connection
// (transaction mode, pool of one). Postgres must cancel none of their
// statements: every one of their rows is written.
func TestAttack5CancelFloodHitsOnlyItsOwnQueries(t *testing.T) {
	eachAttackEnvOf(t, []dbSetup{setupLocked}, []string{"transaction"}, nil, func(t *testing.T, a *atk) {
		attacker := a.connect(t, a.token("web_user", "mallory"))
		victim := a.connect(t, a.token("web_user", "alice"))
		innocent := a.connect(t, a.token("web_user", "bob"))
		stop := make(chan struct{})
		var floods []<-chan int
		for range 3 {
			floods = append(floods, cancelFlood(a.env.App.Addr(), attacker.PID(), attacker.SecretKey(), stop))
		}
		attackerDone := repeat(stop, func(n int) {
			q := "select 1"
			if n%2 == 1 {
				q = "select pg_sleep(0.01)" // a query in flight for the cancels to aim at
			}
			_, _ = attacker.Exec(context.Background(), q).ReadAll()
		})
		type result struct{ ok, cancelled, other int }
		var inn result
		innocentDone := repeat(stop, func(int) {
			_, err := innocent.Exec(context.Background(), "insert into api.attack_log (tag) values ('innocent')").ReadAll()
			switch pe := pgErr(err); {
			case err == nil:
				inn.ok++
			case pe != nil && pe.Code == "57014":
				inn.cancelled++
			default:
				inn.other++
				t.Logf("innocent: %v", err)
			}
		})
		const sleeps = 5
		victimCancelled := 0
		for i := range sleeps {
			_, err := victim.Exec(ctx(t), fmt.Sprintf("select pg_sleep(0.5); insert into api.attack_log (tag) values ('victim-%d')", i)).ReadAll()
			if pe := pgErr(err); pe != nil && pe.Code == "57014" {
				victimCancelled++
			} else if err != nil {
				t.Errorf("victim: %v", err)
			}
		}
		close(stop)
		sent := 0
		for _, f := range floods {
			sent += <-f
		}
		<-innocentDone
		t.Logf("attacker: %d queries, %d cancel requests; innocent: %+v", <-attackerDone, sent, inn)
		got := a.superuser("select count(*) filter (where tag like 'victim-%'), count(*) filter (where tag = 'innocent') from api.attack_log")
		if victimCancelled > 0 || got[0][0] != strconv.Itoa(sleeps) {
			t.Errorf("LEAK: the attacker's cancel requests cancelled %d of the victim's %d statements (Postgres kept %s of its rows)", victimCancelled, sleeps, got[0][0])
		}
		if inn.cancelled > 0 || got[0][1] != strconv.Itoa(inn.ok) {
			t.Errorf("LEAK: the attacker's cancel requests cancelled %d of the innocent client's %d inserts (Postgres kept %s rows)", inn.cancelled, inn.ok+inn.cancelled+inn.other, got[0][1])
		}
	})
}

// TestAttack5CancelWhileWaitingForServerConnection: a statement still
// waiting for the (busy) server connection is cancelled by its client: it
// must never run, and the victim holding the connection must not be
// cancelled.
func TestAttack5CancelWhileWaitingForServerConnection(t *testing.T) {
	eachAttackEnvOf(t, []dbSetup{setupLocked}, []string{"transaction"}, nil, func(t *testing.T, a *atk) {
		victim := a.connect(t, a.token("web_user", "alice"))
		attacker := a.connect(t, a.token("web_user", "mallory"))
		victimErr := a.startActive(t, victim, "select pg_sleep(2); insert into api.attack_log (tag) values ('victim-slept')", "pg_sleep(2)")
		attackerErr := make(chan error, 1)
		go func() {
			_, err := attacker.Exec(ctx(t), "insert into api.attack_log (tag) values ('cancelled-while-waiting')").ReadAll()
			attackerErr <- err
		}()
		time.Sleep(300 * time.Millisecond) // the insert waits for the server connection
		for range 3 {
			if err := sendCancel(a.env.App.Addr(), attacker.PID(), attacker.SecretKey()); err != nil {
				t.Fatal(err)
			}
		}
		if err := <-victimErr; err != nil {
			t.Errorf("LEAK: the victim's statement failed: %v", err)
		}
		err := <-attackerErr
		t.Logf("attacker: %v", err)
		if rows := a.logRows("cancelled-while-waiting"); len(rows) != 0 {
			t.Errorf("LEAK: a statement cancelled while it waited for a server connection ran later: Postgres has its row %q", rows)
		}
		if pe := pgErr(err); pe == nil || pe.Code != "57014" {
			t.Errorf("the cancelled statement answered %v, want 57014", err)
		}
		if rows := a.logRows("victim-slept"); len(rows) != 1 {
			t.Errorf("LEAK: the victim's statement did not complete: %q", rows)
		}
	})
}

// TestAttack5CancelArrivesAfterHandOver: in both modes, an attacker floods
// cancels for its own query and leaves at once; the next client on the
// same backend (session mode) or the next transaction on it (transaction
// mode) runs a sleep that must not be cancelled.
func TestAttack5CancelArrivesAfterHandOver(t *testing.T) {
	eachAttackEnvOf(t, []dbSetup{setupLocked}, attackModes, nil, func(t *testing.T, a *atk) {
		const rounds = 8
		cancelled := 0
		for i := range rounds {
			attacker := a.connect(t, a.token("web_user", "mallory"))
			stop := make(chan struct{})
			var floods []<-chan int
			for range 2 {
				floods = append(floods, cancelFlood(a.env.App.Addr(), attacker.PID(), attacker.SecretKey(), stop))
			}
			_, _ = attacker.Exec(ctx(t), "select pg_sleep(0.05)").ReadAll()
			_ = attacker.Close(ctx(t))
			close(stop)
			for _, f := range floods {
				<-f
			}
			victim := a.connect(t, a.token("web_user", "alice"))
			_, err := victim.Exec(ctx(t), fmt.Sprintf("select pg_sleep(0.3); insert into api.attack_log (tag) values ('victim-%d')", i)).ReadAll()
			if pe := pgErr(err); pe != nil && pe.Code == "57014" {
				cancelled++
			} else if err != nil {
				t.Errorf("victim: %v", err)
			}
			_ = victim.Close(ctx(t))
		}
		if got := a.superuser("select count(*) from api.attack_log where tag like 'victim-%'"); cancelled > 0 || got[0][0] != strconv.Itoa(rounds) {
			t.Errorf("LEAK: cancels the attacker sent for its own query cancelled %d of %d statements of the next client (Postgres kept %s rows)", cancelled, rounds, got[0][0])
		}
	})
}

// --- class 6: token expiry

// expiryLeeway is jwt.leeway in the expiry tests.
const expiryLeeway = time.Second

// TestAttack6TransactionOpenAtExpiry: a transaction (simple or extended,
// explicit or a batch never synced, idle or running a long statement) is
// open when the token expires. Within jwt.leeway it must be ended: in
// Postgres, no backend of pgtoken is left inside it or running its
// statement, and nothing it wrote is ever committed, whatever the client
// sends afterwards.
func TestAttack6TransactionOpenAtExpiry(t *testing.T) {
	type variant struct {
		name string
		// open starts the transaction; finish tries to commit it later.
		open   func(t *testing.T, r *rawClient, tag string)
		finish []pgproto3.FrontendMessage
	}
	insert := func(tag string) string { return "insert into api.notes (body) values ('" + tag + "')" }
	variants := []variant{
		{"simple-begin-insert-idle", func(t *testing.T, r *rawClient, tag string) {
			r.exchange(msgs(query("begin; " + insert(tag))))
		}, msgs(query("insert into api.notes (body) values ('late'); commit"))},
		{"extended-begin-insert-idle", func(t *testing.T, r *rawClient, tag string) {
			r.exchange(msgs(pbe("begin"), pbe(insert(tag)), syncMsg))
		}, msgs(pbe("commit"), syncMsg)},
		{"extended-batch-never-synced", func(t *testing.T, r *rawClient, tag string) {
			r.send(msgs(pbe(insert(tag)), flushMsg))
		}, msgs(syncMsg)},
		{"simple-long-statement-across-exp", func(t *testing.T, r *rawClient, tag string) {
			r.send(msgs(query("begin; " + insert(tag) + "; select pg_sleep(5)")))
		}, msgs(query("commit"))},
		{"simple-one-query-commits-after-sleep", func(t *testing.T, r *rawClient, tag string) {
			r.send(msgs(query(insert(tag) + "; select pg_sleep(5)")))
		}, nil},
	}
	eachSetupAndMode(t, []dbSetup{setupLocked}, attackModes, func(t *testing.T, setup dbSetup, mode string) {
		for _, v := range variants {
			t.Run(v.name, func(t *testing.T) {
				a := startAttack(t, setup, mode, func(c *config.Config) { c.JWT.Leeway = config.Duration(expiryLeeway) })
				t.Parallel() // (mostly waiting for the clock)
				exp := time.Now().Add(2 * time.Second).Truncate(time.Second).Add(time.Second)
				tok := pgtest.Token(t, map[string]any{"role": "web_user", "sub": "alice", "exp": exp.Unix()})
				r := a.raw(t, tok)
				tag := "expiry-" + strconv.FormatInt(time.Now().UnixNano(), 36)
				v.open(t, r, tag)
				waitFor(t, 5*time.Second, "the transaction never showed in pg_stat_activity", func() bool {
					return len(a.backendsWhere("xact_start is not null")) > 0
				})
				time.Sleep(time.Until(exp.Add(expiryLeeway + 1500*time.Millisecond)))
				if open := a.backendsWhere("xact_start is not null"); len(open) > 0 {
					t.Errorf("LEAK: %s after the token's exp (leeway %s), Postgres still has the client's transaction open: %q",
						time.Since(exp).Round(100*time.Millisecond), expiryLeeway, open)
				}
				if v.finish != nil {
					_ = r.nc.SetWriteDeadline(time.Now().Add(2 * time.Second))
					var b []byte
					for _, m := range v.finish {
						b, _ = m.Encode(b)
					}
					_, _ = r.nc.Write(b)
				}
				rp := r.readFor(2 * time.Second)
				ended := false
				for _, e := range rp.errs {
					if e.Severity == "FATAL" {
						ended = true
						t.Logf("the client got FATAL %s %s", e.Code, e.Message)
					}
				}
				if !ended {
					t.Errorf("the client was not told FATAL (errors %q, rows %q)", rp.codes(), rp.rows)
				}
				if got := a.superuser("select count(*) from api.notes where body in ('" + tag + "', 'late')"); got[0][0] != "0" {
					t.Errorf("LEAK: a transaction open at the token's exp committed: Postgres has %s of its rows", got[0][0])
				}
			})
		}
	})
}

// --- class 7: lock-out

// loginWith logs in from a loopback source address with any password,
// empty included (quoted for the connection string).
func (a *atk) loginWith(src, password string) (*pgconn.PgConn, error) {
	return connectFrom(a.env, src, "'"+strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(password)+"'")
}

// TestAttack7FailedLoginsDoNotLockOutValidTokens: failed logins from one
// address — empty passwords, garbage, bad signatures, a legitimate client
// retrying its expired token — at and beyond limits.auth_failures_before_backoff
// (5): a valid token from the same address must still log in and run as
// itself, also while the failures go on.
func TestAttack7FailedLoginsDoNotLockOutValidTokens(t *testing.T) {
	badSig, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"role": "web_user", "sub": "x", "exp": time.Now().Add(time.Hour).Unix()}).
		SignedString([]byte("not-the-secret-not-the-secret-00"))
	if err != nil {
		t.Fatal(err)
	}
	expired := pgtest.Token(t, map[string]any{"role": "web_user", "sub": "alice", "exp": time.Now().Add(-time.Minute).Unix()})
	for _, v := range []struct {
		name      string
		passwords []string
		src       string
	}{
		{"five-empty-passwords", []string{"", "", "", "", ""}, "127.0.0.1"},
		{"five-garbage-passwords", []string{"x", "not a jwt", "a.b.c", "eyJ", "...."}, "127.0.0.1"},
		{"five-bad-signatures", []string{badSig, badSig, badSig, badSig, badSig}, "127.0.0.1"},
		{"five-expired-tokens-of-a-legitimate-client", []string{expired, expired, expired, expired, expired}, "127.0.0.1"},
		{"twenty-mixed-from-another-address", []string{"", "x", badSig, expired, "", "x", badSig, expired, "", "x", badSig, expired, "", "x", badSig, expired, "", "x", badSig, expired}, "127.0.0.2"},
	} {
		t.Run(v.name, func(t *testing.T) {
			// The defaults: slow failing logins down, never lock out.
			a := startAttack(t, setupLocked, "transaction", nil)
			valid := func(what string) {
				t.Helper()
				c, err := a.loginWith(v.src, a.token("web_user", "alice"))
				if err != nil {
					t.Errorf("LOCKED OUT %s: a valid token from %s was refused: %v", what, v.src, err)
					return
				}
				defer func() { _ = c.Close(ctx(t)) }()
				a.probe(t, what, c, false, "web_user", "alice")
			}
			for _, p := range v.passwords {
				if c, err := a.loginWith(v.src, p); err == nil {
					_ = c.Close(ctx(t))
					t.Fatalf("a bad password logged in: %q", p)
				}
			}
			valid("after the failures")
			// The failures go on while the valid client logs in.
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if c, err := a.loginWith(v.src, v.passwords[i%len(v.passwords)]); err == nil {
						_ = c.Close(context.Background())
					}
				}
			}()
			for i := range 3 {
				valid(fmt.Sprintf("during the failures (%d)", i))
			}
			close(stop)
			<-done
		})
	}
}

// --- class 8: any database

// TestAttack8OnlyConfiguredDatabases: a valid token asks for databases
// pgtoken does not serve — postgres (every login may connect to it by
// default), the templates, the served database in other case, unknown
// names. Each is refused with 3D000 before a pool exists: Postgres shows
// no backend of pgtoken's login in any other database, and pgtoken has
// one pool, the served database's.
func TestAttack8OnlyConfiguredDatabases(t *testing.T) {
	eachAttackEnvOf(t, attackSetups, []string{"transaction"}, nil, func(t *testing.T, a *atk) {
		tok := a.token("web_user", "mallory")
		names := []string{"postgres", "template1", "template0", strings.ToUpper(a.env.DB), a.env.DB + " ", "app"}
		for i := range 20 {
			names = append(names, fmt.Sprintf("nonexistent_%d_%d", i, time.Now().UnixNano()))
		}
		for _, db := range names {
			cfg, err := pgconn.ParseConfig(a.env.DSN(tok))
			if err != nil {
				t.Fatal(err)
			}
			cfg.Database = db
			c, err := pgconn.ConnectConfig(ctx(t), cfg)
			if err == nil {
				rows, qerr := simpleRows(t, c, "select current_database(), "+probeSQL[len("select "):])
				t.Errorf("LEAK: a token opened database %q: %q (%v)", db, rows, qerr)
				_ = c.Close(ctx(t))
				continue
			}
			if pe := pgErr(err); pe == nil || pe.Code != "3D000" {
				t.Errorf("database %q: %v, want 3D000", db, err)
			}
		}
		if rows := a.superuser("select datname, count(*)::text from pg_stat_activity where usename = '" + a.login + "' and datname <> current_database() group by datname"); len(rows) > 0 {
			t.Errorf("LEAK: Postgres has backends of pgtoken's login in other databases: %q", rows)
		}
		var pools []string
		for _, p := range a.env.App.Server.Stats().Pools {
			pools = append(pools, p.Database)
		}
		if len(pools) != 1 || pools[0] != a.env.DB {
			t.Errorf("LEAK: pgtoken made pools for %q; want only %q", pools, a.env.DB)
		}
		// A server connection left in template1 would make every later
		// CREATE DATABASE on the shared cluster fail: stop pgtoken now and
		// wait for its backends to go.
		_ = a.env.App.Close()
		waitFor(t, 10*time.Second, "pgtoken's backends in other databases did not go away", func() bool {
			return len(a.superuser("select 1 from pg_stat_activity where usename = '"+a.login+"' and datname <> current_database()")) == 0
		})
	})
}

// --- no false refusals

// TestAttackOrdinarySQLNotRefused: what the fixes must keep working,
// in both protocols, modes and setups: ON COMMIT DROP temporary tables
// (where Postgres grants TEMPORARY; in the locked-down setup Postgres
// itself refuses them), SET LOCAL, transaction-local set_config of an app
// setting, literals and identifiers that look like commands or like
// pgtoken's names, transaction-level advisory locks, NOTIFY, cursors and
// savepoints inside a transaction, SQL PREPARE and protocol-level names
// that contain "pgtoken". Each runs as the token and gives what Postgres
// gives.
func TestAttackOrdinarySQLNotRefused(t *testing.T) {
	type variant struct {
		name  string
		stmts []string // one transaction: a Query string, or one batch
		want  []string // the "val" rows, in order
		temp  bool     // needs TEMPORARY: Postgres's own refusal is fine where it is not granted
	}
	variants := []variant{
		{"create-temp-table-on-commit-drop", []string{"begin", "create temp table t_ok (id int) on commit drop", "insert into t_ok values (1)", "select 'val', count(*)::text from t_ok", "commit"}, []string{"1"}, true},
		{"create-temp-table-pgtoken-in-name", []string{"begin", "create temporary table xpgtoken_prelude_5 (id int) on commit drop", "select 'val', count(*)::text from xpgtoken_prelude_5", "commit"}, []string{"0"}, true},
		{"set-local-statement_timeout", []string{"begin", "set local statement_timeout = '5s'", "select 'val', current_setting('statement_timeout')", "commit"}, []string{"5s"}, false},
		{"set_config-app-setting-local", []string{"select 'val', set_config('app.locale', 'de_DE', true)", "select 'val', current_setting('app.locale')"}, []string{"de_DE", "de_DE"}, false},
		{"set_config-search_path-local", []string{"select 'val', set_config('search_path', 'api, public', true)"}, []string{"api, public"}, false},
		{"literal-like-pgtoken-execute", []string{"select 'val', 'explain analyze execute pgtoken_prelude_5(''role'',''web_admin'')'"}, []string{"explain analyze execute pgtoken_prelude_5('role','web_admin')"}, false},
		{"dollar-literal-like-commands", []string{"select 'val', $$commit; set role web_admin; listen x$$"}, []string{"commit; set role web_admin; listen x"}, false},
		{"escape-literal-like-commands", []string{`select 'val', E'prepare transaction \'x\'; deallocate all; discard all'`}, []string{"prepare transaction 'x'; deallocate all; discard all"}, false},
		{"concatenated-literal", []string{"select 'val', 'SE'||'T ROLE web_admin'"}, []string{"SET ROLE web_admin"}, false},
		{"identifiers-containing-pgtoken", []string{`select 'val', xpgtoken_prelude_5.y::text from (select 1 as y) xpgtoken_prelude_5`, `select 'val', "my_pgtoken_s_1"::text from (select 2 as "my_pgtoken_s_1") s`}, []string{"1", "2"}, false},
		{"advisory-xact-lock", []string{"select 'val', pg_advisory_xact_lock(7)::text"}, []string{""}, false},
		{"notify", []string{"notify atk_chan, 'x'"}, nil, false},
		{"cursor-in-transaction", []string{"begin", "declare c cursor for select 'val', 'fetched'", "fetch c", "close c", "commit"}, []string{"fetched"}, false},
		{"savepoint", []string{"begin", "savepoint a", "select 'val', 'in savepoint'", "release a", "commit"}, []string{"in savepoint"}, false},
		{"commit-and-chain", []string{"begin", "commit and chain", "select 'val', 'chained'", "commit"}, []string{"chained"}, false},
		{"own-claim", []string{"select 'val', current_setting('jwt.claims.sub')"}, []string{"mallory"}, false},
	}
	eachAttackEnv(t, func(t *testing.T, a *atk) {
		c := a.connect(t, a.token("web_user", "mallory"))
		for _, v := range variants {
			for _, extended := range []bool{false, true} {
				name := v.name + map[bool]string{false: "/simple", true: "/extended"}[extended]
				t.Run(name, func(t *testing.T) {
					stmts := append([]string(nil), v.stmts...)
					// The probe runs inside the transaction (before a final
					// commit).
					at := len(stmts)
					if stmts[at-1] == "commit" {
						at--
					}
					stmts = append(stmts[:at], append([]string{probeSQL}, stmts[at:]...)...)
					rows, err := runStmts(t, c, extended, stmts)
					if err != nil {
						_, _ = simpleRows(t, c, "rollback")
						if pe := pgErr(err); v.temp && a.setup == setupLocked && pe != nil && pe.Code == "42501" &&
							strings.HasPrefix(pe.Message, "permission denied to create temporary tables in database") {
							t.Logf("Postgres refuses TEMPORARY here: %v", err)
							return
						}
						t.Fatalf("REFUSED: %v", err)
					}
					a.checkIdents(t, name, rows, "web_user", "mallory")
					if len(identsOf(rows)) != 1 {
						t.Errorf("the probe did not run: %q", rows)
					}
					var got []string
					for _, r := range rows {
						if len(r) == 2 && r[0] == "val" {
							got = append(got, r[1])
						}
					}
					if fmt.Sprint(got) != fmt.Sprint(v.want) {
						t.Errorf("got %q, want %q", got, v.want)
					}
				})
			}
		}
		// What was local stayed local.
		rows, err := simpleRows(t, c, "select current_setting('statement_timeout'), coalesce(current_setting('app.locale', true), ''), current_setting('search_path')")
		if err != nil || rows[0][0] != "0" || rows[0][1] != "" || rows[0][2] != "api, public" {
			t.Errorf("after the transactions: %q (%v)", rows, err)
		}
		// Names with "pgtoken" inside: SQL PREPARE and protocol-level.
		for _, sql := range []string{"prepare mypgtoken_q as select 'val', 'prepared'", "execute mypgtoken_q", "deallocate mypgtoken_q"} {
			if _, err := simpleRows(t, c, sql); err != nil {
				t.Errorf("REFUSED %s: %v", sql, err)
			}
		}
		for _, name := range []string{"my_pgtoken_stmt", "Xpgtoken_prelude_5", "PGTOKEN"} {
			if _, err := c.Prepare(ctx(t), name, probeSQL, nil); err != nil {
				t.Errorf("REFUSED Parse %q: %v", name, err)
				continue
			}
			r := c.ExecPrepared(ctx(t), name, nil, nil, nil).Read()
			if r.Err != nil {
				t.Errorf("REFUSED Bind/Execute %q: %v", name, r.Err)
			}
			a.checkIdents(t, "statement "+name, flatten([]*pgconn.Result{r}), "web_user", "mallory")
		}
	})
}
