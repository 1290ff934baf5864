package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// idleResult is the idle-connection memory measurement.
type idleResult struct {
	Wanted        int     `json:"wanted"`
	Opened        int     `json:"opened"`
	OpenSeconds   float64 `json:"open_seconds"`
	BaselineRSSMB float64 `json:"baseline_rss_mb"` // after one login, before the rest
	RSSMB         float64 `json:"rss_mb"`          // with every connection open and idle
	HWMMB         float64 `json:"hwm_mb"`          // VmHWM at that point
	PerConnKB     float64 `json:"per_conn_kb"`
	Sample        int     `json:"sample"`
	SampleOK      int     `json:"sample_ok"`
	FDSoft        string  `json:"pgtoken_nofile_soft"`
	FDHard        string  `json:"pgtoken_nofile_hard"`
	Error         string  `json:"error,omitempty"`
}

// idleConnections starts a fresh pgtoken, logs o.idle clients in with the
// token (pgconn's startup handshake), lets them idle, measures pgtoken's
// RSS, and checks that a sample of them still answers select 1.
func (h *harness) idleConnections(ctx context.Context) (res *idleResult, err error) {
	res = &idleResult{Wanted: h.o.idle}
	logf("idle test: %d client connections through a fresh pgtoken", h.o.idle)
	o := h.o
	o.logLevel = "warn" // 20,000 log lines would measure the logger
	d, err := startPgtoken(h.pgtoken, h.tmp, "pgtoken-idle", h.pg, o, h.sec, "")
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, d.stop()) }()
	res.FDSoft, res.FDHard, _ = fdLimit(d.pid())

	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=bench dbname=%s password=%s sslmode=disable connect_timeout=30",
		d.port, benchDB, h.token)
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("idle test dsn: %w", err)
	}
	conns := make([]*pgconn.PgConn, 0, h.o.idle)
	defer func() { closeAll(conns) }()

	// One client first, so the pool and server parameters exist.
	first, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("idle test: first login: %w\n%s", err, d.logTail(20))
	}
	if _, err := first.Exec(ctx, "select 1").ReadAll(); err != nil {
		_ = first.Close(ctx)
		return nil, fmt.Errorf("idle test: select 1: %w", err)
	}
	conns = append(conns, first)
	time.Sleep(500 * time.Millisecond)
	if kb, err := statusKB(d.pid(), "VmRSS"); err == nil {
		res.BaselineRSSMB = float64(kb) / 1024
	}

	start := time.Now()
	more, openErr := openConns(ctx, cfg, h.o.idle-1, 32)
	conns = append(conns, more...)
	res.OpenSeconds = time.Since(start).Seconds()
	res.Opened = len(conns)
	if openErr != nil {
		res.Error = fmt.Sprintf("opened %d of %d: %v", len(conns), h.o.idle, openErr)
		logf("idle test: %s\n%s", res.Error, d.logTail(10))
	}
	time.Sleep(2 * time.Second) // let allocations settle
	if kb, err := statusKB(d.pid(), "VmRSS"); err == nil {
		res.RSSMB = float64(kb) / 1024
	}
	if kb, err := statusKB(d.pid(), "VmHWM"); err == nil {
		res.HWMMB = float64(kb) / 1024
	}
	if n := len(conns) - 1; n > 0 {
		res.PerConnKB = (res.RSSMB - res.BaselineRSSMB) * 1024 / float64(n)
	}

	// A sample spread over the connections must still work.
	res.Sample = min(100, len(conns))
	var failures []string
	for i := 0; i < res.Sample; i++ {
		c := conns[i*len(conns)/res.Sample]
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.Exec(qctx, "select 1").ReadAll()
		cancel()
		if err != nil {
			failures = append(failures, err.Error())
			continue
		}
		res.SampleOK++
	}
	if len(failures) > 0 {
		res.Error = strings.TrimSpace(res.Error + fmt.Sprintf(" %d of %d sampled connections failed select 1, e.g.: %s", len(failures), res.Sample, failures[0]))
	}
	logf("idle test: %d connections open in %.1fs; pgtoken RSS %.1f MB (baseline %.1f MB, %.1f KB per connection); select 1 on %d/%d sampled",
		res.Opened, res.OpenSeconds, res.RSSMB, res.BaselineRSSMB, res.PerConnKB, res.SampleOK, res.Sample)
	return res, nil
}

// openConns logs in n clients with at most par handshakes in flight and
// returns those that succeeded, with the first error.
func openConns(ctx context.Context, cfg *pgconn.Config, n, par int) ([]*pgconn.PgConn, error) {
	var (
		mu       sync.Mutex
		conns    []*pgconn.PgConn
		firstErr error
		wg       sync.WaitGroup
	)
	next := make(chan struct{})
	go func() {
		defer close(next)
		for i := 0; i < n; i++ {
			select {
			case next <- struct{}{}:
			case <-ctx.Done():
				return
			}
		}
	}()
	for w := 0; w < par; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				c, err := pgconn.ConnectConfig(ctx, cfg)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return conns, firstErr
}

// closeAll closes connections, many at a time.
func closeAll(conns []*pgconn.PgConn) {
	var wg sync.WaitGroup
	ch := make(chan *pgconn.PgConn)
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range ch {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_ = c.Close(ctx)
				cancel()
			}
		}()
	}
	for _, c := range conns {
		ch <- c
	}
	close(ch)
	wg.Wait()
}

// profileResult is the CPU profile of pgtoken under load.
type profileResult struct {
	Label   string  `json:"label"`
	Seconds int     `json:"seconds"`
	TPS     float64 `json:"tps"`
	File    string  `json:"file"`
	Top     string  `json:"top"` // go tool pprof -top
	// With -pgtoken-godebug gctrace=1: garbage collections during the
	// run and the last gctrace line.
	GCs    int    `json:"gcs,omitempty"`
	LastGC string `json:"last_gc,omitempty"`
}

// cpuProfile runs a fresh pgtoken with --cpuprofile under -S (-M simple
// -c 32 unless -profile-mode/-profile-clients/-profile-connect say
// otherwise) and returns
// the top of the profile.
func (h *harness) cpuProfile(ctx context.Context) (res *profileResult, err error) {
	c := benchConfig{Script: "select", Mode: h.o.profMode, Clients: h.o.profClients, Connect: h.o.profConnect}
	secs := max(h.o.duration, 10)
	logf("CPU profile of pgtoken under %s for %ds", c.Label(), secs)
	prof := filepath.Join(h.outDir(), h.o.name+"-cpu.prof")
	if err := os.MkdirAll(filepath.Dir(prof), 0o755); err != nil {
		return nil, fmt.Errorf("profile dir: %w", err)
	}
	d, err := startPgtoken(h.pgtoken, h.tmp, "pgtoken-profile", h.pg, h.o, h.sec, prof)
	if err != nil {
		return nil, err
	}
	ep := endpoint{target: targetPgtoken, host: "127.0.0.1", port: d.port, user: "bench", password: h.token, db: benchDB}
	r, runErr := h.bench.run(ctx, ep, c.pgbenchArgs(secs), c.runSeconds(secs))
	if err := d.stop(); err != nil {
		return nil, err
	}
	if runErr != nil {
		return nil, fmt.Errorf("profile run: %w%s", runErr, daemonLog(d))
	}
	out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=30", h.pgtoken, prof).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go tool pprof: %w\n%s", err, out)
	}
	rel, _ := filepath.Rel(h.root, prof)
	res = &profileResult{Label: c.Label(), Seconds: secs, TPS: r.TPS, File: rel, Top: strings.TrimSpace(string(out))}
	if log, err := os.ReadFile(d.logPath); err == nil {
		for _, line := range strings.Split(string(log), "\n") {
			if strings.HasPrefix(line, "gc ") {
				res.GCs++
				res.LastGC = line
			}
		}
	}
	return res, nil
}
