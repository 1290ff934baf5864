// Command compatpgx runs pgx's own test suite (the pgx version in go.mod,
// from the module cache) against a throwaway Postgres three ways: directly,
// through pgtoken in transaction mode and through pgtoken in session mode.
// It prints the three results side by side and every test that passes
// directly but not through pgtoken, with the first line of its error, and
// fails when such a test is not listed in the expected-differences file
// (testdata/compat/pgx-expected.txt). `make compat-pgx` runs it.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"

	"github.com/pgtoken/pgtoken/internal/app"
	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/testpg"
)

// pgxModule is the module whose tests run.
const pgxModule = "github.com/jackc/pgx/v5"

// defaultPackages are pgx's packages whose tests use a database (and
// pgproto3, whose tests do not, but which is the protocol pgtoken speaks).
var defaultPackages = []string{".", "./pgconn", "./pgproto3", "./pgtype", "./pgtype/zeronull", "./pgxpool", "./stdlib", "./tracelog"}

type options struct {
	modes    []string
	pkgs     []string
	run      string
	expected string
	out      string
	timeout  time.Duration
	poolSize int
	parallel int
	count    int
	major    int
	from     string
}

func main() {
	var o options
	var modes, pkgs string
	flag.StringVar(&modes, "modes", "direct,transaction,session", "runs, in order; direct is the reference and always runs")
	flag.StringVar(&pkgs, "pkgs", strings.Join(defaultPackages, ","), "pgx packages to test, relative to its module")
	flag.StringVar(&o.run, "run", "", "go test -run pattern (a partial run reports no stale expectations)")
	flag.StringVar(&o.expected, "expected", filepath.Join("testdata", "compat", "pgx-expected.txt"), "expected-differences file")
	flag.StringVar(&o.out, "out", "", "directory for the raw logs (go test -json, pgtoken, report); default: a new temporary directory")
	flag.DurationVar(&o.timeout, "timeout", 3*time.Minute, "go test -timeout: how long one package's tests may take before its test binary is stopped (the slowest takes about 1.5 minutes through pgtoken; a hang costs this much)")
	flag.IntVar(&o.poolSize, "pool-size", 50, "pgtoken's pool.size")
	flag.IntVar(&o.count, "count", 1, "go test -count: run each test this many times (a test that fails once fails; a few pgx tests, e.g. stdlib TestRegisterConnConfig, fail directly when run twice in one binary)")
	flag.IntVar(&o.parallel, "p", 0, "go test -p (packages tested at once); 0: go's default")
	flag.StringVar(&o.from, "from", "", "judge the <mode>.json logs saved in this directory by an earlier run (against the expected file as it is now) instead of running anything")
	flag.IntVar(&o.major, "pg-major", 15, "the PostgreSQL major version the expected file is for (0: any)")
	flag.Parse()
	o.modes = []string{Direct}
	for _, m := range strings.Split(modes, ",") {
		switch m = strings.TrimSpace(m); m {
		case Direct, "":
		case Transaction, Session:
			o.modes = append(o.modes, m)
		default:
			fmt.Fprintf(os.Stderr, "compatpgx: unknown mode %q\n", m)
			os.Exit(2)
		}
	}
	o.pkgs = strings.Split(pkgs, ",")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ok, err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "compatpgx:", err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

// run does everything and reports whether the results are as expected.
func run(ctx context.Context, o options) (bool, error) {
	start := time.Now()
	f, err := os.Open(o.expected)
	if err != nil {
		return false, err
	}
	expected, err := ParseExpected(f)
	f.Close()
	if err != nil {
		return false, fmt.Errorf("%s:\n%w", o.expected, err)
	}
	if o.from != "" {
		return judgeSaved(o, expected, start)
	}
	if o.out == "" {
		if o.out, err = os.MkdirTemp("", "compat-pgx-"); err != nil {
			return false, err
		}
	} else if err := os.MkdirAll(o.out, 0o755); err != nil {
		return false, err
	}
	logf("raw logs in %s", o.out)

	repo, err := os.Getwd()
	if err != nil {
		return false, err
	}
	mod, err := findModule(ctx, repo, pgxModule)
	if err != nil {
		return false, err
	}
	// A copy at a fixed place: the read-only module cache is no place to
	// run tests in, and a fixed path lets the go build cache keep the
	// compiled tests between runs.
	cache, err := os.UserCacheDir()
	if err != nil {
		return false, err
	}
	src := filepath.Join(cache, "pgtoken", "compat-pgx", "pgx@"+mod.Version)
	if err := os.RemoveAll(src); err != nil {
		return false, err
	}
	if err := copyTree(mod.Dir, src); err != nil {
		return false, fmt.Errorf("copying %s: %w", mod.Dir, err)
	}

	pgCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	pg, err := testpg.Start(pgCtx, testpg.Options{Settings: map[string]string{"max_connections": "300"}})
	cancel()
	if err != nil {
		return false, err
	}
	defer pg.Stop()
	version, major, err := serverVersion(ctx, pg)
	if err != nil {
		return false, err
	}
	if o.major != 0 && major != o.major {
		return false, fmt.Errorf("PostgreSQL %s: the expected differences are for PostgreSQL %d (set %s, or -pg-major 0)", version, o.major, testpg.BinDirEnv)
	}
	if err := setupCluster(ctx, pg, o.modes); err != nil {
		return false, err
	}
	logf("pgx %s, PostgreSQL %s; setup took %s", mod.Version, version, time.Since(start).Round(time.Second))

	runs := map[string]*Run{}
	took := map[string]time.Duration{}
	logs := map[string][]LogGroup{}
	stuckNotes := map[string]string{}
	for _, mode := range o.modes {
		t0 := time.Now()
		r, stuck, err := runMode(ctx, o, mode, pg, src, HangingTests(mode, expected))
		if err != nil {
			return false, fmt.Errorf("%s run: %w", mode, err)
		}
		if stuck != "" {
			stuckNotes[mode] = stuck
		}
		runs[mode], took[mode] = r, time.Since(t0)
		logf("%s run took %s", mode, took[mode].Round(time.Second))
		if mode != Direct {
			if logs[mode], err = summarizeLogFile(pgtokenLog(o.out, mode)); err != nil {
				return false, err
			}
		}
	}

	rep := &report{
		Header:   fmt.Sprintf("pgx %s test suite, PostgreSQL %s. direct: logged in as %s; transaction, session: through pgtoken with a token for role %s", mod.Version, version, Role, Role),
		Modes:    o.modes,
		Runs:     runs,
		Took:     took,
		Expected: expected,
		Partial:  o.run != "",
		Total:    time.Since(start),
		Logs:     logs,
		Stuck:    stuckNotes,
	}
	if err := os.WriteFile(filepath.Join(o.out, "header.txt"), []byte(rep.Header+"\n"), 0o644); err != nil {
		return false, err
	}
	return rep.save(filepath.Join(o.out, "report.txt"))
}

// save prints the report and saves it as path.
func (rep *report) save(path string) (bool, error) {
	ok := rep.build()
	w, err := os.Create(path)
	if err != nil {
		return false, err
	}
	rep.write(io.MultiWriter(os.Stdout, w))
	if err := w.Close(); err != nil {
		return false, err
	}
	logf("report saved as %s", path)
	return ok, nil
}

// judgeSaved reports on the logs an earlier run saved in o.from.
func judgeSaved(o options, expected []Expectation, start time.Time) (bool, error) {
	rep := &report{Modes: o.modes, Runs: map[string]*Run{}, Took: map[string]time.Duration{}, Logs: map[string][]LogGroup{}, Expected: expected, Partial: o.run != ""}
	header, err := os.ReadFile(filepath.Join(o.from, "header.txt"))
	if err != nil {
		return false, err
	}
	rep.Header = strings.TrimSpace(string(header)) + " (judged again from saved logs)"
	for _, mode := range o.modes {
		b, err := os.ReadFile(filepath.Join(o.from, mode+".json"))
		if err != nil {
			return false, err
		}
		r := NewRun(pgxModule)
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if _, _, err := r.AddLine([]byte(line)); err != nil {
				return false, err
			}
		}
		rep.Runs[mode] = r
		if mode != Direct {
			if rep.Logs[mode], err = summarizeLogFile(pgtokenLog(o.from, mode)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return false, err
			}
		}
	}
	rep.Total = time.Since(start)
	return rep.save(filepath.Join(o.from, "report-again.txt"))
}

// runMode runs the suite once: directly, or through a pgtoken of its own
// in mode.
func runMode(ctx context.Context, o options, mode string, pg *testpg.Cluster, src, skip string) (_ *Run, stuck string, _ error) {
	db := dbName(mode)
	dsn := pg.DSN(Role, RolePassword, db)
	if mode != Direct {
		a, err := startPgtoken(ctx, o, mode, pg, db)
		if err != nil {
			return nil, "", err
		}
		defer func() { stuck = stopPgtoken(a, o.out, mode) }()
		token, err := mintToken()
		if err != nil {
			return nil, "", err
		}
		dsn = fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable", a.Port(), Role, token, db)
	}
	args := []string{"test", "-json", fmt.Sprintf("-count=%d", o.count), "-timeout", o.timeout.String()}
	if o.parallel > 0 {
		args = append(args, fmt.Sprintf("-p=%d", o.parallel))
	}
	if o.run != "" {
		args = append(args, "-run", o.run)
	}
	if skip != "" {
		args = append(args, "-skip", skip)
	}
	args = append(args, o.pkgs...)
	r, err := goTest(ctx, src, testEnv(dsn), args, mode, o.out)
	return r, "", err
}

// goTest runs `go test -json`, saving its output under out and reporting
// each package as it ends.
func goTest(ctx context.Context, dir string, env, args []string, mode, out string) (*Run, error) {
	raw, err := os.Create(filepath.Join(out, mode+".json"))
	if err != nil {
		return nil, err
	}
	defer raw.Close()
	stderr, err := os.Create(filepath.Join(out, mode+".stderr"))
	if err != nil {
		return nil, err
	}
	defer stderr.Close()

	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stderr = stderr
	cmd.WaitDelay = 10 * time.Second
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := NewRun(pgxModule)
	sc := bufio.NewScanner(pipe)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	started := time.Now()
	for sc.Scan() {
		line := sc.Bytes()
		_, _ = raw.Write(append(line, '\n'))
		pkg, done, err := r.AddLine(line)
		if err != nil {
			logf("%s: %s", mode, line)
		} else if done != "" {
			logf("%s: %s %s after %s", mode, pkg, done, time.Since(started).Round(time.Second))
		}
	}
	werr := cmd.Wait()
	logf("%s: go test ended after %s (%v)", mode, time.Since(started).Round(time.Second), exitStatus(werr))
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if len(r.Tests) == 0 {
		b, _ := os.ReadFile(stderr.Name())
		return nil, fmt.Errorf("go test ran no tests: %v\n%s", werr, b)
	}
	return r, nil
}

func exitStatus(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.String()
	}
	if err != nil {
		return err.Error()
	}
	return "exit status 0"
}

// tokenSecret signs the runs' tokens; pgtoken runs in this process only.
var tokenSecret = fmt.Sprintf("compat-pgx-%d-%d", os.Getpid(), time.Now().UnixNano())

// mintToken returns a token for Role valid for a day.
func mintToken() (string, error) {
	return jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"role": Role,
		"sub":  "pgx-test-suite",
		"exp":  time.Now().Add(24 * time.Hour).Unix(),
	}).SignedString([]byte(tokenSecret))
}

// pgtokenConfig is what a user would write: the defaults, with the upstream,
// the secret and the token role, in mode, with room for the suite's
// clients. The per-address login backoff is off because the suite logs in
// with wrong passwords on purpose (as pgtoken's own tests do).
func pgtokenConfig(o options, mode string, pg *testpg.Cluster, db string) config.Config {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Upstream = pg.DSN(Login, LoginPassword, db)
	cfg.Pool.Mode = mode
	cfg.Pool.Size = o.poolSize
	cfg.JWT.Secret = tokenSecret
	cfg.JWT.AllowedRoles = config.StringList{Role}
	cfg.Limits.AuthFailureDelay = 0
	cfg.Limits.AuthFailureRate = 0
	// pgx's tests make tables and temporary tables: the token role may,
	// which pgtoken refuses by default.
	cfg.Checks.Skip = config.StringList{"temporary", "create"}
	return cfg
}

// pgtokenLog is where pgtoken logs in mode.
func pgtokenLog(dir, mode string) string { return filepath.Join(dir, mode+".pgtoken.log") }

// summarizeLogFile summarizes one pgtoken log (see SummarizeLog).
func summarizeLogFile(path string) ([]LogGroup, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return SummarizeLog(f)
}

// startPgtoken starts pgtoken in this process, logging to pgtokenLog.
func startPgtoken(ctx context.Context, o options, mode string, pg *testpg.Cluster, db string) (*app.App, error) {
	zc := zap.NewDevelopmentConfig()
	zc.Level = zap.NewAtomicLevelAt(zap.InfoLevel)
	zc.Development = false
	zc.DisableStacktrace = true
	zc.OutputPaths = []string{pgtokenLog(o.out, mode)}
	zc.ErrorOutputPaths = zc.OutputPaths
	log, err := zc.Build()
	if err != nil {
		return nil, err
	}
	return app.Start(ctx, pgtokenConfig(o, mode, pg, db), log)
}

// stopPgtoken closes pgtoken, giving up after a while: a pgtoken that does
// not stop is a finding, reported with its goroutines, not a reason to
// hang. It returns that finding, or "".
func stopPgtoken(a *app.App, out, mode string) (stuck string) {
	done := make(chan error, 1)
	go func() { done <- a.Close() }()
	select {
	case err := <-done:
		if err != nil {
			logf("pgtoken close: %v", err)
		}
	case <-time.After(30 * time.Second):
		path := filepath.Join(out, mode+".goroutines.txt")
		stuck = "pgtoken did not close within 30s after the last test (left running until this program exits)"
		if err := saveGoroutines(path); err != nil {
			stuck += "; saving its goroutines: " + err.Error()
		} else {
			stuck += "; its goroutines are in " + path
		}
		logf("%s", stuck)
	}
	_ = a.Log.Sync()
	return stuck
}

// saveGoroutines writes the stacks of every goroutine of this process,
// pgtoken's included, to path.
func saveGoroutines(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("goroutine").WriteTo(f, 2); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "compat-pgx %s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}
