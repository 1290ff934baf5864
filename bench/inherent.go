package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pgtoken/pgtoken/session"
)

// inherentVariant is one way of running the select with (or without) a
// prelude, against Postgres alone.
type inherentVariant struct {
	Name   string `json:"name"`
	Mode   string `json:"mode"`
	Script string `json:"script"`
	// Base names the variant this one is compared with.
	Base string `json:"base,omitempty"`
}

// inherentResult is every repetition of one variant.
type inherentResult struct {
	inherentVariant
	TPS       []float64 `json:"tps"`
	LatMeanMS []float64 `json:"lat_mean_ms"`
	Errors    []string  `json:"errors,omitempty"`
}

// preludeSettings are the settings pgtoken derives from the bench token:
// the role, then one jwt.claims.<name> per claim, sorted by name.
func preludeSettings(now time.Time) [][2]string {
	return [][2]string{
		{"role", tokenRole},
		{"jwt.claims.exp", strconv.FormatInt(now.Add(24*time.Hour).Unix(), 10)},
		{"jwt.claims.iat", strconv.FormatInt(now.Unix(), 10)},
		{"jwt.claims.role", tokenRole},
		{"jwt.claims.sub", tokenSub},
	}
}

// inherentVariants builds the scripts: the bare select; the select after
// pgtoken's simple-protocol prelude (one SET LOCAL per setting, in the same
// Query); after one SELECT set_config(...) in the same Query; and, in the
// extended protocol, after a set_config select with parameters in the same
// pipeline (one Sync), which is what pgtoken's extended prelude does.
func inherentVariants(scale int, now time.Time) []inherentVariant {
	set := `\set aid random(1, ` + strconv.Itoa(100000*scale) + ")\n"
	sel := "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"
	settings := preludeSettings(now)

	var setLocal strings.Builder
	for i, s := range settings {
		if i == 0 {
			fmt.Fprintf(&setLocal, "SET LOCAL ROLE E'%s'\\;", s[1])
			continue
		}
		parts := strings.Split(s[0], ".")
		fmt.Fprintf(&setLocal, "SET LOCAL \"%s\" TO E'%s'\\;", strings.Join(parts, `"."`), s[1])
	}
	var setConfig, setConfigParams strings.Builder
	setConfig.WriteString("SELECT ")
	setConfigParams.WriteString("SELECT ")
	for i, s := range settings {
		if i > 0 {
			setConfig.WriteByte(',')
			setConfigParams.WriteByte(',')
		}
		fmt.Fprintf(&setConfig, "pg_catalog.set_config('%s','%s',true)", s[0], s[1])
		fmt.Fprintf(&setConfigParams, "pg_catalog.set_config(:n%d,:v%d,true)", i, i)
	}
	pipeline := set + "\\startpipeline\n" + setConfigParams.String() + ";\n" + sel + "\\endpipeline\n"
	// The hand-over reset goes in front of the prelude when a server
	// connection passes to another client: in the same Query, or as
	// statements of their own in the same pipeline.
	var resetSimple, resetPipeline strings.Builder
	for _, q := range session.ResetSQL() {
		resetSimple.WriteString(q + "\\;")
		resetPipeline.WriteString(q + ";\n")
	}
	resetPipe := set + "\\startpipeline\n" + resetPipeline.String() + setConfigParams.String() + ";\n" + sel + "\\endpipeline\n"
	nReset := strconv.Itoa(len(session.ResetSQL()))
	return []inherentVariant{
		{Name: "select", Mode: "simple", Script: set + sel},
		{Name: fmt.Sprintf("%d × SET LOCAL; select (one Query)", len(settings)), Mode: "simple", Script: set + setLocal.String() + sel, Base: "select"},
		{Name: "SELECT set_config(…)×" + strconv.Itoa(len(settings)) + "; select (one Query)", Mode: "simple", Script: set + setConfig.String() + "\\;" + sel, Base: "select"},
		{Name: "hand-over reset (" + nReset + " statements); " + strconv.Itoa(len(settings)) + " × SET LOCAL; select (one Query)", Mode: "simple", Script: set + resetSimple.String() + setLocal.String() + sel, Base: "select"},
		{Name: "select", Mode: "extended", Script: set + sel},
		{Name: "set_config($1,$2,true)… select; select (one Sync)", Mode: "extended", Script: pipeline, Base: "select"},
		{Name: "hand-over reset (" + nReset + " statements); set_config… select; select (one Sync)", Mode: "extended", Script: resetPipe, Base: "select"},
		{Name: "select", Mode: "prepared", Script: set + sel},
		{Name: "set_config($1,$2,true)… select; select (one Sync)", Mode: "prepared", Script: pipeline, Base: "select"},
		{Name: "hand-over reset (" + nReset + " statements); set_config… select; select (one Sync)", Mode: "prepared", Script: resetPipe, Base: "select"},
	}
}

// inherentCost measures the variants against Postgres alone (16 clients,
// logged in as bench_login, a member of bench_user), interleaved and
// repeated like the matrix.
func (h *harness) inherentCost(ctx context.Context) ([]inherentResult, error) {
	vars := inherentVariants(h.o.scale, time.Now())
	results := make([]inherentResult, len(vars))
	dir := filepath.Join(h.tmp, "inherent")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("inherent: %w", err)
	}
	var defs []string
	for i, s := range preludeSettings(time.Now()) {
		defs = append(defs, "-D", fmt.Sprintf("n%d=%s", i, s[0]), "-D", fmt.Sprintf("v%d=%s", i, s[1]))
	}
	ep := endpoint{target: targetDirect, host: "127.0.0.1", port: h.pg.Port, user: loginRole, password: h.sec.loginPW, db: benchDB}
	for i, v := range vars {
		results[i].inherentVariant = v
	}
	for rep := 0; rep < h.o.reps; rep++ {
		for i, v := range vars {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			file := filepath.Join(dir, fmt.Sprintf("v%d.sql", i))
			if err := os.WriteFile(file, []byte(v.Script), 0o644); err != nil {
				return nil, fmt.Errorf("inherent script: %w", err)
			}
			args := []string{"-n", "-T", strconv.Itoa(h.o.duration), "-c", "16", "-j", "2", "-M", v.Mode, "-f", file}
			args = append(args, defs...)
			r, err := h.bench.run(ctx, ep, args, h.o.duration)
			if err != nil {
				results[i].Errors = append(results[i].Errors, err.Error())
				logf("inherent cost: %s (-M %s): FAILED: %v", v.Name, v.Mode, err)
				continue
			}
			results[i].TPS = append(results[i].TPS, r.TPS)
			results[i].LatMeanMS = append(results[i].LatMeanMS, r.LatMeanMS)
			logf("inherent cost [rep %d] -M %-8s %-52s %.0f tps", rep+1, v.Mode, v.Name, r.TPS)
		}
	}
	return results, nil
}
