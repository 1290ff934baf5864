package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/pgtoken/pgtoken/internal/testpg"
)

// The roles of the throwaway cluster. Role is the token role; the direct
// run logs in as Role itself (given LOGIN and a password for that), so
// both runs have exactly the same privileges, and the objects the tests
// create have the same owner. Through pgtoken, Login logs in upstream and
// SET LOCAL ROLE makes every transaction run as Role.
const (
	Role          = "pgx_tester"
	RolePassword  = "pgx-secret"
	Login         = "authenticator"
	LoginPassword = "authenticator-secret"
)

// clusterSQL sets up the roles once per cluster. pgx's own setup
// (testsetup/postgresql_setup.sql) makes every test role a superuser; here
// the token role is an ordinary role with what the suite needs:
//   - SET on log_statement (pgconn's TestConnPing sets it), a parameter
//     only superusers may set unless granted (PostgreSQL 15+);
//   - the "tricky" role exists because pgtype's aclitem tests name it.
var clusterSQL = `
SET password_encryption = 'scram-sha-256';
CREATE ROLE ` + Role + ` LOGIN PASSWORD '` + RolePassword + `' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
CREATE ROLE ` + Login + ` LOGIN NOINHERIT PASSWORD '` + LoginPassword + `' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
GRANT ` + Role + ` TO ` + Login + `;
GRANT SET ON PARAMETER log_statement TO ` + Role + `;
CREATE ROLE " tricky, ' } "" \ test user " NOLOGIN;
`

// databaseSQL prepares one run's database as pgx's testsetup does
// (extensions hstore and ltree, the uint64 domain) and lets the token role
// create schemas, temporary tables and objects in public.
func databaseSQL(db string) string {
	return `
CREATE EXTENSION hstore;
CREATE EXTENSION ltree;
CREATE DOMAIN uint64 AS numeric(20,0);
GRANT CREATE, TEMPORARY ON DATABASE ` + db + ` TO ` + Role + `;
GRANT CREATE, USAGE ON SCHEMA public TO ` + Role + `;
`
}

// setupCluster creates the roles and one database per mode.
func setupCluster(ctx context.Context, pg *testpg.Cluster, modes []string) error {
	if err := pg.Exec(ctx, "postgres", clusterSQL); err != nil {
		return err
	}
	for _, m := range modes {
		db := dbName(m)
		if err := pg.CreateDatabase(ctx, db); err != nil {
			return err
		}
		if err := pg.Exec(ctx, db, databaseSQL(db)); err != nil {
			return err
		}
	}
	return nil
}

// dbName is the database of one mode's run: each run starts from a fresh
// database, so what one leaves behind cannot change another's results.
func dbName(mode string) string { return "pgx_" + mode }

// serverVersion returns the server's version string and major version.
func serverVersion(ctx context.Context, pg *testpg.Cluster) (string, int, error) {
	rows, err := pg.QueryRows(ctx, "postgres", "select current_setting('server_version'), current_setting('server_version_num')::int / 10000")
	if err != nil {
		return "", 0, err
	}
	var major int
	_, err = fmt.Sscan(rows[0][1], &major)
	return rows[0][0], major, err
}

// module is a Go module in the module cache.
type module struct {
	Path, Version, Dir, Error string
}

// findModule returns the module cache directory of path at the version
// the main module (dir) requires, downloading it through the module proxy
// if needed.
func findModule(ctx context.Context, dir, path string) (module, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", path)
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	var m module
	if jerr := json.Unmarshal(out, &m); jerr != nil && err == nil {
		err = jerr
	}
	if err == nil && m.Error != "" {
		err = fmt.Errorf("%s", m.Error)
	}
	if err != nil {
		return m, fmt.Errorf("go mod download %s: %w", path, err)
	}
	return m, nil
}

// copyTree copies the read-only module cache directory src to dst, with
// files writable by the owner (tests may write next to themselves, and the
// go command may update go.sum).
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if info, err := d.Info(); err == nil && info.Mode()&0o111 != 0 {
			mode = 0o755
		}
		return os.WriteFile(target, b, mode)
	})
}

// testEnv is the environment of one `go test` run: this process's own
// without PG* and PGX_* variables (which pgx's tests would read), with
// dsn as every connection string the run sets, and GOWORK off.
func testEnv(dsn string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || k == "GOWORK" {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"GOWORK=off",
		"PGX_TEST_DATABASE="+dsn,
		"PGX_TEST_TCP_CONN_STRING="+dsn,
	)
}
