package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// report is what a run of all modes found.
type report struct {
	Header   string
	Modes    []string // Direct first
	Runs     map[string]*Run
	Took     map[string]time.Duration
	Expected []Expectation
	Partial  bool // a -run filter: stale and unknown expectations are not reported
	Total    time.Duration
	Logs     map[string][]LogGroup // pgtoken's warnings and errors per mode
	Stuck    map[string]string     // mode → pgtoken did not close after its run

	directBad  []Key  // tests that did not pass or skip directly
	diffs      []Diff // every mode's differences
	unexpected int
	stale      map[string][]Expectation
	unknown    []Expectation
}

// build compares every mode with the direct run and reports whether all
// is as expected: nothing failed directly, and every difference is listed.
func (r *report) build() bool {
	direct := r.Runs[Direct]
	for _, k := range direct.Keys() {
		if st := direct.Tests[k].Status; st != Pass && st != Skip {
			r.directBad = append(r.directBad, k)
		}
	}
	r.stale = map[string][]Expectation{}
	for _, mode := range r.Modes[1:] {
		d := Compare(mode, direct, r.Runs[mode], r.Expected)
		r.diffs = append(r.diffs, d...)
		if !r.Partial {
			r.stale[mode] = Stale(mode, r.Expected, d, r.Runs[mode])
		}
	}
	for _, d := range r.diffs {
		if d.Expected == nil {
			r.unexpected++
		}
	}
	if !r.Partial {
		r.unknown = Unknown(r.Expected, direct)
	}
	return len(r.directBad) == 0 && r.unexpected == 0 && len(r.Stuck) == 0
}

func (r *report) write(w io.Writer) {
	fmt.Fprintln(w, r.Header)
	fmt.Fprintln(w)
	r.writeTable(w)

	if len(r.directBad) > 0 {
		fmt.Fprintf(w, "\nFAILED DIRECTLY (%d; the setup is wrong or the suite is flaky — no comparison is meaningful for these):\n", len(r.directBad))
		for _, k := range r.directBad {
			fmt.Fprintf(w, "  %-60s %s  %s\n", k, r.Runs[Direct].Tests[k].Status, r.Runs[Direct].Cause(k))
		}
	}

	var unexp, exp []Diff
	for _, d := range r.diffs {
		if d.Expected == nil {
			unexp = append(unexp, d)
		} else {
			exp = append(exp, d)
		}
	}
	fmt.Fprintf(w, "\nPass directly, not through pgtoken: %d unexpected, %d expected (leaf tests; a parent whose subtests differ is not counted).\n", len(unexp), len(exp))
	if len(unexp) > 0 {
		fmt.Fprintf(w, "\nUNEXPECTED, by cause:\n")
		for _, g := range GroupByCause(unexp) {
			fmt.Fprintf(w, "  %4d  %-11s  %s\n", len(g.Tests), g.Mode, g.Cause)
		}
		fmt.Fprintf(w, "\nUNEXPECTED, each test:\n")
		writeDiffs(w, unexp, false)
	}
	if len(exp) > 0 {
		fmt.Fprintf(w, "\nExpected, by kind:\n")
		for _, g := range groupByKind(exp) {
			fmt.Fprintf(w, "  %4d  %-11s  %s\n", g.n, g.mode, g.kind)
		}
		fmt.Fprintf(w, "\nExpected, each test:\n")
		writeDiffs(w, exp, true)
	}
	for _, mode := range r.Modes[1:] {
		if note := r.Stuck[mode]; note != "" {
			fmt.Fprintf(w, "\n%s mode: %s.\n", mode, note)
		}
		if g := r.Logs[mode]; len(g) > 0 {
			fmt.Fprintf(w, "\npgtoken's warnings and errors in %s mode (they fail nothing; a defect no test notices can show here):\n", mode)
			for _, l := range g {
				fmt.Fprintf(w, "  %5d  %s\n", l.Count, l.Text)
			}
		}
	}
	for _, mode := range r.Modes[1:] {
		if s := r.stale[mode]; len(s) > 0 {
			fmt.Fprintf(w, "\nExpected differences that now pass in %s mode (remove them from the file, or change their mode):\n", mode)
			for _, e := range s {
				fmt.Fprintf(w, "  line %d: %s\n", e.Line, e)
			}
		}
	}
	if len(r.unknown) > 0 {
		fmt.Fprintf(w, "\nExpected differences naming no test of this pgx version:\n")
		for _, e := range r.unknown {
			fmt.Fprintf(w, "  line %d: %s\n", e.Line, e)
		}
	}
	fmt.Fprintln(w)
	var took []string
	for _, m := range r.Modes {
		took = append(took, fmt.Sprintf("%s %s", m, r.Took[m].Round(time.Second)))
	}
	fmt.Fprintf(w, "Time: %s in all (%s).\n", r.Total.Round(time.Second), strings.Join(took, ", "))
	switch {
	case len(r.directBad) > 0:
		fmt.Fprintln(w, "FAIL: tests failed directly.")
	case r.unexpected > 0:
		fmt.Fprintf(w, "FAIL: %d unexpected differences.\n", r.unexpected)
	case len(r.Stuck) > 0:
		fmt.Fprintln(w, "FAIL: pgtoken did not close.")
	default:
		fmt.Fprintln(w, "ok: every difference is expected.")
	}
}

// writeTable prints pass/fail/skip per package and mode.
func (r *report) writeTable(w io.Writer) {
	pkgs := map[string]bool{}
	counts := map[string]map[string]Counts{}
	direct := r.Runs[Direct]
	for _, m := range r.Modes {
		counts[m] = r.Runs[m].Counts()
		if m != Direct {
			for k := range direct.Tests {
				if _, ran := r.Runs[m].Tests[k]; !ran {
					c := counts[m][k.Pkg]
					c.Lost++
					counts[m][k.Pkg] = c
				}
			}
		}
		for p := range counts[m] {
			pkgs[p] = true
		}
	}
	var names []string
	for p := range pkgs {
		names = append(names, p)
	}
	sort.Strings(names)
	lost := false
	for _, m := range r.Modes {
		for _, c := range counts[m] {
			lost = lost || c.Lost > 0
		}
	}
	cell := func(c Counts) string {
		s := fmt.Sprintf("%5d %4d %4d", c.Pass, c.Fail, c.Skip)
		if lost {
			s += fmt.Sprintf(" %4d", c.Lost)
		}
		return s
	}
	head := " pass fail skip"
	if lost {
		head += " lost"
	}
	fmt.Fprintf(w, "%-16s", "")
	for _, m := range r.Modes {
		fmt.Fprintf(w, "  %-*s", len(head), m)
	}
	fmt.Fprintf(w, "\n%-16s", "package")
	for range r.Modes {
		fmt.Fprintf(w, "  %s", head)
	}
	fmt.Fprintln(w)
	total := map[string]Counts{}
	for _, p := range names {
		fmt.Fprintf(w, "%-16s", p)
		for _, m := range r.Modes {
			c := counts[m][p]
			fmt.Fprintf(w, "  %s", cell(c))
			t := total[m]
			t.Pass, t.Fail, t.Skip, t.Lost = t.Pass+c.Pass, t.Fail+c.Fail, t.Skip+c.Skip, t.Lost+c.Lost
			total[m] = t
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "%-16s", "total")
	for _, m := range r.Modes {
		fmt.Fprintf(w, "  %s", cell(total[m]))
	}
	fmt.Fprintln(w)
	if lost {
		fmt.Fprintln(w, "(lost: started and never finished — the test binary timed out or crashed — or ran directly and not at all here)")
	}
}

func writeDiffs(w io.Writer, diffs []Diff, withKind bool) {
	for _, d := range diffs {
		tail := d.Cause
		if withKind {
			tail = d.Expected.Kind + ": " + d.Cause
		}
		fmt.Fprintf(w, "  %-11s %-64s %-4s  %s\n", d.Mode, d.Key, d.Status, tail)
	}
}

type kindCount struct {
	mode, kind string
	n          int
}

func groupByKind(diffs []Diff) []kindCount {
	idx := map[[2]string]int{}
	var out []kindCount
	for _, d := range diffs {
		id := [2]string{d.Mode, d.Expected.Kind}
		i, ok := idx[id]
		if !ok {
			i = len(out)
			idx[id] = i
			out = append(out, kindCount{mode: d.Mode, kind: d.Expected.Kind})
		}
		out[i].n++
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].mode != out[j].mode {
			return out[i].mode > out[j].mode
		}
		return out[i].n > out[j].n
	})
	return out
}
