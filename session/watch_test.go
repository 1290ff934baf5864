package session

import (
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgtoken/pgtoken/session/tracker"
)

type bugCounter struct {
	NopObserver
	mu   sync.Mutex
	bugs map[string]int
}

func (b *bugCounter) InternalError(kind string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.bugs[kind]++
}

// Output that waits with nobody writing it is reported once it has waited
// stallBound, and written then; output that is being written, or that was
// written since the last look, is not.
func TestStalledAnswersAreReportedAndFlushed(t *testing.T) {
	obs := &bugCounter{bugs: map[string]int{}}
	core, logs := observer.New(zapcore.ErrorLevel)
	client := &discardConn{}
	s := &Session{srv: &Server{obs: obs}, nc: client, log: zap.New(core), t: tracker.New(false)}
	s.cond = sync.NewCond(&s.mu)
	s.ident = benchIdentity()
	now := time.Now()

	s.out.buf = append(s.out.buf, 'Z', 0, 0, 0, 5, 'I')
	s.checkStall(now)
	s.checkStall(now.Add(stallBound / 2))
	if obs.bugs[BugStalledAnswer] != 0 {
		t.Fatal("reported before the bound")
	}
	// A flush in between restarts the clock.
	s.out.flushes++
	s.checkStall(now.Add(stallBound))
	if obs.bugs[BugStalledAnswer] != 0 {
		t.Fatal("reported although output was written since the last look")
	}
	s.checkStall(now.Add(2 * stallBound))
	if obs.bugs[BugStalledAnswer] != 1 || logs.Len() != 1 {
		t.Fatalf("stalled output: %d reports, %d log lines", obs.bugs[BugStalledAnswer], logs.Len())
	}
	if client.n != 6 || len(s.out.buf) != 0 {
		t.Fatalf("the stalled output was not written: client got %d bytes, %d left", client.n, len(s.out.buf))
	}
	// Output under way is never a stall.
	s.out.buf = append(s.out.buf, 'Z', 0, 0, 0, 5, 'I')
	s.out.flushing = true
	s.checkStall(now.Add(3 * stallBound))
	s.checkStall(now.Add(5 * stallBound))
	if obs.bugs[BugStalledAnswer] != 1 {
		t.Fatal("output being written reported as stalled")
	}
}
