package session_test

// Attacks on a transaction that BEGIN opened in one batch and that stays
// bare (no prelude yet) across its Sync, and on the hand-over reset at the
// start of a client's first batch on a server connection another client
// used (transaction mode, one server connection).

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// leftSQL reads a setting the other client left on the backend.
const leftSQL = `select 'left', coalesce(nullif(current_setting('app.x', true), ''), '<none>')`

func checkNothingLeft(t *testing.T, what string, rows [][]string) {
	t.Helper()
	for _, r := range rows {
		if len(r) == 2 && r[0] == "left" && r[1] != "<none>" {
			t.Errorf("LEAK %s: app.x = %q of the client before is visible", what, r[1])
		}
	}
}

// TestAttackBareBeginAcrossSync: before each variant another client
// leaves app.x on the one server connection; mallory's batches begin
// with BEGIN (ending in Sync), with Close, SET TRANSACTION, AND CHAIN,
// SAVEPOINT, a FunctionCall, a named BEGIN bound later. Every statement
// must run as mallory, and see nothing the other client left; Postgres'
// own rules (SET TRANSACTION before any query) must hold as directly.
func TestAttackBareBeginAcrossSync(t *testing.T) {
	eachAttackEnvOf(t, attackSetups, []string{"transaction"}, nil, func(t *testing.T, a *atk) {
		other := a.connect(t, a.token("web_user", "alice"))
		r := a.raw(t, a.token("web_user", "mallory"))
		check := probeSQL + "; " + leftSQL
		type variant struct {
			name    string
			batches [][]pgproto3.FrontendMessage
			noErr   bool // Postgres answers these without an error
		}
		for _, v := range []variant{
			{"begin-sync-then-probe", [][]pgproto3.FrontendMessage{msgs(pbe("begin"), syncMsg), msgs(pbe(probeSQL), pbe(leftSQL), syncMsg)}, true},
			{"begin-sync-then-simple", [][]pgproto3.FrontendMessage{msgs(pbe("begin"), syncMsg), msgs(query(check))}, true},
			{"begin-sync-set-transaction", [][]pgproto3.FrontendMessage{msgs(pbe("begin"), syncMsg),
				msgs(pbe("set transaction isolation level serializable"), pbe(probeSQL), pbe(leftSQL), syncMsg)}, true},
			{"close-first-begin-sync-set-transaction", [][]pgproto3.FrontendMessage{
				msgs(&pgproto3.Close{ObjectType: 'P', Name: "nope"}, pbe("begin"), syncMsg),
				msgs(pbe("set transaction isolation level serializable"), pbe(probeSQL), pbe(leftSQL), syncMsg)}, true},
			{"close-stmt-first-begin-set-transaction-same-batch", [][]pgproto3.FrontendMessage{
				msgs(&pgproto3.Close{ObjectType: 'S', Name: "nope"}, pbe("begin"), pbe("set transaction isolation level serializable"), pbe(probeSQL), pbe(leftSQL), syncMsg)}, true},
			{"begin-chain-sync", [][]pgproto3.FrontendMessage{msgs(pbe("begin"), pbe("commit and chain"), syncMsg), msgs(pbe(probeSQL), pbe(leftSQL), syncMsg)}, true},
			{"begin-sync-savepoint-rollback-to", [][]pgproto3.FrontendMessage{msgs(pbe("begin"), syncMsg),
				msgs(query("savepoint a; " + probeSQL + "; rollback to a; " + check))}, true},
			{"begin-sync-savepoint-extended", [][]pgproto3.FrontendMessage{msgs(pbe("begin"), syncMsg),
				msgs(pbe("savepoint a"), pbe("rollback to a"), pbe(probeSQL), pbe(leftSQL), syncMsg)}, true},
			{"begin-sync-functioncall", [][]pgproto3.FrontendMessage{msgs(pbe("begin"), syncMsg), msgs(loCreat(), pbe(probeSQL), pbe(leftSQL), syncMsg)}, true},
			{"named-begin-bound-later", [][]pgproto3.FrontendMessage{
				msgs(&pgproto3.Parse{Name: "atk_b", Query: "begin"}, syncMsg),
				msgs(&pgproto3.Bind{PreparedStatement: "atk_b"}, &pgproto3.Execute{}, syncMsg),
				msgs(pbe(probeSQL), pbe(leftSQL), syncMsg),
				msgs(query("rollback"), &pgproto3.Close{ObjectType: 'S', Name: "atk_b"}, syncMsg)}, true},
			{"begin-flush-then-probe", [][]pgproto3.FrontendMessage{msgs(pbe("begin"), flushMsg), msgs(pbe(probeSQL), pbe(leftSQL), syncMsg)}, true},
			{"begin-sync-then-sync-storm", [][]pgproto3.FrontendMessage{msgs(pbe("begin"), syncMsg, syncMsg, syncMsg), msgs(pbe(probeSQL), pbe(leftSQL), syncMsg)}, true},
		} {
			t.Run(v.name, func(t *testing.T) {
				if _, err := simpleRows(t, other, "select api.remember('app.x', 'alice-secret')"); err != nil {
					t.Fatal(err)
				}
				var probes int
				for i, b := range v.batches {
					rp := r.exchange(b)
					if v.noErr && len(rp.errs) > 0 {
						t.Errorf("batch %d: errors %q (Postgres answers it without one)", i, rp.codes())
					}
					probes += len(identsOf(rp.rows))
					a.checkIdents(t, v.name, rp.rows, "web_user", "mallory")
					checkNothingLeft(t, v.name, rp.rows)
				}
				if probes == 0 {
					t.Errorf("no probe ran")
				}
				rp := r.exchange(msgs(query("rollback"), query(check)))
				a.checkIdents(t, v.name+", after", rp.rows, "web_user", "mallory")
				checkNothingLeft(t, v.name+", after", rp.rows)
			})
		}
		// mallory leaves with a bare transaction open; alice comes next.
		_, _ = simpleRows(t, other, "select api.remember('app.x', 'alice-secret')")
		rp := r.exchange(msgs(pbe("begin"), syncMsg))
		if rp.status != 'T' {
			t.Errorf("after BEGIN: status %q", rp.status)
		}
		r.close()
		a.nextClientClean(t, "web_user", "bob", "", cleanOpts{})
	})
}

// TestAttackPipelinedResetRolledBack: transaction mode; alice leaves
// app.x; mallory's first batches on the connection come in one write,
// without waiting: the reset goes into a transaction mallory then rolls
// back (ROLLBACK, ROLLBACK AND CHAIN, COMMIT of a failed transaction, an
// error in the batch), and the batches after must neither see app.x nor
// run as anyone but mallory.
func TestAttackPipelinedResetRolledBack(t *testing.T) {
	eachAttackEnvOf(t, attackSetups, []string{"transaction"}, nil, func(t *testing.T, a *atk) {
		other := a.connect(t, a.token("web_user", "alice"))
		r := a.raw(t, a.token("web_user", "mallory"))
		probe := msgs(pbe(probeSQL), pbe(leftSQL), syncMsg)
		for _, v := range []struct {
			name string
			ms   []pgproto3.FrontendMessage
		}{
			{"close-begin-sync-rollback", msgs(&pgproto3.Close{ObjectType: 'P', Name: "x"}, pbe("begin"), syncMsg, probe, query("rollback"), probe, query(probeSQL+"; "+leftSQL))},
			{"close-begin-rollback-chain", msgs(&pgproto3.Close{ObjectType: 'P', Name: "x"}, pbe("begin"), pbe("rollback and chain"), syncMsg, probe, query("rollback"), probe)},
			{"query-begin-error-commit", msgs(query("begin; "+probeSQL), query("select 1/0"), query("commit"), probe)},
			{"extended-error-after-reset", msgs(pbe(probeSQL), pbe("select 1/0"), syncMsg, probe)},
			{"flush-pipelined", msgs(pbe("begin"), flushMsg, pbe(probeSQL), flushMsg, pbe("rollback"), syncMsg, probe)},
			{"describe-first-rollback", msgs(&pgproto3.Parse{Name: "atk_p", Query: probeSQL}, &pgproto3.Describe{ObjectType: 'S', Name: "atk_p"}, pbe("begin"), pbe("rollback"), syncMsg, probe, &pgproto3.Close{ObjectType: 'S', Name: "atk_p"}, syncMsg)},
		} {
			t.Run(v.name, func(t *testing.T) {
				if _, err := simpleRows(t, other, "select api.remember('app.x', 'alice-secret')"); err != nil {
					t.Fatal(err)
				}
				rp := r.exchange(v.ms)
				t.Logf("errors %q, %d probes", rp.codes(), len(identsOf(rp.rows)))
				if len(identsOf(rp.rows)) == 0 {
					t.Errorf("no probe ran")
				}
				a.checkIdents(t, v.name, rp.rows, "web_user", "mallory")
				checkNothingLeft(t, v.name, rp.rows)
				rp = r.exchange(msgs(query("rollback"), query(probeSQL+"; "+leftSQL)))
				a.checkIdents(t, v.name+", after", rp.rows, "web_user", "mallory")
				checkNothingLeft(t, v.name+", after", rp.rows)
			})
		}
	})
}
