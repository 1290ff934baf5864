package pool_test

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/testpg"
	"github.com/pgtoken/pgtoken/session/pool"
)

// stallAfterWrite is a server socket whose Write, for bytes holding
// marker, returns only after stall: the answer is in by then. pgconn starts
// its background reader once a write has taken 15ms, and that reader, having
// read the answer before pgconn asks it to stop, goes on to read again.
type stallAfterWrite struct {
	net.Conn
	marker []byte
	stall  time.Duration
}

func (c stallAfterWrite) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if bytes.Contains(p, c.marker) {
		time.Sleep(c.stall)
	}
	return n, err
}

// answers records the server messages a conn's reader hands over.
type answers struct {
	mu   sync.Mutex
	msgs []byte
	rfq  chan struct{}
}

func (a *answers) ServerMessage(c *pool.Conn, typ byte, _ int) error {
	a.mu.Lock()
	a.msgs = append(a.msgs, typ)
	a.mu.Unlock()
	if typ == 'Z' {
		close(a.rfq)
	}
	return c.R.Skip()
}

func (a *answers) ServerIdle(*pool.Conn)        {}
func (a *answers) ServerGone(*pool.Conn, error) {}

// TestFirstAnswerReachesTheConnsReader: when AfterConnect's query leaves
// pgconn's background reader reading the socket (its write was slow: a
// loaded machine while the pool fills), the conn must still be handed out
// with nobody else reading it, so the answer to the first query sent on it
// reaches its own reader. (Issue 17: with SyncConn before AfterConnect, the
// background reader took that answer and the client waited forever.)
func TestFirstAnswerReachesTheConnsReader(t *testing.T) {
	pg := testpg.Shared(t)
	cfg, err := pgconn.ParseConfig(pg.SuperuserDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	const marker = "pgtoken-after-connect"
	var d net.Dialer
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return stallAfterWrite{Conn: c, marker: []byte(marker), stall: 100 * time.Millisecond}, nil
	}
	for i := range 3 {
		p, err := pool.New(pool.Config{Name: "postgres", PgConfig: cfg, Size: 1,
			AfterConnect: func(ctx context.Context, pc *pgconn.PgConn) error {
				_, err := pc.Exec(ctx, "select '"+marker+"'").ReadAll()
				return err
			}})
		if err != nil {
			t.Fatal(err)
		}
		c, err := p.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		a := &answers{rfq: make(chan struct{})}
		c.Attach(a)
		at := c.W.Begin('Q')
		c.W.AppendCString("select 1")
		c.W.End(at)
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-a.rfq:
		case <-time.After(5 * time.Second):
			a.mu.Lock()
			t.Errorf("conn %d: no ReadyForQuery for the first query within 5s; its reader saw %q", i, a.msgs)
			a.mu.Unlock()
		}
		p.Release(c)
		p.Close()
	}
}
