package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// report is everything a run measured; it is written as JSON.
type report struct {
	Started      time.Time        `json:"started"`
	Finished     time.Time        `json:"finished"`
	Command      string           `json:"command"`
	Options      map[string]any   `json:"options"`
	Machine      machine          `json:"machine"`
	Runs         []runResult      `json:"runs"`
	PgtokenHWMMB float64          `json:"pgtoken_hwm_mb"` // VmHWM of pgtoken after the whole matrix
	Inherent     []inherentResult `json:"inherent_cost,omitempty"`
	Profile      *profileResult   `json:"profile,omitempty"`
	Idle         *idleResult      `json:"idle,omitempty"`
	Goals        []goal           `json:"goals"`
}

// agg summarises the runs of one configuration against one target.
type agg struct {
	n, failed           int
	tps, tpsMin, tpsMax float64
	lat, p99            float64
	cpu10k, rss         float64
	err                 string
	warned              int // successful runs in which pgbench reported errors
	warning             string
}

func aggregate(runs []runResult) agg {
	var a agg
	var tps, lat, p99, cpu []float64
	for _, r := range runs {
		a.n++
		if !r.OK {
			a.failed++
			if a.err == "" {
				a.err = r.Error
			}
			continue
		}
		if r.Warnings != "" {
			a.warned++
			if a.warning == "" {
				a.warning = r.Warnings
			}
		}
		tps = append(tps, r.TPS)
		lat = append(lat, r.LatMeanMS)
		p99 = append(p99, r.LatP99MS)
		if r.CPUPer10k > 0 {
			cpu = append(cpu, r.CPUPer10k)
		}
		if r.BouncerCPUPer10k > 0 {
			cpu = append(cpu, r.BouncerCPUPer10k)
		}
		a.rss = math.Max(a.rss, r.PeakRSSMB)
	}
	if len(tps) > 0 {
		a.tps, a.tpsMin, a.tpsMax = median(tps), slices.Min(tps), slices.Max(tps)
		a.lat, a.p99 = median(lat), median(p99)
	}
	if len(cpu) > 0 {
		a.cpu10k = median(cpu)
	}
	return a
}

// ok reports whether every run succeeded.
func (a agg) ok() bool { return a.n > 0 && a.failed == 0 }

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// cells groups runs by configuration label and target, in matrix order.
func (r *report) cells() (labels []string, byKey map[string]agg) {
	group := map[string][]runResult{}
	for _, run := range r.Runs {
		if !slices.Contains(labels, run.Label) {
			labels = append(labels, run.Label)
		}
		k := run.Label + "|" + run.Target
		group[k] = append(group[k], run)
	}
	byKey = map[string]agg{}
	for k, runs := range group {
		byKey[k] = aggregate(runs)
	}
	return labels, byKey
}

// goal is one of issue 5's targets and whether this run met it.
type goal struct {
	ID       string `json:"id"`
	Label    string `json:"label"` // the configuration it is judged on
	Text     string `json:"text"`
	Measured string `json:"measured"`
	Met      *bool  `json:"met"` // nil: not measured in this run
}

func (g goal) status() string {
	switch {
	case g.Met == nil:
		return "not measured"
	case *g.Met:
		return "met"
	}
	return "**MISSED**"
}

func (r *report) computeGoals() {
	_, c := r.cells()
	get := func(label, target string) (agg, bool) {
		a, ok := c[label+"|"+target]
		return a, ok
	}
	b := func(v bool) *bool { return &v }
	var goals []goal

	s32 := benchConfig{Script: "select", Mode: "simple", Clients: 32}.Label()
	g := goal{ID: "G1", Label: s32, Text: "pgtoken's TPS ≥ PgBouncer's"}
	if t, ok1 := get(s32, targetPgtoken); ok1 {
		if p, ok2 := get(s32, targetBouncer); ok2 && p.ok() {
			g.Met = b(t.ok() && t.tps >= p.tps)
			g.Measured = fmt.Sprintf("pgtoken %s, PgBouncer %s tps (%s of PgBouncer's)", num(t.tps), num(p.tps), pct(t.tps, p.tps))
			if d, ok := get(s32, targetDirect); ok && d.tps > 0 {
				g.Measured += fmt.Sprintf("; PgBouncer reaches %s of direct, pgtoken %s", pct(p.tps, d.tps), pct(t.tps, d.tps))
			}
		}
	}
	goals = append(goals, g)

	p32 := benchConfig{Script: "select", Mode: "prepared", Clients: 32}.Label()
	g = goal{ID: "G2", Label: p32, Text: "-M prepared works through pgtoken and its TPS ≥ pgtoken's own -M simple"}
	if t, ok := get(p32, targetPgtoken); ok {
		simple, _ := get(s32, targetPgtoken)
		switch {
		case !t.ok():
			g.Met = b(false)
			g.Measured = fmt.Sprintf("%d of %d runs failed: %s", t.failed, t.n, reason(t.err))
		default:
			g.Met = b(t.tps >= simple.tps)
			g.Measured = fmt.Sprintf("prepared %s tps, simple %s tps (%s)", num(t.tps), num(simple.tps), pct(t.tps, simple.tps))
		}
		if p, ok := get(p32, targetBouncer); ok && !p.ok() {
			g.Measured += "; PgBouncer fails: " + reason(p.err)
		}
	}
	goals = append(goals, g)

	s1 := benchConfig{Script: "select", Mode: "simple", Clients: 1}.Label()
	g = goal{ID: "G3", Label: s1, Text: "pgtoken adds ≤ 50 µs to direct Postgres's mean latency"}
	if t, ok := get(s1, targetPgtoken); ok {
		if d, ok := get(s1, targetDirect); ok && d.ok() {
			added := (t.lat - d.lat) * 1000
			g.Met = b(t.ok() && added <= 50)
			g.Measured = fmt.Sprintf("direct %.1f µs, pgtoken %.1f µs: +%.1f µs", d.lat*1000, t.lat*1000, added)
			if p, ok := get(s1, targetBouncer); ok && p.ok() {
				g.Measured += fmt.Sprintf(" (PgBouncer +%.1f µs)", (p.lat-d.lat)*1000)
			}
		}
	}
	goals = append(goals, g)

	c16 := benchConfig{Script: "select", Mode: "simple", Clients: 16, Connect: true}.Label()
	g = goal{ID: "G4", Label: c16, Text: "a new connection per transaction: pgtoken's TPS ≥ PgBouncer's"}
	if t, ok := get(c16, targetPgtoken); ok {
		if p, ok := get(c16, targetBouncer); ok && p.ok() {
			g.Met = b(t.ok() && t.tps >= p.tps)
			g.Measured = fmt.Sprintf("pgtoken %s, PgBouncer %s tps (%s)", num(t.tps), num(p.tps), pct(t.tps, p.tps))
		}
	}
	goals = append(goals, g)

	g = goal{ID: "G5", Label: "idle connections", Text: "10,000 idle client connections with pgtoken's RSS < 200 MB"}
	if id := r.Idle; id != nil {
		g.Met = b(id.Opened >= 10000 && id.SampleOK == id.Sample && id.RSSMB < 200)
		g.Measured = fmt.Sprintf("%d open: RSS %.1f MB (%.1f KB each); select 1 on %d/%d sampled", id.Opened, id.RSSMB, id.PerConnKB, id.SampleOK, id.Sample)
		if id.Error != "" {
			g.Measured += "; " + shorten(id.Error, 200)
		}
	}
	goals = append(goals, g)
	r.Goals = goals
}

// goalFor returns the goal judged on a configuration, if any.
func (r *report) goalFor(label string) string {
	var out []string
	for _, g := range r.Goals {
		if g.Label == label && g.Met != nil {
			out = append(out, g.ID+" "+g.status())
		}
	}
	return strings.Join(out, ", ")
}

// markdownTable is the main table: one row per configuration.
func (r *report) markdownTable() string {
	labels, c := r.cells()
	cpuHead := "pgtoken CPU s per 10k tx"
	for _, run := range r.Runs {
		if run.BouncerCPUPer10k > 0 {
			cpuHead = "CPU s per 10k tx (PgBouncer / pgtoken)"
			break
		}
	}
	var b strings.Builder
	b.WriteString("| configuration | direct TPS | PgBouncer TPS | pgtoken TPS | pgtoken ÷ direct | pgtoken ÷ PgBouncer | PgBouncer ÷ direct | mean latency ms (direct / PgBouncer / pgtoken) | p99 latency ms (direct / PgBouncer / pgtoken) | " + cpuHead + " | pgtoken peak RSS MB | goal |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
	for _, l := range labels {
		d, hasD := c[l+"|"+targetDirect]
		p, hasP := c[l+"|"+targetBouncer]
		t, hasT := c[l+"|"+targetPgtoken]
		cellTPS := func(a agg, has bool) string {
			switch {
			case !has:
				return "—"
			case a.n == a.failed:
				return "FAILED: " + reason(a.err)
			}
			s := num(a.tps)
			if a.n > 1 {
				s += fmt.Sprintf(" (%s–%s)", num(a.tpsMin), num(a.tpsMax))
			}
			if a.failed > 0 {
				s += fmt.Sprintf(" %d/%d runs failed", a.failed, a.n)
			}
			if a.warned > 0 {
				s += fmt.Sprintf(" (errors in %d/%d runs: %s)", a.warned, a.n, reason(a.warning))
			}
			return s
		}
		ratio := func(x agg, hx bool, y agg, hy bool) string {
			if !hx || !hy || x.tps == 0 || y.tps == 0 {
				return "—"
			}
			return fmt.Sprintf("%.2f", x.tps/y.tps)
		}
		lats := func(f func(agg) float64) string {
			var parts []string
			for _, x := range []struct {
				a   agg
				has bool
			}{{d, hasD}, {p, hasP}, {t, hasT}} {
				if !x.has || x.a.tps == 0 {
					parts = append(parts, "—")
				} else {
					parts = append(parts, fmt.Sprintf("%.3f", f(x.a)))
				}
			}
			return strings.Join(parts, " / ")
		}
		cpuOf := func(a agg, has bool) string {
			if !has || a.cpu10k == 0 {
				return "—"
			}
			return fmt.Sprintf("%.2f", a.cpu10k)
		}
		cpu, rss := cpuOf(t, hasT), "—"
		if hasP && p.cpu10k > 0 {
			cpu = cpuOf(p, hasP) + " / " + cpu
		}
		if hasT && t.rss > 0 {
			rss = fmt.Sprintf("%.0f", t.rss)
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", l,
			cellTPS(d, hasD), cellTPS(p, hasP), cellTPS(t, hasT),
			ratio(t, hasT, d, hasD), ratio(t, hasT, p, hasP), ratio(p, hasP, d, hasD),
			lats(func(a agg) float64 { return a.lat }), lats(func(a agg) float64 { return a.p99 }),
			cpu, rss, r.goalFor(l))
	}
	return b.String()
}

// goalsTable lists the goals with what was measured.
func (r *report) goalsTable() string {
	var b strings.Builder
	b.WriteString("| goal | configuration | target | measured | status |\n|---|---|---|---|---|\n")
	for _, g := range r.Goals {
		m := g.Measured
		if m == "" {
			m = "—"
		}
		fmt.Fprintf(&b, "| %s | `%s` | %s | %s | %s |\n", g.ID, g.Label, g.Text, strings.ReplaceAll(m, "|", "\\|"), g.status())
	}
	return b.String()
}

// inherentTable reports the prelude forms against Postgres alone.
func (r *report) inherentTable() string {
	if len(r.Inherent) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("| -M | what each transaction sends | TPS (median, min–max) | mean latency ms | cost vs. the bare select (median of per-repetition ratios) |\n|---|---|--:|--:|--:|\n")
	base := map[string][]float64{}
	for _, v := range r.Inherent {
		if v.Base == "" && len(v.TPS) > 0 {
			base[v.Mode] = v.TPS
		}
	}
	for _, v := range r.Inherent {
		if len(v.TPS) == 0 {
			fmt.Fprintf(&b, "| %s | %s | FAILED: %s | — | — |\n", v.Mode, v.Name, shorten(strings.Join(v.Errors, "; "), 120))
			continue
		}
		m := median(v.TPS)
		cost := "—"
		if bt := base[v.Mode]; v.Base != "" && len(bt) > 0 {
			// Each variant ran right after the bare select of the same
			// repetition: comparing those pairs cancels slow drifts in
			// the machine's load.
			var ratios []float64
			if len(bt) == len(v.TPS) {
				for i := range bt {
					ratios = append(ratios, v.TPS[i]/bt[i])
				}
			} else {
				ratios = []float64{m / median(bt)}
			}
			cost = fmt.Sprintf("%.1f%%", (1-median(ratios))*100)
		}
		fmt.Fprintf(&b, "| %s | %s | %s (%s–%s) | %.3f | %s |\n", v.Mode, v.Name, num(m), num(slices.Min(v.TPS)), num(slices.Max(v.TPS)), median(v.LatMeanMS), cost)
	}
	return b.String()
}

// machineTable describes the machine and software versions.
func (r *report) machineTable() string {
	m := r.Machine
	return fmt.Sprintf(`| | |
|---|---|
| CPU | %s, %d cores |
| memory | %s |
| OS, kernel | %s, Linux %s |
| Postgres | %s |
| PgBouncer | %s |
| pgbench | %s |
| Go | %s |
| pgtoken | %s |
| run | %s, %s |
| other load | %s |
`, m.CPU, m.Cores, m.MemGB, m.OS, m.Kernel, m.Postgres, m.PgBouncer, m.Pgbench, m.Go, m.Pgtoken,
		r.Started.UTC().Format("2006-01-02 15:04 UTC"), r.Finished.Sub(r.Started).Round(time.Second), r.otherLoad())
}

// otherLoad summarises how busy the machine was between runs, when only
// other processes could be using it.
func (r *report) otherLoad() string {
	var v []float64
	for _, run := range r.Runs {
		v = append(v, run.OtherBusy*100)
	}
	if len(v) == 0 || slices.Max(v) == 0 {
		return "not measured"
	}
	busy := 0
	for _, x := range v {
		if x > 10 {
			busy++
		}
	}
	return fmt.Sprintf("CPUs busy between runs (other processes): median %.0f%%, max %.0f%%; %d of %d runs started with more than 10%% busy",
		median(v), slices.Max(v), busy, len(v))
}

// idleText reports the idle-connection measurement.
func (r *report) idleText() string {
	id := r.Idle
	if id == nil {
		return "Not measured in this run.\n"
	}
	s := fmt.Sprintf("%d client connections logged in with the token and left idle (opened in %.1f s): pgtoken's RSS %.1f MB "+
		"(%.1f MB after the first login, so %.1f KB per idle connection; VmHWM %.1f MB). `select 1` answered on %d of %d sampled connections. "+
		"pgtoken's RLIMIT_NOFILE: soft %s, hard %s.\n", id.Opened, id.OpenSeconds, id.RSSMB, id.BaselineRSSMB, id.PerConnKB, id.HWMMB,
		id.SampleOK, id.Sample, id.FDSoft, id.FDHard)
	if id.Error != "" {
		s += "\nErrors: " + id.Error + "\n"
	}
	return s
}

// failures lists failed runs with the evidence.
func (r *report) failures() string {
	var b strings.Builder
	seen := map[string]bool{}
	for _, run := range r.Runs {
		if run.OK {
			continue
		}
		k := run.Label + "|" + run.Target
		if seen[k] {
			continue
		}
		seen[k] = true
		fmt.Fprintf(&b, "- `%s` via %s (rep %d): %s\n", run.Label, run.Target, run.Rep, run.Error)
		if run.ServerLog != "" {
			lines := strings.Split(strings.TrimSpace(run.ServerLog), "\n")
			lines = lines[max(0, len(lines)-4):]
			for i, l := range lines {
				lines[i] = shorten(l, 240)
			}
			fmt.Fprintf(&b, "\n  ```\n  %s\n  ```\n", strings.Join(lines, "\n  "))
		}
	}
	return b.String()
}

// markdown is the whole generated section.
func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Command: `%s`\n\n", r.Command)
	b.WriteString("### Machine\n\n" + r.machineTable() + "\n")
	b.WriteString("### Results\n\n" + r.markdownTable() + "\n")
	b.WriteString("### Goals\n\n" + r.goalsTable() + "\n")
	b.WriteString("### 10,000 idle connections\n\n" + r.idleText() + "\n")
	if t := r.inherentTable(); t != "" {
		b.WriteString("### Inherent cost of the prelude (Postgres alone, 16 clients)\n\n" + t + "\n")
	}
	if f := r.failures(); f != "" {
		b.WriteString("### Failed runs\n\n" + f + "\n")
	}
	if p := r.Profile; p != nil {
		fmt.Fprintf(&b, "### pgtoken CPU profile (`%s`, %d s, %s tps under the profiler)\n\n```\n%s\n```\n", p.Label, p.Seconds, num(p.TPS), p.Top)
	}
	return b.String()
}

// Markers around the generated part of bench/README.md.
const (
	readmeBegin = "<!-- bench:generated:begin (make bench rewrites everything up to the end marker) -->"
	readmeEnd   = "<!-- bench:generated:end -->"
)

// rerender reports a saved results JSON again (after a change to the
// report code, say): stdout, NAME.png and the README; no JSON is written.
func rerender(o options) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(fromRoot(root, o.rerender))
	if err != nil {
		return fmt.Errorf("rerender: %w", err)
	}
	r := &report{}
	if err := json.Unmarshal(raw, r); err != nil {
		return fmt.Errorf("rerender %s: %w", o.rerender, err)
	}
	h := &harness{o: o, root: root, rep: r}
	return h.render(false)
}

// writeReport records the options and writes stdout, JSON, PNG and README.
func (h *harness) writeReport() error {
	h.rep.Options = map[string]any{
		"T": h.o.duration, "reps": h.o.reps, "clients": h.o.clients, "scripts": h.o.scripts, "modes": h.o.modes,
		"connect": h.o.connect, "connect_modes": h.o.connModes, "pool": h.o.pool, "scale": h.o.scale, "idle": h.o.idle,
		"pgtoken_log_level": h.o.logLevel, "pgbouncer_auth": h.o.bouncerAut,
	}
	return h.render(true)
}

// render computes the goals, prints the tables and writes the chart, the
// README and (when saveJSON) the results.
func (h *harness) render(saveJSON bool) error {
	r := h.rep
	r.computeGoals()
	fmt.Println(r.markdownTable())
	fmt.Println(r.goalsTable())

	out := h.outDir()
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("results dir: %w", err)
	}
	png := filepath.Join(out, h.o.name+".png")
	if err := writeChart(png, r); err != nil {
		return err
	}
	if !saveJSON {
		logf("wrote %s", png)
		return h.writeReadme()
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("results json: %w", err)
	}
	stamp := r.Started.UTC().Format("20060102-150405")
	if h.o.quick {
		stamp += "-quick"
	}
	for _, name := range []string{stamp + ".json", h.o.name + ".json"} {
		if err := os.WriteFile(filepath.Join(out, name), append(js, '\n'), 0o644); err != nil {
			return fmt.Errorf("results json: %w", err)
		}
	}
	logf("wrote %s, %s and %s", filepath.Join(out, stamp+".json"), filepath.Join(out, h.o.name+".json"), png)
	return h.writeReadme()
}

// writeReadme replaces the README's generated section, unless -readme "".
func (h *harness) writeReadme() error {
	if h.o.readme == "" {
		return nil
	}
	return updateReadme(fromRoot(h.root, h.o.readme), h.rep.markdown())
}

// outDir is the results directory; a relative -out is taken from the
// repository root.
func (h *harness) outDir() string {
	return fromRoot(h.root, h.o.outDir)
}

// updateReadme replaces the generated section of the README (or appends
// one when the markers are missing).
func updateReadme(path, generated string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("readme: %w", err)
	}
	s := string(old)
	block := readmeBegin + "\n\n" + generated + "\n" + readmeEnd
	i, j := strings.Index(s, readmeBegin), strings.Index(s, readmeEnd)
	if i >= 0 && j > i {
		s = s[:i] + block + s[j+len(readmeEnd):]
	} else {
		s = strings.TrimRight(s, "\n") + "\n\n" + block + "\n"
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		return fmt.Errorf("readme: %w", err)
	}
	logf("updated %s", path)
	return nil
}

// num formats a throughput with thousands separators.
func num(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func pct(x, y float64) string {
	if y == 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f%%", x/y*100)
}

// reason picks the server's error message out of a failed run's error, for
// a table cell; the JSON and the "Failed runs" section keep it whole.
func reason(err string) string {
	if i := strings.Index(err, "ERROR:"); i >= 0 {
		msg := strings.TrimSpace(err[i+len("ERROR:"):])
		if j := strings.Index(msg, " | "); j >= 0 {
			msg = msg[:j]
		}
		return shorten(msg, 90)
	}
	return shorten(err, 90)
}

// shorten cuts s to n bytes (at a rune boundary) and keeps it on one line.
func shorten(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= n {
		return s
	}
	for n > 0 && (s[n]&0xC0) == 0x80 {
		n--
	}
	return s[:n] + "…"
}
