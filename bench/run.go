package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/pgtoken/pgtoken/internal/testpg"
)

// runResult is one pgbench run against one target.
type runResult struct {
	Config benchConfig `json:"config"`
	Label  string      `json:"label"`
	Target string      `json:"target"`
	Rep    int         `json:"rep"`
	OK     bool        `json:"ok"`
	Error  string      `json:"error,omitempty"`
	pgbenchResult
	// pgtoken only: CPU (user+system) used during the run, per 10,000
	// transactions, and the largest RSS sampled during the run.
	CPUSeconds float64 `json:"pgtoken_cpu_s,omitempty"`
	CPUPer10k  float64 `json:"pgtoken_cpu_s_per_10k_tx,omitempty"`
	PeakRSSMB  float64 `json:"pgtoken_peak_rss_mb,omitempty"`
	// The same CPU measure for PgBouncer (one process, one thread).
	BouncerCPUPer10k float64 `json:"pgbouncer_cpu_s_per_10k_tx,omitempty"`
	// ServerLog is the tail of pgtoken's or PgBouncer's log after a failure.
	ServerLog string `json:"server_log,omitempty"`
	// OtherBusy is the fraction of the CPUs busy just before the run,
	// while the benchmark itself idled: other processes on the machine.
	OtherBusy float64 `json:"other_busy"`
}

// harness holds what the phases share.
type harness struct {
	o       options
	root    string
	tmp     string
	sec     secrets
	token   string
	pg      *testpg.Cluster
	pgtoken string // binary
	bouncer string // binary
	bench   *pgbenchRunner
	rep     *report
}

// run executes every phase and writes the results.
func run(ctx context.Context, o options) (err error) {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	h := &harness{o: o, root: root, rep: &report{Started: time.Now(), Command: o.command}}
	if err := raiseFDLimit(); err != nil {
		logf("warning: %v", err)
	}
	h.tmp, err = os.MkdirTemp("", "pgtoken-bench-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(h.tmp)
	// PgBouncer runs as the postgres OS user and must reach its directory.
	if err := os.Chmod(h.tmp, 0o755); err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	h.bench = &pgbenchRunner{logDir: filepath.Join(h.tmp, "logs")}
	if err := os.Mkdir(h.bench.logDir, 0o700); err != nil {
		return fmt.Errorf("log dir: %w", err)
	}
	if h.sec, err = newSecrets(); err != nil {
		return err
	}
	if h.token, err = mintToken(h.sec.jwt, time.Now()); err != nil {
		return err
	}
	if h.has(targetBouncer) {
		if h.bouncer, err = ensurePgbouncer(ctx); err != nil {
			return err
		}
	}
	if h.pgtoken = fromRoot(root, o.pgtokenBin); h.pgtoken == "" {
		logf("building bin/pgtoken")
		if h.pgtoken, err = buildPgtoken(ctx, root); err != nil {
			return err
		}
	}

	logf("starting Postgres")
	if h.pg, err = startPostgres(ctx, o); err != nil {
		return err
	}
	defer func() {
		if serr := h.pg.Stop(); serr != nil {
			err = errors.Join(err, fmt.Errorf("stop postgres: %w", serr))
		}
	}()
	logf("pgbench -i -s %d and roles", o.scale)
	if err := setupDatabase(ctx, h.pg, o, h.sec); err != nil {
		return err
	}
	if o.stress {
		return h.stress(ctx)
	}
	if h.rep.Machine, err = machineInfo(ctx, h.pg, h.bouncer, h.pgtoken); err != nil {
		return err
	}

	if o.inherent {
		if h.rep.Inherent, err = h.inherentCost(ctx); err != nil {
			return err
		}
	}
	if err := h.matrix(ctx); err != nil {
		return err
	}
	if o.profile && h.has(targetPgtoken) {
		if h.rep.Profile, err = h.cpuProfile(ctx); err != nil {
			return err
		}
	}
	if o.idle > 0 && h.has(targetPgtoken) {
		if h.rep.Idle, err = h.idleConnections(ctx); err != nil {
			return err
		}
	}
	h.rep.Finished = time.Now()
	return h.writeReport()
}

// has reports whether target is among those benchmarked.
func (h *harness) has(target string) bool {
	for _, t := range h.o.targets {
		if t == target {
			return true
		}
	}
	return false
}

// configs lists the matrix in order.
func (h *harness) configs() []benchConfig {
	var cs []benchConfig
	for _, s := range h.o.scripts {
		for _, m := range h.o.modes {
			for _, c := range h.o.clients {
				cs = append(cs, benchConfig{Script: s, Mode: m, Clients: c})
			}
		}
	}
	for _, m := range h.o.connModes {
		for _, c := range h.o.connect {
			cs = append(cs, benchConfig{Script: "select", Mode: m, Clients: c, Connect: true})
		}
	}
	return cs
}

// matrix starts PgBouncer and pgtoken and runs every configuration against
// every target, the targets interleaved (in rotating order) within each
// repetition.
func (h *harness) matrix(ctx context.Context) (err error) {
	eps := map[string]endpoint{}
	daemons := map[string]*daemon{}
	if h.has(targetDirect) {
		eps[targetDirect] = endpoint{target: targetDirect, host: "127.0.0.1", port: h.pg.Port, user: loginRole, password: h.sec.loginPW, db: benchDB}
	}
	if h.has(targetBouncer) {
		logf("starting PgBouncer")
		d, err := startPgbouncer(h.bouncer, h.tmp, h.pg, h.o, h.sec)
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, d.stop()) }()
		daemons[targetBouncer] = d
		eps[targetBouncer] = endpoint{target: targetBouncer, host: "127.0.0.1", port: d.port, user: loginRole, password: h.sec.loginPW, db: benchDB}
	}
	var pt *daemon
	if h.has(targetPgtoken) {
		logf("starting pgtoken")
		pt, err = startPgtoken(h.pgtoken, h.tmp, "pgtoken", h.pg, h.o, h.sec, "")
		if err != nil {
			return err
		}
		defer func() {
			if pt.alive() {
				if kb, herr := statusKB(pt.pid(), "VmHWM"); herr == nil {
					h.rep.PgtokenHWMMB = float64(kb) / 1024
				}
			}
			err = errors.Join(err, pt.stop())
		}()
		daemons[targetPgtoken] = pt
		eps[targetPgtoken] = endpoint{target: targetPgtoken, host: "127.0.0.1", port: pt.port, user: "bench", password: h.token, db: benchDB}
	}

	for _, t := range h.o.targets {
		logf("warm-up: %s", t)
		warm := benchConfig{Script: "select", Mode: "simple", Clients: h.o.pool}
		if _, err := h.bench.run(ctx, eps[t], warm.pgbenchArgs(h.o.warmup), warm.runSeconds(h.o.warmup)); err != nil {
			return fmt.Errorf("warm-up against %s failed; is it working at all? %w%s", t, err, daemonLog(daemons[t]))
		}
	}

	configs := h.configs()
	total := len(configs) * len(h.o.targets) * h.o.reps
	n := 0
	for rep := 0; rep < h.o.reps; rep++ {
		for _, c := range configs {
			for i := range h.o.targets {
				t := h.o.targets[(i+rep)%len(h.o.targets)]
				if err := ctx.Err(); err != nil {
					return err
				}
				n++
				if c.Script == "tpcb" {
					// What pgbench does before a run unless -n: the same
					// starting point for every target.
					if err := h.pg.Exec(ctx, benchDB, "VACUUM pgbench_branches, pgbench_tellers"); err != nil {
						return fmt.Errorf("vacuum: %w", err)
					}
					if err := h.pg.Exec(ctx, benchDB, "TRUNCATE pgbench_history"); err != nil {
						return fmt.Errorf("truncate: %w", err)
					}
				}
				r := h.runOne(ctx, c, eps[t], daemons[t], rep)
				status := fmt.Sprintf("%.0f tps, mean %.3f ms, p99 %.3f ms", r.TPS, r.LatMeanMS, r.LatP99MS)
				if !r.OK {
					status = "FAILED: " + r.Error
				}
				logf("[%d/%d] rep %d %-28s %-9s %s", n, total, rep+1, c.Label(), t, status)
				h.rep.Runs = append(h.rep.Runs, r)
				if d := daemons[t]; d != nil && !d.alive() {
					return fmt.Errorf("%s exited during %s: %w\n%s", t, c.Label(), d.waitErr, d.logTail(30))
				}
			}
		}
	}
	return nil
}

// runOne runs pgbench once, measuring pgtoken's CPU and memory when it is
// the target.
func (h *harness) runOne(ctx context.Context, c benchConfig, ep endpoint, d *daemon, rep int) runResult {
	r := runResult{Config: c, Label: c.Label(), Target: ep.target, Rep: rep + 1}
	r.OtherBusy, _ = machineBusy(300 * time.Millisecond)
	var cpu0 float64
	var rss *rssSampler
	if d != nil {
		cpu0, _ = cpuSeconds(d.pid())
	}
	if ep.target == targetPgtoken {
		rss = sampleRSS(d.pid())
	}
	res, err := h.bench.run(ctx, ep, c.pgbenchArgs(h.o.duration), c.runSeconds(h.o.duration))
	r.pgbenchResult = res
	if rss != nil {
		r.PeakRSSMB = float64(rss.stop()) / 1024
	}
	if d != nil && res.Transactions > 0 {
		if cpu1, cerr := cpuSeconds(d.pid()); cerr == nil {
			per10k := (cpu1 - cpu0) / float64(res.Transactions) * 10000
			if ep.target == targetPgtoken {
				r.CPUSeconds, r.CPUPer10k = cpu1-cpu0, per10k
			} else {
				r.BouncerCPUPer10k = per10k
			}
		}
	}
	r.OK = err == nil
	if err != nil {
		r.Error = err.Error()
		if d != nil {
			r.ServerLog = d.logTail(15)
		}
	}
	return r
}

// daemonLog formats the log tail of d for an error, if there is one.
func daemonLog(d *daemon) string {
	if d == nil {
		return ""
	}
	return fmt.Sprintf("\n--- last lines of %s's log ---\n%s", d.name, d.logTail(20))
}

// raiseFDLimit raises the harness's soft RLIMIT_NOFILE to its hard limit,
// for the idle-connection test.
func raiseFDLimit() error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return fmt.Errorf("setrlimit: %w", err)
		}
	}
	return nil
}
