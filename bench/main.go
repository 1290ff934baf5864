// Command bench is pgtoken's benchmark harness (make bench, make
// bench-quick). It starts a throwaway Postgres, PgBouncer and the real
// pgtoken binary with the same pool size, runs pgbench against each of them
// (and Postgres directly) interleaved and repeated, and reports a Markdown
// table, JSON with every raw run, a PNG chart and the generated sections of
// bench/README.md. See bench/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the harness's command-line settings.
type options struct {
	quick       bool
	duration    int // seconds per pgbench run (-T)
	reps        int
	clients     []int
	scripts     []string
	modes       []string
	connect     []int    // client counts for the -C configurations
	connModes   []string // protocol modes for the -C configurations
	targets     []string
	pool        int
	scale       int
	idle        int
	inherent    bool
	profile     bool
	warmup      int // seconds of warm-up per target
	outDir      string
	name        string // base name of latest.json / latest.png
	readme      string // README to update ("" leaves it alone)
	pgtokenBin  string // prebuilt binary; empty builds bin/pgtoken
	logLevel    string // pgtoken's log_level
	bouncerAut  string // PgBouncer auth_type
	command     string // how this run was invoked, for the README
	rerender    string // a results JSON to report again instead of running
	profClients int    // clients of the profiled load
	profMode    string // query mode of the profiled load
	profConnect bool   // profile -C (a new connection per transaction)
	godebug     string // GODEBUG for pgtoken (e.g. gctrace=1)
	pgtokenEnv  []string
	metrics     bool // pgtoken serves metrics_listen (daemon.metricsPort)

	// make stress (stress.go)
	stress    bool
	runs      int    // pgbench runs in all, the configurations taking turns
	grace     int    // seconds a run may overrun its -T before it counts as hung
	restart   int    // a fresh pgtoken every this many runs
	stressOut string // evidence and summary directory
}

func parseOptions(args []string) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: make bench BENCH_FLAGS="[flags]", or in bench/: go run . [flags]

pgbench against Postgres directly, PgBouncer and pgtoken (bench/README.md).
Relative paths (-out, -readme, -rerender, -pgtoken) are taken from the
repository root.

`)
		fs.PrintDefaults()
	}
	o := options{}
	var clients, scripts, modes, connect, connModes, targets string
	fs.BoolVar(&o.quick, "quick", false, "the quick subset (make bench-quick); other flags still override it")
	fs.IntVar(&o.duration, "T", 10, "seconds per pgbench run")
	fs.IntVar(&o.reps, "reps", 3, "repetitions of the whole matrix (targets interleaved within each)")
	fs.StringVar(&clients, "clients", "1,16,32,64,256", "client counts")
	fs.StringVar(&scripts, "scripts", "select,tpcb", "pgbench scripts: select (-S) and tpcb (the default TPC-B-like script)")
	fs.StringVar(&modes, "modes", "simple,extended,prepared", "pgbench query modes (-M)")
	fs.StringVar(&connect, "connect", "16", "client counts for -C runs (a new connection per transaction, select script); empty for none")
	fs.StringVar(&connModes, "connect-modes", "simple,extended,prepared", "query modes for the -C runs")
	fs.StringVar(&targets, "targets", "direct,pgbouncer,pgtoken", "what pgbench connects to")
	fs.IntVar(&o.pool, "pool", 16, "server connections of PgBouncer and pgtoken")
	fs.IntVar(&o.scale, "scale", 10, "pgbench scale factor (-i -s)")
	fs.IntVar(&o.idle, "idle", 10000, "idle client connections to hold through pgtoken for the memory measurement; 0 skips it")
	fs.BoolVar(&o.inherent, "inherent", true, "measure the prelude forms against Postgres alone")
	fs.BoolVar(&o.profile, "profile", true, "take a CPU profile of pgtoken under load (-S -M simple -c 32)")
	fs.IntVar(&o.warmup, "warmup", 2, "seconds of warm-up per target before the matrix")
	fs.StringVar(&o.outDir, "out", "bench/results", "directory for JSON, PNG and the CPU profile")
	fs.StringVar(&o.name, "name", "latest", "base name of the latest results (NAME.json, NAME.png)")
	fs.StringVar(&o.readme, "readme", "bench/README.md", "README whose generated sections are replaced; empty leaves it alone")
	fs.StringVar(&o.pgtokenBin, "pgtoken", "", "pgtoken binary to use; empty builds bin/pgtoken from this tree")
	fs.StringVar(&o.logLevel, "pgtoken-log-level", "info", "pgtoken's log_level during the runs")
	fs.StringVar(&o.bouncerAut, "pgbouncer-auth", "scram-sha-256", "PgBouncer's auth_type for clients (scram-sha-256, md5, plain)")
	fs.IntVar(&o.profClients, "profile-clients", 32, "clients of the profiled load")
	fs.StringVar(&o.profMode, "profile-mode", "simple", "query mode of the profiled load")
	fs.BoolVar(&o.profConnect, "profile-connect", false, "profile -C (a new connection, so a login, per transaction) instead")
	fs.StringVar(&o.godebug, "pgtoken-godebug", "", "GODEBUG for pgtoken, e.g. gctrace=1 (its gc lines are counted in the profile phase)")
	var pgtokenEnv string
	fs.StringVar(&pgtokenEnv, "pgtoken-env", "", "extra environment for pgtoken, comma-separated KEY=VALUE (e.g. GOMAXPROCS=1)")
	fs.BoolVar(&o.stress, "stress", false, "make stress: many short -S runs through pgtoken alone (-modes, -clients, -T), each watched for clients still waiting after it should have ended")
	fs.IntVar(&o.runs, "runs", 270, "-stress: pgbench runs in all, the configurations taking turns")
	fs.IntVar(&o.grace, "grace", 5, "-stress: seconds a run may overrun -T before its clients count as waiting")
	fs.IntVar(&o.restart, "restart", 1, "-stress: a fresh pgtoken every this many runs (its pool fills while the run's clients start)")
	fs.StringVar(&o.stressOut, "stress-out", "", "-stress: directory for the summary and the evidence of each hang (default: a new temporary directory, kept)")
	fs.StringVar(&o.rerender, "rerender", "", "print the table and rewrite NAME.png and the README from this results JSON, without running anything")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	// def applies a preset's default unless the flag was given explicitly.
	def := func(name string, apply func()) {
		if !set[name] {
			apply()
		}
	}
	if o.quick {
		def("T", func() { o.duration = 3 })
		def("reps", func() { o.reps = 1 })
		def("clients", func() { clients = "1,16,32" })
		def("scripts", func() { scripts = "select" })
		def("modes", func() { modes = "simple,prepared" })
		def("connect-modes", func() { connModes = "simple" })
		def("inherent", func() { o.inherent = false })
		def("profile", func() { o.profile = false })
		def("warmup", func() { o.warmup = 1 })
		def("name", func() { o.name = "latest-quick" })
		def("readme", func() { o.readme = "" })
	}
	if o.stress {
		def("T", func() { o.duration = 2 })
		def("clients", func() { clients = "1,32,256" })
		def("scripts", func() { scripts = "select" })
		def("targets", func() { targets = targetPgtoken })
		def("scale", func() { o.scale = 1 })
		def("pgtoken-log-level", func() { o.logLevel = "warn" })
		o.metrics = true
		o.pgtokenEnv = append(o.pgtokenEnv, "GOTRACEBACK=all") // SIGQUIT dumps every goroutine
		if scripts != "select" || targets != targetPgtoken {
			return o, errors.New("-stress runs the select script (-S) against pgtoken only")
		}
		if o.runs < 1 || o.grace < 1 || o.restart < 1 {
			return o, errors.New("-runs, -grace and -restart must be positive")
		}
	}
	var err error
	if o.clients, err = intList(clients); err != nil {
		return o, fmt.Errorf("-clients: %w", err)
	}
	if o.connect, err = intList(connect); err != nil {
		return o, fmt.Errorf("-connect: %w", err)
	}
	o.scripts, o.modes, o.connModes, o.targets = words(scripts), words(modes), words(connModes), words(targets)
	for _, kv := range strings.Split(pgtokenEnv, ",") {
		if kv = strings.TrimSpace(kv); kv != "" {
			if !strings.Contains(kv, "=") {
				return o, fmt.Errorf("-pgtoken-env: want KEY=VALUE, got %q", kv)
			}
			o.pgtokenEnv = append(o.pgtokenEnv, kv)
		}
	}
	for _, s := range o.scripts {
		if s != "select" && s != "tpcb" {
			return o, fmt.Errorf("-scripts: unknown script %q", s)
		}
	}
	for _, m := range append(append([]string{}, o.modes...), o.connModes...) {
		if m != "simple" && m != "extended" && m != "prepared" {
			return o, fmt.Errorf("unknown query mode %q", m)
		}
	}
	for _, t := range o.targets {
		if t != targetDirect && t != targetBouncer && t != targetPgtoken {
			return o, fmt.Errorf("-targets: unknown target %q", t)
		}
	}
	if o.duration < 1 || o.reps < 1 || o.pool < 1 || o.scale < 1 {
		return o, errors.New("-T, -reps, -pool and -scale must be positive")
	}
	o.command = strings.TrimSpace("cd bench && go run . " + strings.Join(args, " "))
	return o, nil
}

func intList(s string) ([]int, error) {
	var out []int
	for _, w := range words(s) {
		n, err := strconv.Atoi(w)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("want positive integers, got %q", w)
		}
		out = append(out, n)
	}
	return out, nil
}

func words(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}

func main() {
	o, err := parseOptions(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	if o.rerender != "" {
		err = rerender(o)
	} else {
		err = run(ctx, o)
	}
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// logf prints progress to stderr, so stdout holds only the table.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// repoRoot finds pgtoken's repository root (the directory whose go.mod is
// pgtoken's own, above bench's) from the working directory, so the harness
// runs from bench/ (make bench) or from anywhere inside the repository.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if raw, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && modulePath(raw) == pgtokenModule {
			return d, nil
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("no go.mod of %s above %s: run from the repository", pgtokenModule, dir)
		}
	}
}

const pgtokenModule = "github.com/pgtoken/pgtoken"

// modulePath is the module path a go.mod declares.
func modulePath(gomod []byte) string {
	for line := range strings.Lines(string(gomod)) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// fromRoot takes a relative path of a flag from the repository root.
func fromRoot(root, path string) string {
	if path == "" || filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(root, path)
}
