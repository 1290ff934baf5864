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
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

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
