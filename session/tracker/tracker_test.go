package tracker

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/session/sqlscan"
	"github.com/pgtoken/pgtoken/wire"
)

// attached returns a tracker following an idle server connection.
func attached() *Tracker {
	t := New(false)
	t.Attach(false)
	return t
}

func TestQueryPrelude(t *testing.T) {
	for _, tc := range []struct {
		sql     string
		prelude bool  // in front
		cuts    []int // after these statements
		wait    bool  // a Query pipelined after it must wait for its answer
	}{
		{"select 1", true, nil, false},
		{"select 1; select 2", true, nil, false},
		{"begin", false, nil, true}, // bare until a statement that runs code

		{"begin isolation level serializable; select 1", false, []int{0}, true},
		{"start transaction read only; set transaction isolation level repeatable read; select 1", false, []int{1}, true},
		{"select 1; commit; select 2", true, []int{1}, false},
		{"commit", false, nil, false},
		{"rollback; commit; select 1", false, []int{1}, false},
		{"begin; select 1; commit and chain", false, []int{0}, true},
		{"begin; select 1; rollback and chain; select 2; commit", false, []int{0, 2}, true},
		{"savepoint a", true, nil, false},
		{"begin; savepoint a", false, []int{0}, true},
		{"prepare transaction 'x'; select 1", false, []int{0}, false},
	} {
		t.Run(tc.sql, func(t *testing.T) {
			tr := attached()
			step, cuts := tr.Query(sqlscan.Split(tc.sql, nil), nil)
			if step.Wait || (step.Prelude == LocalPrelude) != tc.prelude || fmt.Sprint(cuts) != fmt.Sprint(tc.cuts) {
				t.Fatalf("got %+v cuts %v, want prelude %v cuts %v", step, cuts, tc.prelude, tc.cuts)
			}
			tr.Push(Unit{Kind: Query})
			next, _ := tr.Query(sqlscan.Split("select 2", nil), nil)
			if next.Wait != tc.wait {
				t.Fatalf("pipelined Query waits %v, want %v", next.Wait, tc.wait)
			}
		})
	}
}

// msg is an extended-protocol message for the table below: its type and
// the statement it concerns.
type msg struct {
	typ  byte
	stmt string
}

func TestExtendedPrelude(t *testing.T) {
	for _, tc := range []struct {
		name string
		msgs []msg
		want string // per message: . none, L local prelude, S session prelude, W wait
	}{
		{"one statement", []msg{{'P', "select 1"}, {'B', "select 1"}, {'E', "select 1"}, {'S', ""}}, "L..."},
		{"begin first", []msg{{'P', "begin"}, {'B', "begin"}, {'E', "begin"}, {'P', "select 1"}, {'B', "select 1"}, {'E', "select 1"}, {'S', ""}}, "...L..."},
		{"begin alone", []msg{{'B', "begin"}, {'E', "begin"}, {'S', ""}}, "..."},
		{"savepoint after begin", []msg{{'B', "begin"}, {'E', "begin"}, {'B', "savepoint a"}}, "..L"},
		{"after commit", []msg{{'B', "select 1"}, {'E', "commit"}, {'B', "select 1"}, {'E', "select 1"}}, "L.L."},
		{"after commit and chain", []msg{{'B', "select 1"}, {'E', "commit and chain"}, {'S', ""}}, "L.."},
		{"after rollback", []msg{{'B', "select 1"}, {'E', "rollback"}, {'D', "select 1"}}, "L.L"},
		{"procedure", []msg{{'B', "call p()"}, {'E', "call p()"}, {'B', "select 1"}}, "LSL"},
		{"procedure in a transaction", []msg{{'B', "begin"}, {'E', "begin"}, {'B', "call p()"}, {'E', "call p()"}, {'B', "select 1"}}, "..L.."},
		{"close and flush", []msg{{'C', ""}, {'H', ""}, {'B', "select 1"}}, "..L"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := attached()
			var got strings.Builder
			for _, m := range tc.msgs {
				var k sqlscan.Kind
				var f sqlscan.Flags
				if st := sqlscan.Split(m.stmt, nil); len(st) == 1 {
					k, f = st[0].Kind, st[0].Flags
				}
				step := tr.Extended(m.typ, k, f)
				switch {
				case step.Wait:
					got.WriteByte('W')
				case step.Prelude == LocalPrelude:
					got.WriteByte('L')
				case step.Prelude == SessionPrelude:
					got.WriteByte('S')
				default:
					got.WriteByte('.')
				}
			}
			if got.String() != tc.want {
				t.Fatalf("got %s, want %s", got.String(), tc.want)
			}
		})
	}
}

// A Query or FunctionCall in the middle of a batch commits it: what follows
// runs in a new transaction and gets the prelude again.
func TestMidBatchSyncPoints(t *testing.T) {
	sel := sqlscan.Split("select 1", nil)[0]
	for _, mid := range []string{"query", "funccall"} {
		t.Run(mid, func(t *testing.T) {
			tr := attached()
			if s := tr.Extended('B', sel.Kind, 0); s.Prelude != LocalPrelude {
				t.Fatalf("first Bind: %+v", s)
			}
			tr.Extended('E', sel.Kind, 0)
			if mid == "query" {
				s, _ := tr.Query(sqlscan.Split("select 2", nil), nil)
				if s.Prelude != NoPrelude {
					t.Fatalf("Query inside the batch's transaction: %+v", s)
				}
				tr.Push(Unit{Kind: Query})
			} else {
				if s := tr.FuncCall(); s.Prelude != NoPrelude {
					t.Fatalf("FunctionCall inside the batch's transaction: %+v", s)
				}
				tr.Push(Unit{Kind: Func})
			}
			if s := tr.Extended('B', sel.Kind, 0); s.Wait || s.Prelude != LocalPrelude {
				t.Fatalf("Bind after the %s: %+v, want the prelude again", mid, s)
			}
		})
	}
	t.Run("funccall first", func(t *testing.T) {
		tr := attached()
		if s := tr.FuncCall(); s.Prelude != LocalPrelude || !s.Barrier {
			t.Fatalf("FunctionCall outside a transaction: %+v", s)
		}
	})
}

// frames encodes backend messages.
func frames(t *testing.T, msgs ...pgproto3.BackendMessage) [][]byte {
	var out [][]byte
	for _, m := range msgs {
		b, err := m.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func feed(t *testing.T, tr *Tracker, msgs ...pgproto3.BackendMessage) []byte {
	t.Helper()
	var out []byte
	for _, f := range frames(t, msgs...) {
		var err error
		if out, err = tr.Server(out, f); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// decode splits client-bound bytes into message type letters.
func decode(b []byte) string {
	var s strings.Builder
	for len(b) >= 5 {
		n := int(b[1])<<24 | int(b[2])<<16 | int(b[3])<<8 | int(b[4])
		s.WriteByte(b[0])
		b = b[1+n:]
	}
	return s.String()
}

func TestAnswersRouted(t *testing.T) {
	tr := attached()
	// prelude (own) + client's Bind/Execute + Sync
	tr.Push(Unit{Kind: Bind, Own: OwnPrelude})
	tr.Push(Unit{Kind: Execute, Own: OwnPrelude})
	tr.Push(Unit{Kind: Bind})
	tr.Push(Unit{Kind: Execute})
	tr.Push(Unit{Kind: Sync})
	out := feed(t, tr,
		&pgproto3.BindComplete{}, &pgproto3.DataRow{}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.BindComplete{}, &pgproto3.DataRow{}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if got := decode(out); got != "2DCZ" {
		t.Fatalf("client got %s", got)
	}
	if !tr.Idle() {
		t.Fatal("not idle after ReadyForQuery I")
	}
}

func TestPreludeErrorBeforeFunctionCallOwesSync(t *testing.T) {
	tr := attached()
	tr.Push(Unit{Kind: Bind, Own: OwnPrelude})
	tr.Push(Unit{Kind: Execute, Own: OwnPrelude})
	tr.Push(Unit{Kind: Func, Barrier: true})
	out := feed(t, tr, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "42704", Message: "role does not exist"})
	if got := decode(out); got != "E" {
		t.Fatalf("client got %s", got)
	}
	if !tr.SyncOwed() || tr.Barred() {
		t.Fatalf("sync owed %v, barred %v: want a Sync owed and the barrier lifted", tr.SyncOwed(), tr.Barred())
	}
	tr.Push(Unit{Kind: Sync})
	out = feed(t, tr, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	if got := decode(out); got != "Z" || tr.SyncOwed() {
		t.Fatalf("client got %s, sync owed %v", got, tr.SyncOwed())
	}
}

// The client's own failure before its mid-batch Query leaves it
// unanswered, as Postgres does; pgtoken owes nothing.
func TestClientErrorBeforeQueryOwesNothing(t *testing.T) {
	tr := attached()
	tr.Push(Unit{Kind: Execute})
	tr.Push(Unit{Kind: Query})
	feed(t, tr, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "22012", Message: "division by zero"})
	if tr.SyncOwed() || !tr.Settled() {
		t.Fatalf("sync owed %v, settled %v", tr.SyncOwed(), tr.Settled())
	}
	// Until the client's Sync, what it sends is skipped.
	tr.Push(Unit{Kind: Execute, Purpose: 1})
	if d := tr.TakeDone(); len(d) != 1 || d[0].Err != ErrSkipped {
		t.Fatalf("a message after the error: %+v", d)
	}
}

func TestResetConfirmedOnlyByCommit(t *testing.T) {
	for _, tc := range []struct {
		name    string
		answers []pgproto3.BackendMessage
		clean   bool
	}{
		{"implicit commit", []pgproto3.BackendMessage{&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}}, true},
		{"error", []pgproto3.BackendMessage{&pgproto3.ErrorResponse{Severity: "ERROR", Code: "22012"}, &pgproto3.ReadyForQuery{TxStatus: 'I'}}, false},
		{"rollback", []pgproto3.BackendMessage{&pgproto3.CommandComplete{CommandTag: []byte("ROLLBACK")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}}, false},
		{"still open", []pgproto3.BackendMessage{&pgproto3.CommandComplete{CommandTag: []byte("BEGIN")}, &pgproto3.ReadyForQuery{TxStatus: 'T'}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := New(false)
			tr.Attach(true)
			if !tr.ResetPending() {
				t.Fatal("a foreign conn needs the reset")
			}
			step, _ := tr.Query(sqlscan.Split("select 1", nil), nil)
			if !step.Reset {
				t.Fatalf("%+v: want the reset with the prelude", step)
			}
			tr.Sticky()
			tr.Push(Unit{Kind: Query})
			if s, _ := tr.Query(sqlscan.Split("select 1", nil), nil); !s.Wait {
				t.Fatal("the next Query must wait for the reset's outcome")
			}
			feed(t, tr, tc.answers...)
			if tr.ResetPending() == tc.clean {
				t.Fatalf("reset pending %v, want %v", tr.ResetPending(), !tc.clean)
			}
		})
	}
}

func TestLostConnectionAnswersEverything(t *testing.T) {
	tr := attached()
	tr.Push(Unit{Kind: Query})
	tr.Push(Unit{Kind: Bind})
	tr.Push(Unit{Kind: Execute})
	tr.Push(Unit{Kind: Sync})
	out, _, _ := tr.Lost(nil, wire.Errorf(wire.CodeConnectionFailure, "lost"))
	if got := decode(out); got != "EZEZ" {
		t.Fatalf("client got %s", got)
	}
	if tr.Attached() {
		t.Fatal("still attached")
	}
}

// The server ends a connection (FATAL) that sat inside a transaction: if a
// statement was waiting for its answer, its error and ReadyForQuery 'I'
// tell the client; otherwise the client's next statement hears it.
func TestLostTransactionToldOnce(t *testing.T) {
	for _, tc := range []struct {
		name       string
		inFlight   bool
		wantOut    string
		wantTxLost bool
	}{
		{"idle in transaction", false, "", true},
		{"a statement in flight", true, "EZ", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := attached()
			tr.Push(Unit{Kind: Query})
			feed(t, tr, &pgproto3.CommandComplete{CommandTag: []byte("BEGIN")}, &pgproto3.ReadyForQuery{TxStatus: 'T'})
			if tc.inFlight {
				tr.Push(Unit{Kind: Query})
			}
			out, txLost, _ := tr.Lost(nil, wire.Errorf(wire.CodeConnectionFailure, "lost"))
			if got := decode(out); got != tc.wantOut || txLost != tc.wantTxLost {
				t.Fatalf("client got %q, txLost %v; want %q, %v", got, txLost, tc.wantOut, tc.wantTxLost)
			}
		})
	}
}

// A deferred constraint fails at the batch's commit, in answer to Sync: the
// error belongs to the Sync, whose ReadyForQuery follows.
func TestErrorAnsweringSync(t *testing.T) {
	tr := attached()
	tr.Push(Unit{Kind: Execute})
	tr.Push(Unit{Kind: Sync})
	out := feed(t, tr, &pgproto3.CommandComplete{CommandTag: []byte("UPDATE 1")},
		&pgproto3.ErrorResponse{Severity: "ERROR", Code: "23505", Message: "duplicate key value"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if got := decode(out); got != "CEZ" || !tr.Idle() {
		t.Fatalf("client got %s, idle %v", got, tr.Idle())
	}
}

// The hand-over reset counts as done only when the transaction that ran it
// committed: a COMMIT or ROLLBACK that completes before the reset in the
// same Query says nothing about it, and a reset the server skipped never
// ran.
func TestResetJudgedFromItsOwnPosition(t *testing.T) {
	cc := func(tag string) pgproto3.BackendMessage { return &pgproto3.CommandComplete{CommandTag: []byte(tag)} }
	errMsg := &pgproto3.ErrorResponse{Severity: "ERROR", Code: "25P01", Message: "no transaction"}
	for _, tc := range []struct {
		name    string
		resetAt int
		answers []pgproto3.BackendMessage
		clean   bool
	}{
		// "commit; <reset> commit and chain": the COMMIT is before the reset.
		{"commit before, reset fails", 1, []pgproto3.BackendMessage{cc("COMMIT"), cc("RESET"), errMsg, &pgproto3.ReadyForQuery{TxStatus: 'I'}}, false},
		// "rollback; <reset> set x": the ROLLBACK is before the reset.
		{"rollback before, reset commits", 1, []pgproto3.BackendMessage{cc("ROLLBACK"), cc("RESET"), cc("SET"), &pgproto3.ReadyForQuery{TxStatus: 'I'}}, true},
		// "<reset> select; commit"
		{"commit after", 0, []pgproto3.BackendMessage{cc("RESET"), cc("SELECT 1"), cc("COMMIT"), &pgproto3.ReadyForQuery{TxStatus: 'I'}}, true},
		// "<reset> select; rollback"
		{"rollback after", 0, []pgproto3.BackendMessage{cc("RESET"), cc("SELECT 1"), cc("ROLLBACK"), &pgproto3.ReadyForQuery{TxStatus: 'I'}}, false},
		// "commit and chain; <reset> ...": fails before the reset
		{"error before", 1, []pgproto3.BackendMessage{errMsg, &pgproto3.ReadyForQuery{TxStatus: 'I'}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := New(false)
			tr.Attach(true)
			tr.Sticky()
			tr.Push(Unit{Kind: Query, ResetAt: tc.resetAt})
			feed(t, tr, tc.answers...)
			if tr.ResetPending() == tc.clean {
				t.Fatalf("reset pending %v, want %v", tr.ResetPending(), !tc.clean)
			}
		})
	}
	t.Run("skipped", func(t *testing.T) {
		tr := New(false)
		tr.Attach(true)
		tr.Push(Unit{Kind: Parse})
		tr.Sticky()
		tr.Push(Unit{Kind: Bind, Own: OwnPrelude})
		tr.Push(Unit{Kind: Execute, Own: OwnPrelude})
		tr.Push(Unit{Kind: Sync})
		feed(t, tr, errMsg, &pgproto3.ReadyForQuery{TxStatus: 'I'})
		if !tr.ResetPending() {
			t.Fatal("a reset the server skipped counts as done")
		}
	})
}

// TestResetFirstInBatch: on a server connection that served another
// client, the hand-over reset goes in front of the client's first batch
// (its CLOSE ALL must not close a portal the client binds before the
// prelude); in front of a BEGIN or SET TRANSACTION, which must come before
// the snapshot the reset takes, as a Query of its own.
func TestResetFirstInBatch(t *testing.T) {
	for _, tc := range []struct {
		first string
		want  Step
	}{
		{"commit", Step{Reset: true}},
		{"rollback", Step{Reset: true}},
		{"select 1", Step{Prelude: LocalPrelude, Reset: true}},
		{"begin", Step{ResetAhead: true}},
		{"set transaction isolation level serializable", Step{ResetAhead: true}},
	} {
		tr := New(false)
		tr.Attach(true)
		st := sqlscan.Split(tc.first, nil)[0]
		got := tr.Extended('P', st.Kind, st.Flags)
		if !got.Fresh {
			t.Errorf("first message %q: not Fresh, though no transaction was open", tc.first)
		}
		if got.Fresh = false; got != tc.want {
			t.Errorf("first message %q: %+v, want %+v", tc.first, got, tc.want)
		}
		sent := tc.want.Reset || tc.want.ResetAhead
		if sent {
			tr.Sticky() // what the session does once it queued the reset
		}
		sel := sqlscan.Split("select 1", nil)[0]
		got = tr.Extended('P', sel.Kind, sel.Flags)
		want := Step{Prelude: LocalPrelude, Reset: !sent}
		if tc.want.Prelude != NoPrelude {
			want = Step{}
		}
		if got != want {
			t.Errorf("after %q, a select: %+v, want %+v", tc.first, got, want)
		}
	}
}
