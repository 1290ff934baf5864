package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// benchConfig is one cell of the matrix.
type benchConfig struct {
	Script  string `json:"script"` // "select" (-S) or "tpcb" (the default script)
	Mode    string `json:"mode"`   // -M
	Clients int    `json:"clients"`
	Connect bool   `json:"connect"` // -C
}

// Label names the configuration as pgbench flags would.
func (c benchConfig) Label() string {
	s := "-S"
	if c.Script == "tpcb" {
		s = "TPC-B"
	}
	if c.Connect {
		return fmt.Sprintf("%s -M %s -C -c %d", s, c.Mode, c.Clients)
	}
	return fmt.Sprintf("%s -M %s -c %d", s, c.Mode, c.Clients)
}

// pgbenchArgs are the flags of a run of c for seconds. pgbench runs two
// threads (the machine has two cores), except with -C: each thread opens
// its connections one at a time, so there every client gets a thread and
// logins overlap as they would with independent clients.
func (c benchConfig) pgbenchArgs(seconds int) []string {
	threads := min(c.Clients, 2)
	if c.Connect {
		threads = c.Clients
	}
	args := []string{"-n", "-T", strconv.Itoa(c.runSeconds(seconds)), "-c", strconv.Itoa(c.Clients),
		"-j", strconv.Itoa(threads), "-M", c.Mode}
	if c.Script == "select" {
		args = append(args, "-S")
	}
	if c.Connect {
		args = append(args, "-C")
	}
	return args
}

// runSeconds is pgbench's -T for a run measuring about seconds: pgbench's
// clock includes the initial logins, which a thread makes one at a time
// (SCRAM takes milliseconds each), so many clients get a second per 32 of
// them on top. The TPS pgbench reports excludes that initial connection
// time.
func (c benchConfig) runSeconds(seconds int) int {
	if c.Connect {
		return seconds
	}
	return seconds + c.Clients/32
}

// pgbenchResult is what one pgbench run reported.
type pgbenchResult struct {
	TPS          float64 `json:"tps"`
	Transactions int64   `json:"transactions"`
	Failed       int64   `json:"failed,omitempty"`
	ConnMS       float64 `json:"conn_ms,omitempty"` // average connection time (-C)
	LatMeanMS    float64 `json:"lat_mean_ms"`       // from the per-transaction log
	LatP50MS     float64 `json:"lat_p50_ms"`
	LatP99MS     float64 `json:"lat_p99_ms"`
	Logged       int     `json:"logged"` // transactions in the log
	// Warnings are pgbench's error lines in a run that still succeeded
	// (pgbench -M prepared reports a failed Prepare and goes on).
	Warnings string `json:"warnings,omitempty"`
	Output   string `json:"-"`
}

var (
	reTPS      = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	reDone     = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	reFailed   = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
	reConnTime = regexp.MustCompile(`(?m)^average connection time = ([0-9.]+) ms`)
	reClient   = regexp.MustCompile(`client [0-9]+`)
)

// pgbenchRunner runs pgbench with per-transaction logs in a directory.
type pgbenchRunner struct {
	logDir string
	seq    int
}

// run runs pgbench against ep with args and extra (e.g. -f FILE), and
// computes latency statistics from its --log files, which it then removes.
// A run that fails or is aborted returns the result so far and an error
// quoting pgbench's output.
func (p *pgbenchRunner) run(ctx context.Context, ep endpoint, args []string, seconds int) (pgbenchResult, error) {
	p.seq++
	prefix := filepath.Join(p.logDir, fmt.Sprintf("run%04d", p.seq))
	full := append(append([]string{}, args...), "--log", "--log-prefix="+prefix,
		"-h", ep.host, "-p", strconv.Itoa(ep.port), "-U", ep.user, ep.db)
	// Generous: 256 clients logging in with SCRAM, or a hang to catch.
	ctx, cancel := context.WithTimeout(ctx, time.Duration(seconds)*time.Second+90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "pgbench", full...)
	cmd.Env = cleanEnv("PGPASSWORD="+ep.password, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	runErr := cmd.Run()
	res := pgbenchResult{Output: out.String()}
	defer removeLogs(prefix)
	if m := reTPS.FindStringSubmatch(res.Output); m != nil {
		res.TPS, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := reDone.FindStringSubmatch(res.Output); m != nil {
		res.Transactions, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reFailed.FindStringSubmatch(res.Output); m != nil {
		res.Failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reConnTime.FindStringSubmatch(res.Output); m != nil {
		res.ConnMS, _ = strconv.ParseFloat(m[1], 64)
	}
	lat, err := readLatencies(prefix)
	if err == nil && len(lat) > 0 {
		res.Logged = len(lat)
		res.LatMeanMS, res.LatP50MS, res.LatP99MS = latencyStats(lat)
	}
	switch {
	case ctx.Err() != nil && runErr != nil:
		return res, fmt.Errorf("pgbench did not finish within %ds of a %ds run (hang?): %s", seconds+90, seconds, errorLines(res.Output))
	case runErr != nil:
		return res, fmt.Errorf("pgbench: %w: %s", runErr, errorLines(res.Output))
	case strings.Contains(res.Output, "aborted"):
		return res, fmt.Errorf("pgbench aborted: %s", errorLines(res.Output))
	case res.TPS == 0:
		return res, fmt.Errorf("pgbench reported no throughput: %s", errorLines(res.Output))
	case err != nil:
		return res, err
	}
	if strings.Contains(res.Output, "error:") {
		res.Warnings = errorLines(res.Output)
	}
	return res, nil
}

// errorLines picks pgbench's error lines (or its last lines) for a report.
func errorLines(out string) string {
	var picked []string
	seen := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if !strings.Contains(l, "error") && !strings.Contains(l, "ERROR") && !strings.Contains(l, "FATAL") && !strings.Contains(l, "aborted") {
			continue
		}
		// Clients fail alike; keep one line of each kind.
		key := reClient.ReplaceAllString(l, "client N")
		if !seen[key] {
			seen[key] = true
			picked = append(picked, key)
		}
		if len(picked) == 6 {
			break
		}
	}
	if len(picked) == 0 {
		lines := strings.Split(strings.TrimSpace(out), "\n")
		picked = lines[max(0, len(lines)-6):]
	}
	return strings.Join(picked, " | ")
}

// readLatencies reads the transaction times (µs) of every log file of a
// run: "client_id transaction_no time script_no time_epoch time_us".
func readLatencies(prefix string) ([]int64, error) {
	files, err := filepath.Glob(prefix + ".*")
	if err != nil {
		return nil, fmt.Errorf("pgbench logs: %w", err)
	}
	var lat []int64
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, fmt.Errorf("pgbench log: %w", err)
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := bytes.Fields(sc.Bytes())
			if len(fields) < 3 {
				continue
			}
			v, err := strconv.ParseInt(string(fields[2]), 10, 64)
			if err != nil {
				continue // "failed" or "skipped"
			}
			lat = append(lat, v)
		}
		err = sc.Err()
		_ = fh.Close()
		if err != nil {
			return nil, fmt.Errorf("pgbench log %s: %w", f, err)
		}
	}
	if len(files) == 0 {
		return nil, errors.New("pgbench wrote no transaction log")
	}
	return lat, nil
}

// latencyStats returns the mean, median and 99th percentile in ms.
func latencyStats(us []int64) (mean, p50, p99 float64) {
	slices.Sort(us)
	var sum float64
	for _, v := range us {
		sum += float64(v)
	}
	n := len(us)
	pct := func(p float64) float64 {
		i := int(p*float64(n)+0.5) - 1
		return float64(us[min(max(i, 0), n-1)]) / 1000
	}
	return sum / float64(n) / 1000, pct(0.50), pct(0.99)
}

func removeLogs(prefix string) {
	files, _ := filepath.Glob(prefix + ".*")
	for _, f := range files {
		_ = os.Remove(f)
	}
}
