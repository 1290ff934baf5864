package main

import (
	"strings"
	"testing"
)

func TestParseExpected(t *testing.T) {
	good := `
# comment
transaction pgconn TestConnLocking   temp-table creates a temporary table
both        pgx    TestConnectPID    backend-pid reads pg_backend_pid()
`
	es, err := ParseExpected(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 || es[0].Line != 3 || es[0].Reason != "creates a temporary table" || es[1].Mode != "both" {
		t.Errorf("parsed %+v", es)
	}

	for _, tc := range []struct{ line, want string }{
		{"transaction pgconn TestX temp-table", "want <mode>"},
		{"sometimes pgconn TestX temp-table why", "mode"},
		{"transaction pgconn TestX defect it is broken", "unknown kind"},
		{"session pgconn TestX temp-table why", "session mode must pass"},
		{"both pgconn TestX listen why", "session mode must pass"},
		{"transaction pgconn Benchmark temp-table why", "not a test name"},
		{"transaction pgconn TestX temp-table why\ntransaction pgconn TestX listen again", "repeats line 1"},
		{"transaction pgconn TestX/sub listen hangs: forever", "top-level"},
	} {
		_, err := ParseExpected(strings.NewReader(tc.line))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one containing %q", tc.line, err, tc.want)
		}
	}
}

// fakeRun builds a run from test → status.
func fakeRun(tests map[string]Status) *Run {
	r := NewRun("m")
	for name, st := range tests {
		pkg, test, _ := strings.Cut(name, " ")
		r.Tests[Key{pkg, test}] = &Result{Status: st, Output: []string{"    x_test.go:1: cause of " + test}}
	}
	return r
}

func TestCompare(t *testing.T) {
	direct := fakeRun(map[string]Status{
		"p TestSame":       Pass,
		"p TestTemp":       Pass,
		"p TestTemp/a":     Pass,
		"p TestTemp/b":     Pass,
		"p TestDefect":     Pass,
		"p TestSkipHere":   Pass,
		"p TestMissing":    Pass,
		"p TestFailsBoth":  Fail,
		"p TestSkipDirect": Skip,
		"p TestParentOnly": Pass,
		// Never started: its parent's failure says why.
		"p TestParentOnly/sub": Pass,
		"p TestHangs":          Pass,
	})
	run := fakeRun(map[string]Status{
		"p TestSame":       Pass,
		"p TestTemp":       Fail,
		"p TestTemp/a":     Fail,
		"p TestTemp/b":     Pass,
		"p TestDefect":     Fail,
		"p TestSkipHere":   Skip,
		"p TestFailsBoth":  Fail,
		"p TestSkipDirect": Fail,
		"p TestParentOnly": Fail,
	})
	expected := []Expectation{
		{Line: 1, Mode: Transaction, Pkg: "p", Test: "TestTemp", Kind: "temp-table"},
		{Line: 2, Mode: "both", Pkg: "p", Test: "TestSame", Kind: "backend-pid"},
		{Line: 3, Mode: Session, Pkg: "p", Test: "TestDefect", Kind: "startup-user"},
		{Line: 4, Mode: Transaction, Pkg: "p", Test: "TestNotInRun", Kind: "listen"},
		{Line: 5, Mode: Transaction, Pkg: "p", Test: "TestHangs", Kind: "listen", Reason: "hangs: waits for a notification"},
	}
	diffs := Compare(Transaction, direct, run, expected)
	got := map[string]string{}
	for _, d := range diffs {
		exp := "unexpected"
		if d.Expected != nil {
			exp = "line " + string(rune('0'+d.Expected.Line))
		}
		got[d.Key.Test] = string(d.Status) + " " + exp + " " + d.Cause
	}
	want := map[string]string{
		// TestTemp itself is left out: its subtest says why.
		"TestTemp/a":     "fail line 1 cause of TestTemp/a",
		"TestDefect":     "fail unexpected cause of TestDefect", // line 3 is for session mode
		"TestSkipHere":   "skip unexpected cause of TestSkipHere",
		"TestMissing":    "lost unexpected did not run",
		"TestParentOnly": "fail unexpected cause of TestParentOnly",
		"TestHangs":      "lost line 5 not run in this mode: it hangs",
	}
	if len(got) != len(want) {
		t.Errorf("diffs %v\nwant %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}

	stale := Stale(Transaction, expected, diffs, run)
	if len(stale) != 1 || stale[0].Line != 2 {
		t.Errorf("stale %+v, want line 2 only (line 3 is another mode, line 4 did not run)", stale)
	}
	if got := HangingTests(Transaction, expected); got != "^(TestHangs)$" {
		t.Errorf("HangingTests(transaction) = %q", got)
	}
	if got := HangingTests(Session, expected); got != "" {
		t.Errorf("HangingTests(session) = %q", got)
	}
	both := []Expectation{{Mode: "both", Test: "TestX", Kind: "backend-pid", Reason: "hangs: forever"}}
	if got := HangingTests(Direct, both); got != "" {
		t.Errorf("HangingTests(direct) = %q: the reference run must run every test", got)
	}
	unknown := Unknown(expected, direct)
	if len(unknown) != 1 || unknown[0].Line != 4 {
		t.Errorf("unknown %+v, want line 4", unknown)
	}
}

func TestGroupByCause(t *testing.T) {
	diffs := []Diff{
		{Mode: Session, Key: Key{"p", "TestA"}, Cause: `prepared statement "s_1a2b3c4d" does not exist (SQLSTATE 26000)`},
		{Mode: Session, Key: Key{"p", "TestB"}, Cause: `prepared statement "s_9f8e7d6c" does not exist (SQLSTATE 26000)`},
		{Mode: Transaction, Key: Key{"p", "TestA"}, Cause: `prepared statement "s_1a2b3c4d" does not exist (SQLSTATE 26000)`},
		{Mode: Session, Key: Key{"p", "TestC"}, Cause: "timeout"},
	}
	g := GroupByCause(diffs)
	if len(g) != 3 || len(g[0].Tests) != 2 || g[0].Mode != Session || !strings.Contains(g[0].Cause, `"s_X"`) {
		t.Errorf("groups %+v", g)
	}
}
