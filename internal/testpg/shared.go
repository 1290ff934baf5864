package testpg

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

// startTimeout bounds the start of clusters made by Shared and New.
const startTimeout = 2 * time.Minute

// The shared cluster of this test binary; see Shared.
var (
	sharedMu  sync.Mutex
	shared    *Cluster
	sharedErr error
)

// Require skips the test when PostgreSQL is not installed, or fails it
// when the CI environment variable is set, so CI never skips silently.
func Require(tb testing.TB) {
	tb.Helper()
	ok, reason := Available()
	if ok {
		return
	}
	if _, ci := os.LookupEnv("CI"); ci {
		tb.Fatalf("testpg: PostgreSQL is required in CI: %s", reason)
	}
	tb.Skipf("testpg: skipping, PostgreSQL not available: %s", reason)
}

// Shared returns this test binary's shared cluster, starting it on first
// use. The package's TestMain should call StopShared after m.Run:
//
//	func TestMain(m *testing.M) { defer testpg.StopShared(); m.Run() }
//
// (Without it the watchdog removes the cluster when the binary exits.)
// Tests sharing it should work in their own databases and must not Stop,
// StopOnly or Restart it; use New for that. Shared skips or fails tb as
// Require does; if the cluster fails to start, it fails tb, and every later
// caller, with the error and the server log tail.
func Shared(tb testing.TB) *Cluster {
	tb.Helper()
	Require(tb)
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil && sharedErr == nil {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		shared, sharedErr = Start(ctx, Options{})
		cancel()
	}
	if sharedErr != nil {
		tb.Fatalf("testpg: shared cluster did not start: %v", sharedErr)
	}
	return shared
}

// Main runs a test binary's tests, stops its shared cluster and exits with
// the tests' status: the TestMain of every package that uses Shared.
func Main(m *testing.M) {
	code := m.Run()
	StopShared()
	os.Exit(code)
}

// StopShared stops and removes the shared cluster, if one was started. It
// reports a failure on stderr, since it runs after the tests.
func StopShared() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil {
		if err := shared.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testpg: stopping shared cluster: %v\n", err)
		}
	}
	shared, sharedErr = nil, nil
}

// New starts a private cluster for tb, stopped and removed by tb.Cleanup.
// It skips or fails tb as Require does and fails it if the start fails.
func New(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	Require(tb)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		tb.Fatalf("testpg: %v", err)
	}
	tb.Cleanup(func() {
		if err := c.Stop(); err != nil {
			tb.Errorf("testpg: %v", err)
		}
	})
	return c
}
