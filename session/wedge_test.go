package session_test

// Wedged server connections (issue 13, issue 16 point 4): however a client
// orders, delays, floods or abandons its messages, its server connection
// is served, or reset and replaced, within bounded time, and other clients
// are served meanwhile. And the threading rule of session.go: no goroutine
// waits for Session.mu while its holder waits on the network, so a session
// whose server reader is stuck mid-message still reads its client, answers
// what needs no server, takes a cancel request and shuts down.
//
// A wedge shows as a deadline passing; the test then fails with the
// evidence: the sessions as pgtoken holds them (DebugSessions), the server
// connections as Postgres shows them (pg_stat_activity) and the goroutines
// of pgtoken.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/session"
)

var poolModes = []string{"transaction", "session"}

// wedgeEnv starts pgtoken in front of a fresh database with a pool of size
// in mode. The wait timeout is short enough that a wedged pool shows as
// 53300 within a test's deadlines, and long enough for a client to wait
// out another's slow batch.
func wedgeEnv(t *testing.T, mode string, size int, mutate func(*config.Config)) *pgtest.Env {
	t.Helper()
	return pgtest.Start(t, func(c *config.Config) {
		c.Pool.Mode = mode
		c.Pool.Size = size
		c.Pool.WaitTimeout = config.Duration(10 * time.Second)
		if mutate != nil {
			mutate(c)
		}
	})
}

// wedged fails the test with the evidence of a wedge.
func wedged(t *testing.T, env *pgtest.Env, format string, args ...any) {
	t.Helper()
	t.Errorf(format, args...)
	t.Log(wedgeEvidence(env))
	t.FailNow()
}

// wedgeEvidence describes pgtoken's sessions, pgtoken's server connections
// as Postgres sees them, and the goroutines of pgtoken.
func wedgeEvidence(env *pgtest.Env) string {
	var b strings.Builder
	sessions := make(chan string, 1)
	go func() {
		s := session.DescribeSessions(env.App.Server)
		for _, d := range env.App.Server.DebugSessions() {
			if d.ClientErr != "" || d.Ended {
				s += fmt.Sprintf("\nsession %d: ended=%v client_err=%q", d.ID, d.Ended, d.ClientErr)
			}
		}
		sessions <- s
	}()
	select {
	case s := <-sessions:
		fmt.Fprintf(&b, "sessions (DebugSessions):\n%s\n", s)
	case <-time.After(3 * time.Second):
		b.WriteString("sessions: DebugSessions did not return within 3s: a Session.mu is held\n")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := env.PG.QueryRows(ctx, env.DB, `select pid, state, coalesce(wait_event_type, '') || '/' || coalesce(wait_event, ''),
		coalesce(backend_xid::text, '-'), left(regexp_replace(query, '\s+', ' ', 'g'), 80)
		from pg_stat_activity where usename = 'authenticator' and datname = current_database() and pid <> pg_backend_pid() order by pid`)
	if err != nil {
		fmt.Fprintf(&b, "pg_stat_activity: %v\n", err)
	} else {
		b.WriteString("pg_stat_activity (pid state wait xid query):\n")
		for _, r := range rows {
			fmt.Fprintf(&b, "  %s\n", strings.Join(r, " | "))
		}
	}
	fmt.Fprintf(&b, "pools: %+v\n", env.App.Server.Stats().Pools)
	b.WriteString("goroutines of pgtoken:\n")
	for _, g := range goroutines() {
		if strings.Contains(g, "pgtoken/pgtoken/session.") || strings.Contains(g, "pgtoken/pgtoken/session/pool.") {
			b.WriteString(g)
			b.WriteString("\n\n")
		}
	}
	return b.String()
}

// goroutines returns the stacks of every goroutine.
func goroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Split(string(buf[:n]), "\n\n")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// waitGoroutine waits until some goroutine is parked in state (as its
// stack header says, e.g. "IO wait") with every one of frames on its
// stack.
func waitGoroutine(t *testing.T, env *pgtest.Env, state string, frames ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
	next:
		for _, g := range goroutines() {
			head, _, _ := strings.Cut(g, "\n")
			if !strings.Contains(head, "["+state) {
				continue
			}
			for _, f := range frames {
				if !strings.Contains(g, f) {
					continue next
				}
			}
			return
		}
		if time.Now().After(deadline) {
			wedged(t, env, "no goroutine is parked in %s in %q", state, frames)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// within runs f on a goroutine of its own and fails the test when f
// fails, or with the evidence when it has not returned after d.
func within(t *testing.T, env *pgtest.Env, d time.Duration, what string, f func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		if err != nil {
			wedged(t, env, "%s: %v", what, err)
		}
	case <-time.After(d):
		wedged(t, env, "%s did not complete within %s", what, d)
	}
}

// holdsWithin polls cond until it holds, failing with the evidence after d.
func holdsWithin(t *testing.T, env *pgtest.Env, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			wedged(t, env, "after %s: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// served checks that a client of the pool gets a fresh transaction within
// d.
func served(t *testing.T, env *pgtest.Env, c *pgconn.PgConn, sub string, d time.Duration) {
	t.Helper()
	within(t, env, d, "a statement of another client ("+sub+")", func() error { return freshTransaction(c, sub) })
}

// hijackedClient logs in with pgconn and takes over the socket; it returns the
// socket, a protocol reader on it, and the session's cancel key.
func hijackedClient(t *testing.T, env *pgtest.Env, sub string) (net.Conn, *pgproto3.Frontend, pgproto3.CancelRequest) {
	t.Helper()
	c, err := pgconn.Connect(ctx(t), env.DSN(pgtest.UserToken(t, sub)))
	if err != nil {
		t.Fatal(err)
	}
	hc, err := c.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hc.Conn.Close() })
	return hc.Conn, pgproto3.NewFrontend(hc.Conn, hc.Conn), pgproto3.CancelRequest{ProcessID: hc.PID, SecretKey: hc.SecretKey}
}

// answer is one server message as a raw client saw it.
type answer struct {
	typ  byte
	text string // DataRow: the last column (its last 64 bytes); CommandComplete: the tag; ErrorResponse: code and message
	size int    // DataRow: the last column's length
}

// receive reads messages until the n-th ReadyForQuery, failing with the
// evidence when they have not all come after d.
func receive(t *testing.T, env *pgtest.Env, nc net.Conn, fe *pgproto3.Frontend, n int, d time.Duration) []answer {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(d))
	defer func() { _ = nc.SetReadDeadline(time.Time{}) }()
	var got []answer
	for rfq := 0; rfq < n; {
		m, err := fe.Receive()
		if err != nil {
			wedged(t, env, "after %d answers (%d ReadyForQuery of %d): %v; last answers %v", len(got), rfq, n, err, tail(got))
		}
		a := answer{}
		switch m := m.(type) {
		case *pgproto3.RowDescription:
			a.typ = 'T'
		case *pgproto3.DataRow:
			a.typ = 'D'
			if len(m.Values) > 0 {
				v := m.Values[len(m.Values)-1]
				a.size = len(v)
				a.text = string(v[max(0, len(v)-64):])
			}
		case *pgproto3.CommandComplete:
			a.typ, a.text = 'C', string(m.CommandTag)
		case *pgproto3.ErrorResponse:
			a.typ, a.text = 'E', m.Code+" "+m.Message
		case *pgproto3.ReadyForQuery:
			a.typ, a.text = 'Z', string(m.TxStatus)
			rfq++
		case *pgproto3.ParseComplete:
			a.typ = '1'
		case *pgproto3.BindComplete:
			a.typ = '2'
		case *pgproto3.CloseComplete:
			a.typ = '3'
		case *pgproto3.EmptyQueryResponse:
			a.typ = 'I'
		case *pgproto3.NoData:
			a.typ = 'n'
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
			continue
		default:
			t.Fatalf("unexpected %T", m)
		}
		got = append(got, a)
	}
	return got
}

func tail(a []answer) []answer {
	if len(a) > 8 {
		return a[len(a)-8:]
	}
	return a
}

// types is the message types of answers, as a string.
func types(as []answer) string {
	b := make([]byte, len(as))
	for i, a := range as {
		b[i] = a.typ
	}
	return string(b)
}

// TestLateSync: Parse/Bind/Execute of a query whose row Postgres cannot
// send whole before it flushes (larger than its 8 kB output buffer), with
// no Sync; the Sync a second later. Directly, the client then gets its row
// and ReadyForQuery. Issue 13: through pgtoken the backend stayed
// active/ClientRead for good and every other client of the pool got 53300.
func TestLateSync(t *testing.T) {
	for _, tc := range []struct {
		mode string
		size int
		row  int // bytes of the row
	}{
		{"transaction", 1, 20000},
		{"transaction", 2, 20000},
		{"session", 2, 20000},
		// Larger than what pgtoken buffers whole: streamed to the client.
		{"transaction", 1, 200000},
		{"session", 2, 200000},
	} {
		t.Run(fmt.Sprintf("%s/pool%d/row%d", tc.mode, tc.size, tc.row), func(t *testing.T) {
			checkLeaks(t)
			env := wedgeEnv(t, tc.mode, tc.size, nil)
			// The other client is served meanwhile on a goroutine of its
			// own, so it is closed only once the test is done with it.
			other, err := pgconn.Connect(ctx(t), env.DSN(pgtest.UserToken(t, "other")))
			if err != nil {
				t.Fatal(err)
			}
			nc, fe, _ := hijackedClient(t, env, "late")
			sql := fmt.Sprintf("select repeat('x', %d) || current_user", tc.row)
			for round := range 2 {
				send(t, nc, &pgproto3.Parse{Query: sql}, &pgproto3.Bind{}, &pgproto3.Execute{})
				// Meanwhile: with a second server connection the other
				// client is served at once; with one it waits for the
				// Sync (pool.wait_timeout is 10s), and is served then.
				meanwhile := make(chan error, 1)
				go func() { meanwhile <- freshTransaction(other, "other") }()
				time.Sleep(time.Second)
				if tc.size > 1 {
					select {
					case err := <-meanwhile:
						if err != nil {
							wedged(t, env, "round %d: the other client, while the first one's Sync was late: %v", round, err)
						}
						meanwhile <- nil
					case <-time.After(5 * time.Second):
						wedged(t, env, "round %d: the other client was not served while the first one's Sync was late", round)
					}
				}
				send(t, nc, &pgproto3.Sync{})
				got := receive(t, env, nc, fe, 1, 10*time.Second)
				want := "12DCZ"
				if types(got) != want || got[2].size != tc.row+len("web_user") || !strings.HasSuffix(got[2].text, "xweb_user") {
					t.Fatalf("round %d: answers %s %v, want %s with the row", round, types(got), got, want)
				}
				select {
				case err := <-meanwhile:
					if err != nil {
						wedged(t, env, "round %d: the other client, after the Sync: %v", round, err)
					}
				case <-time.After(10 * time.Second):
					wedged(t, env, "round %d: the other client was not served after the Sync", round)
				}
				// Afterwards: the backend is not left waiting for its
				// client (active/ClientRead), and the pool serves others.
				if tc.mode == "transaction" {
					serverSideClean(t, env)
					poolSettles(t, env)
				} else {
					holdsWithin(t, env, 10*time.Second, "the late client's backend stayed active", func() bool {
						return len(backends(env, "state <> 'idle'")) == 0
					})
				}
				served(t, env, other, "other", 10*time.Second)
			}
			_ = nc.Close()
			serverSideClean(t, env)
			served(t, env, other, "other", 10*time.Second)
			_ = other.Close(ctx(t)) // in session mode it holds a server connection until it leaves
			poolSettles(t, env)
		})
	}
}

// hugeBatch writes, in one write, Parse of "select $1::text" and n
// Bind/Execute of it followed by Sync, and reads every answer in order.
func hugeBatch(t *testing.T, env *pgtest.Env, nc net.Conn, fe *pgproto3.Frontend, n int) {
	t.Helper()
	msgs := []interface{ Encode([]byte) ([]byte, error) }{&pgproto3.Parse{Query: "select $1::text"}}
	for i := range n {
		msgs = append(msgs, &pgproto3.Bind{Parameters: [][]byte{[]byte(strconv.Itoa(i))}}, &pgproto3.Execute{})
	}
	msgs = append(msgs, &pgproto3.Sync{})
	b := encodeMsgs(t, msgs...)
	wrote := make(chan error, 1)
	go func() {
		_ = nc.SetWriteDeadline(time.Now().Add(60 * time.Second))
		_, err := nc.Write(b)
		wrote <- err
	}()
	got := receive(t, env, nc, fe, 1, 60*time.Second)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if len(got) != 3*n+2 || got[0].typ != '1' || got[len(got)-1].typ != 'Z' || got[len(got)-1].text != "I" {
		t.Fatalf("%d answers, want %d: first %v, last %v", len(got), 3*n+2, got[:min(len(got), 4)], tail(got))
	}
	for i := range n {
		a := got[1+3*i : 4+3*i]
		if types(a) != "2DC" || a[1].text != strconv.Itoa(i) || a[2].text != "SELECT 1" {
			t.Fatalf("answer %d: %v", i, a)
		}
	}
}

// TestHugeBatchInOneWrite: thousands of Bind/Execute and a Sync in one
// write, as pgx's SendBatch and JDBC batches send them. Every answer
// arrives, in order, and the server connection goes back to the pool.
func TestHugeBatchInOneWrite(t *testing.T) {
	for _, mode := range poolModes {
		t.Run(mode, func(t *testing.T) {
			checkLeaks(t)
			env := wedgeEnv(t, mode, 1, nil)
			for _, n := range []int{5000, 20000, 100000} {
				t.Run(fmt.Sprint(n), func(t *testing.T) {
					rounds := 3
					if n > 20000 {
						rounds = 1 // seconds under -race; TestConnExecBatchHugeRepeated repeats it
					}
					for round := range rounds {
						nc, fe, _ := hijackedClient(t, env, "batch")
						hugeBatch(t, env, nc, fe, n)
						if mode == "transaction" {
							poolSettles(t, env)
						}
						// The same client goes on.
						send(t, nc, &pgproto3.Query{String: "select 'after ' || current_user"})
						if got := receive(t, env, nc, fe, 1, 10*time.Second); types(got) != "TDCZ" || got[1].text != "after web_user" {
							t.Fatalf("round %d: after the batch: %v", round, got)
						}
						_ = nc.Close()
						serverSideClean(t, env)
						poolSettles(t, env)
					}
				})
			}
		})
	}
}

// execBatchHuge is pgx's TestConnExecBatchHuge (pgconn/pgconn_test.go)
// with n statements: ExecBatch sends them all (Parse, Bind, Describe,
// Execute each) and one Sync, reading while it writes.
func execBatchHuge(t *testing.T, env *pgtest.Env, c *pgconn.PgConn, n int) {
	t.Helper()
	batch := &pgconn.Batch{}
	for i := range n {
		batch.ExecParams("select $1::text", [][]byte{[]byte(strconv.Itoa(i))}, nil, nil, nil)
	}
	var results []*pgconn.Result
	within(t, env, 60*time.Second, fmt.Sprintf("ExecBatch of %d statements", n), func() error {
		cx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		var err error
		results, err = c.ExecBatch(cx, batch).ReadAll()
		return err
	})
	if len(results) != n {
		t.Fatalf("%d results, want %d", len(results), n)
	}
	for i, r := range results {
		if len(r.Rows) != 1 || string(r.Rows[0][0]) != strconv.Itoa(i) || r.CommandTag.String() != "SELECT 1" {
			t.Fatalf("result %d: %q %s", i, r.Rows, r.CommandTag)
		}
	}
}

// TestPgxBatchesThroughPgtoken: pgconn's ExecBatch and pgx's SendBatch
// (a pipeline) with 5,000, 20,000 and 100,000 statements.
func TestPgxBatchesThroughPgtoken(t *testing.T) {
	for _, mode := range poolModes {
		t.Run(mode, func(t *testing.T) {
			checkLeaks(t)
			env := wedgeEnv(t, mode, 1, nil)
			tok := pgtest.UserToken(t, "pgx")
			for _, n := range []int{5000, 20000, 100000} {
				if n <= 20000 { // 100,000: TestConnExecBatchHugeRepeated
					t.Run(fmt.Sprintf("ExecBatch/%d", n), func(t *testing.T) {
						c := env.Connect(tok)
						execBatchHuge(t, env, c, n)
						if mode == "transaction" {
							poolSettles(t, env)
						}
						isFresh(t, c, "pgx")
						_ = c.Close(ctx(t))
						poolSettles(t, env)
					})
				}
				t.Run(fmt.Sprintf("SendBatch/%d", n), func(t *testing.T) {
					conn, err := pgx.Connect(ctx(t), env.DSN(tok))
					if err != nil {
						t.Fatal(err)
					}
					defer conn.Close(context.Background())
					b := &pgx.Batch{}
					for i := range n {
						b.Queue("select $1::text", strconv.Itoa(i))
					}
					within(t, env, 60*time.Second, fmt.Sprintf("SendBatch of %d statements", n), func() error {
						cx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
						defer cancel()
						br := conn.SendBatch(cx, b)
						for i := range n {
							var s string
							if err := br.QueryRow().Scan(&s); err != nil || s != strconv.Itoa(i) {
								_ = br.Close()
								return fmt.Errorf("statement %d: %q %w", i, s, err)
							}
						}
						return br.Close()
					})
					if mode == "transaction" {
						poolSettles(t, env)
					}
					var who string
					if err := conn.QueryRow(ctx(t), "select current_setting('jwt.claims.sub')").Scan(&who); err != nil || who != "pgx" {
						t.Fatalf("after the batch: %q %v", who, err)
					}
					_ = conn.Close(ctx(t))
					poolSettles(t, env)
				})
			}
			serverSideClean(t, env)
		})
	}
}

// TestConnExecBatchHugeRepeated: issue 16 point 4. pgx's
// TestConnExecBatchHuge (100,000 statements in one batch) hung through
// pgtoken in half the runs. Here it runs PGTOKEN_HUGE_RUNS times (default
// once: each run takes seconds under -race; issue 16 asks for 20) in each
// pool mode, while another client of the pool runs transactions of its own.
func TestConnExecBatchHugeRepeated(t *testing.T) {
	if testing.Short() {
		t.Skip("batches of 100,000 statements")
	}
	runs := 1
	if v := os.Getenv("PGTOKEN_HUGE_RUNS"); v != "" {
		var err error
		if runs, err = strconv.Atoi(v); err != nil || runs <= 0 {
			t.Fatalf("PGTOKEN_HUGE_RUNS=%q: want a positive number", v)
		}
	}
	for _, mode := range poolModes {
		t.Run(mode, func(t *testing.T) {
			checkLeaks(t)
			env := wedgeEnv(t, mode, 2, nil)
			tok := pgtest.UserToken(t, "huge")
			other, err := pgconn.Connect(ctx(t), env.DSN(pgtest.UserToken(t, "other")))
			if err != nil {
				t.Fatal(err)
			}
			for run := range runs {
				stop := make(chan struct{})
				otherDone := make(chan error, 1)
				n := 0
				go func() {
					for {
						select {
						case <-stop:
							otherDone <- nil
							return
						default:
						}
						if err := freshTransaction(other, "other"); err != nil {
							otherDone <- err
							return
						}
						n++
					}
				}()
				start := time.Now()
				c := env.Connect(tok)
				execBatchHuge(t, env, c, 100000)
				close(stop)
				select {
				case err := <-otherDone:
					if err != nil {
						wedged(t, env, "run %d: the other client: %v", run, err)
					}
				case <-time.After(30 * time.Second):
					wedged(t, env, "run %d: the other client's transaction did not end", run)
				}
				_ = c.Close(ctx(t))
				t.Logf("run %d: %s; %d transactions of the other client meanwhile", run, time.Since(start).Round(time.Millisecond), n)
			}
			_ = other.Close(ctx(t))
			serverSideClean(t, env)
			poolSettles(t, env)
		})
	}
}

// TestClientThatStopsReadingIsCutOff: a client asks for a result far
// larger than any buffer and reads none of it. Within
// limits.client_write_timeout it is disconnected and its server connection
// dropped (the query must not run on to its end for nobody); the other
// client of the pool is served, and the pool is whole again.
func TestClientThatStopsReadingIsCutOff(t *testing.T) {
	for _, mode := range poolModes {
		t.Run(mode, func(t *testing.T) {
			checkLeaks(t)
			const timeout = 300 * time.Millisecond
			env := wedgeEnv(t, mode, 1, func(c *config.Config) {
				c.Limits.ClientWriteTimeout = config.Duration(timeout)
			})
			other := env.Connect(pgtest.UserToken(t, "other"))
			nc, _, _ := hijackedClient(t, env, "stops")
			waitClients(t, env, 2)
			// About 10 GB: the query runs for minutes if nobody stops it.
			send(t, nc, &pgproto3.Query{String: "select 'stops reading', repeat('x', 1000) from generate_series(1, 10000000)"})
			holdsWithin(t, env, 10*time.Second, "the query never started", func() bool {
				return len(backends(env, "query like '%stops reading%' and state = 'active'")) == 1
			})
			start := time.Now()
			// The client is disconnected...
			holdsWithin(t, env, 10*time.Second, "the client that stopped reading is still connected", func() bool {
				return env.App.Server.Stats().Connections == 1
			})
			// ...and its server connection dropped.
			holdsWithin(t, env, 10*time.Second, "the query of the client that stopped reading still runs", func() bool {
				return len(backends(env, "query like '%stops reading%' and state = 'active'")) == 0
			})
			t.Logf("cut off and dropped %s after the query started (client_write_timeout %s)", time.Since(start).Round(time.Millisecond), timeout)
			// What the client gets now is what was sent before, then the end.
			_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.Copy(io.Discard, nc); err != nil && !isReset(err) {
				t.Fatalf("the client's connection did not end: %v", err)
			}
			served(t, env, other, "other", 10*time.Second)
			if mode == "session" {
				_ = other.Close(ctx(t)) // it holds its server connection until it leaves
			}
			poolSettles(t, env)
			serverSideClean(t, env)
		})
	}
}

// TestClientVanishingMidBatch: a client closes its socket in the middle of
// a batch: before its Sync, right after it, or with the whole batch sent
// and none of its answers read. Its server connection is served or
// replaced within bounded time, nothing of a batch without Sync commits,
// and the other client of the pool is served.
func TestClientVanishingMidBatch(t *testing.T) {
	const n = 5000
	for _, mode := range poolModes {
		t.Run(mode, func(t *testing.T) {
			checkLeaks(t)
			// In session mode the other client holds a server
			// connection of its own from its first statement on.
			size := 1
			if mode == "session" {
				size = 2
			}
			env := wedgeEnv(t, mode, size, nil)
			other := env.Connect(pgtest.UserToken(t, "other"))
			for _, tc := range []struct {
				name  string
				sent  int // Bind/Execute sent of n
				sync  bool
				grace time.Duration // how long the client waits before it closes
			}{
				{"half without Sync", n / 2, false, 0},
				{"half without Sync, after a pause", n / 2, false, 300 * time.Millisecond},
				{"half then Sync", n / 2, true, 0},
				{"all with Sync, unread", n, true, 0},
				{"all with Sync, unread, after a pause", n, true, 300 * time.Millisecond},
			} {
				t.Run(tc.name, func(t *testing.T) {
					env.Superuser("truncate notes")
					nc, _, _ := hijackedClient(t, env, "vanish")
					msgs := []pgproto3.FrontendMessage{
						&pgproto3.Parse{Name: "ins", Query: "insert into notes(body) values ('vanished batch')"},
						&pgproto3.Bind{PreparedStatement: "ins"}, &pgproto3.Execute{},
						&pgproto3.Parse{Query: "select $1::text || repeat('x', 20000)"},
					}
					for i := range tc.sent {
						msgs = append(msgs, &pgproto3.Bind{Parameters: [][]byte{[]byte(strconv.Itoa(i))}}, &pgproto3.Execute{})
					}
					if tc.sync {
						msgs = append(msgs, &pgproto3.Sync{})
					}
					send(t, nc, msgs...)
					time.Sleep(tc.grace)
					_ = nc.Close()
					waitClients(t, env, 1)
					serverSideClean(t, env)
					served(t, env, other, "other", 10*time.Second)
					if mode == "transaction" {
						poolSettles(t, env)
					}
					if got := env.Superuser("select count(*) from notes"); !tc.sync && got[0][0] != "0" {
						t.Fatalf("a batch without Sync committed: %q rows", got)
					}
				})
			}
		})
	}
}

// TestActiveRecordReset: ActiveRecord's connection.reset! sends, each as a
// query of its own while the client is idle, SET statement_timeout and
// DISCARD ALL, and RESET ALL comes the same way. Issue 13: DISCARD ALL
// failed with "cannot run inside a transaction block" and RESET ALL was
// refused, because the read-back of the settings counted as a transaction.
// All succeed, and the client's next transaction runs without the
// settings and with its identity.
func TestActiveRecordReset(t *testing.T) {
	for _, mode := range poolModes {
		t.Run(mode, func(t *testing.T) {
			env := wedgeEnv(t, mode, 2, nil)
			check := func(t *testing.T, c *pgconn.PgConn, want string) {
				t.Helper()
				got := rows(t, c, "begin; select current_setting('statement_timeout'), current_user::text, current_setting('jwt.claims.sub'); commit")
				if len(got) != 1 || got[0][0] != want || got[0][1] != "web_user" || got[0][2] != "ar" {
					t.Fatalf("next transaction: %q, want statement_timeout %s as web_user ar", got, want)
				}
			}
			// Each client leaves at the end of its subtest: in session
			// mode it holds a server connection until then.
			connect := func(t *testing.T) *pgconn.PgConn {
				c := env.Connect(pgtest.UserToken(t, "ar"))
				t.Cleanup(func() { _ = c.Close(context.Background()) })
				return c
			}
			t.Run("one after the other", func(t *testing.T) {
				c := connect(t)
				for _, sql := range []string{"set statement_timeout = '7s'", "discard all", "reset all"} {
					if _, err := c.Exec(ctx(t), sql).ReadAll(); err != nil {
						t.Fatalf("%s: %v", sql, err)
					}
				}
				check(t, c, "0")
			})
			t.Run("each checked", func(t *testing.T) {
				c := connect(t)
				rows(t, c, "set statement_timeout = '7s'")
				check(t, c, "7s")
				rows(t, c, "discard all")
				check(t, c, "0")
				rows(t, c, "set statement_timeout = '7s'")
				check(t, c, "7s")
				rows(t, c, "reset all")
				check(t, c, "0")
			})
			t.Run("pipelined", func(t *testing.T) {
				nc, fe, _ := hijackedClient(t, env, "ar")
				send(t, nc, &pgproto3.Query{String: "set statement_timeout = '7s'"},
					&pgproto3.Query{String: "discard all"},
					&pgproto3.Query{String: "set statement_timeout = '7s'"},
					&pgproto3.Query{String: "reset all"},
					&pgproto3.Query{String: "begin; select current_setting('statement_timeout') || ' ' || current_user || ' ' || current_setting('jwt.claims.sub'); commit"})
				got := receive(t, env, nc, fe, 5, 10*time.Second)
				want := []answer{{typ: 'C', text: "SET"}, {typ: 'Z', text: "I"}, {typ: 'C', text: "DISCARD ALL"}, {typ: 'Z', text: "I"},
					{typ: 'C', text: "SET"}, {typ: 'Z', text: "I"}, {typ: 'C', text: "RESET"}, {typ: 'Z', text: "I"},
					{typ: 'C', text: "BEGIN"}, {typ: 'T'}, {typ: 'D', text: "0 web_user ar", size: 13}, {typ: 'C', text: "SELECT 1"}, {typ: 'C', text: "COMMIT"}, {typ: 'Z', text: "I"}}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("answers\n%v\nwant\n%v", got, want)
				}
			})
		})
	}
}

// stallProxy sits between pgtoken and Postgres: what pgtoken sends passes
// untouched; what Postgres sends passes message by message. Once armed,
// the first DataRow of at least min bytes is cut: its first half goes
// through, then nothing more on that connection until it is released — a
// server message cut mid-way by a slow network.
type stallProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu      sync.Mutex
	min     int
	cut     chan struct{} // closed when a message was cut
	release chan struct{} // closed to let the rest of it through
	conns   map[net.Conn]bool
}

func startStallProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.serve(nc)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *stallProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// arm makes the proxy cut the next DataRow of at least min bytes; it
// returns channels closed when the cut happened, and to release the rest.
func (p *stallProxy) arm(min int) (cut <-chan struct{}, release func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.min = min
	p.cut = make(chan struct{})
	p.release = make(chan struct{})
	r := p.release
	var once sync.Once
	return p.cut, func() { once.Do(func() { close(r) }) }
}

// take returns the release channel if a DataRow of n bytes is to be cut
// (and disarms), else nil.
func (p *stallProxy) take(typ byte, n int) (chan struct{}, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut == nil || typ != 'D' || n < p.min {
		return nil, nil
	}
	cut, release := p.cut, p.release
	p.cut, p.release = nil, nil
	return cut, release
}

func (p *stallProxy) track(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		p.conns[c] = true
	}
}

func (p *stallProxy) serve(client net.Conn) {
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = client.Close()
		return
	}
	p.track(client, server)
	done := make(chan struct{})
	var once sync.Once
	end := func() {
		once.Do(func() {
			close(done)
			_ = client.Close()
			_ = server.Close()
		})
	}
	go func() {
		defer end()
		_, _ = io.Copy(server, client)
	}()
	defer end()
	r := bufio.NewReaderSize(server, 64<<10)
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		msg := append(hdr[:], body...)
		cut, release := p.take(hdr[0], n)
		if cut != nil {
			half := 5 + n/2
			if _, err := client.Write(msg[:half]); err != nil {
				return
			}
			close(cut)
			select {
			case <-release:
			case <-done:
				return
			}
			msg = msg[half:]
		}
		if _, err := client.Write(msg); err != nil {
			return
		}
	}
}

// cancelThrough sends a CancelRequest to pgtoken and waits until pgtoken
// closes that connection.
func cancelThrough(env *pgtest.Env, key pgproto3.CancelRequest) error {
	nc, err := net.Dial("tcp", env.App.Addr())
	if err != nil {
		return err
	}
	defer nc.Close()
	b, err := key.Encode(nil)
	if err != nil {
		return err
	}
	if _, err := nc.Write(b); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, nc)
	return err
}

// localWhileStuck sends messages pgtoken answers itself (Close of a
// statement, an empty Query) and a Sync, and checks, through the session's
// own state read under its mutex, that the client goroutine handled them:
// they wait, queued in order, behind the answers the server still owes.
func localWhileStuck(t *testing.T, env *pgtest.Env, nc net.Conn, sub string) {
	t.Helper()
	send(t, nc, &pgproto3.Close{ObjectType: 'S', Name: "nonesuch"}, &pgproto3.Sync{}, &pgproto3.Query{String: ""})
	holdsWithin(t, env, 10*time.Second, "the client goroutine did not take the client's messages while the server reader was stuck", func() bool {
		var sd *session.SessionDebug
		within(t, env, 5*time.Second, "DebugSessions (it takes every Session.mu)", func() error {
			for _, d := range env.App.Server.DebugSessions() {
				if d.Sub == sub {
					sd = &d
				}
			}
			return nil
		})
		if sd == nil {
			return false
		}
		var kinds []string
		for _, u := range sd.Tracker.Units {
			kinds = append(kinds, u.Kind)
		}
		return strings.HasSuffix(strings.Join(kinds, " "), "Local Sync Local")
	})
}

// TestNoLockAcrossIO: the threading rule of session.go, enforced. While a
// session's server reader is stuck in the middle of a message — the rest
// of a large row held back by a slow network (a proxy between pgtoken and
// Postgres), or a large row its client does not read — the session's
// client goroutine still reads its client and queues the answers that need
// no server, the other client of the pool is served, a CancelRequest is
// taken and Server.Shutdown completes, each within bounded time.
func TestNoLockAcrossIO(t *testing.T) {
	// The stuck server reader: the conn's reader goroutine, inside the
	// session's ServerMessage (pool.Handler), parked on a socket.
	readingServer := []string{"pool.(*Conn).readLoop", "session.(*Session).ServerMessage", "net.(*conn).Read"}
	writingClient := []string{"pool.(*Conn).readLoop", "session.(*Session).ServerMessage", "net.(*conn).Write"}
	for _, tc := range []struct {
		name string
		row  int
	}{
		// Larger than what pgtoken buffers whole: streamed to the client.
		{"streamed row cut by the network", 1 << 20},
		{"buffered row cut by the network", 40000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			pg, db := pgtest.NewDB(t)
			proxy := startStallProxy(t, pg.Addr())
			cfg := pgtest.Config(pg, db)
			cfg.Upstream = fmt.Sprintf("host=127.0.0.1 port=%d user=authenticator password=secret dbname=%s sslmode=disable", proxy.port(), db)
			cfg.Pool.Size = 2
			cfg.Pool.WaitTimeout = config.Duration(10 * time.Second)
			env := pgtest.StartWith(t, pg, db, cfg)
			other := env.Connect(pgtest.UserToken(t, "other"))
			nc, fe, key := hijackedClient(t, env, "stuck")
			sql := fmt.Sprintf("select 'stuck', repeat('x', %d)", tc.row)

			// stick sends the query and waits until its row is cut and
			// the server reader waits for the rest.
			stick := func() (release func()) {
				cut, release := proxy.arm(tc.row)
				t.Cleanup(release)
				send(t, nc, &pgproto3.Query{String: sql})
				select {
				case <-cut:
				case <-time.After(10 * time.Second):
					wedged(t, env, "the row never came")
				}
				waitGoroutine(t, env, "IO wait", readingServer...)
				return release
			}
			release := stick()
			localWhileStuck(t, env, nc, "stuck")
			served(t, env, other, "other", 10*time.Second)
			within(t, env, 10*time.Second, "a CancelRequest", func() error { return cancelThrough(env, key) })
			release()
			got := receive(t, env, nc, fe, 3, 10*time.Second)
			// The cancel came after the query's end: nothing to cancel.
			if types(got) != "TDCZ3ZIZ" || got[1].size != tc.row {
				t.Fatalf("answers %s %v, want TDCZ3ZIZ with the row", types(got), got)
			}
			served(t, env, other, "other", 10*time.Second)

			// Again, and shut down while the reader is stuck.
			stick()
			shutdown(t, env)
		})
	}
	t.Run("row the client does not read", func(t *testing.T) {
		checkLeaks(t)
		env := wedgeEnv(t, "transaction", 2, nil)
		other := env.Connect(pgtest.UserToken(t, "other"))
		nc, fe, key := hijackedClient(t, env, "stuck")
		// 64 MB in rows of 1 MB: more than the sockets hold.
		const rowsSent = 64
		sql := fmt.Sprintf("select 'unread', repeat('x', 1<<20) from generate_series(1, %d)", rowsSent)
		send(t, nc, &pgproto3.Query{String: sql})
		// The server reader blocks writing a row to the client.
		waitGoroutine(t, env, "IO wait", writingClient...)
		localWhileStuck(t, env, nc, "stuck")
		served(t, env, other, "other", 10*time.Second)
		within(t, env, 10*time.Second, "a CancelRequest", func() error { return cancelThrough(env, key) })
		// Reading now gets every answer, in order; the cancel may have
		// stopped the query.
		got := receive(t, env, nc, fe, 3, 30*time.Second)
		s := types(got)
		if !strings.HasSuffix(s, "Z3ZIZ") || !strings.HasPrefix(s, "T") {
			t.Fatalf("answers %s", s)
		}
		if strings.Count(s, "D") != rowsSent && !strings.Contains(got[len(got)-6].text, "57014") {
			t.Fatalf("%d rows and then %v", strings.Count(s, "D"), got[len(got)-6:])
		}
		served(t, env, other, "other", 10*time.Second)

		// Again, and shut down while the reader is stuck.
		send(t, nc, &pgproto3.Query{String: sql})
		waitGoroutine(t, env, "IO wait", writingClient...)
		shutdown(t, env)
	})
}

// shutdown runs Server.Shutdown with a short timeout: a client stuck in
// the middle of a result is then cut off, and it must return soon after.
func shutdown(t *testing.T, env *pgtest.Env) {
	t.Helper()
	var err error
	within(t, env, 15*time.Second, "Server.Shutdown with a 1s timeout", func() error {
		cx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		err = env.App.Server.Shutdown(cx)
		return nil
	})
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v", err)
	}
	if n := env.App.Server.Stats().Connections; n != 0 {
		t.Fatalf("%d clients still connected after Shutdown", n)
	}
}
