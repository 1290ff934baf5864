package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/pgtoken/pgtoken/internal/testpg"
)

// machine describes where the numbers came from.
type machine struct {
	CPU       string `json:"cpu"`
	Cores     int    `json:"cores"`
	MemGB     string `json:"mem"`
	Kernel    string `json:"kernel"`
	OS        string `json:"os"`
	Postgres  string `json:"postgres"`
	PgBouncer string `json:"pgbouncer,omitempty"`
	Pgbench   string `json:"pgbench"`
	Go        string `json:"go"`
	Pgtoken   string `json:"pgtoken"` // pgtoken version: git describe of the tree it was built from
}

func machineInfo(ctx context.Context, pg *testpg.Cluster, bouncer, pgtokenBin string) (machine, error) {
	m := machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	m.CPU = firstField("/proc/cpuinfo", "model name", ":")
	if kb := firstField("/proc/meminfo", "MemTotal", ":"); kb != "" {
		var n int64
		if _, err := fmt.Sscanf(kb, "%d", &n); err == nil {
			m.MemGB = fmt.Sprintf("%.1f GiB", float64(n)/(1<<20))
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.OS = strings.Trim(firstField("/etc/os-release", "PRETTY_NAME", "="), `"`)
	rows, err := pg.QueryRows(ctx, "postgres", "SELECT pg_catalog.version()")
	if err != nil {
		return m, fmt.Errorf("postgres version: %w", err)
	}
	m.Postgres, _, _ = strings.Cut(rows[0][0], " on ")
	if out, err := runCmd(ctx, nil, "pgbench", "--version"); err == nil {
		m.Pgbench = strings.TrimSpace(out)
	}
	if bouncer != "" {
		m.PgBouncer = pgbouncerVersion(ctx, bouncer)
	}
	out, err := exec.CommandContext(ctx, pgtokenBin, "version").Output()
	if err != nil {
		return m, fmt.Errorf("pgtoken version: %w", err)
	}
	m.Pgtoken = strings.TrimSpace(string(out))
	return m, nil
}

// firstField returns the value of the first "key<sep>value" line of a file.
func firstField(path, key, sep string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), sep)
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
