package session_test

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/internal/scenario"
)

// The protocol scenarios (testdata/scenarios, format in its README.md and
// internal/scenario) run directly against Postgres, as the authenticator
// with the token's role and claims set for the whole session
// (scenario.Preset), and through pgtoken with the token; the normalized
// replies must be the same. A scenario whose replies through pgtoken are
// meant to differ (the guard) says "mode proxy" and gives the expected
// replies in "expect" blocks. model_test.go plays the same scenarios
// against the model of Postgres in internal/pgmodel, without Postgres.

// play runs a scenario on c and returns the normalized replies.
func play(t *testing.T, c *pgconn.PgConn, sc *scenario.Scenario) []string {
	t.Helper()
	out, err := scenario.Conn{FE: c.Frontend(), NC: c.Conn()}.Play(sc, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestScenariosMatchPostgres(t *testing.T) {
	all, err := scenario.All()
	if err != nil {
		t.Fatal(err)
	}
	tok := pgtest.Token(t, map[string]any{"role": "web_user", "sub": "alice"})
	for _, sc := range all {
		t.Run(strings.TrimSuffix(sc.Name, ".txt"), func(t *testing.T) {
			// Each run gets a database of its own, so what one run writes
			// the other does not see.
			env := pgtest.Start(t, nil)
			through := play(t, env.Connect(tok), sc)
			want := sc.Expected()
			if !sc.Proxy {
				pg, db := pgtest.NewDB(t)
				if want, err = scenario.PlayDirect(pg.DSN("authenticator", "secret", db), sc, 30*time.Second); err != nil {
					t.Fatalf("directly: %v", err)
				}
			}
			if d := scenario.Diff(through, want); d != "" {
				t.Fatalf("through pgtoken (left) and %s (right):\n%s", map[bool]string{true: "expected", false: "directly"}[sc.Proxy], d)
			}
		})
	}
}
