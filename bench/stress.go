package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// make stress (go run ./bench -stress): many short pgbench -S runs through
// pgtoken in every query mode and client count, taking turns, each watched:
// a pgbench still running -grace seconds after its -T ended (and making no
// progress) has clients waiting for an answer that will not come. Its
// evidence is saved before anything is touched: pgtoken's /debug/sessions,
// /metrics, pg_stat_activity, the sockets, then pgtoken's goroutine dump
// (SIGQUIT); pgbench is then killed and a fresh pgtoken started.

// stressRun is one pgbench run of make stress.
type stressRun struct {
	N            int     `json:"n"`
	Label        string  `json:"label"`
	Seconds      float64 `json:"seconds"`                // how long pgbench ran (until killed, when it hung)
	Transactions int64   `json:"transactions,omitempty"` // as pgbench reported (none when it hung)
	Waiting      int     `json:"waiting,omitempty"`      // clients still waiting when the watchdog fired
	Error        string  `json:"error,omitempty"`        // pgbench failed in another way
	Evidence     string  `json:"evidence,omitempty"`     // directory of the hang's evidence, under the output directory
	Complaints   int     `json:"complaints,omitempty"`   // lines pgtoken logged at warn or above, races, panics
}

// stressRow sums up the runs of one configuration.
type stressRow struct {
	Label        string `json:"label"`
	Runs         int    `json:"runs"`
	Hung         int    `json:"hung"`    // runs with clients left waiting
	Waiting      int    `json:"waiting"` // clients left waiting, over all runs
	Failed       int    `json:"failed"`  // runs pgbench reported as failed otherwise
	Complaints   int    `json:"complaints"`
	Transactions int64  `json:"transactions"`
}

type stressReport struct {
	Command  string      `json:"command"`
	Version  string      `json:"version"`
	Started  time.Time   `json:"started"`
	Finished time.Time   `json:"finished"`
	Rows     []stressRow `json:"rows"`
	Runs     []stressRun `json:"runs"`
}

// stress runs the stress phase against the cluster run() prepared.
func (h *harness) stress(ctx context.Context) (err error) {
	out := h.o.stressOut
	if out == "" {
		if out, err = os.MkdirTemp("", "pgtoken-stress-"); err != nil {
			return fmt.Errorf("stress output: %w", err)
		}
	} else if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("stress output: %w", err)
	}
	rep := &stressReport{Command: h.o.command, Started: time.Now(), Version: binaryVersion(ctx, h.pgtoken)}
	var cs []benchConfig
	for _, m := range h.o.modes {
		for _, c := range h.o.clients {
			cs = append(cs, benchConfig{Script: "select", Mode: m, Clients: c})
		}
	}
	incarnation := 0
	var logOff int64 // how much of pt's log earlier runs have looked at
	start := func() (*daemon, error) {
		incarnation++
		logOff = 0
		return startPgtoken(h.pgtoken, h.tmp, fmt.Sprintf("pgtoken-%d", incarnation), h.pg, h.o, h.sec, "")
	}
	pt, err := start()
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, pt.stop()) }()
	logf("stress: %d runs of -T %d over %d configurations, a fresh pgtoken every %d; evidence in %s",
		h.o.runs, h.o.duration, len(cs), h.o.restart, out)
	for i := 0; i < h.o.runs; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if i > 0 && i%h.o.restart == 0 && pt.alive() {
			// A fresh pgtoken: its first clients find no server
			// connection and the pool fills while they run.
			if err := pt.stop(); err != nil {
				return err
			}
		}
		if !pt.alive() {
			if pt, err = start(); err != nil {
				return err
			}
		}
		c := cs[i%len(cs)]
		r := h.stressOne(ctx, i+1, c, pt, out)
		var complaints []byte
		complaints, logOff = logComplaints(pt.logPath, logOff)
		if len(complaints) > 0 {
			r.Complaints = bytes.Count(complaints, []byte("\n"))
			_ = os.WriteFile(filepath.Join(out, fmt.Sprintf("run-%04d-pgtoken-complaints.log", r.N)), complaints, 0o644)
		}
		rep.Runs = append(rep.Runs, r)
		status := fmt.Sprintf("%d transactions in %.1fs", r.Transactions, r.Seconds)
		switch {
		case r.Waiting > 0:
			status = fmt.Sprintf("HUNG: %d clients waiting; evidence in %s", r.Waiting, r.Evidence)
		case r.Error != "":
			status = "FAILED: " + r.Error
		}
		if r.Complaints > 0 {
			status += fmt.Sprintf(" (pgtoken logged %d warnings or worse)", r.Complaints)
		}
		logf("[%d/%d] %-22s %s", i+1, h.o.runs, c.Label(), status)
		if !pt.alive() && r.Evidence == "" {
			logf("pgtoken exited (%v):\n%s", pt.waitErr, pt.logTail(30))
		}
	}
	rep.Finished = time.Now()
	rep.Rows = stressRows(cs, rep.Runs)
	table := stressTable(rep)
	fmt.Print(table)
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "summary.json"), b, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "summary.md"), []byte(table), 0o644); err != nil {
		return err
	}
	hung := 0
	for _, r := range rep.Rows {
		hung += r.Hung
	}
	logf("stress: summary in %s", filepath.Join(out, "summary.md"))
	if hung > 0 {
		return fmt.Errorf("%d of %d runs left clients waiting (evidence in %s)", hung, len(rep.Runs), out)
	}
	return nil
}

// stressOne runs pgbench once against pt and watches it.
func (h *harness) stressOne(ctx context.Context, n int, c benchConfig, pt *daemon, out string) stressRun {
	r := stressRun{N: n, Label: c.Label()}
	args := []string{"-n", "-S", "-M", c.Mode, "-c", strconv.Itoa(c.Clients), "-j", strconv.Itoa(min(c.Clients, 2)),
		"-T", strconv.Itoa(h.o.duration), "-h", "127.0.0.1", "-p", strconv.Itoa(pt.port), "-U", "bench", benchDB}
	cmd := exec.Command("pgbench", args...)
	cmd.Env = cleanEnv("PGPASSWORD="+h.token, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30")
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	began := time.Now()
	if err := cmd.Start(); err != nil {
		r.Error = err.Error()
		return r
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// pgbench's -T includes its logins, one at a time per thread; a run
	// that still makes progress past the deadline gets more time (up to a
	// minute), one that does not has clients waiting.
	deadline := time.Duration(h.o.duration+h.o.grace)*time.Second + time.Duration(c.Clients/32)*time.Second
	timer := time.NewTimer(deadline)
	defer timer.Stop()
	extra := 0
	var runErr error
wait:
	for {
		select {
		case runErr = <-done:
			break wait
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-done
			r.Error = "interrupted"
			return r
		case <-timer.C:
			if extra < 12 && progressing(pt) {
				extra++
				timer.Reset(5 * time.Second)
				continue
			}
			dir := fmt.Sprintf("hang-%04d-%s-c%d", n, c.Mode, c.Clients)
			r.Evidence = dir
			r.Waiting = h.collectHang(ctx, filepath.Join(out, dir), pt)
			_ = cmd.Process.Kill()
			<-done
			r.Seconds = time.Since(began).Seconds()
			note := fmt.Sprintf("pgbench %s\nkilled after %.1fs\n\n%s", strings.Join(args, " "), r.Seconds, output.String())
			_ = os.WriteFile(filepath.Join(out, dir, "pgbench.txt"), []byte(note), 0o644)
			if r.Waiting == 0 {
				r.Waiting = 1 // pgtoken's view failed; pgbench waited all the same
			}
			return r
		}
	}
	r.Seconds = time.Since(began).Seconds()
	text := output.String()
	if m := reDone.FindStringSubmatch(text); m != nil {
		r.Transactions, _ = strconv.ParseInt(m[1], 10, 64)
	}
	switch {
	case runErr != nil:
		r.Error = fmt.Sprintf("%v: %s", runErr, errorLines(text))
	case strings.Contains(text, "aborted") || strings.Contains(text, "error"):
		r.Error = errorLines(text)
	case r.Transactions == 0:
		r.Error = "no transactions: " + errorLines(text)
	}
	return r
}

// logComplaints returns the lines of the log at path from offset off on
// that are warnings or worse (pgtoken's JSON log), race reports or
// panics, and the offset to look from next time.
func logComplaints(path string, off int64) ([]byte, int64) {
	f, err := os.Open(path)
	if err != nil {
		return nil, off
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, off, 1<<40))
	if err != nil {
		return nil, off
	}
	// Only whole lines; a partial last one is read next time.
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		return nil, off
	}
	var out []byte
	inRace := false
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		switch {
		case bytes.Contains(line, []byte("WARNING: DATA RACE")), bytes.HasPrefix(line, []byte("panic:")):
			inRace = true
		case bytes.HasPrefix(line, []byte("{")), len(line) > 4 && bytes.HasPrefix(line, []byte("20")):
			inRace = false // a log line (JSON, or console starting with the year)
		}
		if inRace || warnOrWorse(line) {
			out = append(out, line...)
		}
	}
	return out, off + int64(len(b))
}

// warnOrWorse reports whether a log line of pgtoken (console or JSON
// format) is at level warn or above.
func warnOrWorse(line []byte) bool {
	for _, l := range []string{"warn", "error", "dpanic", "panic", "fatal"} {
		if bytes.Contains(line, []byte(`"level":"`+l+`"`)) || bytes.Contains(line, []byte("\t"+strings.ToUpper(l)+"\t")) {
			return true
		}
	}
	return false
}

// progressing reports whether pgtoken is still answering queries: its
// query counter moves within a second.
func progressing(pt *daemon) bool {
	q0, err0 := queriesTotal(pt)
	time.Sleep(time.Second)
	q1, err1 := queriesTotal(pt)
	return err0 == nil && err1 == nil && q1 > q0
}

// queriesTotal sums pgtoken_queries_total over databases.
func queriesTotal(pt *daemon) (float64, error) {
	b, err := httpGet(pt, "/metrics")
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "pgtoken_queries_total{") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("metrics line %q: %w", line, err)
		}
		sum += v
	}
	return sum, nil
}

func httpGet(pt *daemon, path string) ([]byte, error) {
	cl := http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get(fmt.Sprintf("http://127.0.0.1:%d%s", pt.metricsPort, path))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return b, err
}

// collectHang saves what tells where the waiting clients are stuck, in the
// order that disturbs least: pgtoken's view of its sessions and its
// metrics, the server backends, the sockets, and last pgtoken's goroutine
// dump (SIGQUIT ends the process). It returns how many sessions pgtoken
// still had.
func (h *harness) collectHang(ctx context.Context, dir string, pt *daemon) int {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		logf("evidence: %v", err)
		return 0
	}
	save := func(name string, b []byte, err error) {
		if err != nil {
			b = append(b, []byte("\n(error: "+err.Error()+")\n")...)
		}
		if werr := os.WriteFile(filepath.Join(dir, name), b, 0o644); werr != nil {
			logf("evidence: %v", werr)
		}
	}
	sessions, err := httpGet(pt, "/debug/sessions")
	save("sessions.json", sessions, err)
	waiting := 0
	var view struct {
		Sessions []json.RawMessage `json:"sessions"`
	}
	if json.Unmarshal(sessions, &view) == nil {
		waiting = len(view.Sessions)
	}
	m, err := httpGet(pt, "/metrics")
	save("metrics.txt", m, err)

	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rows, err := h.pg.QueryRows(qctx, benchDB, `select pid, usename, client_port, backend_start, xact_start, query_start,
		state_change, state, wait_event_type, wait_event, backend_xid, backend_xmin, query
		from pg_catalog.pg_stat_activity where backend_type = 'client backend' and pid <> pg_catalog.pg_backend_pid() order by pid`)
	var act strings.Builder
	act.WriteString("pid\tusename\tclient_port\tbackend_start\txact_start\tquery_start\tstate_change\tstate\twait_event_type\twait_event\tbackend_xid\tbackend_xmin\tquery\n")
	for _, r := range rows {
		act.WriteString(strings.Join(r, "\t") + "\n")
	}
	save("pg_stat_activity.tsv", []byte(act.String()), err)

	// Both ends of every client and server connection, with their queues
	// (Recv-Q: bytes the reader has not read yet; Send-Q: bytes the peer
	// has not acknowledged) and byte counts (a server connection's local
	// port is pg_stat_activity's client_port).
	port, pgPort := strconv.Itoa(pt.port), strconv.Itoa(h.pg.Port)
	ss, err := exec.CommandContext(qctx, "ss", "-tnpi",
		"( sport = :"+port+" or dport = :"+port+" or sport = :"+pgPort+" or dport = :"+pgPort+" )").CombinedOutput()
	save("sockets.txt", ss, err)

	// GOTRACEBACK=all: SIGQUIT prints every goroutine to stderr, which
	// the daemon's log holds, and ends the process.
	_ = pt.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-pt.done:
	case <-time.After(15 * time.Second):
		_ = pt.cmd.Process.Kill()
		<-pt.done
	}
	log, err := os.ReadFile(pt.logPath)
	save("pgtoken.log", log, err)
	return waiting
}

// stressRows counts the runs per configuration, in the order of cs.
func stressRows(cs []benchConfig, runs []stressRun) []stressRow {
	rows := make([]stressRow, len(cs))
	at := map[string]int{}
	for i, c := range cs {
		rows[i].Label = c.Label()
		at[c.Label()] = i
	}
	for _, r := range runs {
		row := &rows[at[r.Label]]
		row.Runs++
		row.Transactions += r.Transactions
		row.Complaints += r.Complaints
		switch {
		case r.Waiting > 0:
			row.Hung++
			row.Waiting += r.Waiting
		case r.Error != "":
			row.Failed++
		}
	}
	return rows
}

// stressTable renders the summary as Markdown.
func stressTable(rep *stressReport) string {
	var b strings.Builder
	fmt.Fprintf(&b, "make stress: %s (pgtoken version %s), %s to %s\n\n", rep.Command, rep.Version,
		rep.Started.Format(time.DateTime), rep.Finished.Format(time.DateTime))
	b.WriteString("| configuration | runs | runs with clients left waiting | waiting clients | other failures | pgtoken warnings or worse | transactions |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|\n")
	var total stressRow
	for _, r := range rep.Rows {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d |\n", r.Label, r.Runs, r.Hung, r.Waiting, r.Failed, r.Complaints, r.Transactions)
		total.Runs += r.Runs
		total.Hung += r.Hung
		total.Waiting += r.Waiting
		total.Failed += r.Failed
		total.Complaints += r.Complaints
		total.Transactions += r.Transactions
	}
	fmt.Fprintf(&b, "| **all** | %d | %d | %d | %d | %d | %d |\n", total.Runs, total.Hung, total.Waiting, total.Failed, total.Complaints, total.Transactions)
	for _, r := range rep.Runs {
		if r.Error != "" && r.Waiting == 0 {
			fmt.Fprintf(&b, "\nrun %d (%s) failed: %s\n", r.N, r.Label, r.Error)
		}
	}
	return b.String()
}

// binaryVersion is what `pgtoken version` says of itself (the commit it
// was built from, for a binary make built).
func binaryVersion(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(strings.TrimPrefix(string(out), "pgtoken "))
}
