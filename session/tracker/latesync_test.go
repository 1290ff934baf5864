package tracker

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/session/sqlscan"
)

// TestBatchFailedBeforeItsSync: the server's error arrives before the
// client's Sync is read (the client flushed and waited, or its Sync came
// in a later read), so the tracker skips the rest of the batch. The Sync
// ends the batch all the same: the next batch starts outside any
// transaction and must get the prelude (testdata/scenarios/
// error-then-late-sync.txt shows its statements running as the login
// role without it).
func TestBatchFailedBeforeItsSync(t *testing.T) {
	sel := sqlscan.Split("select 1/0", nil)[0]
	tr := attached()
	if s := tr.Extended('P', sel.Kind, 0); s.Prelude != LocalPrelude {
		t.Fatalf("first Parse: %+v", s)
	}
	tr.Push(Unit{Kind: Bind, Own: OwnPrelude})
	tr.Push(Unit{Kind: Execute, Own: OwnPrelude})
	tr.Push(Unit{Kind: Parse})
	for _, typ := range []byte{'B', 'E', 'H'} {
		tr.Extended(typ, sel.Kind, 0)
	}
	tr.Push(Unit{Kind: Bind})
	tr.Push(Unit{Kind: Execute})
	feed(t, tr, &pgproto3.BindComplete{}, &pgproto3.DataRow{}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ParseComplete{}, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "22012", Message: "division by zero"})

	// The client's Sync, read after the error came.
	tr.Extended('S', 0, 0)
	tr.Push(Unit{Kind: Sync})
	feed(t, tr, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	if tr.InBatch() {
		t.Errorf("the Sync did not end the batch")
	}
	if s := tr.Extended('P', sel.Kind, 0); s.Wait || s.Prelude != LocalPrelude {
		t.Fatalf("first Parse of the next batch: %+v, want the prelude", s)
	}
}

// TestBareTransactionAcrossSync: a batch that only opens a transaction
// (BEGIN, Sync) leaves it bare: the server says 'T' as for any open
// transaction, and the next batch's first statement that runs code still
// gets the prelude, after a SET TRANSACTION that must come before any
// snapshot (testdata/scenarios/set-transaction-after-begin.txt), whether
// the next batch was read before or after the Sync's answer.
func TestBareTransactionAcrossSync(t *testing.T) {
	begin := sqlscan.Split("begin", nil)[0]
	setTx := sqlscan.Split("set transaction isolation level serializable", nil)[0]
	sel := sqlscan.Split("select 1", nil)[0]
	for _, answered := range []bool{false, true} {
		tr := attached()
		for _, typ := range []byte{'P', 'B', 'E'} {
			if s := tr.Extended(typ, begin.Kind, 0); s.Prelude != NoPrelude || s.Wait {
				t.Fatalf("%c of BEGIN: %+v", typ, s)
			}
		}
		tr.Push(Unit{Kind: Parse})
		tr.Push(Unit{Kind: Bind})
		tr.Push(Unit{Kind: Execute})
		if s := tr.Extended('S', 0, 0); s.Prelude != NoPrelude {
			t.Fatalf("Sync after BEGIN: %+v, want no prelude (it would take a snapshot)", s)
		}
		tr.Push(Unit{Kind: Sync})
		if !answered {
			// BEGIN itself may fail: where the server stands is not known.
			if s := tr.Extended('P', setTx.Kind, 0); !s.Wait {
				t.Fatalf("SET TRANSACTION while the Sync is unanswered: %+v, want a wait", s)
			}
		}
		feed(t, tr, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.CommandComplete{CommandTag: []byte("BEGIN")},
			&pgproto3.ReadyForQuery{TxStatus: 'T'})
		if s := tr.Extended('P', setTx.Kind, 0); s.Wait || s.Prelude != NoPrelude {
			t.Fatalf("answered=%v: SET TRANSACTION in the next batch: %+v", answered, s)
		}
		tr.Extended('B', setTx.Kind, 0)
		tr.Extended('E', setTx.Kind, 0)
		if s := tr.Extended('P', sel.Kind, 0); s.Wait || s.Prelude != LocalPrelude {
			t.Fatalf("answered=%v: first statement that runs code: %+v, want the prelude", answered, s)
		}
	}
}

// TestRefusedMessageDoomsTheBatch: once pgtoken sent a message sure to fail
// (a refusal), the server skips the rest of the batch, a Query or
// FunctionCall included: they neither end the batch nor get a prelude, and
// the client counts as inside a batch until its Sync, also once the error
// is in (refusals that follow go to the server, so that the Sync does).
func TestRefusedMessageDoomsTheBatch(t *testing.T) {
	sel := sqlscan.Split("select 1", nil)
	for _, mid := range []string{"query", "funccall"} {
		tr := attached()
		tr.Extended('P', sel[0].Kind, 0)
		tr.Push(Unit{Kind: Bind, Own: OwnPrelude})
		tr.Push(Unit{Kind: Execute, Own: OwnPrelude})
		tr.Push(Unit{Kind: Parse})
		tr.Failing(false)
		tr.Push(Unit{Kind: Parse})
		var s Step
		if mid == "query" {
			s, _ = tr.Query(sel, nil)
			tr.Push(Unit{Kind: Query})
		} else {
			s = tr.FuncCall()
			tr.Push(Unit{Kind: Func})
		}
		if s != (Step{}) || !tr.InBatch() {
			t.Fatalf("%s after a refusal: %+v, in batch %v; want nothing, the batch still open", mid, s, tr.InBatch())
		}
		feed(t, tr, &pgproto3.BindComplete{}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ParseComplete{},
			&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42601", Message: "syntax error"})
		if !tr.Skipping() || !tr.InTransaction() {
			t.Fatalf("%s: after the error: skipping %v, in transaction %v", mid, tr.Skipping(), tr.InTransaction())
		}
		if out := tr.Answer(nil, []byte("x"), true, 0, nil); len(out) != 0 {
			t.Fatalf("%s: a local answer to a Query while the server skips: %q, want none", mid, out)
		}
		tr.Extended('S', 0, 0)
		tr.Push(Unit{Kind: Sync})
		feed(t, tr, &pgproto3.ReadyForQuery{TxStatus: 'I'})
		if tr.InTransaction() || tr.Skipping() || !tr.Idle() {
			t.Fatalf("%s: after the Sync: in transaction %v, skipping %v, idle %v", mid, tr.InTransaction(), tr.Skipping(), tr.Idle())
		}
	}
}
