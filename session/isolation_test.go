package session_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// identSQL asks the server who is running this statement. A claim that is
// not set reads as an empty string on a connection where some session had
// set it, so empty counts as unset.
const identSQL = "select current_user::text, coalesce(nullif(current_setting('jwt.claims.sub', true), ''), '<none>'), coalesce(nullif(current_setting('jwt.claims.q', true), ''), '<none>')"

// identity is what one client's statements must see.
type identity struct{ role, sub, q string }

// isoClient runs random flows and checks every identity row it gets.
type isoClient struct {
	t          testing.TB
	c          *pgconn.PgConn
	want       identity
	rnd        *rand.Rand
	checked    *atomic.Int64
	mismatches *atomic.Int64
	// chaos, when set, tolerates (and counts) every error: server
	// connections are being killed and the server restarted. Identity
	// mismatches are never tolerated.
	chaos *chaosCounts
	flow  int // the flow step runs (or ran last)
}

// judge checks a flow's error: under chaos every error is counted, else it
// must be exactly what the flow expects.
func (ic *isoClient) judge(flow string, err error, wantErr bool) {
	if ic.chaos != nil {
		if err != nil {
			ic.chaos.note(err)
		}
		return
	}
	if (err != nil) != wantErr {
		ic.t.Errorf("%s: err = %v", flow, err)
	}
}

func (ic *isoClient) check(flow string, res []*pgconn.Result) {
	for _, r := range res {
		for _, row := range r.Rows {
			if len(row) != 3 {
				continue
			}
			ic.checked.Add(1)
			got := identity{string(row[0]), string(row[1]), string(row[2])}
			if got != ic.want {
				if n := ic.mismatches.Add(1); n <= 20 {
					ic.t.Errorf("IDENTITY MISMATCH in flow %q: statement saw %+v, want %+v", flow, got, ic.want)
				}
			}
		}
	}
}

func (ic *isoClient) simple(ctx context.Context, flow, sql string, wantErr bool) {
	res, err := ic.c.Exec(ctx, sql).ReadAll()
	ic.judge(flow+": "+sql, err, wantErr)
	ic.check(flow, res)
}

func (ic *isoClient) batch(ctx context.Context, flow string, sqls []string, wantErr bool) {
	b := &pgconn.Batch{}
	for _, s := range sqls {
		b.ExecParams(s, nil, nil, nil, nil)
	}
	res, err := ic.c.ExecBatch(ctx, b).ReadAll()
	ic.judge(flow, err, wantErr)
	ic.check(flow, res)
}

// step runs one randomly chosen flow.
func (ic *isoClient) step(ctx context.Context) {
	q := identSQL
	ic.flow = ic.rnd.IntN(17)
	switch ic.flow {
	case 0:
		ic.simple(ctx, "simple", q, false)
	case 1:
		ic.simple(ctx, "commit mid-string", q+"; commit; "+q+"; begin; "+q+"; commit; "+q, false)
	case 2:
		ic.simple(ctx, "begin", "begin", false)
		ic.simple(ctx, "in tx", q, false)
		ic.simple(ctx, "savepoint", "savepoint s1", false)
		ic.simple(ctx, "error in tx", "select 1/0", true)
		ic.simple(ctx, "rollback to", "rollback to savepoint s1", false)
		ic.simple(ctx, "after rollback to", q, false)
		ic.simple(ctx, "commit", "commit", false)
	case 3:
		r := ic.c.ExecParams(ctx, q+" where $1::int > 0", [][]byte{[]byte("1")}, nil, nil, nil).Read()
		ic.judge("extended", r.Err, false)
		ic.check("extended", []*pgconn.Result{r})
	case 4:
		ic.batch(ctx, "batch commit mid", []string{q, "begin", q, "commit", q, "begin", q, "rollback", q}, false)
	case 5:
		ic.simple(ctx, "error", "select 1/0", true)
		ic.simple(ctx, "after error", q, false)
	case 6:
		ic.simple(ctx, "rollback flow", "begin; "+q, false)
		ic.simple(ctx, "rollback", "rollback", false)
	case 7:
		ic.batch(ctx, "begin isolation", []string{"begin isolation level repeatable read", q, "commit"}, false)
	case 8:
		ic.batch(ctx, "error in batch", []string{q, "select 1/0", q}, true)
		ic.simple(ctx, "after batch error", q, false)
	case 9:
		// Pipelined batches, each with its own Sync.
		p := ic.c.StartPipeline(ctx)
		p.SendQueryParams(q, nil, nil, nil, nil)
		p.Sync()
		p.SendQueryParams("begin", nil, nil, nil, nil)
		p.SendQueryParams(q, nil, nil, nil, nil)
		p.Sync()
		p.SendQueryParams(q, nil, nil, nil, nil)
		p.SendQueryParams("commit", nil, nil, nil, nil)
		p.SendQueryParams(q, nil, nil, nil, nil)
		p.Sync()
		if err := p.Flush(); err != nil {
			ic.judge("pipeline flush", err, false)
		}
		for {
			r, err := p.GetResults()
			if err != nil {
				ic.judge("pipeline", err, false)
				break
			}
			if r == nil {
				break
			}
			if rr, ok := r.(*pgconn.ResultReader); ok {
				res := rr.Read()
				ic.judge("pipeline result", res.Err, false)
				ic.check("pipeline", []*pgconn.Result{res})
			}
		}
		if err := p.Close(); err != nil {
			ic.judge("pipeline close", err, false)
		}
	case 10:
		ic.simple(ctx, "explicit across messages", "begin", false)
		for range 3 {
			ic.simple(ctx, "explicit across messages", q, false)
		}
		ic.batch(ctx, "explicit batch", []string{q, q}, false)
		ic.simple(ctx, "explicit across messages", "commit; "+q, false)
	case 11:
		ic.simple(ctx, "chain", "begin; "+q+"; commit and chain; "+q+"; rollback and chain; "+q+"; commit", false)
	case 12:
		// A named statement prepared once, used in later transactions on
		// whatever server connection they get.
		r := ic.c.ExecPrepared(ctx, "iso", nil, nil, nil).Read()
		ic.judge("prepared", r.Err, false)
		ic.check("prepared", []*pgconn.Result{r})
	case 13:
		ic.simple(ctx, "sql prepared", "execute isosql", false)
	case 14:
		// BEGIN alone in an extended batch (libpq PQexecParams, pgbench
		// -M extended): the rest of the transaction needs the prelude.
		for _, sql := range []string{"begin", q, q, "commit"} {
			r := ic.c.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
			ic.judge("extended begin alone", r.Err, false)
			ic.check("extended begin alone", []*pgconn.Result{r})
		}
	case 15:
		ic.batch(ctx, "begin isolation alone", []string{"begin isolation level serializable"}, false)
		ic.batch(ctx, "after begin isolation", []string{q}, false)
		ic.simple(ctx, "after begin isolation", "commit", false)
	case 16:
		// A statement that cannot run in a transaction block: pgtoken
		// sets the identity for the session around it, and must undo it
		// before anyone else gets the connection. (VACUUM of a table the
		// role does not own only warns.)
		ic.simple(ctx, "vacuum", "vacuum notes", false)
		ic.simple(ctx, "after vacuum", q, false)
	}
}

// isoIdentity is what client i of an isolation run is, and its token. Every
// fourth client has no claim q, so a q left on a server connection by
// another client shows.
func isoIdentity(t testing.TB, i int) (identity, string) {
	role := "web_user"
	if i%3 == 0 {
		role = "web_admin"
	}
	want := identity{role: role, sub: fmt.Sprintf(`user'%d"\`, i), q: fmt.Sprintf("q %d: it's \"quoted\" $$ ;", i)}
	claims := map[string]any{"role": role, "sub": want.sub, "q": want.q}
	if i%4 == 1 {
		want.q = "<none>"
		delete(claims, "q")
	}
	return want, pgtest.Token(t, claims)
}

// isoConnect logs client i in; every other client brings its own startup
// settings, so server connections need a settings sync when they change
// hands.
func isoConnect(t *testing.T, env *pgtest.Env, i int, tok string) *pgconn.PgConn {
	if i%2 == 0 {
		return env.Connect(tok)
	}
	cfg, err := pgconn.ParseConfig(env.DSN(tok))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = fmt.Sprintf("iso-%d", i)
	cfg.RuntimeParams["TimeZone"] = "Asia/Tokyo"
	c, err := pgconn.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// isoPrepare prepares the statements the flows use (per client session).
func isoPrepare(ctx context.Context, c *pgconn.PgConn) error {
	if _, err := c.Prepare(ctx, "iso", identSQL, nil); err != nil {
		return err
	}
	_, err := c.Exec(ctx, "prepare isosql as "+identSQL).ReadAll()
	return err
}

// runIsolation runs clients concurrently for iterations each and reports
// how many identity rows were checked.
func runIsolation(t *testing.T, env *pgtest.Env, clients, iterations int) int64 {
	var checked, mismatches atomic.Int64
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for i := range clients {
		want, tok := isoIdentity(t, i)
		c := isoConnect(t, env, i, tok)
		if err := isoPrepare(context.Background(), c); err != nil {
			t.Fatal(err)
		}
		ic := &isoClient{t: t, c: c, want: want, rnd: rand.New(rand.NewPCG(uint64(i), 42)), checked: &checked, mismatches: &mismatches}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range iterations {
				if ctx.Err() != nil {
					return
				}
				ic.step(ctx)
			}
		}()
	}
	wg.Wait()
	if mismatches.Load() != 0 {
		t.Fatalf("%d identity mismatches in %d checked statements", mismatches.Load(), checked.Load())
	}
	return checked.Load()
}

func TestIsolationManyClientsSmallPool(t *testing.T) {
	checkLeaks(t)               // reliability_test.go
	env := pgtest.Start(t, nil) // pool size 2
	iterations := 150
	if testing.Short() {
		iterations = 30
	}
	n := runIsolation(t, env, 24, iterations)
	t.Logf("%d statements checked, no mismatches", n)
	if n < 5000 && !testing.Short() {
		t.Fatalf("only %d identity rows checked", n)
	}
	// Nothing of any client stays on the server connections.
	c := env.Direct()
	got := rows(t, c, identSQL)
	if got[0][0] != "authenticator" || !strings.Contains(got[0][1], "<none>") && got[0][1] != "" {
		t.Fatalf("direct connection after the run: %q", got)
	}
}
