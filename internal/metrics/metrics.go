// Package metrics exposes pgtoken's Prometheus metrics (names prefixed
// pgtoken_) and its health endpoints on one HTTP handler:
//
//	/metrics  Prometheus text format, from a registry of this package's own
//	/healthz  200 while the process runs
//	/readyz   200 when pgtoken can serve: keys loaded, an upstream answers,
//	          not shutting down; 503 with the reason otherwise
//	/debug/sessions  JSON: every session's state (session.SessionDebug), to
//	          tell where a client waiting for an answer is stuck
//
// Event counters and histograms are fed by the session package through
// session.Observer (a few atomic adds, no allocation); gauges and
// per-database totals are read from session.Server.Stats when scraped.
package metrics

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgtoken/pgtoken/session"
)

// Metrics owns a registry and implements session.Observer.
type Metrics struct {
	reg *prometheus.Registry

	logins       prometheus.Counter
	authFailures map[string]prometheus.Counter // by reason, made up front
	guard        prometheus.Counter
	poolWait     prometheus.Histogram
	txDuration   prometheus.Histogram
	jwksOK       prometheus.Counter
	jwksErr      prometheus.Counter
	bugs         map[string]prometheus.Counter // by kind, made up front
	resets       prometheus.Counter
}

var _ session.Observer = (*Metrics)(nil)

// New makes the metrics of one pgtoken process (version for
// pgtoken_build_info), with Go runtime and process metrics beside them.
func New(version string) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		reg: reg,
		logins: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgtoken_logins_total", Help: "Client logins accepted (admin console included).",
		}),
		guard: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgtoken_guard_rejections_total", Help: "Statements refused by the guard.",
		}),
		poolWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pgtoken_pool_wait_seconds",
			Help:    "Time a client waited for a server connection, at a transaction's start or at a login that needed one (zero when one was idle; includes logging in a new one); SHOW STATS total_wait_time sums the same waits.",
			Buckets: []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5, 10, 30},
		}),
		txDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pgtoken_transaction_duration_seconds",
			Help:    "Time a transaction held its server connection (transaction pooling).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		authFailures: map[string]prometheus.Counter{},
		bugs:         map[string]prometheus.Counter{},
		resets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgtoken_server_resets_total",
			Help: "Server connections reset before another client's transaction (RESET ALL, role, advisory locks, cursors, LISTEN, temporary objects, sequences): the hand-over reset; divided by pgtoken_transactions_total, the share of transactions that paid for one.",
		}),
	}
	bugs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgtoken_internal_errors_total",
		Help: "Things that must never happen, each also logged at ERROR with the session's state: answers the server gave that waited for the client beyond a bound (stalled_answer), server messages no pending request expected (desync).",
	}, []string{"kind"})
	for _, k := range session.InternalErrorKinds {
		m.bugs[k] = bugs.WithLabelValues(k)
	}
	af := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgtoken_auth_failures_total", Help: "Logins refused, by reason.",
	}, []string{"reason"})
	for _, r := range session.AuthFailureReasons {
		m.authFailures[r] = af.WithLabelValues(r)
	}
	jwks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgtoken_jwks_refresh_total", Help: "HTTP JWKS refreshes, by result (ok or error).",
	}, []string{"result"})
	m.jwksOK, m.jwksErr = jwks.WithLabelValues("ok"), jwks.WithLabelValues("error")
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgtoken_build_info", Help: "Always 1; the version is a label.",
	}, []string{"version"})
	build.WithLabelValues(version).Set(1)
	reg.MustRegister(m.logins, m.guard, m.poolWait, m.txDuration, af, jwks, build, bugs, m.resets,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is the registry /metrics serves.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ServerReset implements session.Observer.
func (m *Metrics) ServerReset() { m.resets.Inc() }

// InternalError implements session.Observer.
func (m *Metrics) InternalError(kind string) {
	if c := m.bugs[kind]; c != nil {
		c.Inc()
	}
}

// LoginSucceeded implements session.Observer.
func (m *Metrics) LoginSucceeded() { m.logins.Inc() }

// AuthFailed implements session.Observer.
func (m *Metrics) AuthFailed(reason string) {
	c, ok := m.authFailures[reason]
	if !ok {
		c = m.authFailures[session.AuthOther]
	}
	c.Inc()
}

// GuardRejected implements session.Observer.
func (m *Metrics) GuardRejected() { m.guard.Inc() }

// PoolWait implements session.Observer.
func (m *Metrics) PoolWait(d time.Duration) { m.poolWait.Observe(d.Seconds()) }

// TransactionDone implements session.Observer.
func (m *Metrics) TransactionDone(d time.Duration) { m.txDuration.Observe(d.Seconds()) }

// JWKSRefreshed counts an HTTP JWKS refresh (for authn.Config.OnJWKSRefresh).
func (m *Metrics) JWKSRefreshed(_ string, err error) {
	if err != nil {
		m.jwksErr.Inc()
	} else {
		m.jwksOK.Inc()
	}
}

// Source is what the scrape-time collector reads: the session server's
// snapshot and the number of verification keys loaded.
type Source struct {
	Stats    func() session.Stats
	KeyCount func() int
}

// Watch registers the gauges and per-database totals read from src at
// each scrape.
func (m *Metrics) Watch(src Source) {
	m.reg.MustRegister(newCollector(src))
}

// collector reads gauges and totals at scrape time, so the hot path pays
// nothing for them.
type collector struct {
	src Source

	descClients, descServers, descPoolSize, descPaused, descWaitMax, descTx, descQueries, descKeys *prometheus.Desc
}

func newCollector(src Source) *collector {
	return &collector{
		src: src,
		descClients: prometheus.NewDesc("pgtoken_client_connections",
			"Client connections by state: active (holding a server connection), waiting (for one), idle (logged in, between transactions), login (not logged in yet), admin (console).",
			[]string{"state"}, nil),
		descServers: prometheus.NewDesc("pgtoken_server_connections",
			"Server connections by database and state: active (a client's), idle, connecting.",
			[]string{"database", "state"}, nil),
		descPoolSize: prometheus.NewDesc("pgtoken_pool_size",
			"Maximum of server connections, by database.", []string{"database"}, nil),
		descPaused: prometheus.NewDesc("pgtoken_pool_paused",
			"1 while the database's pool is paused (admin console PAUSE).", []string{"database"}, nil),
		descWaitMax: prometheus.NewDesc("pgtoken_pool_max_wait_seconds",
			"How long the longest-waiting client of the database has waited.", []string{"database"}, nil),
		descTx: prometheus.NewDesc("pgtoken_transactions_total",
			"Transactions run, by database.", []string{"database"}, nil),
		descQueries: prometheus.NewDesc("pgtoken_queries_total",
			"Queries (simple Query messages and Executes) clients sent, by database.", []string{"database"}, nil),
		descKeys: prometheus.NewDesc("pgtoken_jwt_keys",
			"Token verification keys loaded (the shared secret counts as one).", nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.descClients, c.descServers, c.descPoolSize, c.descPaused, c.descWaitMax, c.descTx, c.descQueries, c.descKeys} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Stats()
	active, waiting := 0, 0
	for _, p := range st.Pools {
		active += p.Active
		waiting += p.Waiting
		db := p.Database
		ch <- prometheus.MustNewConstMetric(c.descServers, prometheus.GaugeValue, float64(p.Active), db, "active")
		ch <- prometheus.MustNewConstMetric(c.descServers, prometheus.GaugeValue, float64(p.Idle), db, "idle")
		ch <- prometheus.MustNewConstMetric(c.descServers, prometheus.GaugeValue, float64(p.Connecting), db, "connecting")
		ch <- prometheus.MustNewConstMetric(c.descPoolSize, prometheus.GaugeValue, float64(p.Size), db)
		ch <- prometheus.MustNewConstMetric(c.descPaused, prometheus.GaugeValue, boolValue(p.Paused), db)
		ch <- prometheus.MustNewConstMetric(c.descWaitMax, prometheus.GaugeValue, p.MaxWait.Seconds(), db)
		ch <- prometheus.MustNewConstMetric(c.descTx, prometheus.CounterValue, float64(p.Transactions), db)
		ch <- prometheus.MustNewConstMetric(c.descQueries, prometheus.CounterValue, float64(p.Queries), db)
	}
	// A conn is also out during a login's own round trip, before the
	// client counts as logged in: clamp rather than report a negative.
	active = min(active, st.Sessions)
	waiting = min(waiting, st.Sessions-active)
	idle := st.Sessions - active - waiting
	login := max(st.Connections-st.Sessions-st.Consoles, 0)
	for _, s := range []struct {
		state string
		n     int
	}{{"active", active}, {"waiting", waiting}, {"idle", idle}, {"login", login}, {"admin", st.Consoles}} {
		ch <- prometheus.MustNewConstMetric(c.descClients, prometheus.GaugeValue, float64(s.n), s.state)
	}
	if c.src.KeyCount != nil {
		ch <- prometheus.MustNewConstMetric(c.descKeys, prometheus.GaugeValue, float64(c.src.KeyCount()))
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Handler serves /metrics, /healthz, /readyz and, when sessions is not
// nil, /debug/sessions. ready reports why pgtoken cannot serve, or nil; its
// answer is kept for a second so that probes in a burst cost one check.
func (m *Metrics) Handler(ready func(context.Context) error, sessions func() []session.SessionDebug) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	rc := &readyCache{check: ready}
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := rc.get(r.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	if sessions != nil {
		mux.HandleFunc("GET /debug/sessions", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			_ = enc.Encode(struct {
				Sessions []session.SessionDebug `json:"sessions"`
			}{sessions()})
		})
	}
	return mux
}

// readyCache runs one readiness check at a time and reuses a result for a
// second.
type readyCache struct {
	check func(context.Context) error
	mu    sync.Mutex
	at    time.Time
	err   error
}

func (c *readyCache) get(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && time.Since(c.at) < time.Second {
		return c.err
	}
	if c.check == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c.err = c.check(ctx)
	c.at = time.Now()
	return c.err
}
