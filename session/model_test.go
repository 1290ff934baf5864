package session_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgmodel"
	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/internal/scenario"
	"github.com/pgtoken/pgtoken/session"
	"github.com/pgtoken/pgtoken/session/lockdown"
)

// The fast tests: pgtoken in front of the model of Postgres in
// internal/pgmodel (checked against a real Postgres by
// internal/pgmodel's TestModelMatchesPostgres), so every protocol
// scenario runs through pgtoken in milliseconds, and the model tells, for
// every statement a client ran, which identity was in force.

// modelEnv starts the model and pgtoken in front of it, with one server
// connection.
func modelEnv(t testing.TB, mutate func(*config.Config)) (*pgmodel.Server, *pgtest.Env) {
	t.Helper()
	m := startModel(t)
	return m, pgtest.StartWith(t, nil, "app", modelConfig(m, mutate))
}

// startModel starts a model for t.
func startModel(t testing.TB) *pgmodel.Server {
	t.Helper()
	m, err := pgmodel.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// modelConfig is pgtoken's configuration in front of m.
func modelConfig(m *pgmodel.Server, mutate func(*config.Config)) config.Config {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Upstream = m.DSN()
	cfg.Pool.Size = 1
	cfg.Pool.WaitTimeout = config.Duration(5 * time.Second)
	cfg.JWT.Secret = pgtest.Secret
	cfg.JWT.AllowedRoles = config.StringList{"web_anon", "web_user", "web_admin"}
	cfg.Limits.AuthFailureDelay, cfg.Limits.AuthFailureRate = 0, 0
	for _, c := range lockdown.Checks {
		cfg.Checks.Skip = append(cfg.Checks.Skip, string(c)) // the model knows no catalogs
	}
	if mutate != nil {
		mutate(&cfg)
	}
	return cfg
}

// modelClient is a token and the identity the model must see for every
// statement of the client that presents it.
type modelClient struct {
	token string
	id    pgmodel.Identity
}

// newModelClient mints a token for role with string claims (sub and any
// others) and an exp an hour away.
func newModelClient(t testing.TB, role string, claims map[string]string) modelClient {
	t.Helper()
	exp := time.Now().Add(time.Hour).Unix()
	tc := map[string]any{"role": role, "exp": exp}
	id := pgmodel.Identity{Role: role, Claims: map[string]string{
		"jwt.claims.role": role,
		"jwt.claims.exp":  strconv.FormatInt(exp, 10),
	}}
	for k, v := range claims {
		tc[k] = v
		id.Claims["jwt.claims."+k] = v
	}
	return modelClient{token: pgtest.Token(t, tc), id: id}
}

// checkIdentity fails t if a client statement ran without the client's
// identity: every record that is neither pgtoken's own nor transaction
// control must show the identity of the client owner says it is from
// (given its index and the record).
func checkIdentity(t testing.TB, recs []pgmodel.Record, owner func(int, pgmodel.Record) (pgmodel.Identity, bool)) {
	t.Helper()
	var bad []string
	for i, r := range recs {
		if r.Own || r.Control {
			continue
		}
		id, ok := owner(i, r)
		if !ok || !r.Has(id) {
			bad = append(bad, r.String())
		}
	}
	if len(bad) > 0 {
		t.Errorf("client statements ran without the client's identity:\n  %s\nwhat the model ran:\n  %s",
			strings.Join(bad, "\n  "), strings.Join(recordLines(recs), "\n  "))
	}
}

func recordLines(recs []pgmodel.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.String()
	}
	return out
}

// leaveQuiet closes c once pgtoken has nothing in flight for its session
// (its read-back of session settings answered), so that pgtoken gives the
// server connection back to the pool rather than dropping it.
func leaveQuiet(t testing.TB, env *pgtest.Env, c *pgconn.PgConn, sub string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		busy := false
		for _, d := range env.App.Server.DebugSessions() {
			if d.Sub == sub && (len(d.Tracker.Units) > 0 || d.ServerPID != 0) {
				busy = true
			}
		}
		if !busy {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's session stays busy:\n%s", sub, session.DescribeSessions(env.App.Server))
		}
		time.Sleep(time.Millisecond)
	}
	_ = c.Close(context.Background())
}

// TestScenariosAgainstModel plays every scenario through pgtoken against
// the model and directly against the model (with the identity set for the
// session), wants the same replies (or a proxy scenario's expected ones),
// and wants every client statement the model ran to have run with the
// client's role and claims.
func TestScenariosAgainstModel(t *testing.T) {
	all, err := scenario.All()
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range all {
		t.Run(strings.TrimSuffix(sc.Name, ".txt"), func(t *testing.T) {
			t.Parallel()
			m, env := modelEnv(t, nil)
			alice := newModelClient(t, "web_user", map[string]string{"sub": "alice"})
			c := env.Connect(alice.token)
			got, err := scenario.Conn{FE: c.Frontend(), NC: c.Conn()}.Play(sc, 5*time.Second)
			if err != nil {
				t.Fatalf("through pgtoken: %v\n  %s\nwhat the model ran:\n  %s", err, strings.Join(got, "\n  "),
					strings.Join(recordLines(m.Records()), "\n  "))
			}
			want := sc.Expected()
			if !sc.Proxy {
				direct := startModel(t)
				if want, err = scenario.PlayDirect(direct.DSN(), sc, 5*time.Second); err != nil {
					t.Fatalf("directly: %v", err)
				}
			}
			if d := scenario.Diff(got, want); d != "" {
				t.Errorf("through pgtoken (left) and %s (right):\n%s", map[bool]string{true: "expected", false: "directly"}[sc.Proxy], d)
			}
			checkIdentity(t, m.Records(), func(int, pgmodel.Record) (pgmodel.Identity, bool) { return alice.id, true })
		})
	}
}

// TestPortalsOnConnectionOfAnotherClient: a client's first transaction on
// a server connection that served another client carries the hand-over
// reset, which comes with the first prelude. A portal the client bound
// earlier in that transaction must survive it: the portal of an
// extended-protocol CALL (the session prelude goes in front of its
// Execute), or of a statement that runs no code (a COMMIT bound before the
// Parse that brings the prelude). Against the model and against Postgres.
func TestPortalsOnConnectionOfAnotherClient(t *testing.T) {
	who := "select current_user::text, current_setting('jwt.claims.sub', true)"
	for _, tc := range []struct {
		name string
		msgs []pgproto3.FrontendMessage
		want []string
	}{
		{"call", []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "call commit_inside()"}, &pgproto3.Bind{},
			&pgproto3.Execute{}, &pgproto3.Sync{}},
			[]string{"ParseComplete", "BindComplete", "DataRow web_user|alice", "CommandComplete CALL", "ReadyForQuery I"}},
		{"bound before the prelude", []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "c", Query: "commit"},
			&pgproto3.Bind{PreparedStatement: "c"}, &pgproto3.Parse{Query: who}, &pgproto3.Execute{}, &pgproto3.Bind{},
			&pgproto3.Execute{}, &pgproto3.Sync{}},
			[]string{"ParseComplete", "BindComplete", "ParseComplete", "CommandComplete COMMIT", "BindComplete",
				"DataRow web_user|alice", "CommandComplete SELECT 1", "ReadyForQuery I"}},
		// BEGIN's portal lives on after the Sync (its transaction does);
		// executing it again fails as directly, with 55000, not 34000.
		{"begin bound in the batch before", []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "begin"}, &pgproto3.Bind{},
			&pgproto3.Execute{}, &pgproto3.Sync{}, &pgproto3.Parse{Name: "s", Query: who}, &pgproto3.Execute{}, &pgproto3.Sync{}},
			[]string{"ParseComplete", "BindComplete", "CommandComplete BEGIN", "ReadyForQuery T", "ParseComplete",
				`ErrorResponse 55000 portal "" cannot be run position=0`, "ReadyForQuery E"}},
		// A BEGIN in a Query of its own, then a batch that binds a
		// portal after a ROLLBACK and only then brings the prelude: the
		// reset went with that prelude and closed the portal (found by
		// fuzzing); it goes ahead of the BEGIN's Query now.
		{"bound after a rollback in a batch after BEGIN", []pgproto3.FrontendMessage{&pgproto3.Query{String: "begin"},
			&pgproto3.Parse{Query: "rollback"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Bind{DestinationPortal: "p"},
			&pgproto3.Parse{Query: who}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Execute{Portal: "p"}, &pgproto3.Sync{}},
			[]string{"CommandComplete BEGIN", "ReadyForQuery T", "ParseComplete", "BindComplete", "CommandComplete ROLLBACK",
				"BindComplete", "ParseComplete", "BindComplete", "DataRow web_user|alice", "CommandComplete SELECT 1",
				"CommandComplete ROLLBACK", "ReadyForQuery I"}},
	} {
		n := 0
		for _, m := range tc.msgs {
			switch m.(type) {
			case *pgproto3.Sync, *pgproto3.Query:
				n++
			}
		}
		sc := &scenario.Scenario{Name: tc.name, Blocks: []scenario.Block{{Kind: "send", Msgs: tc.msgs}, {Kind: "until", N: n}}}
		check := func(t *testing.T, env *pgtest.Env) {
			bob := env.Connect(pgtest.UserToken(t, "bob"))
			rows(t, bob, "select 1") // the pool's one server connection served bob
			alice := env.Connect(pgtest.UserToken(t, "alice"))
			got, err := scenario.Conn{FE: alice.Frontend(), NC: alice.Conn()}.Play(sc, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if d := scenario.Diff(got, tc.want); d != "" {
				t.Fatalf("alice (left; want right):\n%s", d)
			}
		}
		t.Run(tc.name+"/model", func(t *testing.T) {
			_, env := modelEnv(t, nil)
			check(t, env)
		})
		t.Run(tc.name+"/postgres", func(t *testing.T) {
			check(t, pgtest.Start(t, func(c *config.Config) { c.Pool.Size = 1 }))
		})
	}
}

// TestErrorBeforeQueryDoesNotWedge: an error in a batch makes the server
// skip everything until Sync, a Query queued behind the error included. The
// server connection must not go back to the pool before the client's Sync
// reached it: the next client's Query would be skipped, never answered.
// Against the model and against Postgres.
func TestErrorBeforeQueryDoesNotWedge(t *testing.T) {
	who := "select current_user::text, current_setting('jwt.claims.sub', true)"
	alice := &scenario.Scenario{Name: "alice", Blocks: []scenario.Block{
		{Kind: "send", Msgs: []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "select 1/0"}, &pgproto3.Bind{},
			&pgproto3.Execute{}, &pgproto3.Query{String: who}}},
		{Kind: "read", N: 2}, // ParseComplete, and the error (flushed at once); the Query is skipped
		{Kind: "send", Msgs: []pgproto3.FrontendMessage{&pgproto3.Sync{}}},
		{Kind: "until", N: 1},
	}}
	bob := &scenario.Scenario{Name: "bob", Blocks: []scenario.Block{
		{Kind: "send", Msgs: []pgproto3.FrontendMessage{&pgproto3.Query{String: who}}},
		{Kind: "until", N: 1},
	}}
	check := func(t *testing.T, env *pgtest.Env) {
		a := env.Connect(pgtest.UserToken(t, "alice"))
		b := env.Connect(pgtest.UserToken(t, "bob"))
		got, err := scenario.Conn{FE: a.Frontend(), NC: a.Conn()}.Play(alice, 5*time.Second)
		if err != nil {
			t.Fatalf("alice: %v", err)
		}
		if want := []string{"ParseComplete", "ErrorResponse 22012 division by zero position=0", "ReadyForQuery I"}; scenario.Diff(got, want) != "" {
			t.Fatalf("alice (left; want right):\n%s", scenario.Diff(got, want))
		}
		got, err = scenario.Conn{FE: b.Frontend(), NC: b.Conn()}.Play(bob, 5*time.Second)
		if err != nil {
			t.Fatalf("bob's Query after alice's batch was never answered: %v\n%s", err, session.DescribeSessions(env.App.Server))
		}
		if want := []string{"RowDescription current_user,current_setting", "DataRow web_user|bob", "CommandComplete SELECT 1", "ReadyForQuery I"}; scenario.Diff(got, want) != "" {
			t.Fatalf("bob (left; want right):\n%s", scenario.Diff(got, want))
		}
	}
	t.Run("model", func(t *testing.T) {
		_, env := modelEnv(t, nil)
		check(t, env)
	})
	t.Run("postgres", func(t *testing.T) {
		check(t, pgtest.Start(t, func(c *config.Config) { c.Pool.Size = 1 }))
	})
}

// TestHandOverResetNotConfirmedByEarlierCommit: the hand-over reset goes
// after a COMMIT AND CHAIN at the end of a Query, which fails outside a
// transaction block, so the reset never runs; a COMMIT earlier in the same
// Query must not count as the reset's commit. Otherwise what the previous
// client left on the server connection stays: its session settings, and
// after its CALL (which sets its role and claims for the session) its
// claims. Against the model and against Postgres; the model also checks
// alice's statements ran with her identity only.
func TestHandOverResetNotConfirmedByEarlierCommit(t *testing.T) {
	who := "select current_user::text, current_setting('jwt.claims.sub', true), coalesce(current_setting('jwt.claims.tenant', true), ''), coalesce(current_setting('app.flag', true), '')"
	check := func(t *testing.T, env *pgtest.Env, tok string) {
		bob := env.Connect(pgtest.Token(t, map[string]any{"role": "web_user", "sub": "bob", "tenant": "bobs"}))
		rows(t, bob, "set app.flag = 'bobs'")
		if _, err := bob.ExecParams(ctx(t), "call commit_inside()", nil, nil, nil, nil).Close(); err != nil {
			t.Fatal(err)
		}
		leaveQuiet(t, env, bob, "bob")
		alice := env.Connect(tok)
		sc := &scenario.Scenario{Name: "alice", Blocks: []scenario.Block{
			{Kind: "send", Msgs: []pgproto3.FrontendMessage{&pgproto3.Query{String: "commit and chain"},
				&pgproto3.Query{String: "commit; commit and chain"}, &pgproto3.Query{String: "commit; " + who}}},
			{Kind: "until", N: 3},
		}}
		got, err := scenario.Conn{FE: alice.Frontend(), NC: alice.Conn()}.Play(sc, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) < 3 || got[len(got)-3] != "DataRow web_user|alice||" {
			t.Errorf("alice's last Query saw the connection's previous client (want DataRow web_user|alice||):\n  %s", strings.Join(got, "\n  "))
		}
	}
	t.Run("model", func(t *testing.T) {
		m, env := modelEnv(t, nil)
		alice := newModelClient(t, "web_user", map[string]string{"sub": "alice"})
		check(t, env, alice.token)
		var recs []pgmodel.Record
		for _, r := range m.Records() {
			if strings.Contains(r.SQL, "app.flag', true)") {
				recs = append(recs, r)
			}
		}
		checkIdentity(t, recs, func(int, pgmodel.Record) (pgmodel.Identity, bool) { return alice.id, true })
	})
	t.Run("postgres", func(t *testing.T) {
		check(t, pgtest.Start(t, func(c *config.Config) { c.Pool.Size = 1 }), pgtest.UserToken(t, "alice"))
	})
}

// TestSettingSurvivesResetAfterEarlierRollback: on a server connection that
// served another client, the hand-over reset goes with alice's first
// prelude, here after a ROLLBACK at the start of her Query, and commits with
// her SET. The ROLLBACK before it must not make the reset count as undone
// (then it runs again, and alice's setting is gone). Against the model and
// against Postgres.
func TestSettingSurvivesResetAfterEarlierRollback(t *testing.T) {
	check := func(t *testing.T, env *pgtest.Env) {
		bob := env.Connect(pgtest.UserToken(t, "bob"))
		rows(t, bob, "select 1") // the pool's one server connection served bob
		alice := env.Connect(pgtest.UserToken(t, "alice"))
		rows(t, alice, "rollback; set app.flag = 'alice'")
		if got := rows(t, alice, "select coalesce(current_setting('app.flag', true), '')"); len(got) != 1 || got[0][0] != "alice" {
			t.Fatalf("alice's setting after her next Query: %q, want alice", got)
		}
	}
	t.Run("model", func(t *testing.T) {
		_, env := modelEnv(t, nil)
		check(t, env)
	})
	t.Run("postgres", func(t *testing.T) {
		check(t, pgtest.Start(t, func(c *config.Config) { c.Pool.Size = 1 }))
	})
}

// TestSkippedResetIsNotConfirmed: on a server connection that served
// another client, alice's first transaction fails (the reset with it rolls
// back), and the reset goes again with her next prelude, behind a message
// pgtoken refuses (a Bind of a statement that does not exist), which makes
// the server skip the rest of the batch, the reset included. The Sync's
// ReadyForQuery must not count as the reset's commit. Against the model
// and against Postgres.
func TestSkippedResetIsNotConfirmed(t *testing.T) {
	show := "select coalesce(current_setting('app.flag', true), '')"
	sc := &scenario.Scenario{Name: "alice", Blocks: []scenario.Block{
		{Kind: "send", Msgs: []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "select 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Bind{PreparedStatement: "nope"}, &pgproto3.Parse{Query: show}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}}},
		{Kind: "until", N: 2},
		{Kind: "send", Msgs: []pgproto3.FrontendMessage{&pgproto3.Parse{Query: show}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}}},
		{Kind: "until", N: 1},
	}}
	want := []string{"ParseComplete", "ErrorResponse 22012 division by zero position=0", "ReadyForQuery I",
		`ErrorResponse 26000 prepared statement "nope" does not exist position=0`, "ReadyForQuery I",
		"ParseComplete", "BindComplete", "DataRow ", "CommandComplete SELECT 1", "ReadyForQuery I"}
	check := func(t *testing.T, env *pgtest.Env) {
		bob := env.Connect(pgtest.UserToken(t, "bob"))
		rows(t, bob, "set app.flag = 'bobs'")
		leaveQuiet(t, env, bob, "bob")
		alice := env.Connect(pgtest.UserToken(t, "alice"))
		got, err := scenario.Conn{FE: alice.Frontend(), NC: alice.Conn()}.Play(sc, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if d := scenario.Diff(got, want); d != "" {
			t.Fatalf("alice (left; want right):\n%s", d)
		}
	}
	t.Run("model", func(t *testing.T) {
		_, env := modelEnv(t, nil)
		check(t, env)
	})
	t.Run("postgres", func(t *testing.T) {
		check(t, pgtest.Start(t, func(c *config.Config) { c.Pool.Size = 1 }))
	})
}
