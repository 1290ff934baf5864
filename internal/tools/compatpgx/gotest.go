package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

// Status is the outcome of one test in one run.
type Status string

const (
	Pass Status = "pass"
	Fail Status = "fail"
	Skip Status = "skip"
	// Lost: the test started but never finished (its test binary timed
	// out or crashed), or it ran in the reference run and not in this one.
	Lost Status = "lost"
)

// Key names one test: its package relative to the module ("pgx" for the
// module root) and its full name with subtests ("TestX/sub").
type Key struct{ Pkg, Test string }

func (k Key) String() string { return k.Pkg + " " + k.Test }

// Result is one test's outcome and what it printed.
type Result struct {
	Status  Status
	Elapsed float64
	Output  []string // its output lines, without the trailing newline
	Note    string   // why it has no result (see timeout), overriding its output

	finished bool // a pass, fail or skip event came
}

// Run collects the events of one `go test -json` run.
type Run struct {
	Module  string // import path of the module root, stripped from package names
	Tests   map[Key]*Result
	PkgOut  map[string][]string // output not attributed to a test, per package
	PkgDone map[string]string   // package → pass, fail or skip
	partial map[Key]string      // an output line that did not end in a newline yet
	timeout map[string]*timeout // packages whose test binary timed out
	crash   map[string]string   // package → the first panic its tests printed, and where
}

// timeout is what a test binary printed when go test's -timeout stopped
// it: "panic: test timed out after 5m0s", then "\trunning tests:" and a
// line "\t\tTestX (4m54s)" per test still running. test2json attributes
// all of it to whichever test printed last and marks that one failed.
type timeout struct {
	panic   string
	carrier Key            // the test the panic was attributed to
	running map[Key]string // test → how long it had run
	listing bool           // between "running tests:" and the end of the list
}

// NewRun returns an empty run for the packages of module.
func NewRun(module string) *Run {
	return &Run{
		Module:  module,
		Tests:   map[Key]*Result{},
		PkgOut:  map[string][]string{},
		PkgDone: map[string]string{},
		partial: map[Key]string{},
		timeout: map[string]*timeout{},
		crash:   map[string]string{},
	}
}

// Pkg returns the short name of an import path: the path below the
// module, or the module's last element for the module itself ("pgx" for
// github.com/jackc/pgx/v5).
func (r *Run) Pkg(importPath string) string {
	if rest, ok := strings.CutPrefix(importPath, r.Module+"/"); ok {
		return rest
	}
	if importPath == r.Module {
		parts := strings.Split(r.Module, "/")
		last := parts[len(parts)-1]
		if len(parts) > 1 && regexp.MustCompile(`^v[0-9]+$`).MatchString(last) {
			last = parts[len(parts)-2]
		}
		return last
	}
	return importPath
}

// AddLine adds one line of `go test -json` output. A line that is not a
// JSON event (the go command's own messages) is kept as package output of
// "" and reported as an error. It returns what Add returns.
func (r *Run) AddLine(line []byte) (pkg, done string, err error) {
	var ev event
	if err := json.Unmarshal(line, &ev); err != nil || ev.Action == "" {
		r.PkgOut[""] = append(r.PkgOut[""], string(line))
		return "", "", fmt.Errorf("not a test2json event: %q", line)
	}
	pkg, done = r.Add(ev)
	return pkg, done, nil
}

// Add records one event. It returns the package's short name and outcome
// when the event ends a package, else "".
func (r *Run) Add(ev event) (pkg, done string) {
	pkg = r.Pkg(ev.Package)
	k := Key{pkg, CanonicalName(ev.Test)}
	if ev.Action == "output" {
		r.watchTimeout(k, ev.Output)
	}
	if ev.Test == "" {
		switch ev.Action {
		case "output", "build-output":
			r.PkgOut[pkg] = append(r.PkgOut[pkg], strings.TrimSuffix(ev.Output, "\n"))
		case "pass", "fail", "skip":
			r.PkgDone[pkg] = ev.Action
			r.finishLost(pkg)
			r.finishTimeout(pkg)
			return pkg, ev.Action
		}
		return "", ""
	}
	res := r.Tests[k]
	if res == nil {
		res = &Result{Status: Lost}
		r.Tests[k] = res
	}
	switch ev.Action {
	case "output":
		// test2json splits long lines; join the pieces.
		s := r.partial[k] + ev.Output
		if strings.HasSuffix(s, "\n") {
			res.Output = append(res.Output, strings.TrimSuffix(s, "\n"))
			delete(r.partial, k)
		} else {
			r.partial[k] = s
		}
	case "pass", "fail", "skip":
		// With go test -count, a test runs several times: one failure
		// is its outcome.
		if !res.finished || res.Status != Fail {
			res.Status = Status(ev.Action)
		}
		res.finished = true
		res.Elapsed = max(res.Elapsed, ev.Elapsed)
	}
	return "", ""
}

var runningTest = regexp.MustCompile(`^\t\t(\S+) \(([^)]*)\)$`)

// watchTimeout notes a test binary's timeout report in output attributed
// to k (a test, or the package when k.Test is "").
func (r *Run) watchTimeout(k Key, output string) {
	line := strings.TrimSuffix(output, "\n")
	to := r.timeout[k.Pkg]
	if strings.HasPrefix(line, "panic: test timed out after ") {
		r.timeout[k.Pkg] = &timeout{panic: line, carrier: k, running: map[Key]string{}}
		return
	}
	if strings.HasPrefix(line, "panic: ") && r.crash[k.Pkg] == "" {
		r.crash[k.Pkg] = line
		if k.Test != "" {
			r.crash[k.Pkg] += " (in " + k.Test + ")"
		}
	}
	if to == nil {
		return
	}
	switch m := runningTest.FindStringSubmatch(line); {
	case line == "\trunning tests:":
		to.listing = true
	case to.listing && m != nil:
		to.running[Key{k.Pkg, CanonicalName(m[1])}] = m[2]
	default:
		to.listing = false
	}
}

// finishTimeout gives the tests of a timed-out package their real
// outcome: those still running hung; the one test2json marked failed
// only because the panic was attributed to it has no result.
func (r *Run) finishTimeout(pkg string) {
	to := r.timeout[pkg]
	if to == nil {
		return
	}
	for k, d := range to.running {
		res := r.Tests[k]
		if res == nil {
			res = &Result{}
			r.Tests[k] = res
		}
		res.Status = Lost
		res.Note = fmt.Sprintf("hung: still running after %s when %s", d, strings.TrimPrefix(to.panic, "panic: "))
	}
	if res := r.Tests[to.carrier]; res != nil && to.carrier.Test != "" && to.running[to.carrier] == "" && res.Status == Fail {
		res.Status = Lost
		res.Note = "no result: its test binary timed out (" + r.hungNames(pkg) + " hung)"
	}
}

// hungNames lists the tests that hung in pkg.
func (r *Run) hungNames(pkg string) string {
	var names []string
	if to := r.timeout[pkg]; to != nil {
		for k := range to.running {
			names = append(names, k.Test)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// longDigits are runs of digits in a test name that differ from run to
// run: temporary directory names (t.TempDir) in table test names.
var longDigits = regexp.MustCompile(`[0-9]{6,}`)

// CanonicalName is a test's name with what changes between runs (the
// digits of temporary directory names) replaced by N, so that the same
// test has the same name in every run.
func CanonicalName(name string) string {
	return longDigits.ReplaceAllString(name, "N")
}

// finishLost flushes the partial output lines of pkg's tests once the
// package has ended.
func (r *Run) finishLost(pkg string) {
	for k, s := range r.partial {
		if k.Pkg == pkg {
			r.Tests[k].Output = append(r.Tests[k].Output, s)
			delete(r.partial, k)
		}
	}
}

// Counts are the outcomes of one package (or of all) in one run.
type Counts struct{ Pass, Fail, Skip, Lost int }

func (c *Counts) add(s Status) {
	switch s {
	case Pass:
		c.Pass++
	case Fail:
		c.Fail++
	case Skip:
		c.Skip++
	default:
		c.Lost++
	}
}

// Counts returns the outcomes per package, subtests included (a test with
// subtests counts once itself and once per subtest, as gotestsum counts).
func (r *Run) Counts() map[string]Counts {
	out := map[string]Counts{}
	for k, res := range r.Tests {
		c := out[k.Pkg]
		c.add(res.Status)
		out[k.Pkg] = c
	}
	return out
}

// Keys returns the run's tests, sorted.
func (r *Run) Keys() []Key {
	keys := make([]Key, 0, len(r.Tests))
	for k := range r.Tests {
		keys = append(keys, k)
	}
	sortKeys(keys)
	return keys
}

func sortKeys(keys []Key) {
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].Pkg != keys[j].Pkg {
			return keys[i].Pkg < keys[j].Pkg
		}
		return keys[i].Test < keys[j].Test
	})
}

// PkgPanic returns the package's first "panic:" line (a test binary that
// timed out or crashed), or "".
func (r *Run) PkgPanic(pkg string) string {
	if to := r.timeout[pkg]; to != nil {
		return to.panic + " (" + r.hungNames(pkg) + " hung)"
	}
	return r.crash[pkg]
}

// Cause returns the first error line of a test that did not pass, or its
// skip message: what a reader needs to tell why.
func (r *Run) Cause(k Key) string {
	res := r.Tests[k]
	if res == nil {
		return "did not run"
	}
	if res.Note != "" {
		return res.Note
	}
	if c := FirstError(res.Output); c != "" {
		return c
	}
	if res.Status == Lost {
		if p := r.PkgPanic(k.Pkg); p != "" {
			return "no result: its test binary ended with " + p
		}
		return "no result: the test binary ended while it ran"
	}
	if res.Status == Fail && r.hasFailedSubtest(k) {
		return "a subtest failed"
	}
	return "(no message)"
}

func (r *Run) hasFailedSubtest(k Key) bool {
	for o, res := range r.Tests {
		if o.Pkg == k.Pkg && strings.HasPrefix(o.Test, k.Test+"/") && res.Status != Pass && res.Status != Skip {
			return true
		}
	}
	return false
}

var (
	// fileLine is the prefix t.Error, t.Fatal, t.Skip and t.Log put in
	// front of a message: "    conn_test.go:123: ".
	fileLine = regexp.MustCompile(`^\s+[\w.\-]+\.go:\d+: ?(.*)$`)
	// testifyField is a labelled line of a testify failure: "\tError:  \t...".
	testifyField = regexp.MustCompile(`^\s*\t([A-Z][A-Za-z ]*):\s*\t(.*)$`)
	// testifyMore continues the previous testify field.
	testifyMore = regexp.MustCompile(`^\s*\t\s+\t(.*)$`)
)

// maxCause bounds the length of a cause.
const maxCause = 300

// FirstError returns the first error message in a test's output: a
// t.Error/t.Fatal/t.Skip message, the Error field of a testify assertion
// (with the lines that continue it when it ends in a colon), a panic, or
// the first line an example printed that it should not have.
func FirstError(lines []string) string {
	for i, l := range lines {
		if strings.HasPrefix(l, "panic: ") {
			return clip(l)
		}
		if l == "got:" && i+1 < len(lines) && strings.HasPrefix(lines[0], "=== RUN   Example") {
			return clip("example printed: " + lines[i+1])
		}
		m := fileLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		if msg := strings.TrimSpace(m[1]); msg != "" {
			// A message of several lines goes on indented by 8 spaces.
			for _, c := range lines[i+1:] {
				rest, ok := strings.CutPrefix(c, "        ")
				if !ok || testifyField.MatchString(c) || len(msg) > maxCause {
					break
				}
				msg += " " + strings.TrimSpace(rest)
			}
			return clip(msg)
		}
		// An empty message is testify's: its fields follow.
		if c := testifyError(lines[i+1:]); c != "" {
			return c
		}
	}
	return ""
}

// testifyError returns the Error field of a testify report.
func testifyError(lines []string) string {
	for i, l := range lines {
		m := testifyField.FindStringSubmatch(l)
		if m == nil {
			if fileLine.MatchString(l) {
				return ""
			}
			continue
		}
		if m[1] != "Error" {
			continue
		}
		head := strings.TrimSpace(m[2])
		if !strings.HasSuffix(head, ":") {
			return clip(head)
		}
		var more []string
		for _, c := range lines[i+1:] {
			cm := testifyMore.FindStringSubmatch(c)
			if cm == nil || len(more) == 3 {
				break
			}
			if s := strings.TrimSpace(cm[1]); s != "" {
				more = append(more, s)
			}
		}
		if head == "Received unexpected error:" && len(more) > 0 {
			return clip(strings.Join(more, " "))
		}
		return clip(strings.Join(append([]string{head}, more...), " "))
	}
	return ""
}

// clip shortens a long cause, keeping the server error it quotes.
func clip(s string) string {
	s = strings.TrimSpace(s)
	if len(s) <= maxCause {
		return s
	}
	if loc := serverError.FindStringIndex(s); loc != nil && loc[1]-loc[0] < maxCause/2 {
		keep := maxCause - (loc[1] - loc[0])
		if keep > loc[0] {
			keep = loc[0]
		}
		return s[:keep] + "… " + s[loc[0]:loc[1]]
	}
	return s[:maxCause] + "…"
}

var (
	hexRun   = regexp.MustCompile(`[0-9a-f]{6,}`)
	digitRun = regexp.MustCompile(`\b[0-9]+\b`)
	sqlstate = regexp.MustCompile(`SQLSTATE ([0-9A-Z]{5})`)
)

// serverError is the part of a cause that quotes the server's error.
var serverError = regexp.MustCompile(`(ERROR|FATAL|PANIC): .*? \(SQLSTATE [0-9A-Z]{5}\)`)

// GroupKey is what causes with one root have in common: the server error
// they quote, else the whole cause, normalized.
func GroupKey(cause string) string {
	if m := serverError.FindString(cause); m != "" {
		return Normalize(m)
	}
	return Normalize(cause)
}

// Normalize turns a cause into a group key: numbers standing alone (PIDs,
// OIDs, ports) become N and hexadecimal runs (statement names) X; digits
// that are part of a word (int4, UTF8) and SQLSTATEs are kept.
func Normalize(cause string) string {
	cause = strings.ReplaceAll(cause, `\"`, `"`) // a quoted error quotes its quotes
	states := sqlstate.FindAllString(cause, -1)
	s := sqlstate.ReplaceAllString(cause, "SQLSTATE ?")
	s = hexRun.ReplaceAllStringFunc(s, func(w string) string {
		if !strings.ContainsAny(w, "0123456789") || !strings.ContainsAny(w, "abcdef") {
			return w // a word such as "deface", or a number (N below)
		}
		return "X"
	})
	s = digitRun.ReplaceAllString(s, "N")
	for _, st := range states {
		s = strings.Replace(s, "SQLSTATE ?", st, 1)
	}
	return s
}
