package pgmodel_test

import (
	"flag"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtoken/pgtoken/internal/pgmodel"
	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/internal/scenario"
	"github.com/pgtoken/pgtoken/internal/testpg"
)

func TestMain(m *testing.M) { testpg.Main(m) }

// scenarios names other scenario files to compare (a glob), for work on
// the model: go test -run TestModelMatchesPostgres -scenarios 'dir/*.txt'.
var scenarios = flag.String("scenarios", "", "glob of scenario files (default: testdata/scenarios)")

func scenarioFiles(t *testing.T) []*scenario.Scenario {
	t.Helper()
	if *scenarios == "" {
		all, err := scenario.All()
		if err != nil {
			t.Fatal(err)
		}
		return all
	}
	paths, err := filepath.Glob(*scenarios)
	if err != nil || len(paths) == 0 {
		t.Fatalf("no scenarios match %q: %v", *scenarios, err)
	}
	var out []*scenario.Scenario
	for _, p := range paths {
		sc, err := scenario.ParseFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, sc)
	}
	return out
}

// playDirect plays sc directly on a server with the token's identity set
// for the session.
func playDirect(t *testing.T, dsn string, sc *scenario.Scenario) []string {
	t.Helper()
	out, err := scenario.PlayDirect(dsn, sc, 30*time.Second)
	if err != nil {
		t.Fatalf("%v\n  %s", err, strings.Join(out, "\n  "))
	}
	return out
}

// TestModelMatchesPostgres plays every scenario directly against a real
// Postgres and directly against the model, each with the token's identity
// set for the session, and wants the same replies: the model is checked
// against the server it stands in for. (Scenarios in mode proxy say what
// pgtoken answers in Postgres's place and have nothing to compare here.)
func TestModelMatchesPostgres(t *testing.T) {
	for _, sc := range scenarioFiles(t) {
		if sc.Proxy {
			continue
		}
		t.Run(strings.TrimSuffix(sc.Name, ".txt"), func(t *testing.T) {
			pg, db := pgtest.NewDB(t)
			want := playDirect(t, pg.DSN("authenticator", "secret", db), sc)
			m, err := pgmodel.Start()
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			got := playDirect(t, m.DSN(), sc)
			if d := scenario.Diff(got, want); d != "" {
				t.Fatalf("the model (left) differs from Postgres (right):\n%s", d)
			}
		})
	}
}
