package session_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// pgbouncerColumns are the columns of PgBouncer 1.25's SHOW commands (its
// src/admin.c and src/stats.c), type letters as there: s text, i int4, q
// int8, N numeric, T a timestamp sent as text; then the columns pgtoken
// adds after them. reserve_pool and total_requests are PgBouncer's older
// names (before 1.24 and 1.8), which Debian's exporter reads.
var pgbouncerColumns = []struct {
	show, types string
	names       []string
}{
	{"DATABASES", "ssissiiiissiiiiii", []string{"name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
		"reserve_pool", "server_lifetime", "pool_mode", "load_balance_hosts", "max_connections", "current_connections",
		"max_client_connections", "current_client_connections", "paused", "disabled"}},
	{"POOLS", "ssiiiiiiiiiiiiiss" + "ii", []string{"database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
		"cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested",
		"sv_login", "maxwait", "maxwait_us", "pool_mode", "load_balance_hosts",
		"pool_size", "paused"}},
	{"CLIENTS", "ssssssisiTTiiississii" + "si", append(slices.Clone(socketColumns), "sub", "server_pid")},
	{"SERVERS", "ssssssisiTTiiississii" + "i", append(slices.Clone(socketColumns), "client_id")},
	{"SOCKETS", "ssssssisiTTiiississiiiiiiiii", append(slices.Clone(socketColumns),
		"recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain", "pkt_avail", "send_avail")},
	{"USERS", "ssssiiii", []string{"name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
		"current_connections", "max_user_client_connections", "current_client_connections"}},
	{"LISTS", "si", []string{"list", "items"}},
	{"MEM", "siiiq", []string{"name", "size", "used", "free", "memtotal"}},
	{"STATS", "s" + strings.Repeat("N", 23), []string{"database", "total_server_assignment_count", "total_xact_count",
		"total_query_count", "total_received", "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
		"total_client_parse_count", "total_server_parse_count", "total_bind_count", "avg_server_assignment_count",
		"avg_xact_count", "avg_query_count", "avg_recv", "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time",
		"avg_client_parse_count", "avg_server_parse_count", "avg_bind_count", "total_requests"}},
	{"STATS_TOTALS", "s" + strings.Repeat("N", 11), []string{"database", "server_assignment_count", "xact_count",
		"query_count", "bytes_received", "bytes_sent", "xact_time", "query_time", "wait_time", "client_parse_count",
		"server_parse_count", "bind_count"}},
	{"STATS_AVERAGES", "s" + strings.Repeat("N", 11), []string{"database", "server_assignment_count", "xact_count",
		"query_count", "bytes_received", "bytes_sent", "xact_time", "query_time", "wait_time", "avg_client_parse_count",
		"avg_server_parse_count", "avg_bind_count"}},
	{"TOTALS", "sN", []string{"name", "value"}},
	{"STATE", "ss", []string{"key", "value"}},
	{"PEERS", "isii", []string{"peer_id", "host", "port", "pool_size"}},
	{"CONFIG", "ssss", []string{"key", "value", "default", "changeable"}},
	{"VERSION", "s", []string{"version"}},
	{"DNS_HOSTS", "sqs", []string{"hostname", "ttl", "addrs"}},
	{"DNS_ZONES", "sqi", []string{"zonename", "serial", "count"}},
}

var socketColumns = []string{"type", "user", "database", "replication", "state", "addr", "port", "local_addr",
	"local_port", "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr", "link", "remote_pid",
	"tls", "application_name", "prepared_statements", "id"}

// typeLetter is PgBouncer's letter for a column's type OID ('T' columns
// are text too).
func typeLetter(oid uint32) byte {
	switch oid {
	case 25:
		return 's'
	case 23:
		return 'i'
	case 20:
		return 'q'
	case 1700:
		return 'N'
	}
	return '?'
}

// consoleQuery runs one console command and returns its result, with its
// columns even when it has no rows.
func consoleQuery(t *testing.T, c *pgconn.PgConn, cmd string) *pgconn.Result {
	t.Helper()
	mrr := c.Exec(ctx(t), cmd)
	var res []*pgconn.Result
	for mrr.NextResult() {
		rr := mrr.ResultReader()
		fields := slices.Clone(rr.FieldDescriptions())
		r := rr.Read()
		r.FieldDescriptions = fields
		res = append(res, r)
	}
	if err := mrr.Close(); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	if len(res) != 1 {
		t.Fatalf("%s: %d results", cmd, len(res))
	}
	return res[0]
}

func TestConsoleShowsPgBouncersColumns(t *testing.T) {
	env, con := consoleEnv(t)
	c := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, c, "begin; select 1") // a pool, a client holding a server connection
	for _, want := range pgbouncerColumns {
		res := consoleQuery(t, con, "SHOW "+want.show)
		var names []string
		types := ""
		for _, f := range res.FieldDescriptions {
			names = append(names, f.Name)
			types += string(typeLetter(f.DataTypeOID))
		}
		wantTypes := strings.ReplaceAll(want.types, "T", "s")
		if !slices.Equal(names, want.names) || types != wantTypes {
			t.Errorf("SHOW %s:\n got %v %s\nwant %v %s", want.show, names, types, want.names, wantTypes)
		}
		for i, row := range res.Rows {
			if len(row) != len(names) {
				t.Errorf("SHOW %s row %d has %d values for %d columns", want.show, i, len(row), len(names))
			}
		}
	}
	rows(t, c, "commit")
}

// rowsOf returns the rows of a console command as maps, with a nil-safe
// marker for NULL.
func rowsOf(t *testing.T, c *pgconn.PgConn, cmd string) []map[string]string {
	t.Helper()
	res := consoleQuery(t, c, cmd)
	var out []map[string]string
	for _, row := range res.Rows {
		m := map[string]string{}
		for i, v := range row {
			if v == nil {
				m[res.FieldDescriptions[i].Name] = "NULL"
			} else {
				m[res.FieldDescriptions[i].Name] = string(v)
			}
		}
		out = append(out, m)
	}
	return out
}

// rowWhere returns the first row whose column key has value val.
func rowWhere(rs []map[string]string, key, val string) map[string]string {
	for _, r := range rs {
		if r[key] == val {
			return r
		}
	}
	return nil
}

func TestConsoleAnswersAsDatabasePgbouncer(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) { c.AdminRoles = config.StringList{"web_admin"} })
	admin := pgtest.Token(t, map[string]any{"role": "web_admin", "sub": "ops"})
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=pgbouncer dbname=pgbouncer password=%s sslmode=disable", env.App.Port(), admin)
	con, err := pgconn.Connect(ctx(t), dsn)
	if err != nil {
		t.Fatalf("console as database pgbouncer: %v", err)
	}
	defer con.Close(context.Background())
	me := rowWhere(rowsOf(t, con, "SHOW CLIENTS"), "id", fmt.Sprint(con.PID()))
	if me == nil || me["database"] != "pgbouncer" || me["user"] != "web_admin" || me["state"] != "active" {
		t.Fatalf("the console itself in SHOW CLIENTS: %v", me)
	}
	// A role that is not an admin role is refused there too.
	_, err = pgconn.Connect(ctx(t), strings.Replace(dsn, admin, pgtest.UserToken(t, "mallory"), 1))
	if pe := pgErr(err); pe == nil || pe.Code != "42501" {
		t.Fatalf("non-admin on database pgbouncer: %v", err)
	}
	// Without admin_roles, pgbouncer is an ordinary database name.
	plain := pgtest.Start(t, nil)
	pc, err := pgconn.Connect(ctx(t), fmt.Sprintf("host=127.0.0.1 port=%d user=pgbouncer dbname=pgbouncer password=%s sslmode=disable", plain.App.Port(), admin))
	if err == nil {
		_, err = pc.Exec(ctx(t), "select 1").ReadAll()
		_ = pc.Close(ctx(t))
	}
	if pe := pgErr(err); pe == nil || pe.Code != "3D000" {
		t.Fatalf("database pgbouncer without admin_roles: %v", err)
	}
}

func TestConsoleShowsDatabasesUsersListsSocketsMem(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) {
		c.AdminRoles = config.StringList{"web_admin"}
		c.Pool.MinSize = 1
		c.Pool.ReserveSize = 3
		c.Pool.ServerLifetime = config.Duration(90 * time.Minute)
	})
	con := connectConsole(t, env, "web_admin")
	c := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, c, "begin; select 1")
	up, err := pgconn.ParseConfig(env.App.Config().Upstream)
	if err != nil {
		t.Fatal(err)
	}
	host, port := up.Host, fmt.Sprint(up.Port)

	d := rowWhere(rowsOf(t, con, "SHOW DATABASES"), "name", env.DB)
	if d == nil || d["host"] != host || d["port"] != port || d["database"] != env.DB || d["force_user"] != "authenticator" ||
		d["pool_size"] != "2" || d["min_pool_size"] != "1" || d["reserve_pool"] != "3" || d["server_lifetime"] != "5400" ||
		d["pool_mode"] != "NULL" || d["current_client_connections"] != "1" || d["current_connections"] == "0" ||
		d["paused"] != "0" || d["disabled"] != "0" || d["max_connections"] != "0" {
		t.Errorf("SHOW DATABASES row of %s (upstream %s:%s): %v", env.DB, host, port, d)
	}

	users := rowsOf(t, con, "SHOW USERS")
	if u := rowWhere(users, "name", "web_user"); u == nil || u["current_client_connections"] != "1" || u["current_connections"] != "0" || u["pool_size"] != "" {
		t.Errorf("SHOW USERS row of the client's role: %v", u)
	}
	if u := rowWhere(users, "name", "authenticator"); u == nil || u["current_connections"] == "0" {
		t.Errorf("SHOW USERS row of the upstream login: %v", u)
	}
	if u := rowWhere(users, "name", "web_admin"); u == nil || u["current_client_connections"] != "1" {
		t.Errorf("SHOW USERS row of the console's role: %v", u)
	}

	lists := map[string]string{}
	for _, r := range rowsOf(t, con, "SHOW LISTS") {
		lists[r["list"]] = r["items"]
	}
	if lists["databases"] != "1" || lists["pools"] != "1" || lists["users"] != fmt.Sprint(len(users)) ||
		lists["used_clients"] != "2" || lists["login_clients"] != "0" || lists["used_servers"] != d["current_connections"] ||
		lists["dns_pending"] != "0" || len(lists) != 14 {
		t.Errorf("SHOW LISTS: %v", lists)
	}

	sockets := rowsOf(t, con, "SHOW SOCKETS")
	cl := rowWhere(sockets, "id", fmt.Sprint(c.PID()))
	if cl == nil || cl["type"] != "C" || cl["state"] != "cl_active" || cl["link"] == "" || cl["send_avail"] != "0" {
		t.Errorf("SHOW SOCKETS row of the client: %v", cl)
	}
	sv := rowWhere(sockets, "ptr", cl["link"])
	if sv == nil || sv["type"] != "S" || sv["state"] != "sv_active" || sv["link"] != cl["ptr"] || sv["user"] != "authenticator" {
		t.Errorf("SHOW SOCKETS row of the client's server connection: %v", sv)
	}

	mem := map[string]map[string]string{}
	for _, r := range rowsOf(t, con, "SHOW MEM") {
		mem[r["name"]] = r
	}
	if m := mem["server_buffers"]; m == nil || m["used"] != d["current_connections"] || atoi(m["memtotal"]) != atoi(m["size"])*atoi(m["used"]) {
		t.Errorf("SHOW MEM server_buffers: %v", m)
	}
	if m := mem["heap_objects"]; m == nil || atoi(m["used"]) == 0 || atoi(m["memtotal"]) == 0 {
		t.Errorf("SHOW MEM heap_objects: %v", m)
	}
	rows(t, c, "commit")

	// SHOW STATS_TOTALS and TOTALS count what SHOW STATS does.
	var stats map[string]string
	waitFor(t, 10*time.Second, "the transaction to be counted", func() bool {
		stats = rowWhere(rowsOf(t, con, "SHOW STATS"), "database", env.DB)
		return stats != nil && stats["total_xact_count"] == "1"
	})
	// Assignments: the transaction's, and the login's (which reads the
	// upstream roles on a server connection).
	if stats["total_query_count"] != "2" || stats["total_requests"] != "2" || stats["total_server_assignment_count"] != "2" ||
		stats["total_received"] != "0" || atoi(stats["avg_xact_count"]) < 0 {
		t.Errorf("SHOW STATS: %v", stats)
	}
	if tot := rowWhere(rowsOf(t, con, "SHOW STATS_TOTALS"), "database", env.DB); tot == nil || tot["xact_count"] != "1" || tot["query_count"] != "2" {
		t.Errorf("SHOW STATS_TOTALS: %v", tot)
	}
	if tot := rowWhere(rowsOf(t, con, "SHOW TOTALS"), "name", "total_query_count"); tot == nil || tot["value"] != "2" {
		t.Errorf("SHOW TOTALS: %v", tot)
	}
	if v := rowsOf(t, con, "SHOW client_encoding"); len(v) != 1 || v[0]["client_encoding"] != "UTF-8" {
		t.Errorf("SHOW client_encoding: %v", v)
	}
}

// consoleErr runs a console command that must fail with code.
func consoleErr(t *testing.T, c *pgconn.PgConn, cmd, code string) {
	t.Helper()
	_, err := c.Exec(ctx(t), cmd).ReadAll()
	if pe := pgErr(err); pe == nil || pe.Code != code {
		t.Fatalf("%s: %v, want SQLSTATE %s", cmd, err, code)
	}
}

// run runs a console command that must succeed.
func run(t *testing.T, c *pgconn.PgConn, cmd string) {
	t.Helper()
	if _, err := c.Exec(ctx(t), cmd).ReadAll(); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
}

// serverOf returns the pid of the server connection SHOW CLIENTS says
// the client holds.
func serverOf(t *testing.T, con, client *pgconn.PgConn) string {
	t.Helper()
	r := rowWhere(rowsOf(t, con, "SHOW CLIENTS"), "id", fmt.Sprint(client.PID()))
	if r == nil || r["server_pid"] == "NULL" {
		t.Fatalf("SHOW CLIENTS: client %d holds no server connection: %v", client.PID(), r)
	}
	return r["server_pid"]
}

func TestConsoleReconnect(t *testing.T) {
	env, con := consoleEnv(t)
	busy := env.Connect(pgtest.UserToken(t, "alice"))
	idle := env.Connect(pgtest.UserToken(t, "bob"))
	rows(t, idle, "begin; select 1")
	rows(t, busy, "begin; select 1") // both in a transaction: two server connections
	idlePID, busyPID := serverOf(t, con, idle), serverOf(t, con, busy)
	rows(t, idle, "commit")

	run(t, con, "RECONNECT "+env.DB)
	// The idle one is closed at once; the busy one is marked and goes on.
	waitFor(t, 10*time.Second, "the idle server connection to close", func() bool {
		return rowWhere(rowsOf(t, con, "SHOW SERVERS"), "remote_pid", idlePID) == nil
	})
	if s := rowWhere(rowsOf(t, con, "SHOW SERVERS"), "remote_pid", busyPID); s == nil || s["close_needed"] != "1" || s["state"] != "active" {
		t.Fatalf("SHOW SERVERS row of the busy connection after RECONNECT: %v", s)
	}
	// WAIT_CLOSE waits for it.
	waited := make(chan error, 1)
	go func() { _, err := con.Exec(context.Background(), "WAIT_CLOSE "+env.DB).ReadAll(); waited <- err }()
	select {
	case err := <-waited:
		t.Fatalf("WAIT_CLOSE returned while a marked connection was in use: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	rows(t, busy, "commit")
	if err := <-waited; err != nil {
		t.Fatalf("WAIT_CLOSE: %v", err)
	}
	if n := env.Superuser("select count(*) from pg_stat_activity where pid in (" + idlePID + "," + busyPID + ")"); n[0][0] != "0" {
		t.Fatalf("%s of the old server connections still open", n[0][0])
	}
	// New connections log in as needed.
	rows(t, busy, "begin; select 1")
	if pid := serverOf(t, con, busy); pid == busyPID || pid == idlePID {
		t.Fatalf("after RECONNECT the client runs on old connection %s", pid)
	}
	rows(t, busy, "commit")
	run(t, con, "RECONNECT") // every database
	consoleErr(t, con, "RECONNECT nosuchdb", "42704")
	consoleErr(t, con, "RECONNECT pgbouncer", "55000")
}

func TestConsoleKillAndResume(t *testing.T) {
	env, con := consoleEnv(t)
	inTx := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, inTx, "begin; select 1")
	between := env.Connect(pgtest.UserToken(t, "bob"))
	rows(t, between, "select 1")

	run(t, con, "KILL "+env.DB)
	for _, c := range []*pgconn.PgConn{inTx, between} {
		if _, err := c.Exec(ctx(t), "select 1").ReadAll(); pgErr(err) == nil || pgErr(err).Code != "57P01" {
			t.Fatalf("a client of the killed database: %v, want 57P01", err)
		}
	}
	waitFor(t, 10*time.Second, "the server connections to close", func() bool {
		n := env.Superuser("select count(*) from pg_stat_activity where usename = 'authenticator' and datname = current_database()")
		return n[0][0] == "0"
	})
	if d := rowWhere(rowsOf(t, con, "SHOW DATABASES"), "name", env.DB); d["paused"] != "1" || d["current_client_connections"] != "0" {
		t.Fatalf("SHOW DATABASES after KILL: %v", d)
	}
	// A new client waits until RESUME.
	done := make(chan error, 1)
	go func() {
		c, err := pgconn.Connect(context.Background(), env.DSN(pgtest.UserToken(t, "carol")))
		if err == nil {
			_, err = c.Exec(context.Background(), "select 1").ReadAll()
			_ = c.Close(context.Background())
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("a client ran while the database was killed: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	run(t, con, "RESUME "+env.DB)
	if err := <-done; err != nil {
		t.Fatalf("after RESUME: %v", err)
	}
	consoleErr(t, con, "RESUME "+env.DB, "55000") // not paused
	consoleErr(t, con, "RESUME", "55000")
	consoleErr(t, con, "KILL pgtoken", "55000")
	consoleErr(t, con, "KILL nosuchdb", "42704")
}

func TestConsoleSuspend(t *testing.T) {
	env, con := consoleEnv(t)
	c := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, c, "begin; select 1")
	run(t, con, "SUSPEND") // returns at once, with a transaction running
	state := map[string]string{}
	for _, r := range rowsOf(t, con, "SHOW STATE") {
		state[r["key"]] = r["value"]
	}
	if state["suspended"] != "yes" || state["active"] != "no" {
		t.Fatalf("SHOW STATE while suspended: %v", state)
	}
	consoleErr(t, con, "SUSPEND", "55000")
	consoleErr(t, con, "KILL", "55000")
	consoleErr(t, con, "PAUSE", "55000")
	rows(t, c, "select 2; commit") // the transaction in flight goes on
	next := make(chan error, 1)
	go func() { _, err := c.Exec(context.Background(), "select 1").ReadAll(); next <- err }()
	select {
	case err := <-next:
		t.Fatalf("a new transaction ran while suspended: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	// The last console leaving ends the suspension, as in PgBouncer.
	_ = con.Close(ctx(t))
	if err := <-next; err != nil {
		t.Fatalf("after the console left: %v", err)
	}
	con = connectConsole(t, env, "web_admin")
	if r := rowWhere(rowsOf(t, con, "SHOW STATE"), "key", "active"); r["value"] != "yes" {
		t.Fatalf("SHOW STATE after the console left: %v", r)
	}
	// RESUME ends it too; with a database paused, SUSPEND is refused.
	run(t, con, "SUSPEND")
	run(t, con, "RESUME")
	run(t, con, "PAUSE "+env.DB)
	consoleErr(t, con, "SUSPEND", "55000")
	run(t, con, "RESUME")
	rows(t, c, "select 1")
}

func TestConsoleShutdownWaitForClients(t *testing.T) {
	env, con := consoleEnv(t)
	c := env.Connect(pgtest.UserToken(t, "alice"))
	run(t, con, "SHUTDOWN WAIT_FOR_CLIENTS")
	// No new clients; those logged in go on.
	waitFor(t, 10*time.Second, "the listener to close", func() bool {
		nc, err := net.DialTimeout("tcp", env.App.Addr(), time.Second)
		if err == nil {
			_ = nc.Close()
		}
		return err != nil
	})
	rows(t, c, "select 1")
	rows(t, con, "SHOW POOLS")
	select {
	case <-env.App.Stopped():
		t.Fatal("pgtoken stopped with clients connected")
	case <-time.After(200 * time.Millisecond):
	}
	_ = c.Close(ctx(t))
	_ = con.Close(ctx(t))
	waitStopped(t, env, "once every client had left")
}

// waitStopped waits up to 10 seconds for pgtoken to stop.
func waitStopped(t *testing.T, env *pgtest.Env, when string) {
	t.Helper()
	select {
	case <-env.App.Stopped():
	case <-time.After(10 * time.Second):
		t.Fatalf("pgtoken did not stop %s", when)
	}
}

func TestConsoleShutdownWaitForServers(t *testing.T) {
	env, con := consoleEnv(t)
	inTx := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, inTx, "begin; select 1")
	idle := env.Connect(pgtest.UserToken(t, "bob"))
	run(t, con, "SHUTDOWN WAIT_FOR_SERVERS")
	// The client between transactions is closed; the one in a transaction
	// may end it.
	waitFor(t, 10*time.Second, "the idle client to be closed", func() bool {
		_, err := idle.Exec(ctx(t), "select 1").ReadAll()
		return err != nil
	})
	rows(t, inTx, "select 2; commit")
	waitStopped(t, env, "once the transaction had ended")
}

func TestConsoleShutdown(t *testing.T) {
	env, con := consoleEnv(t)
	c := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, c, "begin; select 1")
	run(t, con, "SHUTDOWN") // answered, then the console is closed with the rest
	waitStopped(t, env, "at SHUTDOWN")
	if _, err := c.Exec(ctx(t), "select 1").ReadAll(); pgErr(err) == nil || pgErr(err).Code != "57P01" {
		t.Fatalf("a client at SHUTDOWN: %v, want 57P01", err)
	}
	consoleErrOrGone(t, con)
}

// consoleErrOrGone checks the console was closed.
func consoleErrOrGone(t *testing.T, con *pgconn.PgConn) {
	t.Helper()
	if _, err := con.Exec(ctx(t), "SHOW POOLS").ReadAll(); err == nil {
		t.Fatal("the console still answers after SHUTDOWN")
	}
}
