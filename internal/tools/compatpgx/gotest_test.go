package main

import (
	"strings"
	"testing"
)

func TestFirstError(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lines []string
		want  string
	}{
		{"a message of several lines", []string{
			"    conn_test.go:42: Exec unexpectedly failed with create temporary table t(",
			"        \t  id int",
			"        ): ERROR: no (SQLSTATE 0A000)",
			"    conn_test.go:43: later",
		}, "Exec unexpectedly failed with create temporary table t( id int ): ERROR: no (SQLSTATE 0A000)"},
		{"t.Fatalf", []string{
			"=== RUN   TestConnect",
			"    conn_test.go:42: connect failed: FATAL: nope (SQLSTATE 28P01)",
			"--- FAIL: TestConnect (0.01s)",
		}, "connect failed: FATAL: nope (SQLSTATE 28P01)"},
		{"testify unexpected error", []string{
			"=== RUN   TestStmtCache/default",
			"    conn_test.go:123: ",
			"        \tError Trace:\t/x/conn_test.go:123",
			"        \tError:      \tReceived unexpected error:",
			"        \t            \tERROR: cached plan must not change result type (SQLSTATE 0A000)",
			"        \tTest:       \tTestStmtCache/default",
		}, "ERROR: cached plan must not change result type (SQLSTATE 0A000)"},
		{"testify not equal", []string{
			"    query_test.go:9: ",
			"        \tError Trace:\tquery_test.go:9",
			"        \tError:      \tNot equal: ",
			"        \t            \texpected: 1",
			"        \t            \tactual  : 2",
			"        \t            \t",
			"        \t            \tDiff:",
			"        \t            \t--- Expected",
			"        \tTest:       \tTestQuery",
		}, "Not equal: expected: 1 actual  : 2 Diff:"},
		{"testify one line", []string{
			"    tx_test.go:7: ",
			"        \tError Trace:\ttx_test.go:7",
			"        \tError:      \tShould be true",
		}, "Should be true"},
		{"a log line with an empty message is not testify", []string{
			"    a_test.go:1: ",
			"    a_test.go:2: the real one",
		}, "the real one"},
		{"panic", []string{
			"=== RUN   TestX",
			"panic: runtime error: invalid memory address",
		}, "panic: runtime error: invalid memory address"},
		{"skip message", []string{
			"    pgconn_test.go:58: Skipping due to missing environment variable X",
			"--- SKIP: TestConnect/Unix_socket (0.00s)",
		}, "Skipping due to missing environment variable X"},
		{"example", []string{
			"=== RUN   ExampleConn_Query",
			"--- FAIL: ExampleConn_Query (0.00s)",
			"got:",
			"Unable to setup: ERROR: no (SQLSTATE 0A000)",
			"want:",
			"Fries: $5",
		}, "example printed: Unable to setup: ERROR: no (SQLSTATE 0A000)"},
		{"nothing", []string{"=== RUN   TestX", "--- FAIL: TestX (0.00s)"}, ""},
		{"long, quoting a server error", []string{"    a_test.go:1: " + strings.Repeat("x", 400) + ": ERROR: no (SQLSTATE 0A000) and more"},
			strings.Repeat("x", maxCause-len("ERROR: no (SQLSTATE 0A000)")) + "… ERROR: no (SQLSTATE 0A000)"},
		{"long", []string{"    a_test.go:1: " + strings.Repeat("x", 400)}, strings.Repeat("x", maxCause) + "…"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := FirstError(tc.lines); got != tc.want {
				t.Errorf("FirstError = %q\nwant %q", got, tc.want)
			}
		})
	}
}

// events builds a run from test2json lines.
func events(t *testing.T, lines ...string) *Run {
	t.Helper()
	r := NewRun("github.com/jackc/pgx/v5")
	for _, l := range lines {
		if _, _, err := r.AddLine([]byte(l)); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func TestRunCollectsEvents(t *testing.T) {
	r := events(t,
		`{"Action":"start","Package":"github.com/jackc/pgx/v5/pgconn"}`,
		`{"Action":"run","Package":"github.com/jackc/pgx/v5/pgconn","Test":"TestA"}`,
		`{"Action":"output","Package":"github.com/jackc/pgx/v5/pgconn","Test":"TestA","Output":"    a_test.go:1: split "}`,
		`{"Action":"output","Package":"github.com/jackc/pgx/v5/pgconn","Test":"TestA","Output":"line\n"}`,
		`{"Action":"fail","Package":"github.com/jackc/pgx/v5/pgconn","Test":"TestA","Elapsed":0.5}`,
		`{"Action":"run","Package":"github.com/jackc/pgx/v5/pgconn","Test":"TestA/sub"}`,
		`{"Action":"pass","Package":"github.com/jackc/pgx/v5/pgconn","Test":"TestA/sub"}`,
		`{"Action":"run","Package":"github.com/jackc/pgx/v5","Test":"TestB"}`,
		`{"Action":"skip","Package":"github.com/jackc/pgx/v5","Test":"TestB"}`,
		`{"Action":"run","Package":"github.com/jackc/pgx/v5","Test":"TestHang"}`,
		`{"Action":"run","Package":"github.com/jackc/pgx/v5","Test":"TestCarrier"}`,
		// A timeout as test2json reports it: the panic goes to the last
		// test that printed, which it then marks failed.
		`{"Action":"output","Package":"github.com/jackc/pgx/v5","Test":"TestCarrier","Output":"panic: test timed out after 5m0s\n"}`,
		`{"Action":"output","Package":"github.com/jackc/pgx/v5","Test":"TestCarrier","Output":"\trunning tests:\n"}`,
		`{"Action":"output","Package":"github.com/jackc/pgx/v5","Test":"TestCarrier","Output":"\t\tTestHang (4m54s)\n"}`,
		`{"Action":"output","Package":"github.com/jackc/pgx/v5","Test":"TestCarrier","Output":"\n"}`,
		`{"Action":"output","Package":"github.com/jackc/pgx/v5","Test":"TestCarrier","Output":"goroutine 1 [running]:\n"}`,
		`{"Action":"fail","Package":"github.com/jackc/pgx/v5","Test":"TestCarrier","Elapsed":0}`,
		`{"Action":"output","Package":"github.com/jackc/pgx/v5","Output":"FAIL\tgithub.com/jackc/pgx/v5\t300.090s\n"}`,
		`{"Action":"fail","Package":"github.com/jackc/pgx/v5","Elapsed":300}`,
		`{"Action":"run","Package":"github.com/jackc/pgx/v5/pgconn","Test":"TestTemp/dir=TMPDIR/TestTemp2427866303/001"}`,
		// A test that panics ends its test binary; the tests running
		// with it have no result.
		`{"Action":"run","Package":"github.com/jackc/pgx/v5/pgxpool","Test":"TestPanics"}`,
		`{"Action":"run","Package":"github.com/jackc/pgx/v5/pgxpool","Test":"TestAlongside"}`,
		`{"Action":"output","Package":"github.com/jackc/pgx/v5/pgxpool","Test":"TestPanics","Output":"panic: runtime error: nil pointer\n"}`,
		`{"Action":"fail","Package":"github.com/jackc/pgx/v5/pgxpool","Test":"TestPanics"}`,
		`{"Action":"fail","Package":"github.com/jackc/pgx/v5/pgxpool"}`,
	)
	// go test -count=2: one failure is the outcome.
	for _, st := range []string{"fail", "pass"} {
		r.Add(event{Action: "run", Package: "github.com/jackc/pgx/v5/pgxpool", Test: "TestTwice"})
		r.Add(event{Action: st, Package: "github.com/jackc/pgx/v5/pgxpool", Test: "TestTwice"})
	}
	if got := r.Tests[Key{"pgxpool", "TestTwice"}].Status; got != Fail {
		t.Errorf("a test that failed once and then passed: %s", got)
	}
	if got := r.Cause(Key{"pgxpool", "TestAlongside"}); got != "no result: its test binary ended with panic: runtime error: nil pointer (in TestPanics)" {
		t.Errorf("test alongside a panic: cause %q", got)
	}
	if got := r.Cause(Key{"pgconn", "TestA"}); got != "split line" {
		t.Errorf("joined output: cause %q", got)
	}
	if got := r.Cause(Key{"pgx", "TestHang"}); got != "hung: still running after 4m54s when test timed out after 5m0s" {
		t.Errorf("hung test: cause %q", got)
	}
	if got := r.Cause(Key{"pgx", "TestCarrier"}); got != "no result: its test binary timed out (TestHang hung)" {
		t.Errorf("carrier of the panic: cause %q", got)
	}
	if got := r.PkgPanic("pgx"); got != "panic: test timed out after 5m0s (TestHang hung)" {
		t.Errorf("PkgPanic = %q", got)
	}
	if _, ok := r.Tests[Key{"pgconn", "TestTemp/dir=TMPDIR/TestTempN/001"}]; !ok {
		t.Errorf("temporary directory digits kept in a test name: %v", r.Keys())
	}
	want := map[string]Counts{"pgconn": {Pass: 1, Fail: 1, Lost: 1}, "pgx": {Skip: 1, Lost: 2}}
	got := r.Counts()
	for p, c := range want {
		if got[p] != c {
			t.Errorf("%s: counts %+v, want %+v", p, got[p], c)
		}
	}
	if r.PkgDone["pgx"] != "fail" || r.PkgDone["pgconn"] != "" {
		t.Errorf("PkgDone = %v", r.PkgDone)
	}
	if _, _, err := r.AddLine([]byte("go: downloading x")); err == nil {
		t.Error("a line that is not JSON was accepted")
	}
}

func TestPkg(t *testing.T) {
	r := NewRun("github.com/jackc/pgx/v5")
	for in, want := range map[string]string{
		"github.com/jackc/pgx/v5":                 "pgx",
		"github.com/jackc/pgx/v5/pgtype/zeronull": "pgtype/zeronull",
		"example.com/other":                       "example.com/other",
	} {
		if got := r.Pkg(in); got != want {
			t.Errorf("Pkg(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestGroupKey(t *testing.T) {
	for in, want := range map[string]string{
		`Exec unexpectedly failed with create temporary table t(x int): ERROR: temporary objects cannot work (SQLSTATE 0A000)`: `ERROR: temporary objects cannot work (SQLSTATE 0A000)`,
		`failed to connect to ` + "`user=u`" + `: 127.0.0.1:6432: server error: FATAL: startup timed out (SQLSTATE 08P01)`:     `FATAL: startup timed out (SQLSTATE 08P01)`,
		`Not equal: expected: 1 actual  : 2`: `Not equal: expected: N actual  : N`,
	} {
		if got := GroupKey(in); got != want {
			t.Errorf("GroupKey(%q)\n = %q\nwant %q", in, got, want)
		}
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		`ERROR: prepared statement "pgtoken_s_3f9a0c1d2e" does not exist (SQLSTATE 26000)`: `ERROR: prepared statement "pgtoken_s_X" does not exist (SQLSTATE 26000)`,
		`ERROR: cache lookup failed for type 16423 (SQLSTATE XX000)`:                       `ERROR: cache lookup failed for type N (SQLSTATE XX000)`,
		`Not equal: expected: 12 actual : 7`:                                               `Not equal: expected: N actual : N`,
		`ERROR: deadbeef 123456 (SQLSTATE 22021)`:                                          `ERROR: deadbeef N (SQLSTATE 22021)`,
		`context deadline exceeded`:                                                        `context deadline exceeded`,
		`ERROR: relation "abc" does not exist (SQLSTATE 42P01)`:                            `ERROR: relation "abc" does not exist (SQLSTATE 42P01)`,
	} {
		if got := Normalize(in); got != want {
			t.Errorf("Normalize(%q)\n = %q\nwant %q", in, got, want)
		}
	}
}

func TestSummarizeLog(t *testing.T) {
	log := strings.Join([]string{
		"2026-12-05T17:46:04.154Z\tINFO\tsession/server.go:1\tclient connected\t{\"client\": \"127.0.0.1:1\"}",
		"2026-12-05T17:46:04.154Z\tWARN\tsession/handler.go:217\tpgtoken upkeep query failed\t{\"conn\": 1, \"sqlstate\": \"42501\", \"message\": \"permission denied to set parameter \\\"log_statement\\\"\"}",
		"2026-12-05T17:46:04.781Z\tWARN\tsession/handler.go:217\tpgtoken upkeep query failed\t{\"conn\": 2, \"sqlstate\": \"22021\", \"message\": \"invalid byte sequence for encoding \\\"UTF8\\\": 0x00\"}",
		"2026-12-05T17:46:04.860Z\tWARN\tsession/handler.go:217\tpgtoken upkeep query failed\t{\"conn\": 3, \"sqlstate\": \"22021\", \"message\": \"invalid byte sequence for encoding \\\"UTF8\\\": 0x00\"}",
		"2026-12-05T17:46:05.000Z\tERROR\tsession/pool/conn.go:9\tserver connection lost\t{\"error\": \"EOF\"}",
		"not a log line",
	}, "\n")
	got, err := SummarizeLog(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	want := []LogGroup{
		{`WARN pgtoken upkeep query failed: invalid byte sequence for encoding "UTF8": 0x00 (SQLSTATE 22021)`, 2},
		{`ERROR server connection lost: EOF`, 1},
		{`WARN pgtoken upkeep query failed: permission denied to set parameter "log_statement" (SQLSTATE 42501)`, 1},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%d: %+v, want %+v", i, got[i], want[i])
		}
	}
}
