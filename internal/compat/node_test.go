package compat

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// nodeClient is one entry of COMPAT_CLIENTS for the node scripts.
type nodeClient struct {
	Config map[string]any `json:"config"`
	Role   string         `json:"role"`
	Sub    string         `json:"sub"`
}

func newNodeClient(t *testing.T, env *pgtest.Env, sub string, extra map[string]any) nodeClient {
	cfg := map[string]any{
		"host":     "127.0.0.1",
		"port":     env.App.Port(),
		"database": env.DB,
		"user":     "anyone",
		"password": pgtest.UserToken(t, sub),
	}
	for k, v := range extra {
		cfg[k] = v
	}
	return nodeClient{Config: cfg, Role: "web_user", Sub: sub}
}

// nodeSetup returns node's path once testdata/compat/node has its
// node_modules, installing them with npm ci (from the committed
// package-lock.json) when missing.
func nodeSetup(t *testing.T) string {
	t.Helper()
	node := tool(t, "node", "nodejs")
	dir := testdata("node")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "pg", "package.json")); err == nil {
		return node
	}
	npm := tool(t, "npm", "npm")
	out := run(timeout(t, 3*time.Minute), dir, os.Environ(), "", npm, "ci", "--no-audit", "--no-fund")
	if out.err != nil {
		unavailable(t, "npm ci in %s failed: %s", dir, out)
	}
	return node
}

// TestNodePostgres runs the node-postgres scripts under testdata/compat/node.
func TestNodePostgres(t *testing.T) {
	node := nodeSetup(t)
	env := pgtest.Start(t, nil)

	t.Run("named queries", func(t *testing.T) {
		var cs []nodeClient
		for k := range 6 {
			var extra map[string]any
			if k%2 == 1 {
				extra = map[string]any{"application_name": fmt.Sprintf("compat-node-%d", k), "statement_timeout": 4321 + k}
			}
			cs = append(cs, newNodeClient(t, env, fmt.Sprintf("node-%d", k), extra))
		}
		n := rounds(100, 20)
		var res map[string]struct{ Committed, Checked int }
		runScript(t, env, node, "node", "named.js", cs, n, &res)
		for _, c := range cs {
			r, ok := res[c.Sub]
			if !ok || r.Checked < n/2 {
				t.Errorf("%s: %+v, want at least %d checks", c.Sub, r, n/2)
			}
			if got := env.Superuser("select count(*) from api.todos where owner = " + sqlLiteral(c.Sub))[0][0]; got != strconv.Itoa(r.Committed) {
				t.Errorf("%s committed %d todos; the table holds %s", c.Sub, r.Committed, got)
			}
		}
	})

	t.Run("pool", func(t *testing.T) {
		cs := []nodeClient{newNodeClient(t, env, "alice", nil), newNodeClient(t, env, "bob", nil)}
		n := rounds(40, 10)
		var res map[string]struct{ Checked int }
		runScript(t, env, node, "node", "pool.js", cs, n, &res)
		for _, c := range cs {
			if want := 8 * n; res[c.Sub].Checked < want {
				t.Errorf("%s: %d checks, want %d", c.Sub, res[c.Sub].Checked, want)
			}
		}
	})
}
