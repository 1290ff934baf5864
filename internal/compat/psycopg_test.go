package compat

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// python returns a python3 that can import psycopg2: the one on PATH, else
// the system's (where Debian's python3-psycopg2 installs it).
func python(t *testing.T) string {
	t.Helper()
	var tried []string
	for _, name := range []string{"python3", "/usr/bin/python3"} {
		p, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		if exec.Command(p, "-c", "import psycopg2").Run() == nil {
			return p
		}
		tried = append(tried, p)
	}
	unavailable(t, "no python3 with psycopg2 (tried %q; install python3-psycopg2)", tried)
	return ""
}

// pyClient is one entry of COMPAT_CLIENTS.
type pyClient struct {
	DSN  string `json:"dsn"`
	Role string `json:"role"`
	Sub  string `json:"sub"`
}

// pyClients are web_user clients for subs, for a python script.
func pyClients(t *testing.T, env *pgtest.Env, subs ...string) []pyClient {
	var cs []pyClient
	for _, sub := range subs {
		cs = append(cs, pyClient{DSN: env.DSN(pgtest.UserToken(t, sub)), Role: "web_user", Sub: sub})
	}
	return cs
}

// TestPsycopg2 runs the psycopg2 scripts under testdata/compat/python.
func TestPsycopg2(t *testing.T) {
	py := python(t)
	env := pgtest.Start(t, nil)

	t.Run("threads", func(t *testing.T) {
		subs := []string{"py-0", "py-1", "py-2", "py-3", "py-4", "py-5"}
		n := rounds(60, 15)
		var res map[string]struct{ Committed, Checked int }
		runScript(t, env, py, "python", "threads.py", pyClients(t, env, subs...), n, &res)
		for _, sub := range subs {
			r, ok := res[sub]
			if !ok || r.Checked < n {
				t.Errorf("%s: %+v, want at least %d checks", sub, r, n)
			}
			if got := env.Superuser("select count(*) from api.todos where owner = " + sqlLiteral(sub))[0][0]; got != strconv.Itoa(r.Committed) {
				t.Errorf("%s committed %d todos; the table holds %s", sub, r.Committed, got)
			}
		}
	})

	t.Run("named cursors", func(t *testing.T) {
		var res struct {
			Fetched, Checked int
			Withhold         string
		}
		runScript(t, env, py, "python", "cursors.py", pyClients(t, env, "cur-0", "cur-1", "cur-2"), rounds(6, 2), &res)
		if want := 1000 * rounds(6, 2); res.Fetched != want {
			t.Errorf("fetched %d rows through named cursors, want %d", res.Fetched, want)
		}
		if !strings.HasPrefix(res.Withhold, "0A000 ") || !strings.Contains(res.Withhold, "WITH HOLD") {
			t.Errorf("a WITH HOLD cursor: %q, want pgtoken's 0A000 refusal naming WITH HOLD", res.Withhold)
		}
	})

	t.Run("executemany and copy", func(t *testing.T) {
		var res struct {
			Many, Values, Copied, Broken, Foreign int
			TodosOut                              []string `json:"todos_out"`
			CopyFailed                            string   `json:"copy_failed"`
		}
		runScript(t, env, py, "python", "bulk.py", pyClients(t, env, "alice"), 0, &res)
		if res.Many != 200 || res.Values != 300 || res.Copied != 500 || res.Broken != 0 || res.Foreign != 0 {
			t.Errorf("notes: %+v, want 200 executemany, 300 execute_values, 500 copied, 0 from the broken copy, 0 of others", res)
		}
		if len(res.TodosOut) != 3 {
			t.Errorf("copy to stdout from api.todos: %q, want alice's 3", res.TodosOut)
		}
		for _, l := range res.TodosOut {
			if !strings.HasPrefix(l, "alice\t") {
				t.Errorf("copy to stdout gave another's row: %q", l)
			}
		}
		if res.CopyFailed == "" {
			t.Error("the copy from a broken file did not fail")
		}
		got := env.Superuser("select count(*) from api.notes where owner = 'alice'")[0][0]
		if got != "1000" {
			t.Errorf("alice owns %s notes, want 1000", got)
		}
		assertServerConnsClean(t, env)
	})

	t.Run("autocommit and settings", func(t *testing.T) {
		var res struct {
			Checked  int
			TimedOut bool `json:"timed_out"`
		}
		runScript(t, env, py, "python", "autocommit.py", pyClients(t, env, "auto"), rounds(20, 5), &res)
		if !res.TimedOut {
			t.Error("statement_timeout set by psycopg2 did not cancel pg_sleep")
		}
	})
}
