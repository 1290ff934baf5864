// Command pgtoken is a Postgres connection proxy that takes a JWT as the
// password and runs every transaction under the token's role and claims.
//
//	pgtoken serve --config FILE      run the proxy
//	pgtoken check --config FILE      load it as serve would, print it, check the upstream
//	pgtoken keygen --alg EdDSA       print a JWKS holding a new private key
//	pgtoken mint --key FILE --claims JSON --ttl 1h
//	pgtoken version
//
// serve reloads its configuration on SIGHUP, drains on SIGTERM (up to
// shutdown_timeout) and stops at once on SIGINT.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/internal/app"
	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/session"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(args[1:], stderr)
	case "check":
		err = check(args[1:], stdout, stderr)
	case "keygen":
		err = keygen(args[1:], stdout)
	case "mint":
		err = mint(args[1:], stdout)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "pgtoken", version)
	case "help", "-h", "--help":
		usage(stdout)
	default:
		fmt.Fprintf(stderr, "pgtoken: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "pgtoken:", err)
		return 1
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: pgtoken <command> [flags]

commands:
  serve   --config FILE   run the proxy (flags override PGTOKEN_* variables, which override the file);
                          SIGHUP reloads, SIGTERM drains (shutdown_timeout), SIGINT stops at once
  check   --config FILE   load the configuration as serve does (keys, JWKS, certificates), print it with
                          secrets redacted, and run the lock-down checks against the live upstream
                          (--offline: not the upstream); exits 1 if anything fails
  keygen  --alg ALG       print a JWKS with a new private key (EdDSA, ES256, RS256, HS256)
  mint    --key FILE --claims JSON [--ttl 1h]   print a signed token
  version                 print the version
`)
}

// configFlags are the common settings also available as flags.
type configFlags struct {
	path string
	set  map[string]*string // flag name → value
}

func addConfigFlags(fs *flag.FlagSet) *configFlags {
	cf := &configFlags{set: map[string]*string{}}
	fs.StringVar(&cf.path, "config", "", "YAML configuration file")
	for _, f := range config.Flags() {
		cf.set[f.Name] = fs.String(f.Name, "", "sets "+f.Path)
	}
	return cf
}

// load reads the file, then the environment, then the flags that were given.
func (cf *configFlags) load(fs *flag.FlagSet) (config.Config, error) {
	cfg, err := config.Load(cf.path, os.Environ())
	if err != nil {
		return cfg, err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, f := range config.Flags() {
		if given[f.Name] {
			if err := config.Set(&cfg, f.Path, *cf.set[f.Name]); err != nil {
				return cfg, fmt.Errorf("--%s: %w", f.Name, err)
			}
		}
	}
	return cfg, nil
}

func serve(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addConfigFlags(fs)
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile to this file until shutdown (for make bench)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := cf.load(fs)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		}()
	}
	log, level, err := app.NewLoggerLevel(cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	if soft, hard, err := raiseFileLimit(); err != nil { // rlimit.go
		log.Warn("could not raise the open file limit", zap.Uint64("soft", soft), zap.Uint64("hard", hard), zap.Error(err))
	} else if soft > 0 {
		log.Info("open file limit", zap.Uint64("limit", soft))
	}
	// Signals are taken before the listener opens, so none is missed.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	a, err := app.StartWith(context.Background(), cfg, log, app.Options{
		Version: version,
		Level:   &level,
		// A reload reads the file, the environment and the flags again.
		Load: func() (config.Config, error) { return cf.load(fs) },
	})
	if err != nil {
		return err
	}
	return runSignals(a, sigs, log)
}

// runSignals serves until a signal stops pgtoken: SIGHUP reloads the
// configuration; SIGTERM drains (transactions in flight may finish within
// shutdown_timeout); SIGINT, or a second SIGTERM, closes every client at
// once.
func runSignals(a *app.App, sigs <-chan os.Signal, log *zap.Logger) error {
	var drained chan error
	for {
		select {
		case err := <-drained:
			log.Info("pgtoken stopped")
			if errors.Is(err, context.DeadlineExceeded) {
				return nil // clients cut off at shutdown_timeout: logged, not an error
			}
			return err
		case sig := <-sigs:
			switch {
			case sig == syscall.SIGHUP:
				log.Info("SIGHUP: reloading the configuration")
				_ = a.ReloadFromSource() // a refusal is logged; the old configuration stays
			case sig == syscall.SIGTERM && drained == nil:
				timeout := a.ShutdownTimeout()
				log.Info("SIGTERM: draining", zap.Duration("shutdown_timeout", timeout))
				drained = make(chan error, 1)
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), timeout)
					defer cancel()
					drained <- a.Shutdown(ctx)
				}()
			default:
				log.Info("stopping now: closing every client", zap.String("signal", sig.String()))
				err := a.Close()
				log.Info("pgtoken stopped")
				return err
			}
		}
	}
}

func check(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addConfigFlags(fs)
	offline := fs.Bool("offline", false, "load the configuration, keys and certificates, but do not connect to the upstream")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := cf.load(fs)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	// What serve would warn about goes to stderr, as serve logs it.
	level := "warn"
	if cfg.LogLevel == "error" {
		level = "error"
	}
	log, err := app.NewLoggerTo(stderr, level, "console")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	results, err := app.Check(ctx, cfg, log, *offline)
	if err != nil {
		return err
	}
	out, err := yaml.Marshal(cfg.Redacted())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "# configuration is valid; effective settings (secrets redacted):\n%s", out)
	if failed := reportChecks(stdout, results); failed > 0 {
		return fmt.Errorf("%d upstream check(s) failed; the fixes are above", failed)
	}
	return nil
}

// reportChecks prints what the lock-down checks found, as YAML comments
// after the configuration, and returns the number of failures: findings
// that refuse logins, served roles missing upstream, databases that could
// not be checked.
func reportChecks(w io.Writer, results []session.UpstreamCheck) int {
	failed := 0
	for _, r := range results {
		if r.Err != nil {
			fmt.Fprintf(w, "# upstream database %q: cannot check it: %v\n", r.Database, r.Err)
			failed++
			continue
		}
		var lines []string
		n := 0
		for _, f := range r.Findings {
			status := "FAIL"
			switch {
			case f.Skipped:
				status = "skipped (checks.skip)"
			case f.Allowed:
				status = "allowed (jwt.privileged_roles)"
			default:
				n++
			}
			lines = append(lines, fmt.Sprintf("#   %s %s: %s", status, f.Check, f.Problem))
			if len(f.Fix) > 0 {
				lines = append(lines, "#     fix: "+f.FixSQL())
			}
		}
		verdict := "every check passes"
		if n > 0 {
			verdict = fmt.Sprintf("%d failed", n)
		}
		fmt.Fprintf(w, "# upstream database %q (login %q): %s\n", r.Database, r.Login, verdict)
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
		failed += n
	}
	return failed
}

func keygen(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	alg := fs.String("alg", "EdDSA", "EdDSA, ES256, RS256 or HS256")
	public := fs.String("public", "", "also write the public-only JWKS to this file")
	out := fs.String("out", "", "write the private JWKS to this file (mode 0600) instead of standard output")
	keep := fs.Bool("keep", false, "with --out: do nothing if that file exists already (for init containers)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *keep && *out == "" {
		return errors.New("keygen: --keep needs --out")
	}
	if *keep {
		if _, err := os.Stat(*out); err == nil {
			fmt.Fprintf(stdout, "keygen: %s exists; keeping it\n", *out)
			return nil
		}
	}
	priv, pub, err := authn.GenerateJWKS(*alg)
	if err != nil {
		return err
	}
	if *public != "" {
		if err := os.WriteFile(*public, append(pub, '\n'), 0o644); err != nil {
			return err
		}
	}
	if *out != "" {
		return os.WriteFile(*out, append(priv, '\n'), 0o600)
	}
	_, err = fmt.Fprintf(stdout, "%s\n", priv)
	return err
}

func mint(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("mint", flag.ContinueOnError)
	key := fs.String("key", "", "JWKS file holding a private key (from pgtoken keygen)")
	claimsJSON := fs.String("claims", "{}", "claims as a JSON object")
	ttl := fs.Duration("ttl", time.Hour, "lifetime; sets exp unless the claims have one (0: no exp)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *key == "" {
		return errors.New("mint: --key is required")
	}
	raw, err := os.ReadFile(*key)
	if err != nil {
		return err
	}
	var claims map[string]any
	dec := json.NewDecoder(strings.NewReader(*claimsJSON))
	dec.UseNumber()
	if err := dec.Decode(&claims); err != nil {
		return fmt.Errorf("mint: --claims must be a JSON object: %w", err)
	}
	tok, err := authn.Mint(raw, claims, *ttl, time.Now())
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}
