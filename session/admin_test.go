package session_test

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// consoleEnv starts pgtoken with web_admin as the admin role and returns
// it with a console connection.
func consoleEnv(t *testing.T) (*pgtest.Env, *pgconn.PgConn) {
	env := pgtest.Start(t, func(c *config.Config) { c.AdminRoles = config.StringList{"web_admin"} })
	return env, connectConsole(t, env, "web_admin")
}

func consoleDSN(env *pgtest.Env, token string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=admin dbname=pgtoken password=%s sslmode=disable", env.App.Port(), token)
}

func connectConsole(t *testing.T, env *pgtest.Env, role string) *pgconn.PgConn {
	t.Helper()
	c, err := pgconn.Connect(ctx(t), consoleDSN(env, pgtest.Token(t, map[string]any{"role": role, "sub": "ops"})))
	if err != nil {
		t.Fatalf("console login: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// table runs a console command and returns its column names and rows.
func table(t *testing.T, c *pgconn.PgConn, cmd string) ([]string, []map[string]string) {
	t.Helper()
	res, err := c.Exec(ctx(t), cmd).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	if len(res) != 1 {
		t.Fatalf("%s: %d results", cmd, len(res))
	}
	var cols []string
	for _, f := range res[0].FieldDescriptions {
		cols = append(cols, f.Name)
	}
	var out []map[string]string
	for _, row := range res[0].Rows {
		m := map[string]string{}
		for i, v := range row {
			m[cols[i]] = string(v)
		}
		out = append(out, m)
	}
	return cols, out
}

func TestConsoleShowsPoolsClientsServers(t *testing.T) {
	env, con := consoleEnv(t)
	client := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, client, "select 1")
	rows(t, client, "begin; select 1")

	cols, pools := table(t, con, "SHOW POOLS;")
	for _, want := range []string{"database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "maxwait", "pool_mode"} {
		if !slices.Contains(cols, want) {
			t.Errorf("SHOW POOLS lacks PgBouncer's column %q (has %v)", want, cols)
		}
	}
	var pool map[string]string
	for _, p := range pools {
		if p["database"] == env.DB {
			pool = p
		}
	}
	if pool == nil || pool["user"] != "authenticator" || pool["cl_active"] != "1" || pool["sv_active"] != "1" || pool["pool_mode"] != "transaction" {
		t.Fatalf("SHOW POOLS row for %s: %v", env.DB, pools)
	}

	_, clients := table(t, con, "show clients")
	var me map[string]string
	for _, c := range clients {
		if c["id"] == fmt.Sprint(client.PID()) {
			me = c
		}
	}
	if me == nil || me["user"] != "web_user" || me["sub"] != "alice" || me["database"] != env.DB || me["state"] != "active" || me["server_pid"] == "" {
		t.Fatalf("SHOW CLIENTS has no row for the client (id %d) in a transaction: %v", client.PID(), clients)
	}
	serverPID := me["server_pid"]

	_, servers := table(t, con, "SHOW SERVERS")
	found := false
	for _, s := range servers {
		if s["remote_pid"] == serverPID {
			found = true
			if s["state"] != "active" || s["client_id"] != fmt.Sprint(client.PID()) || s["database"] != env.DB {
				t.Errorf("SHOW SERVERS row of the client's connection: %v", s)
			}
		}
	}
	if !found {
		t.Fatalf("SHOW SERVERS lacks server pid %s: %v", serverPID, servers)
	}
	rows(t, client, "commit")

	// A transaction counts once its connection is back in the pool, which
	// may be just after the client has its answer.
	var stats []map[string]string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, stats = table(t, con, "SHOW STATS")
		if len(stats) == 1 && atoi(stats[0]["total_xact_count"]) >= 2 || time.Now().After(deadline) {
			break
		}
	}
	if len(stats) != 1 || stats[0]["database"] != env.DB || atoi(stats[0]["total_xact_count"]) < 2 || stats[0]["total_query_count"] != "3" {
		t.Errorf("SHOW STATS: %v", stats)
	}
	_, cfg := table(t, con, "SHOW CONFIG")
	keys := map[string]map[string]string{}
	for _, r := range cfg {
		keys[r["key"]] = r
	}
	if keys["pool.size"]["value"] != "2" || keys["pool.size"]["changeable"] != "yes" || keys["jwt.secret"]["value"] != "REDACTED" ||
		strings.Contains(keys["upstream"]["value"], "secret") || keys["pool.mode"]["changeable"] != "no" {
		t.Errorf("SHOW CONFIG: %v %v %v", keys["pool.size"], keys["jwt.secret"], keys["upstream"])
	}
	if _, v := table(t, con, "SHOW VERSION"); len(v) != 1 || !strings.HasPrefix(v[0]["version"], "pgtoken ") {
		t.Errorf("SHOW VERSION: %v", v)
	}
	// Several commands in one query, as psql -c sends them.
	res, err := con.Exec(ctx(t), "show version; show help").ReadAll()
	if err != nil || len(res) != 2 {
		t.Fatalf("two commands: %d results, %v", len(res), err)
	}
}

func TestConsoleRefusesOthers(t *testing.T) {
	env, con := consoleEnv(t)
	// A token whose role is not an admin role.
	_, err := pgconn.Connect(ctx(t), consoleDSN(env, pgtest.UserToken(t, "mallory")))
	if pe := pgErr(err); pe == nil || pe.Code != "42501" || !strings.Contains(pe.Message, "admin_roles") {
		t.Fatalf("non-admin on the console: %v", err)
	}
	// A bad token.
	_, err = pgconn.Connect(ctx(t), consoleDSN(env, "not-a-token"))
	if pe := pgErr(err); pe == nil || pe.Code != "28P01" {
		t.Fatalf("bad token on the console: %v", err)
	}
	// Unknown commands and the extended protocol are errors; the console goes on.
	if _, err := con.Exec(ctx(t), "DROP TABLE x").ReadAll(); pgErr(err) == nil || pgErr(err).Code != "42601" {
		t.Fatalf("unknown command: %v", err)
	}
	rr := con.ExecParams(ctx(t), "SHOW POOLS", nil, nil, nil, nil).Read()
	if pe := pgErr(rr.Err); pe == nil || pe.Code != "0A000" {
		t.Fatalf("extended protocol: %v", rr.Err)
	}
	table(t, con, "SHOW POOLS")
	// Without admin_roles, database pgtoken is an ordinary database name,
	// and one pgtoken does not serve.
	plain := pgtest.Start(t, nil)
	pc, err := pgconn.Connect(ctx(t), consoleDSN(plain, pgtest.Token(t, map[string]any{"role": "web_admin", "sub": "x"})))
	if err == nil {
		_, err = pc.Exec(ctx(t), "select 1").ReadAll()
		_ = pc.Close(ctx(t))
	}
	if pe := pgErr(err); pe == nil || pe.Code != "3D000" {
		t.Fatalf("database pgtoken without admin_roles: %v", err)
	}
}

func TestConsoleKillClient(t *testing.T) {
	env, con := consoleEnv(t)
	victim := env.Connect(pgtest.UserToken(t, "victim"))
	rows(t, victim, "select 1")
	other := env.Connect(pgtest.UserToken(t, "other"))
	if _, err := con.Exec(ctx(t), fmt.Sprintf("KILL_CLIENT %d", victim.PID())).ReadAll(); err != nil {
		t.Fatal(err)
	}
	if _, err := victim.Exec(ctx(t), "select 1").ReadAll(); pgErr(err) == nil || pgErr(err).Code != "57P01" {
		t.Fatalf("killed client: %v", err)
	}
	rows(t, other, "select 1")
	if _, err := con.Exec(ctx(t), "KILL_CLIENT 12345").ReadAll(); pgErr(err) == nil || pgErr(err).Code != "42704" {
		t.Fatalf("unknown id: %v", err)
	}
}

func TestConsolePauseResume(t *testing.T) {
	env, con := consoleEnv(t)
	c := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, c, "begin; select 1")
	// PAUSE waits for the transaction in flight.
	paused := make(chan error, 1)
	go func() { _, err := con.Exec(context.Background(), "PAUSE "+env.DB).ReadAll(); paused <- err }()
	select {
	case err := <-paused:
		t.Fatalf("PAUSE returned while a transaction ran: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	rows(t, c, "commit")
	if err := <-paused; err != nil {
		t.Fatal(err)
	}
	// Server connections are closed; a new transaction waits.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		n := env.Superuser("select count(*) from pg_stat_activity where usename = 'authenticator' and datname = current_database()")
		if n[0][0] == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server connections left after PAUSE: %s", n[0][0])
		}
	}
	done := make(chan error, 1)
	go func() { _, err := c.Exec(context.Background(), "select 1").ReadAll(); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("a transaction ran while paused: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	_, pools := table(t, con, "SHOW POOLS")
	for _, p := range pools {
		if p["database"] == env.DB && (p["paused"] != "1" || p["cl_waiting"] != "1") {
			t.Errorf("SHOW POOLS while paused: %v", p)
		}
	}
	if _, err := con.Exec(ctx(t), "RESUME "+env.DB).ReadAll(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("after RESUME: %v", err)
	}
	// A PAUSE that waits can be cancelled (psql's Ctrl-C); the pool stays paused.
	rows(t, c, "begin; select 1")
	mrr := con.Exec(context.Background(), "PAUSE")
	time.Sleep(200 * time.Millisecond)
	if err := con.CancelRequest(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := mrr.ReadAll(); pgErr(err) == nil || pgErr(err).Code != "57014" {
		t.Fatalf("cancelled PAUSE: %v", err)
	}
	rows(t, c, "commit")
	if _, err := con.Exec(ctx(t), "RESUME").ReadAll(); err != nil {
		t.Fatal(err)
	}
	rows(t, c, "select 1")
	if _, err := con.Exec(ctx(t), "PAUSE nosuchdb").ReadAll(); pgErr(err) == nil || pgErr(err).Code != "42704" {
		t.Fatalf("PAUSE of an unknown database: %v", err)
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// TestConsoleWithPsql checks psql shows SHOW POOLS as a table.
func TestConsoleWithPsql(t *testing.T) {
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Skip("psql not installed")
	}
	env, _ := consoleEnv(t)
	c := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, c, "select 1")
	cmd := exec.CommandContext(ctx(t), psql, "-X", "-h", "127.0.0.1", "-p", fmt.Sprint(env.App.Port()), "-U", "admin", "-d", "pgtoken", "-c", "SHOW POOLS")
	cmd.Env = append(cmd.Environ(), "PGPASSWORD="+pgtest.Token(t, map[string]any{"role": "web_admin", "sub": "ops"}), "PGSSLMODE=disable")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	t.Logf("psql -d pgtoken -c \"SHOW POOLS\":\n%s", out)
	lines := strings.Split(string(out), "\n")
	if len(lines) < 4 || !strings.Contains(lines[0], "database") || !strings.Contains(lines[0], "| cl_active |") ||
		!strings.HasPrefix(lines[1], "---") || !strings.Contains(string(out), env.DB) {
		t.Fatalf("psql output is not a table with the pool:\n%s", out)
	}
}
