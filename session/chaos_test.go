package session_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/session"
)

// chaosCounts tallies the errors clients see under chaos.
type chaosCounts struct {
	mu     sync.Mutex
	codes  map[string]int64
	sample map[string]string
}

// note counts err by SQLSTATE ("net" when the client lost its connection,
// "timeout" when it gave up waiting).
func (cc *chaosCounts) note(err error) {
	code, msg := "net", err.Error()
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		code, msg = pe.Code, pe.Severity+": "+pe.Message
	} else if pgconn.Timeout(err) {
		code = "timeout"
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.codes == nil {
		cc.codes, cc.sample = map[string]int64{}, map[string]string{}
	}
	cc.codes[code]++
	if _, ok := cc.sample[code]; !ok {
		cc.sample[code] = msg
	}
}

func (cc *chaosCounts) String() string {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	var keys []string
	for k := range cc.codes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "\n    %-8s %8d  e.g. %s", k, cc.codes[k], cc.sample[k])
	}
	return b.String()
}

func (cc *chaosCounts) total() int64 {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	var n int64
	for _, v := range cc.codes {
		n += v
	}
	return n
}

// chaosConfig sizes a chaos run. The CI run is time-bound; make soak sets
// PGTOKEN_SOAK_STATEMENTS to run until that many statements were checked.
type chaosConfig struct {
	clients    int
	poolSize   int
	killEvery  time.Duration
	dropPct    int           // chance in percent that a step ends with the client dropping its socket
	duration   time.Duration // CI: how long to run
	statements int64         // soak: how many identity rows to check (0: use duration)
	progress   time.Duration
	noRestart  bool
	// maxDuration bounds a soak that is not getting anywhere.
	maxDuration time.Duration
}

func chaosSettings(t *testing.T) chaosConfig {
	cfg := chaosConfig{clients: 16, poolSize: 4, killEvery: 250 * time.Millisecond, dropPct: 3,
		duration: 20 * time.Second, progress: 10 * time.Second, maxDuration: 4 * time.Hour}
	if testing.Short() {
		cfg.duration = 8 * time.Second
	}
	if v := os.Getenv("PGTOKEN_CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("PGTOKEN_CHAOS_DURATION: %v", err)
		}
		cfg.duration = d
	}
	if v := os.Getenv("PGTOKEN_CHAOS_DROP_PCT"); v != "" {
		cfg.dropPct, _ = strconv.Atoi(v)
	}
	if v := os.Getenv("PGTOKEN_CHAOS_KILL_EVERY"); v != "" {
		cfg.killEvery, _ = time.ParseDuration(v)
	}
	cfg.noRestart = os.Getenv("PGTOKEN_CHAOS_NO_RESTART") != ""
	if v := os.Getenv("PGTOKEN_SOAK_STATEMENTS"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			t.Fatalf("PGTOKEN_SOAK_STATEMENTS=%q: want a positive number", v)
		}
		cfg.statements = n
	}
	return cfg
}

// TestIsolationUnderChaos runs the isolation flows while a random half of
// pgtoken's server connections are killed every quarter second, clients
// drop their sockets at random and reconnect, and Postgres restarts once
// half way. Errors are expected and counted; a statement that sees anyone
// else's identity (or none) fails the test.
func TestIsolationUnderChaos(t *testing.T) {
	checkLeaks(t)
	cc := chaosSettings(t)
	env := privateEnv(t, func(c *config.Config) {
		c.Pool.Size = cc.poolSize
		c.Pool.WaitTimeout = config.Duration(5 * time.Second)
		c.Pool.ConnectTimeout = config.Duration(5 * time.Second)
	})
	var checked, mismatches, drops, reconnects, hangs atomic.Int64
	counts := &chaosCounts{}
	stop := make(chan struct{})
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// connect logs client i in (every other one with startup settings of
	// its own, as isoConnect does) and prepares its statements, retrying
	// while the server is down or its connections are being killed.
	connect := func(i int, tok string) *pgconn.PgConn {
		pc, err := pgconn.ParseConfig(env.DSN(tok))
		if err != nil {
			t.Error(err)
			return nil
		}
		if i%2 == 1 {
			pc.RuntimeParams["application_name"] = fmt.Sprintf("iso-%d", i)
			pc.RuntimeParams["TimeZone"] = "Asia/Tokyo"
		}
		deadline := time.Now().Add(90 * time.Second)
		for !stopped() && time.Now().Before(deadline) {
			cx, cancel := context.WithTimeout(ctx, 20*time.Second)
			c, err := pgconn.ConnectConfig(cx, pc)
			if err == nil {
				err = isoPrepare(cx, c)
				if err != nil {
					c.Close(context.Background())
				}
			}
			cancel()
			if err == nil {
				return c
			}
			counts.note(err)
			time.Sleep(50 * time.Millisecond)
		}
		if !stopped() {
			t.Errorf("a client could not log in again for 90s")
		}
		return nil
	}

	start := time.Now()
	var wg sync.WaitGroup
	for i := range cc.clients {
		want, tok := isoIdentity(t, i)
		c := connect(i, tok)
		if c == nil {
			t.Fatal("initial login failed")
		}
		ic := &isoClient{t: t, c: c, want: want, rnd: rand.New(rand.NewPCG(uint64(i), uint64(start.UnixNano()))),
			checked: &checked, mismatches: &mismatches, chaos: counts}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if ic.c != nil {
					ic.c.Close(context.Background())
				}
			}()
			for !stopped() {
				if ic.c == nil {
					if ic.c = connect(i, tok); ic.c == nil {
						return
					}
					reconnects.Add(1)
				}
				var dropped atomic.Bool
				var timer *time.Timer
				if ic.rnd.IntN(100) < cc.dropPct {
					nc := ic.c.Conn()
					timer = time.AfterFunc(time.Duration(ic.rnd.IntN(20))*time.Millisecond, func() {
						dropped.Store(true)
						_ = nc.Close() // abruptly, no Terminate
					})
				}
				before := counts.total()
				stepCtx, stepCancel := context.WithTimeout(ctx, 60*time.Second)
				watch := time.AfterFunc(20*time.Second, func() {
					dumpOnce(t, fmt.Sprintf("client %d stuck in flow %d\n%s", i, ic.flow, session.DescribeSessions(env.App.Server)))
				})
				ic.step(stepCtx)
				watch.Stop()
				hung := stepCtx.Err() != nil
				stepCancel()
				if timer != nil {
					timer.Stop()
				}
				if hung {
					hangs.Add(1)
					t.Errorf("client %d: flow %d took more than 60s", i, ic.flow)
				}
				if dropped.Load() {
					drops.Add(1)
				}
				// After an error the connection may be in any state: a
				// dropped one is replaced; one that only saw server
				// errors goes on.
				if dropped.Load() || hung || ic.c.IsClosed() || counts.total() != before && !ic.usable() {
					ic.c.Close(context.Background())
					ic.c = nil
				}
			}
		}()
	}

	// The killer: a random half of pgtoken's server connections, every
	// killEvery, from a superuser connection of its own.
	var kills, killRounds atomic.Int64
	killerDone := make(chan struct{})
	go func() {
		defer close(killerDone)
		var kc *pgconn.PgConn
		defer func() {
			if kc != nil {
				kc.Close(context.Background())
			}
		}()
		tick := time.NewTicker(cc.killEvery)
		defer tick.Stop()
		const killSQL = `with b as (select pid from pg_stat_activity where usename = 'authenticator' and datname = current_database())
select count(*) filter (where pg_terminate_backend(pid)) from (select pid from b order by random() limit (select (count(*) + 1) / 2 from b)) x`
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			cx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if kc == nil || kc.IsClosed() {
				var err error
				if kc, err = pgconn.Connect(cx, env.PG.SuperuserDSN(env.DB)); err != nil {
					kc = nil
					cancel()
					continue // the server restarts
				}
			}
			res, err := kc.Exec(cx, killSQL).ReadAll()
			cancel()
			if err == nil && len(res) == 1 && len(res[0].Rows) == 1 {
				n, _ := strconv.Atoi(string(res[0].Rows[0][0]))
				kills.Add(int64(n))
				killRounds.Add(1)
			}
		}
	}()

	report := func() string {
		el := time.Since(start)
		return fmt.Sprintf("%s: %d statements checked (%.0f/s), %d mismatches, %d errors, %d kills in %d rounds, %d dropped sockets, %d reconnects, %d hung steps",
			el.Round(time.Second), checked.Load(), float64(checked.Load())/el.Seconds(), mismatches.Load(), counts.total(),
			kills.Load(), killRounds.Load(), drops.Load(), reconnects.Load(), hangs.Load())
	}

	// Run: by time (CI) or by statements (soak); Postgres restarts once at
	// the half-way mark.
	restarted := false
	var restartTook time.Duration
	tick := time.NewTicker(100 * time.Millisecond)
	lastProgress := time.Now()
	for {
		<-tick.C
		done, half := false, false
		if cc.statements > 0 {
			done, half = checked.Load() >= cc.statements, checked.Load() >= cc.statements/2
		} else {
			done, half = time.Since(start) >= cc.duration, time.Since(start) >= cc.duration/2
		}
		if mismatches.Load() > 0 && cc.statements > 0 {
			done = true // a soak stops at the first mismatch
		}
		if cc.statements > 0 && time.Since(start) > cc.maxDuration {
			t.Errorf("the soak ran %s without reaching %d statements", cc.maxDuration, cc.statements)
			done = true
		}
		if done {
			break
		}
		if half && !restarted && !cc.noRestart {
			restarted = true
			rs := time.Now()
			cx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			if err := env.PG.Restart(cx); err != nil {
				t.Errorf("restart: %v", err)
			}
			cancel()
			restartTook = time.Since(rs)
			t.Logf("Postgres restarted in %s, at %s", restartTook.Round(time.Millisecond), report())
		}
		if time.Since(lastProgress) >= cc.progress {
			lastProgress = time.Now()
			t.Logf("progress %s", report())
		}
	}
	tick.Stop()
	close(stop)
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(2 * time.Minute):
		var b strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Fatalf("clients did not stop within 2 minutes; goroutines:\n%s", b.String())
	}
	<-killerDone

	t.Logf("done %s; errors by SQLSTATE:%s", report(), counts)
	if mismatches.Load() != 0 {
		t.Fatalf("%d IDENTITY MISMATCHES in %d checked statements", mismatches.Load(), checked.Load())
	}
	// Errors that are pgtoken's own fault even under chaos.
	counts.mu.Lock()
	for _, code := range []string{"XX000", "08P01", "timeout"} {
		if n := counts.codes[code]; n > 0 {
			t.Errorf("%d errors %s, e.g. %s", n, code, counts.sample[code])
		}
	}
	counts.mu.Unlock()
	if !restarted && !cc.noRestart {
		t.Error("Postgres was never restarted")
	}
	if kills.Load() == 0 || drops.Load() == 0 {
		t.Errorf("not much chaos: %d kills, %d dropped sockets", kills.Load(), drops.Load())
	}
	if checked.Load() < 500 {
		t.Errorf("only %d statements checked", checked.Load())
	}
	// pgtoken answers afterwards, with nothing left on its server
	// connections.
	poolSettles(t, env)
	serverSideClean(t, env)
	after := env.Connect(pgtest.UserToken(t, "after the chaos"))
	isFresh(t, after, "after the chaos")
	d := env.Direct()
	if got := rows(t, d, identSQL); got[0][0] != "authenticator" || got[0][1] != "<none>" && got[0][1] != "" {
		t.Fatalf("direct connection after the run: %q", got)
	}
}

// usable reports whether the client's connection may go on after the
// errors of the last step: pgconn closes it itself when the protocol went
// wrong; a FATAL from pgtoken also ends it.
func (ic *isoClient) usable() bool {
	if ic.c.IsClosed() {
		return false
	}
	cx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// A statement that must work on a healthy session; if the server is
	// down it fails with a server error and the session is still usable.
	_, err := ic.c.Exec(cx, "select 1").ReadAll()
	if err == nil {
		return true
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Severity != "FATAL" && !ic.c.IsClosed()
}

var dumped atomic.Bool

// dumpOnce writes every goroutine's stack to a file, once per test binary,
// when a client seems stuck.
func dumpOnce(t *testing.T, why string) {
	if !dumped.CompareAndSwap(false, true) {
		return
	}
	f, err := os.CreateTemp("", "pgtoken-stuck-*.txt")
	if err != nil {
		t.Logf("%s; cannot dump goroutines: %v", why, err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s\n\n", why)
	_ = pprof.Lookup("goroutine").WriteTo(f, 2)
	t.Logf("%s: goroutines written to %s", why, f.Name())
}
