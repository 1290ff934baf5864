// Command pgtoken is a Postgres connection proxy that takes a JWT as the
// password and runs every transaction under the token's role and claims.
//
//	pgtoken serve --config FILE      run the proxy
//	pgtoken check --config FILE      load it as serve would, print it, check the upstream
//	pgtoken keygen --alg EdDSA [--out FILE] [--public FILE]   a JWKS holding a new private key (mode 0600)
//	pgtoken mint --key FILE --claims JSON --ttl 1h
//	pgtoken version
//	pgtoken <command> -h             what a command does, and its flags
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

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs one command: 0 on success (and for -h), 2 for a mistake in the
// command line, 1 for any other failure.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(args[1:], stdout, stderr)
	case "check":
		err = check(args[1:], stdout, stderr)
	case "keygen":
		err = keygen(args[1:], stdout)
	case "mint":
		err = mint(args[1:], stdout)
	case "version", "--version", "-v":
		if err = versionCmd().parse(args[1:], stdout); err == nil {
			fmt.Fprintln(stdout, "pgtoken", buildVersion())
		}
	case "help", "-h", "--help":
		if len(args) > 1 {
			if c := commands()[args[1]]; c != nil {
				c.help(stdout)
				return 0
			}
			fmt.Fprintf(stderr, "pgtoken: unknown command %q\n\n", args[1])
			usage(stderr)
			return 2
		}
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
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: pgtoken <command> [flags]

pgtoken is a Postgres connection proxy: a client logs in with a JWT as its
password, and every transaction it runs gets the token's role and claims.

commands:
  serve    run the proxy (--config FILE)
  check    load a configuration as serve does, print it, and check the upstream's lock-down
  keygen   make a signing key (a private JWKS) and its public half
  mint     print a signed token, for tests and demos
  version  print the version

pgtoken <command> -h (or pgtoken help <command>) describes a command and
its flags. docs/CONFIG.md lists every setting and its PGTOKEN_* variable.
`)
}

// commands are the subcommands' flag sets, for pgtoken help <command> and
// the tests.
func commands() map[string]*cmd {
	serve, _ := serveCmd()
	check, _ := checkCmd()
	keygen, _ := keygenCmd()
	mint, _ := mintCmd()
	return map[string]*cmd{"serve": serve, "check": check, "keygen": keygen, "mint": mint, "version": versionCmd()}
}

// cmd is a subcommand's flags and the help its -h prints.
type cmd struct {
	*flag.FlagSet
	synopsis string            // the usage line
	about    string            // what the command does
	args     map[string]string // flag name → its value's name in the help, where flag.UnquoteUsage's is not right
}

func newCmd(name, synopsis, about string) *cmd {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// parse reports errors and prints the help itself.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &cmd{FlagSet: fs, synopsis: synopsis, about: about, args: map[string]string{}}
}

// usageError is a mistake in the command line (exit status 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// parse reads the flags. -h prints the help to stdout and returns
// flag.ErrHelp; an unknown flag, a bad value or a stray argument is a
// usageError.
func (c *cmd) parse(args []string, stdout io.Writer) error {
	err := c.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		c.help(stdout)
		return err
	case err != nil:
		return usageError{fmt.Errorf("%s: %w (pgtoken %s -h lists the flags)", c.Name(), err, c.Name())}
	case c.NArg() > 0 && c.Lookup("config") != nil && (strings.HasSuffix(c.Arg(0), ".yaml") || strings.HasSuffix(c.Arg(0), ".yml")):
		return usageError{fmt.Errorf("%s: unexpected argument %q: did you mean --config %s?", c.Name(), c.Arg(0), c.Arg(0))}
	case c.NArg() > 0:
		return usageError{fmt.Errorf("%s: unexpected argument %q (pgtoken %s -h lists the flags)", c.Name(), c.Arg(0), c.Name())}
	}
	return nil
}

// help prints the usage line, what the command does and each flag.
func (c *cmd) help(w io.Writer) {
	fmt.Fprintf(w, "usage: %s\n\n%s", c.synopsis, c.about)
	first := true
	c.VisitAll(func(f *flag.Flag) {
		if first {
			fmt.Fprint(w, "\nflags:\n")
			first = false
		}
		arg, text := flag.UnquoteUsage(f)
		if a, ok := c.args[f.Name]; ok {
			arg = a
		}
		if arg != "" {
			arg = " " + arg
		}
		if f.DefValue != "" && f.DefValue != "false" {
			text += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "  --%s%s\n        %s\n", f.Name, arg, text)
	})
}

// configFlags are --config and the common settings also available as
// flags.
type configFlags struct {
	path string
	set  map[string]*string // flag name → value
}

func addConfigFlags(c *cmd) *configFlags {
	cf := &configFlags{set: map[string]*string{}}
	c.StringVar(&cf.path, "config", "", "YAML configuration `FILE` ("+config.FileEnv+"); serve needs one (an empty file leaves every setting to its default, the PGTOKEN_* variables and the flags)")
	for _, f := range config.Flags() {
		c.args[f.Name] = f.Arg
		text := fmt.Sprintf("%s: %s (%s", f.Path, f.Doc, f.Env)
		if f.Default != "" {
			text += "; default " + f.Default
		}
		cf.set[f.Name] = c.String(f.Name, "", text+")")
	}
	return cf
}

// configHelp says where the common flags' settings come from.
const configHelp = `Settings come from the configuration file, then PGTOKEN_* environment
variables, then these flags; docs/CONFIG.md lists every key with its
variable.
`

// file is the configuration file: --config, else $PGTOKEN_CONFIG.
func (cf *configFlags) file() string {
	if cf.path != "" {
		return cf.path
	}
	return os.Getenv(config.FileEnv)
}

// load reads the file, then the environment, then the flags that were given.
func (cf *configFlags) load(fs *flag.FlagSet) (config.Config, error) {
	cfg, err := config.Load(cf.file(), os.Environ())
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

type serveOpts struct {
	cf         *configFlags
	cpuprofile string
}

func serveCmd() (*cmd, *serveOpts) {
	c := newCmd("serve", "pgtoken serve --config FILE [flags]", `Runs the proxy. Clients connect to listen as to Postgres and give a JWT as
their password; pgtoken verifies it and runs each of their transactions on a
pooled connection to upstream that begins with SET LOCAL ROLE <role claim>
and the claims as settings. /metrics, /healthz and /readyz are served on
metrics_listen when it is set.

SIGHUP reloads the configuration, SIGTERM drains (transactions in flight
may finish within shutdown_timeout), SIGINT stops at once.

`+configHelp)
	o := &serveOpts{cf: addConfigFlags(c)}
	c.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile to `FILE` until shutdown (for make bench)")
	return c, o
}

func serve(args []string, stdout, stderr io.Writer) error {
	c, o := serveCmd()
	if err := c.parse(args, stdout); err != nil {
		return err
	}
	if o.cf.file() == "" {
		return usageError{errors.New("serve: no configuration file: give --config FILE or set " + config.FileEnv +
			" (pgtoken serve -h; docs/CONFIG.md lists the settings)")}
	}
	cfg, err := o.cf.load(c.FlagSet)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if o.cpuprofile != "" {
		f, err := os.Create(o.cpuprofile)
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
		Version: buildVersion(),
		Level:   &level,
		// A reload reads the file, the environment and the flags again.
		Load: func() (config.Config, error) { return o.cf.load(c.FlagSet) },
	})
	if err != nil {
		return err
	}
	return runSignals(a, sigs, log)
}

// runSignals serves until a signal stops pgtoken: SIGHUP reloads the
// configuration; SIGTERM drains (transactions in flight may finish within
// shutdown_timeout); SIGINT, or a second SIGTERM, closes every client at
// once. The admin console's SHUTDOWN stops it too.
func runSignals(a *app.App, sigs <-chan os.Signal, log *zap.Logger) error {
	var drained chan error
	stopped := a.Stopped() // by the console's SHUTDOWN
	for {
		select {
		case <-stopped:
			log.Info("pgtoken stopped")
			return a.Err()
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
				stopped = nil // drained tells how the drain ended
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

type checkOpts struct {
	*configFlags
	offline bool
}

func checkCmd() (*cmd, *checkOpts) {
	c := newCmd("check", "pgtoken check --config FILE [--offline] [flags]", `Loads a configuration as pgtoken serve would (the file, then PGTOKEN_*
environment variables, then these flags; keys, JWKS and certificates
included, with the warnings serve logs going to standard error), prints the
effective settings with secrets redacted, then runs the lock-down checks
against every upstream database it would serve (docs/SECURITY.md) and
prints each finding with the SQL that fixes it. Exits with status 1 when
the configuration cannot be served or a check fails.

`+configHelp)
	o := &checkOpts{configFlags: addConfigFlags(c)}
	c.BoolVar(&o.offline, "offline", false, "load the configuration, keys and certificates, but do not connect to the upstream")
	return c, o
}

func check(args []string, stdout, stderr io.Writer) error {
	c, o := checkCmd()
	if err := c.parse(args, stdout); err != nil {
		return err
	}
	cfg, err := o.load(c.FlagSet)
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
	results, err := app.Check(ctx, cfg, log, o.offline)
	if err != nil {
		return err
	}
	out, err := yaml.Marshal(cfg.Redacted())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "# configuration is valid; effective settings (secrets redacted):\n%s", out)
	failed, unchecked := reportChecks(stdout, results)
	var problems []string
	if unchecked > 0 {
		problems = append(problems, fmt.Sprintf("%d upstream database(s) could not be checked; the reason is above", unchecked))
	}
	if failed > 0 {
		problems = append(problems, fmt.Sprintf("%d upstream check(s) failed; the fixes are above", failed))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// reportChecks prints what the lock-down checks found, as YAML comments
// after the configuration, and returns the number of failures (findings
// that refuse logins, served roles missing upstream) and of databases that
// could not be checked.
func reportChecks(w io.Writer, results []session.UpstreamCheck) (failed, unchecked int) {
	for _, r := range results {
		if r.Err != nil {
			fmt.Fprintf(w, "# upstream database %q: cannot check it: %v\n", r.Database, r.Err)
			unchecked++
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
	return failed, unchecked
}

type keygenOpts struct {
	alg, public, out string
	keep             bool
}

func keygenCmd() (*cmd, *keygenOpts) {
	c := newCmd("keygen", "pgtoken keygen [--alg ALG] [--out FILE [--keep]] [--public FILE]", `Makes a new signing key and prints it as a JWKS holding the private key (or
writes it to --out). pgtoken verifies tokens with the public half: write it
with --public and name that file in jwt.jwks (file:///path/jwks.json). The
private JWKS signs tokens: pgtoken mint --key, or your own issuer. An HS
key is a shared secret: the same JWKS file goes to jwt.jwks and to mint.
`)
	o := &keygenOpts{}
	c.StringVar(&o.alg, "alg", "EdDSA", "signing algorithm: EdDSA, ES256/384/512, RS256/384/512, PS256/384/512 or HS256/384/512")
	c.StringVar(&o.public, "public", "", "also write the public-only JWKS to `FILE` (for jwt.jwks)")
	c.StringVar(&o.out, "out", "", "write the private JWKS to `FILE` (mode 0600) instead of standard output")
	c.BoolVar(&o.keep, "keep", false, "with --out: do nothing if that file exists already (for init containers)")
	return c, o
}

func keygen(args []string, stdout io.Writer) error {
	c, o := keygenCmd()
	if err := c.parse(args, stdout); err != nil {
		return err
	}
	if o.keep && o.out == "" {
		return usageError{errors.New("keygen: --keep needs --out")}
	}
	if o.public != "" && strings.HasPrefix(o.alg, "HS") {
		return fmt.Errorf("keygen: --public: an %s key is a shared secret and has no public half; "+
			"pgtoken verifies with the private JWKS itself (jwt.jwks: file:///path/to/it), which must stay as secret as the signing side's copy", o.alg)
	}
	if o.keep {
		if _, err := os.Stat(o.out); err == nil {
			fmt.Fprintf(stdout, "keygen: %s exists; keeping it\n", o.out)
			return nil
		}
	}
	priv, pub, err := authn.GenerateJWKS(o.alg)
	if err != nil {
		return err
	}
	priv = append(priv, '\n')
	if o.out != "" {
		f, err := os.OpenFile(o.out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("keygen: %w", err)
		}
		if err := writePrivate(f, priv); err != nil {
			return fmt.Errorf("keygen: %s: %w", o.out, err)
		}
	} else if err := writePrivateStdout(stdout, priv); err != nil {
		return err
	}
	if o.public != "" {
		if err := os.WriteFile(o.public, append(pub, '\n'), 0o644); err != nil {
			return fmt.Errorf("keygen: %w", err)
		}
	}
	return nil
}

// writePrivate makes f readable by its owner only, also when it existed
// with a wider mode, then writes key into it and closes it.
func writePrivate(f *os.File, key []byte) error {
	err := f.Chmod(0o600)
	if err == nil {
		_, err = f.Write(key)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writePrivateStdout writes a private key to standard output. When that is
// a regular file (pgtoken keygen > private.jwks.json), the file is made
// mode 0600 first; if it cannot be, the key is not written.
func writePrivateStdout(stdout io.Writer, key []byte) error {
	if f, ok := stdout.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			if err := f.Chmod(0o600); err != nil {
				return fmt.Errorf("keygen: standard output is a file that cannot be made private (mode 0600): %w; use --out FILE", err)
			}
		}
	}
	_, err := stdout.Write(key)
	return err
}

type mintOpts struct {
	key, claims string
	ttl         time.Duration
}

func mintCmd() (*cmd, *mintOpts) {
	c := newCmd("mint", "pgtoken mint --key FILE [--claims JSON] [--ttl 1h]", `Prints a token signed with the first key of a private JWKS (from pgtoken
keygen), for tests and demos; in production your identity provider issues
the tokens. Use it as the password: PGPASSWORD=$(pgtoken mint ...) psql ...
`)
	o := &mintOpts{}
	c.StringVar(&o.key, "key", "", "JWKS `FILE` holding a private key (from pgtoken keygen); required")
	c.StringVar(&o.claims, "claims", "{}", "the claims as a `JSON` object, e.g. '{\"role\":\"web_user\",\"sub\":\"alice\"}'")
	c.DurationVar(&o.ttl, "ttl", time.Hour, "lifetime; sets exp unless the claims have one (0: no exp)")
	return c, o
}

func mint(args []string, stdout io.Writer) error {
	c, o := mintCmd()
	if err := c.parse(args, stdout); err != nil {
		return err
	}
	if o.key == "" {
		return usageError{errors.New("mint: --key is required (pgtoken mint -h)")}
	}
	raw, err := os.ReadFile(o.key)
	if err != nil {
		return err
	}
	var claims map[string]any
	dec := json.NewDecoder(strings.NewReader(o.claims))
	dec.UseNumber()
	if err := dec.Decode(&claims); err != nil {
		return usageError{fmt.Errorf("mint: --claims must be a JSON object: %w", err)}
	}
	tok, err := authn.Mint(raw, claims, o.ttl, time.Now())
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}

func versionCmd() *cmd {
	return newCmd("version", "pgtoken version", `Prints pgtoken's version: the git tag it was built from (v0.3.0), or
git describe's tag-commits-commit form after a tag; the module version
for go install github.com/pgtoken/pgtoken/cmd/pgtoken@v0.3.0; else the
commit.
`)
}
