package session_test

// Attacks on the identity a procedure gets in the extended protocol: the
// session-level prelude (and the hand-over reset) go as bound statements in
// the batch's implicit transaction, the same transaction the procedure
// runs in. A procedure that ROLLBACKs undoes them, and goes on in a new
// transaction with whatever the session held before.

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/internal/config"
)

// rollbackProcSQL is an owner procedure that rolls back between two log
// rows (the second must be written as the caller's token, like any row).
const rollbackProcSQL = `
CREATE PROCEDURE api.rollback_between(tag text) LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO api.attack_log(tag) VALUES (tag || ':before');
  ROLLBACK;
  INSERT INTO api.attack_log(tag) VALUES (tag || ':after');
END $$;
REVOKE ALL ON PROCEDURE api.rollback_between(text) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE api.rollback_between(text) TO web_anon, web_user, web_admin;
`

// checkRollbackBetween checks api.rollback_between's rows for tag: no
// ":before" row (rolled back), and an ":after" row written as role/sub.
func checkRollbackBetween(t *testing.T, a *atk, tag, role, sub string, rp reply) {
	t.Helper()
	rows := a.logRows(tag + ":")
	t.Logf("%s: errors %q, rows %q", tag, rp.codes(), rows)
	after := false
	for _, r := range rows {
		if r[0] == tag+":before" {
			t.Errorf("%s: the :before row survived the ROLLBACK", tag)
		}
		if r[0] == tag+":after" {
			after = true
		}
		if r[1] != role || r[2] != sub {
			t.Errorf("LEAK: api.rollback_between wrote %q as current_user=%s sub=%s (backend %s); want %s/%s", r[0], r[1], r[2], r[3], role, sub)
		}
	}
	if !after {
		t.Errorf("LEAK?: api.rollback_between's part after ROLLBACK wrote nothing as %s/%s (errors %q): it ran as another role", role, sub, rp.codes())
	}
}

// TestAttackRollbackProcedureExtended: a procedure that ROLLBACKs, called
// with Parse/Bind/Execute/Sync as the first batch on a server connection
// another client used. When the reset and the identity for the session
// went as bound statements in the same implicit transaction as the CALL,
// the procedure's ROLLBACK undid them, and what it ran after ran as the
// upstream login without claims; now the identity is committed ahead.
func TestAttackRollbackProcedureExtended(t *testing.T) {
	eachAttackEnv(t, func(t *testing.T, a *atk) {
		a.superuser(rollbackProcSQL)
		r := a.raw(t, a.token("web_user", "mallory"))
		for _, v := range []struct {
			name string
			ms   []pgproto3.FrontendMessage
		}{
			{"call-alone", msgs(pbe("call api.rollback_between('call-alone')"), syncMsg)},
			{"call-after-select", msgs(pbe("select 1"), pbe("call api.rollback_between('call-after-select')"), syncMsg)},
			{"call-after-commit", msgs(pbe("begin"), pbe("select 1"), pbe("commit"), pbe("call api.rollback_between('call-after-commit')"), syncMsg)},
			{"query-mid-batch", msgs(pbe("select 1"), query("call api.rollback_between('query-mid-batch')"), syncMsg)},
			{"simple-call-alone", msgs(query("call api.rollback_between('simple-call-alone')"))},
		} {
			t.Run(v.name, func(t *testing.T) {
				rp := r.exchange(v.ms)
				checkRollbackBetween(t, a, v.name, "web_user", "mallory", rp)
				a.checkIdents(t, v.name+", then a probe", r.exchange(msgs(query(probeSQL+"; "+rlsSQL))).rows, "web_user", "mallory")
			})
		}
	})
}

// TestAttackRollbackProcedureRestoresPreviousClient (failed before the
// identity went ahead of a procedure): transaction mode, one server
// connection. Alice calls a
// procedure in the extended protocol (pgtoken sets her role and claims
// for the session) and keeps her session. Mallory's first batch on the
// connection calls a procedure that ROLLBACKs: the rollback undoes
// mallory's reset and session identity, so what the procedure runs after
// it runs as alice, and the reset counts as done (the batch ended with
// ReadyForQuery 'I' and no error), so alice's session-level claims stay
// for mallory's later transactions.
func TestAttackRollbackProcedureRestoresPreviousClient(t *testing.T) {
	eachAttackEnvOf(t, attackSetups, []string{"transaction"}, nil, func(t *testing.T, a *atk) {
		a.superuser(rollbackProcSQL)
		alice := a.raw(t, a.token("web_user", "alice", "email", "alice@example.com"))
		mallory := a.raw(t, a.token("web_user", "mallory"))
		for _, v := range []struct {
			name string
			ms   func(call string) []pgproto3.FrontendMessage
		}{
			{"extended", func(c string) []pgproto3.FrontendMessage { return msgs(pbe(c), syncMsg) }},
			{"query-mid-batch", func(c string) []pgproto3.FrontendMessage { return msgs(pbe("select 1"), query(c), syncMsg) }},
			{"simple-alone", func(c string) []pgproto3.FrontendMessage { return msgs(query(c)) }},
		} {
			t.Run(v.name, func(t *testing.T) {
				rp := alice.exchange(msgs(pbe("call api.commit_between('alice-"+v.name+"')"), pbe("select api.remember('app.x', 'alice-secret')"), syncMsg))
				if len(rp.errs) > 0 {
					t.Fatalf("alice: %q", rp.codes())
				}
				tag := "m-" + v.name
				rp = mallory.exchange(v.ms("call api.rollback_between('" + tag + "')"))
				checkRollbackBetween(t, a, tag, "web_user", "mallory", rp)
				rp = mallory.exchange(msgs(query(probeSQL + "; select 'left', coalesce(current_setting('jwt.claims.email', true), '<none>'), coalesce(current_setting('app.x', true), '<none>')")))
				a.checkIdents(t, "mallory's next query", rp.rows, "web_user", "mallory")
				for _, row := range rp.rows {
					if len(row) == 3 && row[0] == "left" && (row[1] != "<none>" && row[1] != "" || row[2] != "<none>" && row[2] != "") {
						t.Errorf("LEAK: mallory's next transaction sees alice's jwt.claims.email=%q app.x=%q", row[1], row[2])
					}
				}
			})
		}
	})
}

// TestAttackRollbackDoBlock (failed before the identity went ahead of a
// procedure): with
// guard.allow_do, the attacker writes the procedure itself: a DO block
// that ROLLBACKs (Parse/Bind/Execute/Sync) runs the rest of its body as
// the previous client (transaction mode: alice's identity for the
// session, from her own procedure call) and reads what row-level
// security shows her.
func TestAttackRollbackDoBlock(t *testing.T) {
	eachAttackEnvOf(t, attackSetups, []string{"transaction"}, func(c *config.Config) { c.Guard.AllowDo = true }, func(t *testing.T, a *atk) {
		alice := a.raw(t, a.token("web_user", "alice"))
		if rp := alice.exchange(msgs(pbe("call api.commit_between('alice-do')"), syncMsg)); len(rp.errs) > 0 {
			t.Fatalf("alice: %q", rp.codes())
		}
		mallory := a.raw(t, a.token("web_user", "mallory"))
		do := `do $$ begin rollback; insert into api.attack_log(tag) select 'do:' || coalesce(string_agg(owner, ','), '') from api.todos; end $$`
		rp := mallory.exchange(msgs(pbe(do), syncMsg))
		rows := a.logRows("do:")
		t.Logf("errors %q, rows %q", rp.codes(), rows)
		for _, r := range rows {
			if r[1] != "web_user" || r[2] != "mallory" {
				t.Errorf("LEAK: mallory's DO block ran after its ROLLBACK as current_user=%s sub=%s and saw todos of %q", r[1], r[2], r[0])
			}
		}
		if len(rows) == 0 && len(rp.errs) == 0 {
			t.Errorf("the DO block wrote nothing and reported nothing")
		}
	})
}

// TestAttackRollbackDoBlockSetRole: with guard.allow_do, a DO block that
// ROLLBACKs and then builds SET ROLE at run time: after the ROLLBACK it
// runs as the upstream login (or the previous client), for which a SET
// ROLE to any token role may succeed.
func TestAttackRollbackDoBlockSetRole(t *testing.T) {
	eachAttackEnvOf(t, attackSetups, attackModes, func(c *config.Config) { c.Guard.AllowDo = true }, func(t *testing.T, a *atk) {
		mallory := a.raw(t, a.token("web_user", "mallory"))
		for _, v := range []struct{ name, body string }{
			{"set-role-built", `begin rollback; execute reverse('nimda_bew ELOR TES'); insert into api.attack_log(tag) values ('do2:set-role-built'); end`},
			{"set-config-built", `begin rollback; execute 'select se'||'t_config($1, $2, false)' using 'ro'||'le', 'web_admin'; insert into api.attack_log(tag) values ('do2:set-config-built'); end`},
			{"no-rollback-set-role-built", `begin execute reverse('nimda_bew ELOR TES'); insert into api.attack_log(tag) values ('do2:no-rollback'); end`},
		} {
			t.Run(v.name, func(t *testing.T) {
				rp := mallory.exchange(msgs(pbe("do $atk$ "+v.body+" $atk$"), syncMsg))
				t.Logf("errors %q", rp.codes())
				a.checkIdents(t, v.name+", then a probe", mallory.exchange(msgs(query(probeSQL))).rows, "web_user", "mallory")
			})
		}
		for _, r := range a.logRows("do2:") {
			if r[1] != "web_user" || r[2] != "mallory" {
				t.Errorf("LEAK: %s wrote as current_user=%s sub=%s", r[0], r[1], r[2])
			}
		}
	})
}
