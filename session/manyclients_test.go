package session_test

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.yaml.in/yaml/v3"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// ensureFileLimit raises the test process's limit on open files so it can
// hold need descriptors (both ends of every client connection live here):
// the soft limit up to the hard one, and the hard one too where allowed
// (root). It skips the test when that is not enough.
func ensureFileLimit(t *testing.T, need uint64) {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur >= need {
		return
	}
	want := rl
	want.Cur = min(need, rl.Max)
	if rl.Max < need {
		want.Cur, want.Max = need, need // only with CAP_SYS_RESOURCE
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil && rl.Max > rl.Cur {
		want.Cur, want.Max = rl.Max, rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want)
	}
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	if rl.Cur < need {
		t.Skipf("open file limit %d (hard %d) is below the %d this test needs", rl.Cur, rl.Max, need)
	}
}

// memSnapshot is the test process's memory, with what pgtoken's own code
// allocated and still holds (from an exact heap profile) told apart from
// the clients' share.
type memSnapshot struct {
	heapInuse, sys, stackInuse uint64
	pgtokenHeap                int64 // live bytes allocated with a pgtoken (non-test) frame on the stack
	goroutines                 int
	rss                        int64 // VmRSS, bytes
}

func readMem() memSnapshot {
	runtime.GC()
	runtime.GC() // the heap profile describes the heap as of the last completed cycle
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	s := memSnapshot{heapInuse: m.HeapInuse, sys: m.Sys, stackInuse: m.StackInuse, goroutines: runtime.NumGoroutine(), rss: vmRSS()}
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, true)
	for {
		recs = make([]runtime.MemProfileRecord, n+64)
		var ok bool
		if n, ok = runtime.MemProfile(recs, true); ok {
			recs = recs[:n]
			break
		}
	}
	rate := float64(runtime.MemProfileRate)
	for i := range recs {
		r := &recs[i]
		if r.InUseBytes() == 0 || !inPgtoken(r.Stack()) {
			continue
		}
		// Scaled for sampling as pprof does: an allocation of size b is
		// sampled with probability 1-exp(-b/rate).
		scale := 1.0
		if rate > 1 && r.AllocObjects > 0 {
			avg := float64(r.AllocBytes) / float64(r.AllocObjects)
			scale = 1 / (1 - math.Exp(-avg/rate))
		}
		s.pgtokenHeap += int64(float64(r.InUseBytes()) * scale)
	}
	return s
}

// inPgtoken reports whether an allocation's stack runs through pgtoken's
// own (non-test) code: the proxy's sessions and server connections, not
// the test's clients.
func inPgtoken(stk []uintptr) bool {
	frames := runtime.CallersFrames(stk)
	for {
		f, more := frames.Next()
		if strings.HasPrefix(f.Function, "github.com/pgtoken/pgtoken/") && !strings.Contains(f.Function, "_test.") &&
			!strings.HasPrefix(f.Function, "github.com/pgtoken/pgtoken/internal/pgtest.") {
			return true
		}
		if !more {
			return false
		}
	}
}

// writeHeapProfile writes the heap profile as of the last collection to
// file (PGTOKEN_HEAPPROFILE, in-process runs only: pgtoken and the test's
// clients share the heap; go tool pprof -focus=pgtoken/session tells them
// apart).
func writeHeapProfile(t *testing.T, file string) {
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		t.Fatal(err)
	}
}

func vmRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// target is a pgtoken the clients log in to: in-process (env), or a
// separate pgtoken process (proc), whose own memory can then be read.
type target struct {
	env  *pgtest.Env
	proc *exec.Cmd
	port int
	db   string
	// metrics is the address of the separate process's /metrics.
	metrics string
}

func (tg *target) dsn(token string) string {
	if tg.env != nil {
		return tg.env.DSN(token)
	}
	return fmt.Sprintf("host=127.0.0.1 port=%d user=anyone dbname=%s password=%s sslmode=disable", tg.port, tg.db, token)
}

// procMem describes the separate pgtoken process's memory: its resident
// set (now and at its peak) from /proc, and its Go heap and goroutines
// from its /metrics.
func (tg *target) procMem() string {
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", tg.proc.Process.Pid))
	field := func(name string) int64 {
		for _, l := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(l, name+":"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				return kb << 10
			}
		}
		return 0
	}
	metric := func(text, name string) float64 {
		for _, l := range strings.Split(text, "\n") {
			if v, ok := strings.CutPrefix(l, name+" "); ok {
				f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				return f
			}
		}
		return -1
	}
	var text string
	if resp, err := http.Get("http://" + tg.metrics + "/metrics"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		text = string(b)
	}
	return fmt.Sprintf("RSS %d MB (peak %d MB), Go heap in use %.0f MB, stacks %.0f MB, %.0f goroutines",
		field("VmRSS")>>20, field("VmHWM")>>20, metric(text, "go_memstats_heap_inuse_bytes")/(1<<20),
		metric(text, "go_memstats_stack_inuse_bytes")/(1<<20), metric(text, "go_goroutines"))
}

// startProcess runs the pgtoken binary at bin in front of a fresh database.
func startProcess(t *testing.T, bin string, poolSize int) *target {
	pg, db := pgtest.NewDB(t)
	cfg := pgtest.Config(pg, db)
	port, mport := freeTCPPort(t), freeTCPPort(t)
	cfg.Listen = fmt.Sprintf("127.0.0.1:%d", port)
	cfg.MetricsListen = fmt.Sprintf("127.0.0.1:%d", mport)
	cfg.Pool.Size = poolSize
	cfg.Pool.WaitTimeout = config.Duration(time.Minute)
	cfg.LogLevel = "warn"
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "pgtoken.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "pgtoken.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--config", path)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logf.Name())
			t.Logf("pgtoken's log:\n%s", out)
		}
	})
	tg := &target{proc: cmd, port: port, db: db, metrics: cfg.MetricsListen}
	waitFor(t, 10*time.Second, "pgtoken did not start listening", func() bool {
		nc, err := net.Dial("tcp", cfg.Listen)
		if err == nil {
			nc.Close()
		}
		return err == nil
	})
	return tg
}

func freeTCPPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// manyClients logs in n clients on a pool of poolSize, then has every one
// check its own identity, active of them at a time, rounds times over, and
// reports the memory it took. With bin set, pgtoken runs as a process of
// its own (so the file limit is per side, and its memory its own).
func manyClients(t *testing.T, n, poolSize, active, rounds int, bin string) {
	fds := uint64(2*n + 1000)
	if bin != "" {
		fds = uint64(n + 1000)
	}
	ensureFileLimit(t, fds)
	if bin == "" {
		checkLeaks(t)
	}
	// A finer heap profile from here on, so pgtoken's share can be told
	// from the clients' (every 8 kB allocated on average; exact profiling
	// makes logins ten times slower and gives the same figures).
	oldRate := runtime.MemProfileRate
	runtime.MemProfileRate = 8 << 10
	defer func() { runtime.MemProfileRate = oldRate }()
	var tg *target
	if bin != "" {
		tg = startProcess(t, bin, poolSize)
	} else {
		tg = &target{env: pgtest.Start(t, func(c *config.Config) {
			c.Pool.Size = poolSize
			c.Pool.WaitTimeout = config.Duration(time.Minute)
		})}
	}
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = pgtest.Token(t, map[string]any{"role": "web_user", "sub": fmt.Sprintf("many%d", i)})
	}
	// One warm login first, so the pool and the server parameters exist
	// before the baseline.
	cx, cancel := ctxTimeout(time.Minute)
	warm, err := pgconn.Connect(cx, tg.dsn(pgtest.UserToken(t, "warm")))
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer warm.Close(context.Background())
	rows(t, warm, whoami)
	before := readMem()
	var procBefore string
	if tg.proc != nil {
		procBefore = tg.procMem()
	}

	clients := make([]*pgconn.PgConn, n)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close(context.Background())
			}
		}
	}()
	start := time.Now()
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || failed.Load() > 0 {
					return
				}
				cx, cancel := ctxTimeout(time.Minute)
				c, err := pgconn.Connect(cx, tg.dsn(tokens[i]))
				cancel()
				if err != nil {
					if failed.Add(1) == 1 {
						t.Errorf("login %d: %v", i, err)
					}
					return
				}
				clients[i] = c
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.FailNow()
	}
	loginTook := time.Since(start)
	if tg.env != nil {
		if st := tg.env.App.Server.Stats(); st.Sessions < n+1 {
			t.Fatalf("%d sessions, want %d", st.Sessions, n+1)
		}
	}
	idle := readMem()
	var procIdle string
	if tg.proc != nil {
		procIdle = tg.procMem()
	}

	// Every client answers with its own identity, active at a time.
	start = time.Now()
	next.Store(0)
	var wrong atomic.Int64
	for range active {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n*rounds {
					return
				}
				i %= n
				cx, cancel := ctxTimeout(2 * time.Minute)
				res, err := clients[i].Exec(cx, "select current_setting('jwt.claims.sub')").ReadAll()
				cancel()
				want := fmt.Sprintf("many%d", i)
				if err != nil || len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != want {
					if wrong.Add(1) <= 5 {
						t.Errorf("client %d: %v %v", i, err, flatten(res))
					}
				}
			}
		}()
	}
	wg.Wait()
	queryTook := time.Since(start)
	if wrong.Load() > 0 {
		t.Fatalf("%d clients did not answer with their own identity", wrong.Load())
	}
	after := readMem()
	if f := os.Getenv("PGTOKEN_HEAPPROFILE"); f != "" && tg.env != nil {
		writeHeapProfile(t, f)
	}
	per := func(a, b int64) string { return fmt.Sprintf("%.1f kB", float64(b-a)/float64(n)/1024) }
	t.Logf("%d clients on a pool of %d: logged in in %s; %d×%d statements, %d clients at a time, in %s (%.0f/s)",
		n, poolSize, loginTook.Round(time.Millisecond), n, rounds, active, queryTook.Round(time.Millisecond), float64(n*rounds)/queryTook.Seconds())
	if tg.proc != nil {
		t.Logf("pgtoken process: with 1 client: %s", procBefore)
		t.Logf("pgtoken process: with %d idle clients: %s", n, procIdle)
		t.Logf("pgtoken process: after the queries: %s", tg.procMem())
		t.Logf("test process (clients only): heap in use %d MB, RSS %d MB", after.heapInuse>>20, after.rss>>20)
		return
	}
	t.Logf("memory of the test process (pgtoken and its %d clients both live here):", n)
	t.Logf("  before: heap in use %d MB, sys %d MB, stacks %d MB, RSS %d MB, %d goroutines; pgtoken's live heap %d MB",
		before.heapInuse>>20, before.sys>>20, before.stackInuse>>20, before.rss>>20, before.goroutines, before.pgtokenHeap>>20)
	t.Logf("  %d idle: heap in use %d MB, sys %d MB, stacks %d MB, RSS %d MB, %d goroutines; pgtoken's live heap %d MB (%s per client)",
		n, idle.heapInuse>>20, idle.sys>>20, idle.stackInuse>>20, idle.rss>>20, idle.goroutines, idle.pgtokenHeap>>20, per(before.pgtokenHeap, idle.pgtokenHeap))
	t.Logf("  after the queries: heap in use %d MB, sys %d MB, stacks %d MB, RSS %d MB; pgtoken's live heap %d MB (%s per client)",
		after.heapInuse>>20, after.sys>>20, after.stackInuse>>20, after.rss>>20, after.pgtokenHeap>>20, per(before.pgtokenHeap, after.pgtokenHeap))
	t.Logf("  whole process per client: heap %s, stacks %s (one goroutine per idle session), RSS %s (the race detector's shadow memory counts here under -race)",
		per(int64(before.heapInuse), int64(after.heapInuse)), per(int64(before.stackInuse), int64(after.stackInuse)), per(before.rss, after.rss))
	// A bound that would catch a buffer per idle client growing out of
	// hand (a session's read buffer is 4 kB).
	if perClient := (after.pgtokenHeap - before.pgtokenHeap) / int64(n); perClient > 64<<10 {
		t.Errorf("pgtoken holds %d kB per idle client", perClient>>10)
	}
	poolSettles(t, tg.env)
	if st := tg.env.App.Server.Stats(); st.Pools[0].Total > poolSize {
		t.Errorf("pool grew to %d", st.Pools[0].Total)
	}
}

// TestManyIdleClientsSmallPool: 2,000 clients logged in at once on a pool
// of 4; each then answers with its own identity.
func TestManyIdleClientsSmallPool(t *testing.T) {
	n := 2000
	if testing.Short() {
		n = 500
	}
	manyClients(t, n, 4, 100, 1, "")
}

// TestManyClients10k is the large version (make manyclients): 10,000
// client connections on a pool of 20, 1,000 of them active at once, five
// statements each. PGTOKEN_MANY_CLIENTS sets the number of clients;
// PGTOKEN_BIN, the path of a pgtoken binary to run as a process of its own
// (else pgtoken runs in the test process, which then holds both ends of
// every connection and needs twice the file descriptors).
func TestManyClients10k(t *testing.T) {
	v := os.Getenv("PGTOKEN_MANY_CLIENTS")
	if v == "" {
		t.Skip("set PGTOKEN_MANY_CLIENTS (make manyclients) to run")
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("PGTOKEN_MANY_CLIENTS=%q", v)
	}
	manyClients(t, n, 20, min(1000, n), 5, os.Getenv("PGTOKEN_BIN"))
}
