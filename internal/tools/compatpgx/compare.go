package main

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
)

// The pool modes pgtoken is run in, after the direct reference run.
const (
	Direct      = "direct"
	Transaction = "transaction"
	Session     = "session"
)

// Kind is a reason a test may pass directly and fail through pgtoken. Each
// is something no transaction pooler (or, for the last ones, no pooler
// that sets the role from a token) can avoid; a defect is never a Kind.
type Kind struct {
	Name string
	// TransactionOnly kinds are what transaction pooling refuses; session
	// mode must pass such tests.
	TransactionOnly bool
	Why             string
}

// Kinds lists every kind an expected difference may name.
var Kinds = []Kind{
	{"temp-table", true, "a temporary table (or other temporary object) that outlives its transaction: the next transaction may run on another server connection"},
	{"listen", true, "LISTEN: notifications arrive on the server connection that listened, which the client does not keep between transactions"},
	{"session-lock", true, "a session-level advisory lock outlives its transaction"},
	{"hold-cursor", true, "a WITH HOLD cursor outlives its transaction"},
	{"server-statements", true, "the test looks up its prepared statements on the server (pg_prepared_statements): its next transaction may run on another server connection, and a pooler keeps statements per server connection, under its own names"},
	{"backend-pid", false, "the test terminates its own backend (by the PID pgtoken reported, which is pgtoken's own key, or by pg_backend_pid()) and expects its client connection to die with it: through a pooler the client connection is not the server connection"},
	{"startup-user", false, "the test relies on the startup user: pgtoken logs in upstream as its own login role and takes the role from the token"},
	{"do-block", false, "a DO block: pgtoken refuses them (guard.allow_do), because PL/pgSQL EXECUTE can build any statement, SET ROLE included"},
	{"guard", false, "a statement pgtoken's guard refuses by design (docs/SECURITY.md), e.g. SET standard_conforming_strings = off"},
}

func kindByName(name string) (Kind, bool) {
	for _, k := range Kinds {
		if k.Name == name {
			return k, true
		}
	}
	return Kind{}, false
}

// Expectation is one line of the expected-differences file:
//
//	<mode> <package> <test> <kind> <reason...>
//
// mode is transaction, session or both; test covers its subtests too. A
// reason that begins with "hangs:" says the test waits in that mode for
// what cannot happen through pgtoken (a notification, its backend's
// death), until its own deadline or go test's timeout, so it is not run
// there at all: go test -skip. Only a top-level test may hang, and a test
// name is skipped in every package tested.
type Expectation struct {
	Line   int
	Mode   string
	Pkg    string
	Test   string
	Kind   string
	Reason string
}

func (e Expectation) String() string {
	return fmt.Sprintf("%s %s %s %s %s", e.Mode, e.Pkg, e.Test, e.Kind, e.Reason)
}

// Hangs reports whether the test is not run in e's mode because it would
// only wait there (see Expectation).
func (e Expectation) Hangs() bool { return strings.HasPrefix(e.Reason, "hangs:") }

// HangingTests returns the go test -skip pattern for mode's hanging tests,
// or "" (always for the direct run, which every test runs in).
func HangingTests(mode string, expected []Expectation) string {
	if mode == Direct {
		return ""
	}
	var names []string
	for _, e := range expected {
		if e.Hangs() && (e.Mode == mode || e.Mode == "both") {
			names = append(names, regexp.QuoteMeta(e.Test))
		}
	}
	if len(names) == 0 {
		return ""
	}
	return "^(" + strings.Join(names, "|") + ")$"
}

// appliesTo reports whether e covers test k in mode.
func (e Expectation) appliesTo(mode string, k Key) bool {
	if e.Mode != mode && e.Mode != "both" {
		return false
	}
	return e.Pkg == k.Pkg && (k.Test == e.Test || strings.HasPrefix(k.Test, e.Test+"/"))
}

// ParseExpected reads an expected-differences file. Blank lines and lines
// starting with # are ignored. Every line must name a mode, a package, a
// test, a known kind allowed in that mode and a reason.
func ParseExpected(r io.Reader) ([]Expectation, error) {
	var out []Expectation
	var errs []string
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 5 {
			errs = append(errs, fmt.Sprintf("line %d: want <mode> <package> <test> <kind> <reason>, got %q", n, line))
			continue
		}
		e := Expectation{Line: n, Mode: f[0], Pkg: f[1], Test: f[2], Kind: f[3], Reason: strings.Join(f[4:], " ")}
		kind, ok := kindByName(e.Kind)
		switch {
		case e.Mode != Transaction && e.Mode != Session && e.Mode != "both":
			errs = append(errs, fmt.Sprintf("line %d: mode %q is not transaction, session or both", n, e.Mode))
		case !ok:
			errs = append(errs, fmt.Sprintf("line %d: unknown kind %q (known: %s)", n, e.Kind, kindNames()))
		case kind.TransactionOnly && e.Mode != Transaction:
			errs = append(errs, fmt.Sprintf("line %d: kind %s is a transaction-mode limitation; session mode must pass this test", n, e.Kind))
		case !strings.HasPrefix(e.Test, "Test") && !strings.HasPrefix(e.Test, "Example"):
			errs = append(errs, fmt.Sprintf("line %d: %q is not a test name", n, e.Test))
		case e.Hangs() && strings.Contains(e.Test, "/"):
			errs = append(errs, fmt.Sprintf("line %d: only a top-level test can be left out because it hangs", n))
		}
		id := e.Mode + " " + e.Pkg + " " + e.Test
		if prev, dup := seen[id]; dup {
			errs = append(errs, fmt.Sprintf("line %d: repeats line %d", n, prev))
		}
		seen[id] = n
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	return out, nil
}

func kindNames() string {
	var names []string
	for _, k := range Kinds {
		names = append(names, k.Name)
	}
	return strings.Join(names, ", ")
}

// Diff is a test that passed directly and did not pass in Mode.
type Diff struct {
	Mode     string
	Key      Key
	Status   Status
	Cause    string
	Expected *Expectation // nil: unexpected
}

// Compare returns the tests that passed in direct and did not pass in run
// (failed, skipped, lost, or missing), in mode. A test whose subtests
// differ is left out: its subtests say why.
func Compare(mode string, direct, run *Run, expected []Expectation) []Diff {
	var diffs []Diff
	differs := map[Key]bool{}
	for _, k := range direct.Keys() {
		if direct.Tests[k].Status != Pass {
			continue
		}
		res := run.Tests[k]
		if res != nil && res.Status == Pass {
			continue
		}
		d := Diff{Mode: mode, Key: k, Status: Lost, Cause: "did not run"}
		if res != nil {
			d.Status = res.Status
			d.Cause = run.Cause(k)
			// Only a subtest that ran stands for its parent: one that
			// never started says nothing the parent's failure does not.
			differs[k] = true
		} else if parentRan(k, run) {
			continue
		} else if p := run.PkgPanic(k.Pkg); p != "" {
			d.Cause = "did not run: " + p
		}
		diffs = append(diffs, d)
	}
	out := diffs[:0]
	for _, d := range diffs {
		if hasDifferingSubtest(d.Key, differs) {
			continue
		}
		for i := range expected {
			if expected[i].appliesTo(mode, d.Key) {
				d.Expected = &expected[i]
				if d.Status == Lost && expected[i].Hangs() {
					d.Cause = "not run in this mode: it hangs"
				}
				break
			}
		}
		out = append(out, d)
	}
	return out
}

// parentRan reports whether a test that contains k ran in run (and so
// explains why k did not).
func parentRan(k Key, run *Run) bool {
	for name := k.Test; ; {
		i := strings.LastIndexByte(name, '/')
		if i < 0 {
			return false
		}
		name = name[:i]
		if _, ok := run.Tests[Key{k.Pkg, name}]; ok {
			return true
		}
	}
}

func hasDifferingSubtest(k Key, differs map[Key]bool) bool {
	for o := range differs {
		if o.Pkg == k.Pkg && strings.HasPrefix(o.Test, k.Test+"/") {
			return true
		}
	}
	return false
}

// Stale returns the expectations of mode that no difference needed: the
// tests they name passed (or did not run at all) in that mode. ran is
// false for tests a -run filter left out; those say nothing.
func Stale(mode string, expected []Expectation, diffs []Diff, run *Run) []Expectation {
	used := map[int]bool{}
	for _, d := range diffs {
		if d.Expected != nil {
			used[d.Expected.Line] = true
		}
	}
	var out []Expectation
	for _, e := range expected {
		if used[e.Line] || (e.Mode != mode && e.Mode != "both") {
			continue
		}
		if _, ran := run.Tests[Key{e.Pkg, e.Test}]; !ran {
			continue
		}
		out = append(out, e)
	}
	return out
}

// Unknown returns the expectations that name no test of the direct run.
func Unknown(expected []Expectation, direct *Run) []Expectation {
	var out []Expectation
	for _, e := range expected {
		if _, ok := direct.Tests[Key{e.Pkg, e.Test}]; !ok {
			out = append(out, e)
		}
	}
	return out
}

// CauseGroup is the number of differences with one normalized cause.
type CauseGroup struct {
	Mode  string
	Cause string
	Tests []Key
}

// GroupByCause groups diffs by mode and normalized cause, largest first.
func GroupByCause(diffs []Diff) []CauseGroup {
	idx := map[[2]string]int{}
	var out []CauseGroup
	for _, d := range diffs {
		id := [2]string{d.Mode, GroupKey(d.Cause)}
		i, ok := idx[id]
		if !ok {
			i = len(out)
			idx[id] = i
			out = append(out, CauseGroup{Mode: d.Mode, Cause: id[1]})
		}
		out[i].Tests = append(out[i].Tests, d.Key)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if len(out[i].Tests) != len(out[j].Tests) {
			return len(out[i].Tests) > len(out[j].Tests)
		}
		if out[i].Mode != out[j].Mode {
			return out[i].Mode > out[j].Mode
		}
		return out[i].Cause < out[j].Cause
	})
	return out
}
