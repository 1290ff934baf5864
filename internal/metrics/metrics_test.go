package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pgtoken/pgtoken/session"
	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/session/tracker"
)

func body(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

func TestHandlerServesMetricsAndHealth(t *testing.T) {
	m := New("1.2.3")
	m.Watch(Source{
		Stats: func() session.Stats {
			return session.Stats{Connections: 5, Sessions: 3, Consoles: 1, Pools: []session.PoolInfo{{
				Database: "app", Clients: 3,
				Stats: pool.Stats{Size: 4, Total: 3, Active: 2, Idle: 1, Waiting: 1, Transactions: 7, Queries: 9, MaxWait: time.Second},
			}}}
		},
		KeyCount: func() int { return 2 },
	})
	m.LoginSucceeded()
	m.AuthFailed(session.AuthExpired)
	m.AuthFailed("something new") // counted as other
	m.GuardRejected()
	m.PoolWait(3 * time.Millisecond)
	m.TransactionDone(20 * time.Millisecond)
	m.JWKSRefreshed("https://idp", nil)
	m.JWKSRefreshed("https://idp", errors.New("down"))

	var readyErr error
	h := m.Handler(func(context.Context) error { return readyErr }, nil)
	code, text := body(t, h, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`pgtoken_build_info{version="1.2.3"} 1`,
		`pgtoken_client_connections{state="active"} 2`,
		`pgtoken_client_connections{state="waiting"} 1`,
		`pgtoken_client_connections{state="idle"} 0`,
		`pgtoken_client_connections{state="login"} 1`,
		`pgtoken_client_connections{state="admin"} 1`,
		`pgtoken_server_connections{database="app",state="active"} 2`,
		`pgtoken_server_connections{database="app",state="idle"} 1`,
		`pgtoken_pool_size{database="app"} 4`,
		`pgtoken_pool_max_wait_seconds{database="app"} 1`,
		`pgtoken_transactions_total{database="app"} 7`,
		`pgtoken_queries_total{database="app"} 9`,
		`pgtoken_jwt_keys 2`,
		`pgtoken_logins_total 1`,
		`pgtoken_auth_failures_total{reason="expired"} 1`,
		`pgtoken_auth_failures_total{reason="other"} 1`,
		`pgtoken_auth_failures_total{reason="bad_signature"} 0`,
		`pgtoken_guard_rejections_total 1`,
		`pgtoken_pool_wait_seconds_count 1`,
		`pgtoken_transaction_duration_seconds_count 1`,
		`pgtoken_jwks_refresh_total{result="ok"} 1`,
		`pgtoken_jwks_refresh_total{result="error"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(text, want+"\n") && !strings.Contains(text, want+" ") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if code, text := body(t, h, "/healthz"); code != 200 || text != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, text)
	}
	if code, text := body(t, h, "/readyz"); code != 200 || text != "ready\n" {
		t.Fatalf("/readyz: %d %q", code, text)
	}
	// A failing check answers 503 with the reason (after the cached second).
	readyErr = errors.New("upstream down")
	h = m.Handler(func(context.Context) error { return readyErr }, nil)
	if code, text := body(t, h, "/readyz"); code != 503 || !strings.Contains(text, "upstream down") {
		t.Fatalf("/readyz failing: %d %q", code, text)
	}
	if code, _ := body(t, h, "/nope"); code != 404 {
		t.Fatalf("unknown path: %d", code)
	}
	if code, _ := body(t, h, "/debug/sessions"); code != 404 {
		t.Fatalf("/debug/sessions without a source: %d", code)
	}
	h = m.Handler(nil, func() []session.SessionDebug {
		return []session.SessionDebug{{ID: 7, Database: "app", Sub: "someone", Tracker: tracker.State{Pending: 1, Units: []tracker.UnitState{{Kind: "query", Own: "client"}}}}}
	})
	code, text = body(t, h, "/debug/sessions")
	if code != 200 || !strings.Contains(text, `"id": 7`) || !strings.Contains(text, `"kind": "query"`) || strings.Contains(text, "someone") {
		t.Fatalf("/debug/sessions: %d %s", code, text)
	}
}

func BenchmarkObserverHotPath(b *testing.B) {
	m := New("x")
	b.ReportAllocs()
	for b.Loop() {
		m.PoolWait(0)
		m.TransactionDone(time.Millisecond)
	}
}
