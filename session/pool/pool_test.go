package pool

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgtoken/pgtoken/internal/testpg"
)

func TestWaitersAreServedInArrivalOrder(t *testing.T) {
	tp := newTestPool(t, Config{Size: 1}, nil)
	held := tp.acquire()
	const n = 5
	var (
		mu    sync.Mutex
		order []int
		wg    sync.WaitGroup
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := tp.Acquire(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			tp.Release(c)
		}()
		// The next one queues only once this one waits.
		tp.waitStats("waiter to queue", func(st Stats) bool { return st.Waiting == i+1 })
	}
	tp.Release(held)
	waitDone(t, "the waiters", wg.Wait)
	for i, got := range order {
		if got != i {
			t.Fatalf("waiters served in order %v, want arrival order", order)
		}
	}
	if st := tp.Stats(); st.Total != 1 || st.Idle != 1 || st.Waiting != 0 {
		t.Fatalf("after the waiters: %+v", st)
	}
}

func TestIdleConnsAreReusedLastInFirstOut(t *testing.T) {
	tp := newTestPool(t, Config{Size: 3}, nil)
	a, b, c := tp.acquire(), tp.acquire(), tp.acquire()
	for _, x := range []*Conn{a, b, c} {
		tp.Release(x)
	}
	for _, want := range []*Conn{c, b, a} {
		if got := tp.acquire(); got != want {
			t.Fatalf("got conn %d, want %d (the most recently released)", got.PID, want.PID)
		}
	}
}

func TestAcquireTimesOutWhenNoConnFrees(t *testing.T) {
	tp := newTestPool(t, Config{Size: 1, WaitTimeout: 30 * time.Millisecond}, nil)
	held := tp.acquire()
	_, err := tp.Acquire(context.Background())
	if !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("Acquire with every conn busy: %v, want ErrWaitTimeout", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := tp.Acquire(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire with a cancelled context: %v", err)
	}
	if st := tp.Stats(); st.Waiting != 0 || st.Total != 1 || st.Active != 1 {
		t.Fatalf("after the timeouts: %+v", st)
	}
	tp.Release(held)
	if c := tp.acquire(); c != held {
		t.Fatal("the released conn was not reused")
	}
}

func TestResizeDownRetiresBusyConnsOnRelease(t *testing.T) {
	tp := newTestPool(t, Config{Size: 3}, nil)
	a, b, c := tp.acquire(), tp.acquire(), tp.acquire()
	tp.Resize(1)
	if st := tp.Stats(); st.Total != 3 || st.Active != 3 {
		t.Fatalf("busy conns were touched by the shrink: %+v", st)
	}
	tp.Release(a)
	tp.Release(b)
	if !a.Dead() || !b.Dead() {
		t.Fatal("conns beyond the new size were kept on release")
	}
	tp.Release(c)
	if c.Dead() {
		t.Fatal("the last conn, within the size, was closed")
	}
	if st := tp.Stats(); st.Total != 1 || st.Idle != 1 {
		t.Fatalf("after the releases: %+v", st)
	}
}

func TestResizeDownClosesIdleConnsLeastRecentlyUsedFirst(t *testing.T) {
	tp := newTestPool(t, Config{Size: 3}, nil)
	a, b, c := tp.acquire(), tp.acquire(), tp.acquire()
	for _, x := range []*Conn{a, b, c} {
		tp.Release(x)
	}
	tp.Resize(1)
	if !a.Dead() || !b.Dead() || c.Dead() {
		t.Fatalf("shrinking closed the wrong conns: dead a=%v b=%v c=%v", a.Dead(), b.Dead(), c.Dead())
	}
	if st := tp.Stats(); st.Total != 1 || st.Idle != 1 {
		t.Fatalf("after shrinking: %+v", st)
	}
}

func TestResizeUpServesWaiters(t *testing.T) {
	tp := newTestPool(t, Config{Size: 1}, nil)
	held := tp.acquire()
	w1 := tp.acquireAsync(context.Background())
	tp.waitStats("a waiter", func(st Stats) bool { return st.Waiting == 1 })
	w2 := tp.acquireAsync(context.Background())
	tp.waitStats("two waiters", func(st Stats) bool { return st.Waiting == 2 })
	tp.Resize(3)
	for _, w := range []<-chan acquired{w1, w2} {
		if a := receive(t, w); a.err != nil {
			t.Fatal(a.err)
		}
	}
	if st := tp.Stats(); st.Total != 3 || st.Active != 3 {
		t.Fatalf("after growing: %+v", st)
	}
	tp.Release(held)
}

func TestPauseWaitsForReleaseAndResumeServesWaiters(t *testing.T) {
	tp := newTestPool(t, Config{Size: 2}, nil)
	held := tp.acquire()
	spare := tp.acquire()
	tp.Release(spare)

	paused := make(chan error, 1)
	go func() { paused <- tp.Pause(context.Background()) }()
	tp.waitStats("the pause", func(st Stats) bool { return st.Paused })
	w := tp.acquireAsync(context.Background())
	tp.waitStats("a waiter", func(st Stats) bool { return st.Waiting == 1 })
	select {
	case err := <-paused:
		t.Fatalf("Pause returned with a conn in use: %v", err)
	default:
	}
	if spare.Dead() {
		t.Fatal("the idle conn was handed on or closed while paused with one in use")
	}

	tp.Release(held)
	select {
	case err := <-paused:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Pause did not return once every conn was released")
	}
	if !held.Dead() || !spare.Dead() {
		t.Fatal("Pause left server connections open")
	}
	if st := tp.Stats(); st.Total != 0 || st.Waiting != 1 {
		t.Fatalf("paused: %+v", st)
	}

	tp.Resume()
	a := receive(t, w)
	if a.err != nil {
		t.Fatal(a.err)
	}
	if query(t, a.c, "select 1") != 'I' {
		t.Fatal("the conn after Resume is not idle after a query")
	}
	tp.Release(a.c)
}

// TestCloseUnderLoad closes a pool while goroutines acquire, check, use,
// release and discard conns, with every lifecycle feature busy: nothing
// panics or hangs, every goroutine of the pool ends, every conn closes.
func TestCloseUnderLoad(t *testing.T) {
	testpg.Shared(t) // started before the leak check's snapshot
	ignore := goleak.IgnoreCurrent()
	tp := newTestPool(t, Config{
		Size:        4,
		WaitTimeout: 5 * time.Second,
		Lifecycle: Lifecycle{
			MinSize:        2,
			ReserveSize:    2,
			ReserveTimeout: time.Millisecond,
			ServerLifetime: 50 * time.Millisecond,
			IdleTimeout:    5 * time.Millisecond,
			CheckDelay:     0, // every hand-out is checked
		},
	}, nil)
	stopJanitor := make(chan struct{})
	go func() { // the janitor, much faster than in production
		for {
			select {
			case <-stopJanitor:
				return
			case <-time.After(time.Millisecond):
				tp.maintain()
			}
		}
	}()

	var wg sync.WaitGroup
	var mu sync.Mutex
	var unexpected []error
	for i := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 1))
			for {
				c, err := tp.Acquire(context.Background())
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					mu.Lock()
					unexpected = append(unexpected, err)
					mu.Unlock()
					return
				}
				time.Sleep(time.Duration(r.IntN(300)) * time.Microsecond)
				if r.IntN(10) == 0 {
					tp.Discard(c)
				} else {
					tp.Release(c)
				}
			}
		}()
	}
	time.Sleep(150 * time.Millisecond)
	tp.Close()
	waitDone(t, "the clients to see the pool closed", wg.Wait)
	close(stopJanitor)
	waitDone(t, "the pool's goroutines", tp.Wait)
	for _, err := range unexpected {
		t.Errorf("Acquire under load: %v", err)
	}
	if st := tp.Stats(); st.Total != 0 || st.Active != 0 || st.Idle != 0 || st.Waiting != 0 || st.Connecting != 0 {
		t.Fatalf("after Close: %+v", st)
	}
	if got := len(tp.Conns()); got != 0 {
		t.Fatalf("%d conns still listed after Close", got)
	}
	goleak.VerifyNone(t, ignore)
}
