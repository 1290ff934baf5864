package pool

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

func TestPlan(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	fresh := idleConn{born: now.Add(-time.Minute), lastUsed: now}
	unused := func(d time.Duration) idleConn {
		return idleConn{born: now.Add(-d - time.Minute), lastUsed: now.Add(-d)}
	}
	old := idleConn{born: now.Add(-2 * time.Hour), lastUsed: now}
	life := func(f func(*Lifecycle)) Lifecycle {
		l := Lifecycle{ServerLifetime: time.Hour, IdleTimeout: 10 * time.Minute, CheckDelay: 30 * time.Second}
		if f != nil {
			f(&l)
		}
		return l
	}
	tests := []struct {
		name        string
		l           Lifecycle
		size, total int
		idle        []idleConn
		canOpen     bool
		closes      []closing
		open        int
	}{
		{name: "nothing to do", l: life(nil), size: 2, total: 1, idle: []idleConn{fresh}, canOpen: true},
		{name: "opens up to min_size", l: life(func(l *Lifecycle) { l.MinSize = 3 }), size: 5, total: 1, canOpen: true, open: 2},
		{name: "min_size counts busy conns and logins", l: life(func(l *Lifecycle) { l.MinSize = 3 }), size: 5, total: 3, canOpen: true},
		{name: "min_size is capped at the size", l: life(func(l *Lifecycle) { l.MinSize = 5 }), size: 2, canOpen: true, open: 2},
		{name: "no login while it may not open", l: life(func(l *Lifecycle) { l.MinSize = 2 }), size: 2, canOpen: false},
		{
			name: "lifetime closes an idle conn, min_size replaces it",
			l:    life(func(l *Lifecycle) { l.MinSize = 1 }), size: 2, total: 1, idle: []idleConn{old}, canOpen: true,
			closes: []closing{{0, closeLifetime}}, open: 1,
		},
		{
			name: "lifetime 0 leaves idle conns to be used once",
			l:    life(func(l *Lifecycle) { l.ServerLifetime = 0 }), size: 2, total: 1, idle: []idleConn{old}, canOpen: true,
		},
		{
			name: "conns above the size close, least recently used first",
			l:    life(nil), size: 1, total: 3, idle: []idleConn{fresh, fresh},
			closes: []closing{{0, closeSurplus}, {1, closeSurplus}},
		},
		{
			name: "surplus closes only down to the size",
			l:    life(nil), size: 2, total: 3, idle: []idleConn{fresh, fresh},
			closes: []closing{{0, closeSurplus}},
		},
		{
			name: "idle timeout closes unused conns down to min_size",
			l:    life(func(l *Lifecycle) { l.MinSize = 1 }), size: 5, total: 3,
			idle:   []idleConn{unused(11 * time.Minute), unused(11 * time.Minute), unused(11 * time.Minute)},
			closes: []closing{{0, closeIdle}, {1, closeIdle}},
		},
		{
			name: "idle timeout spares conns used recently",
			l:    life(nil), size: 5, total: 2, idle: []idleConn{unused(11 * time.Minute), unused(time.Minute)},
			closes: []closing{{0, closeIdle}},
		},
		{
			name: "busy conns count toward min_size",
			l:    life(func(l *Lifecycle) { l.MinSize = 2 }), size: 5, total: 2, idle: []idleConn{unused(time.Hour - 2*time.Minute)},
		},
		{
			name: "idle timeout 0 keeps idle conns",
			l:    life(func(l *Lifecycle) { l.IdleTimeout = 0 }), size: 5, total: 1, idle: []idleConn{unused(50 * time.Minute)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			closes, open := plan(tt.l, tt.size, tt.total, tt.idle, now, tt.canOpen)
			if !slices.Equal(closes, tt.closes) || open != tt.open {
				t.Fatalf("plan = %v, open %d; want %v, open %d", closes, open, tt.closes, tt.open)
			}
		})
	}
}

func TestMinSizeIsKeptWarm(t *testing.T) {
	l := quiet
	l.MinSize = 2
	tp := newTestPool(t, Config{Size: 3, Lifecycle: l}, nil)
	tp.waitStats("min_size conns to open", func(st Stats) bool { return st.Idle == 2 && st.Total == 2 })

	before := tp.Conns()
	tp.terminate(before[0].PID)
	tp.waitStats("the lost conn to be replaced", func(st Stats) bool {
		if st.Idle != 2 || st.Total != 2 {
			return false
		}
		for _, ci := range tp.Conns() {
			if ci.PID == before[0].PID {
				return false
			}
		}
		return true
	})

	// A reload that raises min_size opens more at once, never above size.
	l.MinSize = 10
	tp.SetLifecycle(l)
	tp.waitStats("the pool to fill to its size", func(st Stats) bool { return st.Total == 3 && st.Connecting == 0 })
	tp.maintain()
	if st := tp.Stats(); st.Total != 3 {
		t.Fatalf("min_size above the size opened %d conns", st.Total)
	}
}

func TestMinSizeWaitsAfterAFailedLogin(t *testing.T) {
	clk := newFakeClock()
	l := quiet
	l.MinSize = 1
	tp := newTestPool(t, Config{Size: 2}, clk.Now)
	tp.sockets.refuse.Store(true)
	tp.SetLifecycle(l) // kicks the janitor
	tp.maintain()
	tp.waitStats("the failed logins to settle", func(st Stats) bool { return st.Connecting == 0 })
	if st := tp.Stats(); st.Total != 0 {
		t.Fatalf("after a refused login: %+v", st)
	}
	tp.sockets.refuse.Store(false)
	tp.maintain()
	if st := tp.Stats(); st.Total != 0 || st.Connecting != 0 {
		t.Fatalf("a login was retried at once after a failure: %+v", st)
	}
	clk.Advance(loginRetry)
	tp.maintain()
	tp.waitStats("the retry after server_login_retry", func(st Stats) bool { return st.Idle == 1 })
}

func TestServerLifetimeClosesConnsWhenReleased(t *testing.T) {
	clk := newFakeClock()
	l := quiet
	l.ServerLifetime = time.Hour
	tp := newTestPool(t, Config{Size: 1, Lifecycle: l}, clk.Now)
	c := tp.acquire()
	clk.Advance(2 * time.Hour)
	tp.maintain()
	if c.Dead() {
		t.Fatal("a conn past its lifetime was closed while in use")
	}
	if query(t, c, "select 1") != 'I' {
		t.Fatal("the conn in use stopped working")
	}

	// Given back with a client waiting: closed, and the waiter logs in anew.
	w := tp.acquireAsync(context.Background())
	tp.waitStats("a waiter", func(st Stats) bool { return st.Waiting == 1 })
	tp.Release(c)
	if !c.Dead() {
		t.Fatal("a conn past its lifetime went back to the pool")
	}
	a := receive(t, w)
	if a.err != nil || a.c == c {
		t.Fatalf("the waiter got %v, %v; want a new conn", a.c, a.err)
	}

	// Idle past its lifetime: the janitor closes it.
	tp.Release(a.c)
	clk.Advance(2 * time.Hour)
	tp.maintain()
	if !a.c.Dead() {
		t.Fatal("an idle conn past its lifetime was kept")
	}
	if st := tp.Stats(); st.Total != 0 {
		t.Fatalf("after the lifetime: %+v", st)
	}
}

func TestServerLifetimeZeroUsesEachConnOnce(t *testing.T) {
	l := quiet
	l.ServerLifetime = 0
	l.MinSize = 1
	tp := newTestPool(t, Config{Size: 1, Lifecycle: l}, newFakeClock().Now)
	st := tp.waitStats("a warm conn", func(st Stats) bool { return st.Idle == 1 })
	tp.maintain()
	if st2 := tp.Stats(); st2.Idle != st.Idle {
		t.Fatal("the janitor closed a warm conn that was never used")
	}
	c := tp.acquire()
	tp.Release(c)
	if !c.Dead() {
		t.Fatal("server_lifetime 0: a used conn went back to the pool")
	}
}

func TestServerIdleTimeoutClosesUnusedConns(t *testing.T) {
	clk := newFakeClock()
	l := quiet
	l.IdleTimeout = 10 * time.Minute
	tp := newTestPool(t, Config{Size: 3, Lifecycle: l}, clk.Now)
	a, b, c := tp.acquire(), tp.acquire(), tp.acquire()
	for _, x := range []*Conn{a, b, c} {
		tp.Release(x)
	}
	clk.Advance(5 * time.Minute)
	tp.maintain()
	if st := tp.Stats(); st.Idle != 3 {
		t.Fatalf("conns closed before the idle timeout: %+v", st)
	}
	if got := tp.acquire(); got != c {
		t.Fatal("LIFO reuse broken")
	}
	tp.Release(c) // used 5 minutes after the others
	clk.Advance(6 * time.Minute)
	tp.maintain()
	if !a.Dead() || !b.Dead() || c.Dead() {
		t.Fatalf("idle timeout: dead a=%v b=%v c=%v; want the two unused for 11 minutes", a.Dead(), b.Dead(), c.Dead())
	}
}

func TestServerIdleTimeoutKeepsMinSize(t *testing.T) {
	clk := newFakeClock()
	l := quiet
	l.IdleTimeout = 10 * time.Minute
	l.MinSize = 2
	tp := newTestPool(t, Config{Size: 3, Lifecycle: l}, clk.Now)
	tp.waitStats("min_size conns", func(st Stats) bool { return st.Idle == 2 })
	a, b, c := tp.acquire(), tp.acquire(), tp.acquire()
	for _, x := range []*Conn{a, b, c} {
		tp.Release(x)
	}
	clk.Advance(time.Hour / 2)
	tp.maintain()
	if st := tp.Stats(); st.Total != 2 || st.Idle != 2 || !a.Dead() || b.Dead() || c.Dead() {
		t.Fatalf("after the idle timeout: %+v; dead a=%v b=%v c=%v", st, a.Dead(), b.Dead(), c.Dead())
	}
}

func TestReservePoolServesClientsThatWaited(t *testing.T) {
	tp := newTestPool(t, Config{Size: 1, WaitTimeout: 10 * time.Second, Lifecycle: Lifecycle{
		ReserveSize: 1, ReserveTimeout: 20 * time.Millisecond, ServerLifetime: time.Hour, CheckDelay: time.Hour,
	}}, nil)
	a := tp.acquire()
	b := tp.acquire() // waits reserve_timeout, then gets a reserve conn
	if st := tp.Stats(); st.Total != 2 || st.Active != 2 {
		t.Fatalf("with a reserve conn: %+v", st)
	}

	// The reserve is spent: a third client gets nothing more.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := tp.Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire beyond size and reserve: %v", err)
	}
	if st := tp.Stats(); st.Total != 2 {
		t.Fatalf("the pool went beyond size and reserve: %+v", st)
	}

	// A reserve conn given back goes to a client that waited long enough...
	w := tp.acquireAsync(context.Background())
	waitFor(t, "the waiter to pass reserve_timeout", func() bool {
		tp.mu.Lock()
		defer tp.mu.Unlock()
		return len(tp.waiters) == 1 && tp.waiters[0].reserve
	})
	tp.Release(b)
	got := receive(t, w)
	if got.err != nil || got.c != b {
		t.Fatalf("the waiter got %v, %v; want the reserve conn handed over", got.c, got.err)
	}
	// ... and is closed when nobody waits.
	tp.Release(b)
	if !b.Dead() {
		t.Fatal("a reserve conn went idle")
	}
	tp.Release(a)
	if a.Dead() {
		t.Fatal("a conn within the size was closed")
	}
	if st := tp.Stats(); st.Total != 1 || st.Idle != 1 {
		t.Fatalf("after the burst: %+v", st)
	}
}

func TestReservePoolIsNotUsedBeforeReserveTimeout(t *testing.T) {
	tp := newTestPool(t, Config{Size: 1, WaitTimeout: 30 * time.Millisecond, Lifecycle: Lifecycle{
		ReserveSize: 5, ReserveTimeout: time.Hour, ServerLifetime: time.Hour, CheckDelay: time.Hour,
	}}, nil)
	held := tp.acquire()
	if _, err := tp.Acquire(context.Background()); !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("Acquire: %v, want ErrWaitTimeout", err)
	}
	if st := tp.Stats(); st.Total != 1 {
		t.Fatalf("a reserve conn was opened before reserve_timeout: %+v", st)
	}
	tp.Release(held)
}

func TestCheckReplacesAConnThatDoesNotAnswer(t *testing.T) {
	clk := newFakeClock()
	l := quiet
	l.CheckDelay = 30 * time.Second
	tp := newTestPool(t, Config{Size: 1, ConnectTimeout: time.Second, Lifecycle: l}, clk.Now)
	c := tp.acquire()
	tp.Release(c)
	clk.Advance(time.Minute)
	tp.sockets.of(t, c).frozen.Store(true) // the network drops everything, silently

	got := tp.acquire()
	if got == c || got.Dead() {
		t.Fatalf("got conn %d (dead %v); want a new one in place of %d", got.PID, got.Dead(), c.PID)
	}
	if !c.Dead() {
		t.Fatal("the conn that failed its check is still open")
	}
	if query(t, got, "select 1") != 'I' {
		t.Fatal("the replacement does not work")
	}
	if st := tp.Stats(); st.Total != 1 || st.Active != 1 {
		t.Fatalf("after the replacement: %+v", st)
	}
}

func TestCheckRunsOnlyAfterCheckDelayAndKeepsALiveConn(t *testing.T) {
	clk := newFakeClock()
	l := quiet
	l.CheckDelay = 30 * time.Second
	tp := newTestPool(t, Config{Size: 1, Lifecycle: l}, clk.Now)
	c := tp.acquire()
	sock := tp.sockets.of(t, c)
	tp.Release(c)

	clk.Advance(10 * time.Second)
	w := sock.written.Load()
	if got := tp.acquire(); got != c {
		t.Fatal("the idle conn was not reused")
	}
	if sock.written.Load() != w {
		t.Fatal("a conn idle less than server_check_delay was checked")
	}
	tp.Release(c)

	clk.Advance(31 * time.Second)
	if got := tp.acquire(); got != c {
		t.Fatal("a live conn was replaced after its check")
	}
	const emptyQuery = 6 // 'Q', length 5, ""
	if d := sock.written.Load() - w; d != emptyQuery {
		t.Fatalf("wrote %d bytes to check the conn, want one empty Query (%d)", d, emptyQuery)
	}
	if query(t, c, "select 1") != 'I' {
		t.Fatal("the checked conn is out of step")
	}
	tp.Release(c)

	// server_check_delay 0: every hand-out is checked.
	l.CheckDelay = 0
	tp.SetLifecycle(l)
	w = sock.written.Load()
	if got := tp.acquire(); got != c {
		t.Fatal("the idle conn was not reused")
	}
	if d := sock.written.Load() - w; d != emptyQuery {
		t.Fatalf("server_check_delay 0: wrote %d bytes, want a check", d)
	}
	tp.Release(c)
}

func TestReconnectClosesIdleNowAndBusyWhenGivenBack(t *testing.T) {
	tp := newTestPool(t, Config{Size: 2}, nil)
	busy, idle := tp.acquire(), tp.acquire()
	tp.Release(idle)
	tp.Reconnect()
	if !idle.Dead() {
		t.Fatal("RECONNECT kept an idle conn")
	}
	if busy.Dead() {
		t.Fatal("RECONNECT closed a conn in use")
	}
	if st := tp.Stats(); st.CloseNeeded != 1 || st.Active != 1 {
		t.Fatalf("after RECONNECT: %+v, want the busy conn marked close_needed", st)
	}
	for _, ci := range tp.Conns() {
		if !ci.CloseNeeded || ci.State != "active" {
			t.Errorf("conn %d: %+v", ci.PID, ci)
		}
	}
	if query(t, busy, "select 1") != 'I' {
		t.Fatal("the conn in use stopped working")
	}
	// A new conn logs in at once, under the new generation.
	fresh := tp.acquire()
	tp.Release(busy)
	if !busy.Dead() {
		t.Fatal("a conn from before RECONNECT went back to the pool")
	}
	tp.Release(fresh)
	if fresh.Dead() {
		t.Fatal("a conn made after RECONNECT was closed")
	}
	if st := tp.Stats(); st.CloseNeeded != 0 || st.Idle != 1 || st.Total != 1 {
		t.Fatalf("after the old conns are gone: %+v", st)
	}
}

func TestStatsCountUsedTestedAndAssignments(t *testing.T) {
	clk := newFakeClock()
	l := quiet
	l.CheckDelay = 30 * time.Second
	tp := newTestPool(t, Config{Size: 2, Lifecycle: l}, clk.Now)
	a, b := tp.acquire(), tp.acquire()
	tp.Release(a)
	clk.Advance(31 * time.Second)
	tp.Release(b)
	st := tp.Stats()
	if st.Idle != 2 || st.Used != 1 || st.Assignments != 2 {
		t.Fatalf("two idle conns, one idle past server_check_delay: %+v", st)
	}
	states := map[uint32]string{}
	for _, ci := range tp.Conns() {
		states[ci.PID] = ci.State
	}
	if states[a.PID] != "used" || states[b.PID] != "idle" {
		t.Fatalf("conn states %v; want %d used, %d idle", states, a.PID, b.PID)
	}
	// A conn under its liveness check is tested: freeze the one taken
	// next (b, the last released) so the check waits.
	tp.sockets.of(t, b).frozen.Store(true)
	clk.Advance(31 * time.Second) // b is now stale too
	ch := tp.acquireAsync(context.Background())
	tp.waitStats("a conn under its check", func(st Stats) bool { return st.Tested == 1 })
	for _, ci := range tp.Conns() {
		if ci.PID == b.PID && ci.State != "tested" {
			t.Errorf("conn under check: state %q", ci.State)
		}
	}
	b.Close() // the check fails; a is checked next and passes
	got := receive(t, ch)
	if got.err != nil || got.c != a {
		t.Fatalf("after the failed check: %v, %v", got.c, got.err)
	}
	if st := tp.Stats(); st.Tested != 0 || st.Assignments != 3 {
		t.Fatalf("after the checks: %+v", st)
	}
	tp.Release(got.c)
}
