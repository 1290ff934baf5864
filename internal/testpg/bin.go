package testpg

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// BinDirEnv names an environment variable that, when set, is the only
// directory searched for initdb, pg_ctl and postgres.
const BinDirEnv = "TESTPG_BINDIR"

// Available reports whether a usable PostgreSQL installation was found and,
// when it was not, why.
func Available() (bool, string) {
	if _, err := findBinDir(); err != nil {
		return false, err.Error()
	}
	if _, err := lookupRunAs(); err != nil {
		return false, err.Error()
	}
	return true, ""
}

// findBinDir returns a directory holding initdb, pg_ctl and postgres. It
// tries TESTPG_BINDIR, then the directories of initdb and pg_ctl on PATH
// (symlinks resolved), then the common package locations, newest version
// first.
func findBinDir() (string, error) {
	if dir := os.Getenv(BinDirEnv); dir != "" {
		if err := checkBinDir(dir); err != nil {
			return "", fmt.Errorf("%s=%s: %w", BinDirEnv, dir, err)
		}
		return dir, nil
	}
	var candidates []string
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		p, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
		}
		candidates = append(candidates, filepath.Dir(p))
	}
	for _, pattern := range []string{"/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"} {
		matches, _ := filepath.Glob(pattern)
		sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
		candidates = append(candidates, matches...)
	}
	candidates = append(candidates, "/usr/local/pgsql/bin")
	for _, dir := range candidates {
		if checkBinDir(dir) == nil {
			return dir, nil
		}
	}
	return "", errors.New("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or under /usr/lib/postgresql/*/bin; install them or set " + BinDirEnv)
}

// versionOf extracts the numeric major version from a path such as
// /usr/lib/postgresql/15/bin, or 0.
func versionOf(dir string) float64 {
	base := filepath.Base(filepath.Dir(dir))
	base = strings.TrimPrefix(base, "pgsql-")
	v, _ := strconv.ParseFloat(base, 64)
	return v
}

func checkBinDir(dir string) error {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("%s is not executable", filepath.Join(dir, name))
		}
	}
	return nil
}

// runAs is the OS identity that runs initdb and postgres; nil means the
// current user.
type runAs struct {
	uid, gid uint32
	name     string
}

// lookupRunAs returns the postgres OS user when running as root (PostgreSQL
// refuses to run as root) and nil otherwise.
func lookupRunAs() (*runAs, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, but no 'postgres' OS user to run the server as: %v", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres user: bad uid %q", u.Uid)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres user: bad gid %q", u.Gid)
	}
	return &runAs{uid: uint32(uid), gid: uint32(gid), name: u.Username}, nil
}

// apply makes cmd run as r, in its own session so that terminal signals
// aimed at the test do not reach it.
func (r *runAs) apply(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if r != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: r.uid, Gid: r.gid, Groups: []uint32{}}
	}
}

// chown gives path to r; a no-op when r is nil.
func (r *runAs) chown(path string) error {
	if r == nil {
		return nil
	}
	return os.Chown(path, int(r.uid), int(r.gid))
}

// childEnv is the environment for PostgreSQL commands: the test's own,
// without PG* variables that could redirect them, with the C locale, and
// with HOME set to dir.
func childEnv(dir string, r *runAs) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") || k == "LANG" || k == "LANGUAGE" || k == "HOME" {
			continue
		}
		if r != nil && (k == "USER" || k == "LOGNAME") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "LC_ALL=C", "LANG=C", "HOME="+dir)
	if r != nil {
		env = append(env, "USER="+r.name, "LOGNAME="+r.name)
	}
	return env
}

// tempBase returns the directory to create cluster directories in. When the
// server runs as another user, every parent of that directory must be
// searchable by others; otherwise /tmp is used.
func tempBase(r *runAs) string {
	base := os.TempDir()
	if r == nil {
		return base
	}
	for p := base; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if p == filepath.Dir(p) {
			return base
		}
	}
}
