package session_test

// Clients that leave in the middle of a batch (no Sync), in every state
// the tracker follows: a bare transaction, a doomed batch (a refused
// message, then a Query the server skips), a failed batch, a procedure
// that committed with the identity for the session, a COPY, a statement
// still running. The next client on the one server connection must be
// answered (no wedge) and find nothing of the one before.

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestAttackLeaveMidBatch(t *testing.T) {
	eachAttackEnv(t, func(t *testing.T, a *atk) {
		for _, v := range []struct {
			name string
			ms   []pgproto3.FrontendMessage
		}{
			{"bare-begin", msgs(pbe("begin"), syncMsg, pbe("select api.remember('app.x', 'left by mallory')"))},
			{"begin-no-sync", msgs(pbe("begin"), pbe("select api.remember('app.y', 'left by mallory')"), flushMsg)},
			{"doomed-then-query", msgs(pbe("select 1"), pbe("select pg_catalog.set_config('role', 'web_admin', false)"), query("select api.remember('app.x', 'left by mallory')"), flushMsg)},
			{"refused-first-then-query", msgs(pbe("select pg_catalog.set_config('role', 'web_admin', false)"), query("select api.remember('app.x', 'left by mallory')"))},
			{"failed-then-flush", msgs(pbe("select 1/0"), pbe("select api.remember('app.x', 'left by mallory')"), flushMsg)},
			{"procedure-committed", msgs(pbe("call api.commit_between('leave')"), pbe("select api.remember('app.z', 'left by mallory')"), flushMsg)},
			{"procedure-then-query", msgs(pbe("select 1"), query("call api.commit_between('leave2')"), pbe("select api.remember('app.z', 'left by mallory')"))},
			{"running", msgs(pbe("select api.remember('app.x', 'left by mallory'), pg_sleep(0.3)"), flushMsg)},
			{"copy-in", msgs(query("copy api.attack_log(tag) from stdin"))},
			{"functioncall-mid-batch", msgs(pbe("select api.remember('app.x', 'left by mallory')"), loCreat())},
		} {
			t.Run(v.name, func(t *testing.T) {
				r := a.raw(t, a.token("web_user", "mallory"))
				pid := a.checkIdents(t, "mallory", r.exchange(msgs(query(probeSQL))).rows, "web_user", "mallory")
				r.send(v.ms)
				time.Sleep(50 * time.Millisecond)
				r.close()
				a.nextClientClean(t, "web_user", "alice", pid, cleanOpts{})
			})
		}
	})
}
