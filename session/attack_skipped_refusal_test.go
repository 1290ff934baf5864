package session_test

// A refused Query or FunctionCall inside a batch that the server (or
// pgtoken) is already skipping until Sync: Postgres ignores it without an
// answer, so the client must see one ErrorResponse and one ReadyForQuery
// per Sync, as directly; an extra ReadyForQuery would pair the client's
// next answers with the wrong requests.

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestAttackRefusedInSkippedBatch: refused Queries and FunctionCalls in a
// batch the server skips, or pgtoken drops, get no answer of their own, as
// directly (local-drop-refused-functioncall got an ErrorResponse and a
// ReadyForQuery while onFunctionCall refused before it looked at Dropping).
func TestAttackRefusedInSkippedBatch(t *testing.T) {
	eachAttackEnv(t, func(t *testing.T, a *atk) {
		r := a.raw(t, a.token("web_user", "mallory"))
		refusedSQL := "select pg_catalog.set_config('role', 'web_admin', false)"
		badCall := &pgproto3.FunctionCall{Function: 1242, ArgFormatCodes: []uint16{0}, Arguments: [][]byte{[]byte("x")}, ResultFormatCode: 0}
		for _, v := range []struct {
			name string
			ms   []pgproto3.FrontendMessage
		}{
			{"server-skipping-refused-query", msgs(pbe("select 1/0"), query(refusedSQL), syncMsg)},
			{"server-skipping-refused-functioncall", msgs(pbe("select 1/0"), badCall, syncMsg)},
			{"local-drop-refused-functioncall", msgs(pbe(refusedSQL), badCall, syncMsg)},
			{"local-drop-refused-query", msgs(pbe(refusedSQL), query(refusedSQL), syncMsg)},
			{"doomed-refused-functioncall", msgs(pbe("select 1"), pbe(refusedSQL), badCall, syncMsg)},
			{"doomed-refused-query", msgs(pbe("select 1"), pbe(refusedSQL), query(refusedSQL), syncMsg)},
			{"in-transaction-server-skipping-refused-functioncall", msgs(query("begin"), pbe("select 1/0"), badCall, syncMsg)},
		} {
			t.Run(v.name, func(t *testing.T) {
				r.send(v.ms)
				rp := r.readFor(time.Second)
				t.Logf("errors %q, %d ReadyForQuery", rp.codes(), rp.ready)
				want := 1
				if _, ok := v.ms[0].(*pgproto3.Query); ok {
					want = 2 // the BEGIN's
				}
				if rp.ready != want || len(rp.errs) != 1 {
					t.Errorf("got %d ReadyForQuery and %d errors (%q); Postgres sends %d and 1", rp.ready, len(rp.errs), rp.codes(), want)
				}
				_ = r.exchange(msgs(query("rollback")))
				a.checkIdents(t, v.name+", then a probe", r.exchange(msgs(query(probeSQL))).rows, "web_user", "mallory")
			})
		}
	})
}
