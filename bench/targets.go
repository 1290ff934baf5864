package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pgtoken/pgtoken/internal/testpg"
)

// Targets pgbench connects to.
const (
	targetDirect  = "direct"
	targetBouncer = "pgbouncer"
	targetPgtoken = "pgtoken"
)

// Roles and the database the harness creates.
const (
	benchDB   = "bench"
	tokenRole = "bench_user"    // NOLOGIN; the token's role claim
	loginRole = "bench_login"   // LOGIN with bench_user's grants: direct and PgBouncer runs
	authRole  = "authenticator" // pgtoken's upstream login (NOINHERIT, granted bench_user)
	tokenSub  = "bench-client-1"
)

// endpoint is where and as whom pgbench connects.
type endpoint struct {
	target   string
	host     string
	port     int
	user     string
	password string
	db       string
}

// secrets are generated per run.
type secrets struct {
	loginPW string // bench_login
	authPW  string // authenticator
	jwt     string // pgtoken's HS256 secret
}

func newSecrets() (secrets, error) {
	var s secrets
	for _, p := range []*string{&s.loginPW, &s.authPW, &s.jwt} {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return s, fmt.Errorf("random secret: %w", err)
		}
		*p = hex.EncodeToString(b[:])
	}
	return s, nil
}

// startPostgres starts the throwaway cluster with room for 256 direct
// clients plus both pools and the idle test's sample.
func startPostgres(ctx context.Context, o options) (*testpg.Cluster, error) {
	if ok, why := testpg.Available(); !ok {
		return nil, fmt.Errorf("postgres: %s", why)
	}
	maxClients := o.pool * 2
	for _, c := range append(append([]int{}, o.clients...), o.connect...) {
		maxClients = max(maxClients, c+2*o.pool)
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return testpg.Start(sctx, testpg.Options{Settings: map[string]string{
		"max_connections": strconv.Itoa(maxClients + 40),
		"shared_buffers":  "256MB",
	}})
}

// setupDatabase creates the bench database, runs pgbench -i and creates the
// roles: bench_user (the token's role), bench_login (the same grants, for
// direct and PgBouncer runs; also a member of bench_user, so the
// inherent-cost scripts can SET ROLE as pgtoken does) and authenticator
// (pgtoken's upstream login, NOINHERIT, granted bench_user), and locks the
// database down.
func setupDatabase(ctx context.Context, pg *testpg.Cluster, o options, s secrets) error {
	if err := pg.CreateDatabase(ctx, benchDB); err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	if _, err := runCmd(ctx, cleanEnv(), "pgbench", "-i", "-q", "-s", strconv.Itoa(o.scale),
		"-h", pg.SocketDir, "-p", strconv.Itoa(pg.Port), "-U", "postgres", benchDB); err != nil {
		return fmt.Errorf("pgbench -i: %w", err)
	}
	sql := fmt.Sprintf(`SET password_encryption = 'scram-sha-256';
CREATE ROLE %[1]s NOLOGIN;
CREATE ROLE %[2]s LOGIN PASSWORD '%[4]s';
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '%[3]s') THEN
    CREATE ROLE %[3]s;
  END IF;
END $$;
ALTER ROLE %[3]s LOGIN NOINHERIT NOSUPERUSER PASSWORD '%[5]s';
GRANT %[1]s TO %[3]s, %[2]s;
GRANT SELECT, INSERT, UPDATE ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO %[1]s, %[2]s;
-- Locked down as docs/SECURITY.md says (pgtoken refuses a role with TEMPORARY).
REVOKE ALL ON DATABASE %[6]s FROM PUBLIC;
GRANT CONNECT ON DATABASE %[6]s TO %[3]s, %[2]s;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;`,
		tokenRole, loginRole, authRole, s.loginPW, s.authPW, benchDB)
	if err := pg.Exec(ctx, benchDB, sql); err != nil {
		return fmt.Errorf("roles and grants: %w", err)
	}
	// VACUUM cannot run in the implicit transaction of the query above.
	if err := pg.Exec(ctx, benchDB, "VACUUM ANALYZE"); err != nil {
		return fmt.Errorf("vacuum: %w", err)
	}
	return nil
}

// mintToken signs the token pgbench logs in to pgtoken with: a small,
// realistic claim set (role, sub, iat, exp).
func mintToken(secret string, now time.Time) (string, error) {
	claims := jwt.MapClaims{
		"role": tokenRole,
		"sub":  tokenSub,
		"iat":  now.Unix(),
		"exp":  now.Add(24 * time.Hour).Unix(),
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return tok, nil
}

// buildPgtoken builds bin/pgtoken from the working tree.
func buildPgtoken(ctx context.Context, root string) (string, error) {
	bin := filepath.Join(root, "bin", "pgtoken")
	cmd := exec.CommandContext(ctx, "go", "build", "-ldflags", "-X main.version="+gitVersion(ctx, root), "-o", bin, "./cmd/pgtoken")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/pgtoken: %w\n%s", err, out)
	}
	return bin, nil
}

// gitVersion describes the working tree's commit ("dev" outside git).
func gitVersion(ctx context.Context, root string) string {
	out, err := exec.CommandContext(ctx, "git", "-C", root, "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		return "dev"
	}
	return strings.TrimSpace(string(out))
}

// startPgtoken starts `pgtoken serve` in front of pg with a pool of
// o.pool connections, writing a CPU profile to cpuprofile if set.
func startPgtoken(bin, dir, name string, pg *testpg.Cluster, o options, s secrets, cpuprofile string) (*daemon, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	upstream := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable",
		pg.Port, authRole, s.authPW, benchDB)
	cfg := fmt.Sprintf(`# Written by bench/.
listen: 127.0.0.1:%d
upstream: %q
log_level: %s
pool:
  mode: transaction
  size: %d
jwt:
  secret: %q
  allowed_roles: [%s]
`, port, upstream, o.logLevel, o.pool, s.jwt, tokenRole)
	metricsPort := 0
	if o.metrics {
		if metricsPort, err = freePort(); err != nil {
			return nil, err
		}
		cfg += fmt.Sprintf("metrics_listen: 127.0.0.1:%d\n", metricsPort)
	}
	cfgPath := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, fmt.Errorf("pgtoken config: %w", err)
	}
	args := []string{"serve", "--config", cfgPath}
	if cpuprofile != "" {
		args = append(args, "--cpuprofile", cpuprofile)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = cleanEnv()
	if o.godebug != "" {
		cmd.Env = append(cmd.Env, "GODEBUG="+o.godebug)
	}
	cmd.Env = append(cmd.Env, o.pgtokenEnv...)
	d, err := startDaemon(name, cmd, filepath.Join(dir, name+".log"), port, nil)
	if d != nil {
		d.metricsPort = metricsPort
	}
	return d, err
}

// ensurePgbouncer installs Debian's pgbouncer package when the binary is
// missing.
func ensurePgbouncer(ctx context.Context) (string, error) {
	for _, p := range []string{"/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	logf("pgbouncer not found: installing it with apt-get")
	env := cleanEnv("DEBIAN_FRONTEND=noninteractive")
	if _, err := runCmd(ctx, env, "apt-get", "update", "-qq"); err != nil {
		return "", fmt.Errorf("installing pgbouncer: %w", err)
	}
	if _, err := runCmd(ctx, env, "apt-get", "install", "-y", "-qq", "pgbouncer"); err != nil {
		return "", fmt.Errorf("installing pgbouncer: %w", err)
	}
	return "/usr/sbin/pgbouncer", nil
}

// startPgbouncer runs PgBouncer in transaction mode in front of pg, in a
// directory of its own, as the postgres OS user when root.
func startPgbouncer(bin, dir string, pg *testpg.Cluster, o options, s secrets) (*daemon, error) {
	cred, ou, err := postgresUser()
	if err != nil {
		return nil, err
	}
	bdir := filepath.Join(dir, "pgbouncer")
	if err := os.Mkdir(bdir, 0o700); err != nil {
		return nil, fmt.Errorf("pgbouncer dir: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	ini := fmt.Sprintf(`; Written by bench/.
[databases]
%[1]s = host=127.0.0.1 port=%[2]d dbname=%[1]s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %[3]d
unix_socket_dir =
auth_type = %[4]s
auth_file = %[5]s
pool_mode = transaction
default_pool_size = %[6]d
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = %[7]d
max_db_connections = %[6]d
ignore_startup_parameters = extra_float_digits
logfile =
syslog = 0
`, benchDB, pg.Port, port, o.bouncerAut, filepath.Join(bdir, "userlist.txt"), o.pool, max(1000, o.idle+100))
	users := fmt.Sprintf("%q %q\n", loginRole, s.loginPW)
	files := map[string]string{"pgbouncer.ini": ini, "userlist.txt": users}
	for name, content := range files {
		p := filepath.Join(bdir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			return nil, fmt.Errorf("pgbouncer %s: %w", name, err)
		}
	}
	if ou != nil {
		for _, p := range []string{bdir, filepath.Join(bdir, "pgbouncer.ini"), filepath.Join(bdir, "userlist.txt")} {
			if err := os.Chown(p, int(ou.uid), int(ou.gid)); err != nil {
				return nil, fmt.Errorf("pgbouncer files: %w", err)
			}
		}
	}
	cmd := exec.Command(bin, filepath.Join(bdir, "pgbouncer.ini"))
	cmd.Dir = bdir
	cmd.Env = cleanEnv("HOME=" + bdir)
	return startDaemon("pgbouncer", cmd, filepath.Join(dir, "pgbouncer.log"), port, cred)
}

// pgbouncerVersion returns the first line of pgbouncer --version.
func pgbouncerVersion(ctx context.Context, bin string) string {
	out, err := runCmd(ctx, nil, bin, "--version")
	if err != nil {
		return "unknown"
	}
	line, _, _ := strings.Cut(out, "\n")
	return strings.TrimSpace(line)
}
