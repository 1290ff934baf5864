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

// identSQL asks the server who is running this statement.
const identSQL = "select current_user::text, coalesce(current_setting('jwt.claims.sub', true), '<none>'), coalesce(current_setting('jwt.claims.q', true), '<none>')"

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
				ic.mismatches.Add(1)
				ic.t.Errorf("%s: statement saw %+v, want %+v", flow, got, ic.want)
			}
		}
	}
}

func (ic *isoClient) simple(ctx context.Context, flow, sql string, wantErr bool) {
	res, err := ic.c.Exec(ctx, sql).ReadAll()
	if (err != nil) != wantErr {
		ic.t.Errorf("%s: %q: err = %v", flow, sql, err)
	}
	ic.check(flow, res)
}

func (ic *isoClient) batch(ctx context.Context, flow string, sqls []string, wantErr bool) {
	b := &pgconn.Batch{}
	for _, s := range sqls {
		b.ExecParams(s, nil, nil, nil, nil)
	}
	res, err := ic.c.ExecBatch(ctx, b).ReadAll()
	if (err != nil) != wantErr {
		ic.t.Errorf("%s: err = %v", flow, err)
	}
	ic.check(flow, res)
}

// step runs one randomly chosen flow.
func (ic *isoClient) step(ctx context.Context) {
	q := identSQL
	switch ic.rnd.IntN(14) {
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
		if r.Err != nil {
			ic.t.Errorf("extended: %v", r.Err)
		}
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
			ic.t.Errorf("pipeline flush: %v", err)
		}
		for {
			r, err := p.GetResults()
			if err != nil {
				ic.t.Errorf("pipeline: %v", err)
				break
			}
			if r == nil {
				break
			}
			if rr, ok := r.(*pgconn.ResultReader); ok {
				res := rr.Read()
				if res.Err != nil {
					ic.t.Errorf("pipeline result: %v", res.Err)
				}
				ic.check("pipeline", []*pgconn.Result{res})
			}
		}
		if err := p.Close(); err != nil {
			ic.t.Errorf("pipeline close: %v", err)
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
		if r.Err != nil {
			ic.t.Errorf("prepared: %v", r.Err)
		}
		ic.check("prepared", []*pgconn.Result{r})
	case 13:
		ic.simple(ctx, "sql prepared", "execute isosql", false)
	}
}

// runIsolation runs clients concurrently for iterations each and reports
// how many identity rows were checked.
func runIsolation(t *testing.T, env *pgtest.Env, clients, iterations int) int64 {
	var checked, mismatches atomic.Int64
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for i := range clients {
		role := "web_user"
		if i%3 == 0 {
			role = "web_admin"
		}
		want := identity{role: role, sub: fmt.Sprintf(`user'%d"\`, i), q: fmt.Sprintf("q %d: it's \"quoted\" $$ ;", i)}
		tok := pgtest.Token(t, map[string]any{"role": role, "sub": want.sub, "q": want.q})
		c := env.Connect(tok)
		if _, err := c.Prepare(context.Background(), "iso", identSQL, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(context.Background(), "prepare isosql as "+identSQL).ReadAll(); err != nil {
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
