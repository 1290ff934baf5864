package compat

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// TestPrometheusPgbouncerExporter points Debian's prometheus-pgbouncer-exporter
// (Debian 12: version 1.7, Python, psycopg2) at pgtoken's admin console with
// an admin token as its password, as at a PgBouncer: it connects to
// database pgbouncer and sends SHOW STATS, SHOW POOLS, SHOW DATABASES and
// SHOW LISTS on every scrape, and reads columns by name. Its /metrics must
// answer 200 with the pgbouncer_* series of the pool the test used, twice
// (the exporter keeps one connection), and it must log no error.
func TestPrometheusPgbouncerExporter(t *testing.T) {
	exporter := tool(t, "prometheus-pgbouncer-exporter", "Debian's prometheus-pgbouncer-exporter")
	env := pgtest.Start(t, func(c *config.Config) { c.AdminRoles = config.StringList{"web_admin"} })
	client := env.Connect(pgtest.UserToken(t, "alice"))
	const queries = 3
	for range queries {
		if _, err := client.Exec(timeout(t, 10*time.Second), "select 1").ReadAll(); err != nil {
			t.Fatal(err)
		}
	}

	port := freePort(t)
	var stderr lockedBuffer
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, exporter,
		"--pgbouncer-host", "127.0.0.1", "--pgbouncer-port", strconv.Itoa(env.App.Port()),
		"--pgbouncer-user", "exporter", "--host", "127.0.0.1", "--port", strconv.Itoa(port),
		"--licence-location", os.DevNull)
	cmd.Env = exporterEnv(pgtest.Token(t, map[string]any{"role": "web_admin", "sub": "exporter"}))
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}) // closed when the exporter has exited, with waitErr set
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cancel() // kills the exporter this test started
		<-exited
	})

	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	var body string
	for scrape := 1; scrape <= 2; scrape++ {
		status := 0
		for deadline := time.Now().Add(30 * time.Second); status == 0; {
			select {
			case <-exited:
				t.Fatalf("the exporter exited: %v\n%s", waitErr, stderr.String())
			default:
			}
			status, body = get(url)
			if status == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("the exporter's /metrics did not answer in 30s\n%s", stderr.String())
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		if status != http.StatusOK {
			t.Fatalf("scrape %d: HTTP %d (the exporter failed to read the console)\n%s\n--- exporter log:\n%s", scrape, status, body, stderr.String())
		}
	}
	series := parseMetrics(body)
	db := fmt.Sprintf("database=%q", env.DB)
	pool := fmt.Sprintf("database=%q,user=\"authenticator\"", env.DB)
	for _, want := range []struct {
		series string
		ok     func(float64) bool
	}{
		{"pgbouncer_requests_total{" + db + "}", func(v float64) bool { return v >= queries }},
		{"pgbouncer_query_microseconds_total{" + db + "}", nil},
		{"pgbouncer_received_bytes_total{" + db + "}", nil},
		{"pgbouncer_sent_bytes_total{" + db + "}", nil},
		{"pgbouncer_active_clients{" + pool + "}", func(v float64) bool { return v == 1 }},
		{"pgbouncer_waiting_clients{" + pool + "}", func(v float64) bool { return v == 0 }},
		{"pgbouncer_pool_size{" + db + "}", func(v float64) bool { return v == 2 }},
		{"pgbouncer_reserve_pool{" + db + "}", nil},
		{"pgbouncer_databases", func(v float64) bool { return v >= 1 }},
		{"pgbouncer_pools", func(v float64) bool { return v >= 1 }},
		{"pgbouncer_used_clients", func(v float64) bool { return v >= 2 }}, // the client and the exporter
		{"pgbouncer_used_servers", func(v float64) bool { return v >= 1 }},
		{"pgbouncer_dns_pending", nil},
	} {
		v, ok := series[want.series]
		if !ok {
			t.Errorf("no series %s in /metrics", want.series)
		} else if want.ok != nil && !want.ok(v) {
			t.Errorf("%s = %v", want.series, v)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
	if log := stderr.String(); strings.Contains(log, "Traceback") || strings.Contains(log, "Error") {
		t.Errorf("the exporter logged an error:\n%s", log)
	}
}

// exporterEnv is the environment for the exporter: the test's own without
// PG* variables and the names its configargparse reads (command-line flags
// win over them, but CONFIG would load a file), and the token as libpq's
// password.
func exporterEnv(token string) []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "PG"), name == "CONFIG", name == "PORT", name == "HOST", name == "LICENCE_LOCATION":
			continue
		}
		out = append(out, kv)
	}
	return append(out, "PGPASSWORD="+token, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10")
}

// freePort returns a loopback TCP port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// get fetches url: status 0 when nothing answered.
func get(url string) (int, string) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// parseMetrics reads Prometheus text format: series (name and labels as
// written) to value.
func parseMetrics(body string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// lockedBuffer is a bytes.Buffer a process may write while a test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestPgbouncerExporterQueries sends the console what
// prometheus-community's pgbouncer_exporter (Go, lib/pq) sends on each
// scrape, recorded from its collector.go, and checks its answers as that
// exporter does: a scrape fails ("pgbouncer_up 0") on an error or a
// missing column, and the whole /metrics fails if two columns of a row
// map to one metric (reserve_pool and reserve_pool_size would).
func TestPgbouncerExporterQueries(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) { c.AdminRoles = config.StringList{"web_admin"} })
	client := env.Connect(pgtest.UserToken(t, "alice"))
	if _, err := client.Exec(timeout(t, 10*time.Second), "begin; select 1").ReadAll(); err != nil {
		t.Fatal(err)
	}
	admin := pgtest.Token(t, map[string]any{"role": "web_admin", "sub": "exporter"})
	con, err := pgconn.Connect(timeout(t, 10*time.Second),
		fmt.Sprintf("host=127.0.0.1 port=%d user=pgbouncer dbname=pgbouncer password=%s sslmode=disable", env.App.Port(), admin))
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close(context.Background())
	show := func(q string) ([]string, [][]*string) {
		t.Helper()
		mrr := con.Exec(timeout(t, 10*time.Second), q)
		var cols []string
		var rows [][]*string
		for mrr.NextResult() {
			rr := mrr.ResultReader()
			for _, f := range rr.FieldDescriptions() {
				cols = append(cols, f.Name)
			}
			for rr.NextRow() {
				var row []*string
				for _, v := range rr.Values() {
					if v == nil {
						row = append(row, nil)
					} else {
						s := string(v)
						row = append(row, &s)
					}
				}
				rows = append(rows, row)
			}
		}
		if err := mrr.Close(); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return cols, rows
	}

	show("SHOW STATS") // its connection check
	if cols, rows := show("SHOW VERSION;"); len(cols) != 1 || cols[0] != "version" || len(rows) != 1 {
		t.Errorf("SHOW VERSION: %v %d rows", cols, len(rows))
	}
	cols, rows := show("SHOW LISTS;")
	if len(cols) != 2 {
		t.Errorf("SHOW LISTS has %d columns", len(cols))
	}
	for _, r := range rows {
		if _, err := strconv.ParseFloat(deref(r[1]), 64); err != nil {
			t.Errorf("SHOW LISTS %s: %v", deref(r[0]), err)
		}
	}
	if cols, _ := show("SHOW CONFIG;"); len(cols) != 4 {
		t.Errorf("SHOW CONFIG has %d columns, want 3 or 4", len(cols))
	}
	cols, _ = show("SHOW CLIENTS;")
	for _, c := range []string{"database", "user", "state", "application_name"} {
		if !slices.Contains(cols, c) {
			t.Errorf("SHOW CLIENTS lacks %s", c)
		}
	}
	// Its column → metric maps (labels aside) for the namespaces it reads
	// by column.
	metricsOf := map[string]map[string]string{
		"DATABASES": {"pool_size": "pool_size", "reserve_pool": "reserve_pool", "reserve_pool_size": "reserve_pool",
			"max_connections": "max_connections", "current_connections": "current_connections", "paused": "paused", "disabled": "disabled"},
		"STATS_TOTALS": {"query_count": "queries_pooled_total", "query_time": "queries_duration_seconds_total",
			"bytes_received": "received_bytes_total", "requests": "queries_total", "bytes_sent": "sent_bytes_total",
			"wait_time": "client_wait_seconds_total", "xact_count": "sql_transactions_pooled_total",
			"xact_time": "server_in_transaction_seconds_total", "client_parse_count": "client_parses_total",
			"server_parse_count": "server_parses_total", "bind_count": "binds_total", "server_assignment_count": "server_assignments_total"},
		"POOLS": {"cl_active": "client_active_connections", "cl_active_cancel_req": "client_active_cancel_connections",
			"cl_waiting": "client_waiting_connections", "cl_waiting_cancel_req": "client_waiting_cancel_connections",
			"sv_active": "server_active_connections", "sv_active_cancel": "server_active_cancel_connections",
			"sv_being_canceled": "server_being_canceled_connections", "sv_idle": "server_idle_connections",
			"sv_used": "server_used_connections", "sv_tested": "server_testing_connections",
			"sv_login": "server_login_connections", "maxwait": "client_maxwait_seconds"},
	}
	for ns, m := range metricsOf {
		cols, rows := show("SHOW " + ns + ";")
		if len(rows) == 0 {
			t.Errorf("SHOW %s: no rows", ns)
		}
		seen := map[string]string{}
		emitted := 0
		for i, c := range cols {
			metric, ok := m[c]
			if !ok {
				continue
			}
			emitted++
			if other, dup := seen[metric]; dup {
				t.Errorf("SHOW %s: columns %s and %s both become pgbouncer_%s", ns, other, c, metric)
			}
			seen[metric] = c
			for _, r := range rows {
				if r[i] == nil {
					continue // NaN, allowed
				}
				if _, err := strconv.ParseFloat(*r[i], 64); err != nil {
					t.Errorf("SHOW %s %s: %q is not a number", ns, c, *r[i])
				}
			}
		}
		if emitted == 0 {
			t.Errorf("SHOW %s gives none of the exporter's metrics (columns %v)", ns, cols)
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
