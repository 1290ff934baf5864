package pool

import (
	"context"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/testpg"
)

func TestMain(m *testing.M) { testpg.Main(m) }

// fakeClock is the pool's clock of lifetimes and idle times in a test.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

// sockets records the server sockets a test pool dials, so a test can
// count what the pool writes and make a socket a black hole.
type sockets struct {
	refuse atomic.Bool // dial fails, as against a server that is down
	mu     sync.Mutex
	all    []*socket
}

// socket is a server connection that counts the bytes written to it and,
// once frozen, swallows them: the server never answers, as across a
// network partition where nothing tells either side.
type socket struct {
	net.Conn
	written atomic.Int64
	frozen  atomic.Bool
}

func (s *socket) Write(b []byte) (int, error) {
	if s.frozen.Load() {
		return len(b), nil
	}
	n, err := s.Conn.Write(b)
	s.written.Add(int64(n))
	return n, err
}

func (ss *sockets) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if ss.refuse.Load() {
		return nil, syscall.ECONNREFUSED
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	s := &socket{Conn: nc}
	ss.mu.Lock()
	ss.all = append(ss.all, s)
	ss.mu.Unlock()
	return s, nil
}

// of returns the socket under c.
func (ss *sockets) of(t *testing.T, c *Conn) *socket {
	t.Helper()
	s, ok := c.nc.(*socket)
	if !ok {
		t.Fatalf("conn %d was not dialled by the test", c.PID)
	}
	return s
}

// testPool is a pool of the shared test cluster under test.
type testPool struct {
	*Pool
	t       *testing.T
	pg      *testpg.Cluster
	sockets *sockets
}

// quiet is a lifecycle that changes nothing a test did not ask for.
var quiet = Lifecycle{ServerLifetime: 24 * time.Hour, CheckDelay: 24 * time.Hour}

// newTestPool makes a pool of cfg (Size 1 and quiet when unset) on the
// shared cluster. now is its clock (nil: real time); its janitor runs only
// when kicked or called, so a test decides when time has passed. Cleanup
// closes it and waits for its goroutines.
func newTestPool(t *testing.T, cfg Config, now func() time.Time) *testPool {
	t.Helper()
	pg := testpg.Shared(t)
	pgcfg, err := pgconn.ParseConfig(pg.SuperuserDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	ss := &sockets{}
	pgcfg.DialFunc = ss.dial
	cfg.PgConfig = pgcfg
	if cfg.Size == 0 {
		cfg.Size = 1
	}
	if cfg.Lifecycle == (Lifecycle{}) {
		cfg.Lifecycle = quiet
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if now == nil {
		now = time.Now
	}
	p, err := newPool(cfg, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Close()
		// Conns a test still holds close only when given back: drop them.
		p.mu.Lock()
		var held []*Conn
		for c := range p.conns {
			held = append(held, c)
		}
		p.mu.Unlock()
		for _, c := range held {
			c.Close()
		}
		waitDone(t, "the pool's goroutines to end", p.Wait)
	})
	return &testPool{Pool: p, t: t, pg: pg, sockets: ss}
}

// acquire takes a conn or fails the test.
func (tp *testPool) acquire() *Conn {
	tp.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := tp.Acquire(ctx)
	if err != nil {
		tp.t.Fatalf("acquire: %v", err)
	}
	return c
}

// stats waits until the pool's stats satisfy ok.
func (tp *testPool) waitStats(what string, ok func(Stats) bool) Stats {
	tp.t.Helper()
	var st Stats
	waitFor(tp.t, what, func() bool { st = tp.Stats(); return ok(st) })
	return st
}

// terminate ends the backend of a server connection from another session,
// as an administrator or a restart would.
func (tp *testPool) terminate(pid uint32) {
	tp.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tp.pg.Exec(ctx, "postgres", "select pg_terminate_backend("+strconv.FormatUint(uint64(pid), 10)+")"); err != nil {
		tp.t.Fatal(err)
	}
}

// query runs sql on c, which the caller holds, through the conn's reader
// goroutine, and returns the transaction status of the ReadyForQuery that
// ends it: the conn still speaks the protocol in step.
func query(t *testing.T, c *Conn, sql string) byte {
	t.Helper()
	h := &oneQuery{done: make(chan byte, 1)}
	c.Attach(h)
	defer c.Detach()
	at := c.W.Begin('Q')
	c.W.AppendCString(sql)
	c.W.End(at)
	if err := c.Flush(); err != nil {
		t.Fatalf("query %q: %v", sql, err)
	}
	select {
	case st := <-h.done:
		if st == 0 {
			t.Fatalf("query %q: the connection broke", sql)
		}
		return st
	case <-time.After(10 * time.Second):
		t.Fatalf("query %q: no ReadyForQuery", sql)
	}
	return 0
}

// oneQuery takes the answers to one Query; done gets the final status, or
// 0 if the conn broke.
type oneQuery struct{ done chan byte }

func (h *oneQuery) ServerMessage(c *Conn, typ byte, _ int) error {
	if typ != 'Z' {
		return c.R.Skip()
	}
	body, err := c.R.Body()
	if err != nil {
		return err
	}
	h.finish(body[0])
	return nil
}
func (*oneQuery) ServerIdle(*Conn)          {}
func (h *oneQuery) ServerGone(*Conn, error) { h.finish(0) }

func (h *oneQuery) finish(status byte) {
	select {
	case h.done <- status:
	default:
	}
}

// waitFor polls cond until it holds, failing the test after 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitDone runs f and fails the test if it has not returned in 10 seconds.
func waitDone(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { f(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// acquireAsync starts an Acquire on its own goroutine.
func (tp *testPool) acquireAsync(ctx context.Context) <-chan acquired {
	ch := make(chan acquired, 1)
	go func() {
		c, err := tp.Acquire(ctx)
		ch <- acquired{c, err}
	}()
	return ch
}

type acquired struct {
	c   *Conn
	err error
}

// receive waits for an acquireAsync result.
func receive(t *testing.T, ch <-chan acquired) acquired {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for Acquire")
	}
	return acquired{}
}
