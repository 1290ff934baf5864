package compat

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// benchCheck is a pgbench script that fails the transaction (division by
// zero) when a statement does not run as the token's role and sub.
const benchCheck = `\set aid random(1, 100000)
select abalance, 1 / (current_user = 'web_user' and current_setting('jwt.claims.sub') = 'bench')::int from pgbench_accounts where aid = :aid;
`

// pgbenchSetup gives a test pgtoken in front of a database with pgbench's
// tables (created by pgbench -i as the superuser) that web_user may use,
// and the path of pgbench and of the check script.
func pgbenchSetup(t *testing.T) (env *pgtest.Env, pgbench, check string) {
	t.Helper()
	pgbench = tool(t, "pgbench", "pgbench (Debian: postgresql-contrib or the postgresql-NN package)")
	// A client waits at most 3s for a server connection (pgtest's 20s is
	// for slower tests): ample for pgbench's short transactions, and a
	// stuck run fails sooner.
	env = pgtest.Start(t, func(c *config.Config) { c.Pool.WaitTimeout = config.Duration(3 * time.Second) })
	ctx := timeout(t, 2*time.Minute)
	var super []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			super = append(super, kv)
		}
	}
	super = append(super, "PGHOST="+env.PG.SocketDir, "PGPORT="+strconv.Itoa(env.PG.Port), "PGUSER=postgres", "PGDATABASE="+env.DB)
	if out := run(ctx, "", super, "", pgbench, "-i", "-q", "-s", "1"); out.err != nil {
		t.Fatalf("pgbench -i: %s", out)
	}
	env.Superuser("grant select, update on pgbench_accounts, pgbench_branches, pgbench_tellers to web_user; grant insert on pgbench_history to web_user")
	check = filepath.Join(t.TempDir(), "check.sql")
	if err := os.WriteFile(check, []byte(benchCheck), 0o644); err != nil {
		t.Fatal(err)
	}
	return env, pgbench, check
}

var (
	benchProcessed = regexp.MustCompile(`number of transactions actually processed: (\d+)/(\d+)`)
	benchFailed    = regexp.MustCompile(`number of failed transactions: (\d+)`)
)

// runPgbench runs pgbench with args as the token's web_user "bench" and
// checks that all clients*txs transactions ran and none failed.
func runPgbench(t *testing.T, env *pgtest.Env, pgbench string, clients, txs int, args ...string) {
	t.Helper()
	ctx := timeout(t, 2*time.Minute)
	args = append([]string{"-n", "-c", strconv.Itoa(clients), "-t", strconv.Itoa(txs)}, args...)
	out := run(ctx, "", toolEnv(env, pgtest.UserToken(t, "bench")), "", pgbench, args...)
	t.Logf("pgbench %s: %s", strings.Join(args, " "), out.elapsed.Round(time.Millisecond))
	if out.err != nil {
		t.Fatalf("pgbench %s: %s", strings.Join(args, " "), out)
	}
	m := benchProcessed.FindStringSubmatch(out.stdout)
	if m == nil {
		t.Fatalf("no transaction count in pgbench's output: %s", out)
	}
	want := strconv.Itoa(clients * txs)
	if m[1] != want || m[2] != want {
		t.Errorf("pgbench processed %s/%s transactions, want %s: %s", m[1], m[2], want, out)
	}
	if f := benchFailed.FindStringSubmatch(out.stdout); f != nil && f[1] != "0" {
		t.Errorf("%s failed transactions: %s", f[1], out)
	}
	if strings.Contains(out.stderr, "ERROR") || strings.Contains(out.stderr, "aborted") {
		t.Errorf("pgbench reported errors: %s", out.stderr)
	}
}

// TestPgbench runs pgbench's TPC-B-like script, mixed with a script that
// checks the identity, in each protocol mode: 8 clients over 2 server
// connections, 300 transactions each, as the issue has it (pgbench's
// default of one thread for all clients). With -M prepared, pgbench
// prepares each statement synchronously on first use, outside a
// transaction for the first one, while the thread's other clients may sit
// in transactions on both server connections; "prepared, -j 8" (a thread
// per client) runs without that.
func TestPgbench(t *testing.T) {
	env, pgbench, check := pgbenchSetup(t)
	txs := rounds(300, 50)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"simple", []string{"-M", "simple"}},
		{"extended", []string{"-M", "extended"}},
		{"prepared", []string{"-M", "prepared"}},
		{"prepared, -j 8", []string{"-M", "prepared", "-j", "8"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runPgbench(t, env, pgbench, 8, txs, append(tc.args, "-b", "tpcb-like@4", "-f", check+"@1")...)
		})
	}
	// Every transaction of the TPC-B-like script inserts a history row.
	var history int
	if _, err := fmt.Sscan(env.Superuser("select count(*) from pgbench_history")[0][0], &history); err != nil {
		t.Fatal(err)
	}
	if history == 0 || history > 4*8*txs {
		t.Errorf("pgbench_history has %d rows after %d transactions", history, 4*8*txs)
	}
}

// TestPgbenchConnectPerTransaction runs pgbench -C (a new login for every
// transaction) in each protocol mode; prepared statements are prepared
// again on every connection. A thread per client (-j 8) keeps pgbench's
// synchronous prepare from waiting on its own other clients (see
// TestPgbench).
func TestPgbenchConnectPerTransaction(t *testing.T) {
	env, pgbench, check := pgbenchSetup(t)
	for _, mode := range []string{"simple", "extended", "prepared"} {
		t.Run(mode, func(t *testing.T) {
			runPgbench(t, env, pgbench, 8, rounds(40, 10), "-C", "-j", "8", "-M", mode, "-b", "tpcb-like@4", "-f", check+"@1")
		})
	}
}
