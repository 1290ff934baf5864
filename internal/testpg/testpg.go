// Package testpg starts throwaway PostgreSQL servers for tests.
//
// A Cluster is a fresh initdb in a temporary directory, listening on
// 127.0.0.1 (SCRAM password authentication) and on a private unix socket
// (trust authentication for the superuser "postgres"). It is tuned for speed,
// not durability (fsync=off). No Docker is involved: the PostgreSQL server
// binaries must be installed (see Available).
//
// PostgreSQL refuses to run as root. When the test runs as root, initdb and
// the server run as the "postgres" OS user, which then owns the cluster
// directory.
//
// Processes: Stop stops the server. Each Cluster also has a small watchdog
// process (/bin/sh) that stops the server and removes its directory if the
// test process dies without calling Stop (a panic, a go test timeout, a
// SIGKILL). Only a watchdog killed together with the test (for example by
// killing the whole process tree) leaves a server behind; Start never cleans
// up servers or directories left by other runs.
package testpg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// startAttempts bounds the retries when a picked port turns out to be
	// taken by the time the server binds it.
	startAttempts = 8
	// defaultTimeout bounds a server start or stop when ctx has no deadline.
	defaultTimeout = 60 * time.Second
	// logTailLines is how much of the server log errors quote.
	logTailLines = 30
)

// Options configures Start. The zero value is a plain cluster on a free port.
type Options struct {
	// Port is the TCP port on 127.0.0.1; 0 picks a free one.
	Port int
	// Settings are extra postgresql.conf settings, applied after (and so
	// overriding) testpg's defaults, e.g. {"max_connections": "300"}.
	// "port" and "unix_socket_directories" may not be set here.
	Settings map[string]string
	// SSL generates a self-signed certificate, turns ssl on and makes TCP
	// connections require TLS (hostssl in pg_hba.conf).
	SSL bool
}

// Cluster is a running (or stopped) throwaway PostgreSQL server. Its
// exported fields do not change after Start. Its methods are safe for
// concurrent use.
type Cluster struct {
	Dir       string // temporary directory holding everything below; removed by Stop
	DataDir   string // the data directory (Dir/data)
	LogFile   string // the server log (Dir/server.log)
	Host      string // "127.0.0.1"
	Port      int    // TCP port, also used for the unix socket name
	SocketDir string // directory of the unix socket
	CertFile  string // PEM server certificate, also its own CA; empty without SSL
	KeyFile   string // PEM private key of CertFile; empty without SSL
	SSL       bool   // whether Options.SSL was set

	binDir       string
	as           *runAs
	ownSocketDir bool // SocketDir lies outside Dir

	mu       sync.Mutex
	removed  bool
	reaper   *exec.Cmd
	reaperFD int // write end of the watchdog's stdin; -1 once closed
}

var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// Start creates, configures and starts a new cluster, returning once it
// accepts connections. On failure nothing is left behind; if the server
// itself failed, the error quotes the last lines of its log.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	binDir, err := findBinDir()
	if err != nil {
		return nil, fmt.Errorf("testpg: %w", err)
	}
	as, err := lookupRunAs()
	if err != nil {
		return nil, fmt.Errorf("testpg: %w", err)
	}
	if opts.Port < 0 || opts.Port > 65535 {
		return nil, fmt.Errorf("testpg: invalid port %d", opts.Port)
	}
	for k := range opts.Settings {
		if !settingName.MatchString(k) {
			return nil, fmt.Errorf("testpg: invalid setting name %q", k)
		}
		if k == "port" || k == "unix_socket_directories" {
			return nil, fmt.Errorf("testpg: setting %q is managed by testpg", k)
		}
	}

	dir, err := os.MkdirTemp(tempBase(as), "testpg-")
	if err != nil {
		return nil, fmt.Errorf("testpg: %w", err)
	}
	c := &Cluster{
		Dir:      dir,
		DataDir:  filepath.Join(dir, "data"),
		LogFile:  filepath.Join(dir, "server.log"),
		Host:     "127.0.0.1",
		Port:     opts.Port,
		SSL:      opts.SSL,
		binDir:   binDir,
		as:       as,
		reaperFD: -1,
	}
	ok := false
	defer func() {
		if !ok {
			_ = c.destroy("immediate")
		}
	}()
	if err := c.prepare(ctx, opts); err != nil {
		return nil, err
	}
	if err := c.startServer(ctx, opts.Port == 0); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// prepare lays out the directory, starts the watchdog, runs initdb and
// writes the configuration.
func (c *Cluster) prepare(ctx context.Context, opts Options) error {
	if err := os.Chmod(c.Dir, 0o700); err != nil {
		return fmt.Errorf("testpg: %w", err)
	}
	if err := c.as.chown(c.Dir); err != nil {
		return fmt.Errorf("testpg: %w", err)
	}
	// A unix socket path must fit in 107 bytes; fall back to /tmp when the
	// temporary directory is deeply nested.
	c.SocketDir = filepath.Join(c.Dir, "sock")
	if len(c.SocketDir)+len("/.s.PGSQL.65535.lock") > 100 {
		d, err := os.MkdirTemp("/tmp", "pgs-")
		if err != nil {
			return fmt.Errorf("testpg: %w", err)
		}
		c.SocketDir, c.ownSocketDir = d, true
	} else if err := os.Mkdir(c.SocketDir, 0o700); err != nil {
		return fmt.Errorf("testpg: %w", err)
	}
	if err := c.as.chown(c.SocketDir); err != nil {
		return fmt.Errorf("testpg: %w", err)
	}
	if err := c.startReaper(); err != nil {
		return fmt.Errorf("testpg: starting watchdog: %w", err)
	}

	out, err := c.run(ctx, "initdb", "-D", c.DataDir, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	if err != nil {
		return fmt.Errorf("testpg: initdb: %v\n%s", err, out)
	}

	hba := "# Written by testpg.\nlocal all all trust\n"
	hostType := "host"
	if opts.SSL {
		hostType = "hostssl"
	}
	hba += hostType + " all all 127.0.0.1/32 scram-sha-256\n"
	hba += hostType + " all all ::1/128 scram-sha-256\n"
	if err := os.WriteFile(filepath.Join(c.DataDir, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return fmt.Errorf("testpg: %w", err)
	}

	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"unix_socket_directories": c.SocketDir,
		"fsync":                   "off",
		"synchronous_commit":      "off",
		"full_page_writes":        "off",
		"max_connections":         "200",
		"shared_buffers":          "64MB",
		"password_encryption":     "scram-sha-256",
		"logging_collector":       "off",
		"lc_messages":             "C",
	}
	if opts.SSL {
		c.CertFile = filepath.Join(c.Dir, "server.crt")
		c.KeyFile = filepath.Join(c.Dir, "server.key")
		if err := WriteSelfSignedCert(c.CertFile, c.KeyFile); err != nil {
			return fmt.Errorf("testpg: generating certificate: %w", err)
		}
		for _, f := range []string{c.CertFile, c.KeyFile} {
			if err := c.as.chown(f); err != nil {
				return fmt.Errorf("testpg: %w", err)
			}
		}
		settings["ssl"] = "on"
		settings["ssl_cert_file"] = c.CertFile
		settings["ssl_key_file"] = c.KeyFile
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var conf strings.Builder
	conf.WriteString("# Written by testpg; included at the end of postgresql.conf.\n")
	for _, k := range keys {
		fmt.Fprintf(&conf, "%s = %s\n", k, quoteConf(settings[k]))
	}
	confPath := filepath.Join(c.DataDir, "testpg.conf")
	if err := os.WriteFile(confPath, []byte(conf.String()), 0o600); err != nil {
		return fmt.Errorf("testpg: %w", err)
	}
	if err := c.as.chown(confPath); err != nil {
		return fmt.Errorf("testpg: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(c.DataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("testpg: %w", err)
	}
	_, err = f.WriteString("\ninclude 'testpg.conf'\ninclude_if_exists 'testpg_port.conf'\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("testpg: %w", err)
	}
	return nil
}

// startServer starts the server on c.Port, or, when pickPort is set, on a
// free port, retrying with another port if that one was taken meanwhile.
func (c *Cluster) startServer(ctx context.Context, pickPort bool) error {
	for attempt := 1; ; attempt++ {
		if pickPort {
			port, err := freePort()
			if err != nil {
				return fmt.Errorf("testpg: picking a port: %w", err)
			}
			c.Port = port
		}
		if err := c.writePortConf(); err != nil {
			return err
		}
		logStart := fileSize(c.LogFile)
		out, err := c.run(ctx, "pg_ctl", "start", "-w", "-t", strconv.Itoa(timeoutSeconds(ctx)),
			"-D", c.DataDir, "-l", c.LogFile)
		if err == nil {
			err = c.ping(ctx)
			if err == nil {
				return nil
			}
			out += "\n" + err.Error()
		}
		// The server may still be starting (timeout) or half up.
		_ = c.stopServer("immediate")
		if pickPort && attempt < startAttempts && ctx.Err() == nil && addrInUse(readFrom(c.LogFile, logStart)) {
			continue
		}
		return fmt.Errorf("testpg: starting server on port %d: %v\n%s%s", c.Port, err, strings.TrimSpace(out), c.logTail())
	}
}

// writePortConf records c.Port in the data directory.
func (c *Cluster) writePortConf() error {
	p := filepath.Join(c.DataDir, "testpg_port.conf")
	if err := os.WriteFile(p, []byte(fmt.Sprintf("port = %d\n", c.Port)), 0o600); err != nil {
		return fmt.Errorf("testpg: %w", err)
	}
	if err := c.as.chown(p); err != nil {
		return fmt.Errorf("testpg: %w", err)
	}
	return nil
}

// isRunning reports whether pg_ctl status finds a live server.
func (c *Cluster) isRunning(ctx context.Context) bool {
	_, err := c.run(ctx, "pg_ctl", "status", "-D", c.DataDir)
	return err == nil
}

// ping checks that the superuser can connect over the unix socket.
func (c *Cluster) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, c.SuperuserDSN("postgres"))
	if err != nil {
		return err
	}
	defer closeConn(conn)
	_, err = conn.Exec(ctx, "select 1").ReadAll()
	return err
}

// stopServer stops the server if it runs, escalating from mode to an
// immediate stop to SIGKILL.
func (c *Cluster) stopServer(mode string) error {
	pidFile := filepath.Join(c.DataDir, "postmaster.pid")
	if _, err := os.Stat(pidFile); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), defaultTimeout+10*time.Second)
	defer cancel()
	var errs []error
	modes := []string{mode}
	if mode != "immediate" {
		modes = append(modes, "immediate")
	}
	for _, m := range modes {
		out, err := c.run(ctx, "pg_ctl", "stop", "-w", "-t", "60", "-m", m, "-D", c.DataDir)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("pg_ctl stop -m %s: %v: %s", m, err, strings.TrimSpace(out)))
	}
	// Last resort: kill the postmaster named in the pid file. Its children
	// notice and exit on their own.
	b, err := os.ReadFile(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		pid, perr := strconv.Atoi(strings.TrimSpace(line))
		if perr == nil && pid > 0 {
			kerr := syscall.Kill(pid, syscall.SIGKILL)
			if kerr == nil || errors.Is(kerr, syscall.ESRCH) {
				_ = os.Remove(pidFile)
				return nil
			}
			errs = append(errs, fmt.Errorf("kill %d: %w", pid, kerr))
		}
	}
	return fmt.Errorf("testpg: stopping server: %w", errors.Join(errs...))
}

// destroy stops the server and the watchdog and removes all files.
func (c *Cluster) destroy(mode string) error {
	err := c.stopServer(mode)
	c.stopReaper()
	if rerr := os.RemoveAll(c.Dir); rerr != nil {
		err = errors.Join(err, rerr)
	}
	if c.ownSocketDir {
		if rerr := os.RemoveAll(c.SocketDir); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	c.removed = true
	return err
}

// Stop stops the server (fast shutdown) and removes its directory. Calling
// it again does nothing.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return nil
	}
	return c.destroy("fast")
}

// StopOnly stops the server (fast shutdown) but keeps its data, to simulate
// an outage; Resume starts it again.
func (c *Cluster) StopOnly() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return errors.New("testpg: cluster was removed by Stop")
	}
	return c.stopServer("fast")
}

// Resume starts a server stopped by StopOnly again, on the same port and
// data. It does nothing when the server is running.
func (c *Cluster) Resume(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return errors.New("testpg: cluster was removed by Stop")
	}
	if c.isRunning(ctx) {
		return nil
	}
	return c.startServer(ctx, false)
}

// Restart stops the server (fast shutdown, dropping all connections) and
// starts it again on the same port and data.
func (c *Cluster) Restart(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return errors.New("testpg: cluster was removed by Stop")
	}
	if err := c.stopServer("fast"); err != nil {
		return err
	}
	return c.startServer(ctx, false)
}

// Addr returns the TCP address "127.0.0.1:<port>".
func (c *Cluster) Addr() string {
	return net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
}

// SuperuserDSN returns a keyword/value connection string for the superuser
// "postgres" over the unix socket (trust authentication) to database db.
func (c *Cluster) SuperuserDSN(db string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable",
		quoteDSN(c.SocketDir), c.Port, quoteDSN(db))
}

// DSN returns a keyword/value connection string for user over TCP to
// 127.0.0.1 (SCRAM authentication), with sslmode=disable, or sslmode=prefer
// when the cluster has SSL. An empty password is left out. Later keywords
// override earlier ones, so callers may append e.g.
// " sslmode=verify-full sslrootcert="+c.CertFile.
func (c *Cluster) DSN(user, password, db string) string {
	mode := "disable"
	if c.SSL {
		mode = "prefer"
	}
	s := fmt.Sprintf("host=%s port=%d user=%s", c.Host, c.Port, quoteDSN(user))
	if password != "" {
		s += " password=" + quoteDSN(password)
	}
	return s + fmt.Sprintf(" dbname=%s sslmode=%s", quoteDSN(db), mode)
}

// Exec runs sql, which may hold several statements, as the superuser in
// database db using the simple query protocol. Without explicit transaction
// control the statements run in one implicit transaction.
func (c *Cluster) Exec(ctx context.Context, db, sql string) error {
	_, err := c.exec(ctx, db, sql)
	return err
}

// QueryRows runs sql as the superuser in database db using the simple query
// protocol and returns the rows of all its statements in text form; NULL
// becomes "".
func (c *Cluster) QueryRows(ctx context.Context, db, sql string) ([][]string, error) {
	results, err := c.exec(ctx, db, sql)
	if err != nil {
		return nil, err
	}
	return TextRows(results), nil
}

// TextRows returns the rows of every result as text; NULL becomes "".
func TextRows(results []*pgconn.Result) [][]string {
	var rows [][]string
	for _, r := range results {
		for _, row := range r.Rows {
			out := make([]string, len(row))
			for i, v := range row {
				out[i] = string(v)
			}
			rows = append(rows, out)
		}
	}
	return rows
}

func (c *Cluster) exec(ctx context.Context, db, sql string) ([]*pgconn.Result, error) {
	conn, err := pgconn.Connect(ctx, c.SuperuserDSN(db))
	if err != nil {
		return nil, fmt.Errorf("testpg: connecting to %q as superuser: %w", db, err)
	}
	defer closeConn(conn)
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("testpg: in database %q: %w%s", db, err, errorContext(err))
	}
	return results, nil
}

// errorContext returns the detail, hint and context lines of a server error.
func errorContext(err error) string {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return ""
	}
	var b strings.Builder
	for _, f := range []struct{ name, v string }{{"DETAIL", pgErr.Detail}, {"HINT", pgErr.Hint}, {"CONTEXT", pgErr.Where}} {
		if f.v != "" {
			fmt.Fprintf(&b, "\n%s: %s", f.name, f.v)
		}
	}
	return b.String()
}

// CreateDatabase creates database name, owned by the superuser.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	return c.Exec(ctx, "postgres", "CREATE DATABASE "+quoteIdent(name))
}

// ApplySQLFile runs the SQL file at path as the superuser in database db, as
// one simple-protocol query (one implicit transaction unless the file
// controls transactions itself). Errors name the file and line.
func (c *Cluster) ApplySQLFile(ctx context.Context, db, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("testpg: %w", err)
	}
	err = c.Exec(ctx, db, string(b))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Position > 0 {
		return fmt.Errorf("%s:%d: %w", path, lineAt(string(b), int(pgErr.Position)), err)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// lineAt returns the 1-based line of the pos-th character (1-based) of s.
func lineAt(s string, pos int) int {
	line, n := 1, 1
	for _, r := range s {
		if n >= pos {
			break
		}
		if r == '\n' {
			line++
		}
		n++
	}
	return line
}

// run runs a PostgreSQL binary as the server's OS user and returns its
// combined output.
func (c *Cluster) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, name), args...)
	cmd.Dir = c.Dir
	cmd.Env = childEnv(c.Dir, c.as)
	c.as.apply(cmd)
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return buf.String(), err
}

// startReaper starts the watchdog: a shell reading a pipe whose write end
// only this process holds. When this process dies the pipe closes and the
// watchdog stops the server and removes the directory.
func (c *Cluster) startReaper() error {
	var p [2]int
	// Like os.Pipe, but the write end is a raw descriptor so that no
	// finalizer closes it (and kills the server) if the Cluster is dropped.
	syscall.ForkLock.RLock()
	err := syscall.Pipe(p[:])
	if err == nil {
		syscall.CloseOnExec(p[0])
		syscall.CloseOnExec(p[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return err
	}
	r := os.NewFile(uintptr(p[0]), "testpg-watchdog")
	defer r.Close()
	script := `read -r _; "$0" stop -D "$1" -m immediate -w -t 30 >/dev/null 2>&1; rm -rf "$2" ${3:+"$3"}`
	args := []string{"-c", script, filepath.Join(c.binDir, "pg_ctl"), c.DataDir, c.Dir}
	if c.ownSocketDir {
		args = append(args, c.SocketDir)
	}
	cmd := exec.Command("/bin/sh", args...)
	cmd.Stdin = r
	cmd.Dir = c.Dir
	cmd.Env = childEnv(c.Dir, c.as)
	c.as.apply(cmd)
	if err := cmd.Start(); err != nil {
		syscall.Close(p[1])
		return err
	}
	c.reaper = cmd
	c.reaperFD = p[1]
	return nil
}

// stopReaper kills the watchdog without letting it act.
func (c *Cluster) stopReaper() {
	if c.reaper != nil {
		_ = c.reaper.Process.Kill()
		_ = c.reaper.Wait()
		c.reaper = nil
	}
	if c.reaperFD >= 0 {
		syscall.Close(c.reaperFD)
		c.reaperFD = -1
	}
}

// logTail returns the last lines of the server log, formatted for an error.
func (c *Cluster) logTail() string {
	const maxRead = 64 << 10
	f, err := os.Open(c.LogFile)
	if err != nil {
		return "\n--- no server log: " + err.Error()
	}
	defer f.Close()
	size := fileSize(c.LogFile)
	off := size - maxRead
	if off < 0 {
		off = 0
	}
	b := make([]byte, size-off)
	n, _ := f.ReadAt(b, off)
	lines := strings.Split(strings.TrimRight(string(b[:n]), "\n"), "\n")
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	return fmt.Sprintf("\n--- last %d lines of %s ---\n%s", len(lines), c.LogFile, strings.Join(lines, "\n"))
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readFrom returns the contents of path from byte off on.
func readFrom(path string, off int64) string {
	b, err := os.ReadFile(path)
	if err != nil || off > int64(len(b)) {
		return ""
	}
	return string(b[off:])
}

// addrInUse reports whether a server log says the port was taken.
func addrInUse(log string) bool {
	return strings.Contains(log, "Address already in use")
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// timeoutSeconds is the time left in ctx for pg_ctl -t, or defaultTimeout.
func timeoutSeconds(ctx context.Context) int {
	d := defaultTimeout
	if dl, ok := ctx.Deadline(); ok {
		d = time.Until(dl)
	}
	if s := int(d / time.Second); s > 1 {
		return s
	}
	return 1
}

func closeConn(conn *pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// quoteConf quotes a postgresql.conf value.
func quoteConf(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

// quoteDSN quotes a keyword/value connection string value if needed.
func quoteDSN(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r\v\f'\\=") {
		return v
	}
	v = strings.ReplaceAll(v, `\`, `\\`)
	return "'" + strings.ReplaceAll(v, "'", `\'`) + "'"
}

// quoteIdent quotes an SQL identifier.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
