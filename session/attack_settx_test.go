package session_test

// SET TRANSACTION must come before any query of its transaction; pgtoken's
// statements (the prelude, the hand-over reset, the settings replay) must
// not take a snapshot where the client's BEGIN leaves room for one.

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestAttackSetTransactionAfterBegin: transaction mode; before each
// variant another client used the one server connection (so the hand-over
// reset is due), or mallory changed a setting (so a replay is due). A
// BEGIN, then SET TRANSACTION in a later Query or batch, works directly.
// It failed for foreign/simple-begin-* while a simple-protocol BEGIN
// carried the reset, whose SELECT takes a snapshot (25001); a BEGIN alone
// now leaves its transaction bare.
func TestAttackSetTransactionAfterBegin(t *testing.T) {
	eachAttackEnvOf(t, attackSetups, []string{"transaction"}, nil, func(t *testing.T, a *atk) {
		other := a.connect(t, a.token("web_user", "alice"))
		r := a.raw(t, a.token("web_user", "mallory"))
		iso := query("select 'iso', current_setting('transaction_isolation')")
		for _, before := range []string{"foreign", "reset-consumed"} {
			for _, v := range []struct {
				name string
				ms   []pgproto3.FrontendMessage
			}{
				{"simple-begin-then-set-transaction", msgs(query("begin"), query("set transaction isolation level serializable"), iso)},
				{"simple-begin-then-set-transaction-extended", msgs(query("begin"), pbe("set transaction isolation level serializable"), syncMsg, iso)},
				{"extended-begin-then-set-transaction", msgs(pbe("begin"), syncMsg, query("set transaction isolation level serializable"), iso)},
			} {
				t.Run(before+"/"+v.name, func(t *testing.T) {
					var err error
					if before == "foreign" { // the reset goes with the BEGIN
						_, err = simpleRows(t, other, "select 1")
					} else {
						_ = r.exchange(msgs(query("set application_name = 'atk'")))
						_, err = simpleRows(t, other, "select 1")
						_ = r.exchange(msgs(query("select 1")))
					}
					if err != nil {
						t.Fatal(err)
					}
					rp := r.exchange(v.ms)
					if len(rp.errs) > 0 {
						t.Errorf("errors %q; Postgres runs BEGIN then SET TRANSACTION without one", rp.codes())
					}
					for _, row := range rp.rows {
						if len(row) == 2 && row[0] == "iso" && row[1] != "serializable" {
							t.Errorf("transaction_isolation = %s, want serializable", row[1])
						}
					}
					_ = r.exchange(msgs(query("rollback")))
					_ = r.exchange(msgs(query("reset application_name")))
				})
			}
		}
	})
}
